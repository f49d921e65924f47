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
