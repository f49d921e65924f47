"""SFT and evaluation on real (small) models on CPU: the label mask on real tokenized examples,
the full fixture pipeline (tiny random Qwen2), reproducibility, and the bad-input errors.

Run: .venv/bin/pytest -m integration tests/integration/test_sft_eval.py -q   (about 1-2 minutes on 2 cores)
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers_runner import cli, final_dir, rows  # noqa: E402

pytestmark = pytest.mark.integration
HERE = Path(__file__).resolve().parent
# the fixture pipeline dir, then this checkout (not whichever copy of the project is installed)
PYPATH = os.pathsep.join([str(HERE), str(HERE.parents[1])])

SFT_PARAMS = {"max_steps": 3, "per_device_batch_size": 2, "grad_accum": 1, "max_seq_len": 128, "save_steps": 2,
              "logging_steps": 1, "dev_fraction": 0.25, "lora_r": 4, "lora_alpha": 8}
EVAL_PARAMS = {"max_new_tokens": 8, "batch_size": 4, "n_boot": 200, "arms": ["raw", "instruction"], "critic": False,
               "ifeval_limit": 0, "task_critic": False, "refusal_critic": False}
# The tiny random model's 256-token context cannot hold the task/refusal rubrics: here the task
# critic is off (its criterion is then "not measured") and refusals are decided by the rules; the
# critics on a real model: tests/integration/test_eval_honesty.py.


def write_cfg(path: Path, *, model="tiny-random-qwen2", seed=7, merge=None, heldout_n=4, sft=None, evaluate=None) -> Path:
    cfg = {"pipeline": "sft_fixture_pipeline:pipeline", "seed": seed, "max_attempts": 3,
           "params": {"prepare_model": {"model": model}, "heldout": {"n": heldout_n}, "merge": merge or {},
                      "sft": {**SFT_PARAMS, **(sft or {})}, "evaluate": {**EVAL_PARAMS, **(evaluate or {})}},
           "gates": {"sft_gate": {"policy": "auto"}}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(home: Path, cfg: Path, **kw):
    return cli(home, "run", "--config", cfg, "--run-id", "t", timeout=600, PYTHONPATH=PYPATH, **kw)


# -- the label mask on the real SmolLM2 tokenizer, as the trainer batches it --------------------


@pytest.fixture(scope="module")
def smol():
    from phases.models.loader import load_model

    return load_model("smollm2-135m-instruct", device="cpu", backend="hf", run_sentinels=False)


def test_label_mask_on_real_tokenized_examples(smol, tmp_path):
    from phases.prompts import response_prompt
    from phases.sft import SFT_DEFAULTS, build_examples, make_trainer

    recs = [{"instruction": "Name a color.", "response": "Blue."},
            {"instruction": "Write a haiku about rain.", "response": "Soft rain on the roof\nwhispers to the sleeping town\nmorning comes in grey"}]
    examples, counts = build_examples(smol, recs, 128)
    assert counts["kept"] == 2
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(smol.model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    params = {**SFT_DEFAULTS, **SFT_PARAMS, "dev_fraction": 0.0}
    trainer = make_trainer(smol, model, examples, [], params, tmp_path / "t", 0, "cpu", False)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])  # what the trainer trains on
    eos = smol.eos_token_id
    assert smol.eos_token == "<|endoftext|>"
    for b, rec in enumerate(recs):
        prompt_ids = smol.encode(response_prompt(rec["instruction"]))
        resp_ids = smol.encode(" " + rec["response"])
        n = len(prompt_ids) + len(resp_ids) + 1
        ids, labels = batch["input_ids"][b].tolist(), batch["labels"][b].tolist()
        assert ids[:n] == prompt_ids + resp_ids + [eos]
        assert labels[: len(prompt_ids)] == [-100] * len(prompt_ids), "prompt tokens must not be labelled"
        assert labels[len(prompt_ids):n] == resp_ids + [eos], "response tokens and the final eos must be labelled"
        assert labels[n:] == [-100] * (len(labels) - n), "padding must not be labelled"
        assert batch["attention_mask"][b].tolist() == [1] * n + [0] * (len(ids) - n)
        # the decoded labelled span is exactly the response plus the end-of-text token
        assert smol.decode([t for t in labels if t != -100]) == " " + rec["response"] + "<|endoftext|>"
        # separate encoding of prompt and completion equals encoding the whole text (exact boundary)
        assert smol.encode(response_prompt(rec["instruction"]) + " " + rec["response"]) == prompt_ids + resp_ids
    assert "<|im_end|>" not in smol.decode(batch["input_ids"][0].tolist())


def test_critic_and_ifeval_pieces_on_smollm2(smol):
    from phases import evaluate as ev
    from phases.ifeval import load_prompts

    pairs = [{"instruction": "What is the capital of France?", "response": "Paris."},
             {"instruction": "What is the capital of France?", "response": "Bananas are yellow."}]
    verdicts = ev.critic_batch(smol, pairs, 1.0)
    assert len(verdicts) == 2 and all(set(v) == {"is_good", "margin", "confident"} for v in verdicts)
    prompts = load_prompts()[:1]
    gens = {"base:urial": ev.generate_batch(smol, "urial", [prompts[0].prompt], 8),
            "trained": ev.generate_batch(smol, "instruction", [prompts[0].prompt], 8)}
    rep = ev.ifeval_report(prompts, gens, {**ev.EVAL_DEFAULTS, "n_boot": 100}, 0)
    assert set(rep["arms"]["trained"]["metrics"]) == {"prompt_level_strict_acc", "inst_level_strict_acc",
                                                     "prompt_level_loose_acc", "inst_level_loose_acc"}
    assert rep["arms"]["trained"]["truncated"] == 1  # 8 tokens cannot finish an IFEval answer


# -- the fixture pipeline ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def done_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("run1")
    p = run(home, write_cfg(home / "cfg.yaml"))
    assert p.returncode == 3, p.stdout + p.stderr  # waits at sft_gate: a random model shows no lift
    return home


def test_sft_outputs(done_run):
    d = final_dir(done_run, "sft")
    assert (d / "adapter" / "adapter_model.safetensors").is_file()
    assert (d / "adapter" / "adapter_config.json").is_file()
    marker = json.loads((d / "TRAINING_SUCCESS").read_text())
    assert marker["adapter_path"] == "adapter" and len(marker["git_sha"]) >= 7
    man = json.loads((d / "training_manifest.json").read_text())
    for key in ("dataset", "qc_summary", "hyperparameters", "checkpoints", "metrics", "loss_curve", "git_sha"):
        assert key in man, key
    assert len(man["dataset"]["sha256"]) == 64 and man["dataset"]["path"].endswith("sft.jsonl")
    assert man["qc_summary"]["path"].endswith("qc_summary.json")
    assert man["hyperparameters"]["lora_r"] == 4 and man["metrics"]["global_step"] == 3
    assert man["checkpoints"] == ["checkpoint-2", "checkpoint-3"]
    assert man["kernels"]["requested"] == "auto" and man["kernels"]["applied"] == []  # CPU: no Liger, said so
    assert man["decoder_autocast"]["applied"] is False and man["attention"]["sdpa"] == "default"  # CPU: fp32
    started = rows(done_run, "SELECT message, data_json FROM events WHERE kind='sft_started'")
    assert len(started) == 1 and "kernels none (device cpu" in started[0][0]
    assert json.loads(started[0][1])["kernels"] == man["kernels"]
    assert [p["step"] for p in man["loss_curve"]["train"]] == [1, 2, 3]
    assert (d / "loss.png").stat().st_size > 1000


def test_eval_outputs_and_status(done_run):
    d = final_dir(done_run, "evaluate")
    rep = json.loads((d / "eval.json").read_text())
    assert set(rep["arms"]) == {"raw", "instruction", "trained"}
    ov = rep["comparison"]["overall"]
    assert {"n01", "n10"} <= set(ov["discordant"]) and "p_value" in ov["mcnemar"] and "lift_ci" in ov
    assert all("p_adjusted" in b for b in rep["comparison"]["per_type"].values())
    assert rep["baseline"]["arm"] in ("raw", "instruction")
    assert rep["gate"]["go"] is False and rep["gate"]["line"].startswith("NO-GO")
    items = [json.loads(x) for x in (d / "items.jsonl").read_text().splitlines()]
    assert len(items) == 4
    for it in items:
        for arm, o in it["arms"].items():
            assert {"response", "success", "task_done", "refused", "both", "failure_reason", "tokens",
                    "truncated", "words"} <= set(o)
            assert (o["failure_reason"] is None) == o["both"]
            assert (o["refused"] is not None) == it["refusal_expected"]
    # the new columns: task completion, safety, length control, truncation per arm, criteria
    assert rep["task_calibration"] is None
    assert next(c for c in rep["gate"]["criteria"] if c["id"] == "task_judge")["verdict"] == "not measured"
    assert rep["safety"]["n"] == 1 and "lower" in rep["safety"]
    assert set(rep["length"]) >= {"neutral", "matched", "by_direction", "distributions"}
    assert "training_data" in rep["length"]["distributions"]
    assert set(rep["truncation"]) == {"raw", "instruction", "trained"}
    assert [c["id"] for c in rep["gate"]["criteria"]][:4] == ["improvement", "ci_width", "protected_types", "safety"]
    text = (d / "summary.txt").read_text()
    assert "Gate criteria:" in text and "Length control:" in text and "Safety (1 refusal_expected" in text
    assert (d / "summary.txt").read_text().strip().splitlines()[-1].startswith(("GO:", "NO-GO:"))
    assert (d / "per_type.png").stat().st_size > 1000
    st = cli(done_run, "status", "--json", check=0, PYTHONPATH=PYPATH)
    steps = {s["name"]: s for s in json.loads(st.stdout)["steps"]}
    assert "train loss" in steps["sft"]["summary"]["headline"]
    assert "trained" in steps["evaluate"]["summary"]["rates"]


def test_same_seed_same_eval_json_and_adapter(done_run, tmp_path):
    p = run(tmp_path, write_cfg(tmp_path / "cfg.yaml"))
    assert p.returncode == 3, p.stdout + p.stderr
    a = json.loads((final_dir(done_run, "evaluate") / "eval.json").read_text())
    b = json.loads((final_dir(tmp_path, "evaluate") / "eval.json").read_text())
    assert a == b
    ma = json.loads((final_dir(done_run, "sft") / "training_manifest.json").read_text())
    mb = json.loads((final_dir(tmp_path, "sft") / "training_manifest.json").read_text())
    assert ma["adapter"]["sha256"] == mb["adapter"]["sha256"], "CPU training is deterministic given the seed"


# -- bad input -----------------------------------------------------------------------------------


def test_refuses_without_qc_pass(tmp_path):
    p = run(tmp_path, write_cfg(tmp_path / "cfg.yaml", merge={"qc_pass": False}))
    assert p.returncode == 1
    err = rows(tmp_path, "SELECT error FROM attempts WHERE step='sft'")[0][0]
    assert "thresholds_passed = False" in err and "refuses to start" in err and "runaway rate" in err
    assert not list((tmp_path / "artifacts").rglob("checkpoint-*")), "no training may have started"


def test_refuses_incomplete_manifest(tmp_path):
    from phases.sft import check_merge_inputs
    from runner.errors import DataError

    (tmp_path / "sft.jsonl").write_text('{"instruction": "a", "response": "b"}\n')
    (tmp_path / "qc_summary.json").write_text('{"thresholds_passed": true, "failed_reasons": []}')
    (tmp_path / "manifest.json").write_text('{"created_at": "x"}')
    with pytest.raises(DataError, match=r"manifest.json: the dataset manifest lacks required field"):
        check_merge_inputs(tmp_path)


def test_empty_eval_set_is_a_clear_error(tmp_path):
    from phases.evaluate import load_heldout
    from runner.errors import DataError

    (tmp_path / "heldout.jsonl").write_text("")
    with pytest.raises(DataError, match="evaluation set is empty"):
        load_heldout(tmp_path / "heldout.jsonl")


def test_empty_eval_set_in_the_pipeline(tmp_path):
    # heldout n=0 through the real evaluate step: the step fails with the clear error
    p = run(tmp_path, write_cfg(tmp_path / "cfg.yaml", heldout_n=0))
    assert p.returncode == 1
    err = rows(tmp_path, "SELECT error FROM attempts WHERE step='evaluate' AND status='failed'")
    assert err and "evaluation set is empty" in err[-1][0]


def test_mismatched_adapter_is_refused(done_run, smol, tmp_path):
    from phases.evaluate import attach_adapter
    from runner.errors import DataError

    tiny_adapter = final_dir(done_run, "sft") / "adapter"
    a = tmp_path / "a"
    shutil.copytree(tiny_adapter, a)
    with pytest.raises(DataError, match="does not belong to this base model"):
        attach_adapter(smol, a)  # trained on tiny-random-qwen2, evaluated on SmolLM2
    # forge the identity: the architecture check still refuses it
    meta = json.loads((a / "cai_adapter.json").read_text())
    meta["base_model_id"] = "smollm2-135m-instruct"
    (a / "cai_adapter.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="trained on a different architecture"):
        attach_adapter(smol, a)
    # no identity file, a config naming SmolLM2: the tensor shapes give it away
    (a / "cai_adapter.json").unlink()
    cfg = json.loads((a / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(smol.path)
    (a / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(DataError, match="shape"):
        attach_adapter(smol, a)
