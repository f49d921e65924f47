"""params.sft / params.evaluate typed like the stage keys; prompts.eval_arms wired; builders by role.

Run: .venv/bin/pytest tests/unit/test_step_params.py -q
"""
from __future__ import annotations

from pathlib import Path

import pytest

from runner.config import load_config
from runner.errors import ConfigError

from phases.pipeline import pipeline

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "phases" / "stages" / "demo.yaml"


def _cfg(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(f"include: {DEMO}\n" + body)
    return p


def test_sft_and_evaluate_params_are_range_and_choice_checked_with_file_and_line(tmp_path):
    cfg = _cfg(tmp_path, "params:\n  sft:\n    lora_r: 0\n    quantization: int8\n"
                         "  evaluate:\n    alpha: 2.0\n    device: gpu\n")
    with pytest.raises(ConfigError) as e:
        load_config(cfg, pipeline)
    text = str(e.value)
    assert f"{cfg}:4: params.sft.lora_r = 0: expected a value >= 1" in text
    assert f"{cfg}:5: params.sft.quantization = 'int8': expected one of" in text
    assert f"{cfg}:7: params.evaluate.alpha = 2.0: expected a value <= 0.5" in text
    assert f"{cfg}:8: params.evaluate.device = 'gpu': expected one of" in text


def test_valid_sft_and_evaluate_params_pass(tmp_path):
    cfg = load_config(_cfg(tmp_path, "params:\n  sft: {lora_r: 32, quantization: none, device: 'cuda:1'}\n"
                                     "  evaluate: {alpha: 0.01, n_boot: 200}\n"), pipeline)
    assert cfg["params"]["sft"]["lora_r"] == 32 and cfg["params"]["evaluate"]["n_boot"] == 200


def test_eval_arms_is_wired_to_the_evaluate_step(tmp_path):
    cfg = load_config(_cfg(tmp_path, "prompts: {eval_arms: [urial, instruction_response]}\n"), pipeline)
    assert cfg["params"]["evaluate"]["arms"] == ["urial", "instruction"]
    with pytest.raises(ConfigError, match=r"run\.yaml:4: params\.evaluate\.arms: .* prompts\.eval_arms"):
        load_config(_cfg(tmp_path, "params:\n  evaluate:\n    arms: [raw]\n"), pipeline)


@pytest.mark.parametrize("key, value", [("response_builder", "raw"), ("response_builder", "numbered_list"),
                                        ("instruction_builder", "instruction_response")])
def test_a_builder_of_the_wrong_role_is_refused_not_crashed_on(tmp_path, key, value):
    with pytest.raises(ConfigError, match=rf"run\.yaml:2: prompts\.{key} = '{value}': expected one of"):
        load_config(_cfg(tmp_path, f"prompts: {{{key}: {value}}}\n"), pipeline)


def test_trainer_unsloth_is_refused_with_where_unsloth_runs_and_the_allowed_values(tmp_path):
    # Unsloth is measured by benchmarks/bench_unsloth.py only; the step's path through it was deleted
    cfg = _cfg(tmp_path, "params:\n  sft:\n    trainer: unsloth\n")
    with pytest.raises(ConfigError) as e:
        load_config(cfg, pipeline)
    text = str(e.value)
    assert (f"{cfg}:4: params.sft.trainer = 'unsloth': Unsloth is not a trainer of the sft step; it is measured "
            "only by benchmarks/bench_unsloth.py (see docs/performance.md: on an H200, over the step's default 3 "
            "epochs, it ran 0.51x the fast trainer at 1.5B and 0.95x at 7B); use trainer: auto or fast; "
            "allowed: auto, fast, trl") in text
    assert "trainer = 'unsloth': expected one of" not in text  # one message for the key, not two


def test_the_sft_step_itself_refuses_trainer_unsloth_and_other_unknown_trainers(tmp_path):
    # run_sft -> load_for_training -> _resolve: the same refusal for params that bypass the stage config
    from phases.sft import SFT_DEFAULTS, _resolve

    with pytest.raises(ConfigError, match=r"params\.sft\.trainer = 'unsloth'; Unsloth is not a trainer of the sft "
                                          r"step; .*benchmarks/bench_unsloth\.py.*docs/performance\.md.*; "
                                          r"allowed: auto, fast, trl$"):
        _resolve({**SFT_DEFAULTS, "device": "cpu", "trainer": "unsloth"})
    with pytest.raises(ConfigError, match=r"params\.sft\.trainer = 'deepspeed'; allowed: auto, fast, trl$"):
        _resolve({**SFT_DEFAULTS, "device": "cpu", "trainer": "deepspeed"})
    with pytest.raises(ConfigError, match=r"params\.sft\.trainer = 'deepspeed': expected one of \['auto', 'fast', "
                                          r"'trl'\]"):
        load_config(_cfg(tmp_path, "params:\n  sft:\n    trainer: deepspeed\n"), pipeline)
    assert _resolve({**SFT_DEFAULTS, "device": "cpu", "trainer": "auto"})[3] == "trl"
