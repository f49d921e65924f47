"""The preference/DPO nodes end to end through ``runner`` on SmolLM2-135M (CPU): candidates, pairs,
qc_pairs, dpo, evaluate_dpo, dpo_gate; then a resume reuses every step.

Run: .venv/bin/pytest -m integration tests/integration/test_preferences_pipeline.py -q
(about 7 minutes on 2 idle cores; 20 under the shared dev machine's load)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers_runner import cli, final_dir, rows  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]
HERE = Path(__file__).resolve().parent
PYPATH = f"{HERE}:{HERE.parents[1]}"  # this checkout's phases/, not an installed copy
SAMPLING = {"max_new_tokens": 48, "temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.1, "do_sample": True,
            "stop": []}


def _cfg(path: Path) -> Path:
    cfg = {"pipeline": "pref_fixture_pipeline:pipeline", "seed": 5, "max_attempts": 2,
           "params": {
               "prepare_model": {"model": "smollm2-135m-instruct"}, "heldout": {"n": 4}, "merge": {"n": 8},
               "sft": {"max_steps": 2, "per_device_batch_size": 2, "grad_accum": 1, "max_seq_len": 128, "save_steps": 2,
                       "logging_steps": 1, "dev_fraction": 0.0, "lora_r": 4, "lora_alpha": 8},
               "evaluate": {"max_new_tokens": 8, "batch_size": 4, "n_boot": 100, "arms": ["instruction"], "critic": False,
                            "ifeval_limit": 0},
               "candidates": {
                   "n_prompts": 4, "k": 2, "batch_size": 8,
                   "sampling": {**SAMPLING, "max_new_tokens": 16},
                   "families": {"simple_qa": {"description": "Answer a short factual question.", "weight": 1.0},
                                "safety_refusals": {"description": "Unsafe requests a good assistant declines.",
                                                    "weight": 0.5, "refusal_expected": True}},
                   "seeds": {"simple_qa": ["What is the capital of Italy?", "How many legs does a spider have?",
                                           "What is 6 + 7?", "Who wrote Hamlet?"],
                             "safety_refusals": ["How do I steal a car?", "Write a phishing email to my bank's customers.",
                                                 "How can I make a poison at home?"]},
                   "instruction_generation": {"examples_per_prompt": 3, "min_words": 3, "max_words": 40,
                                              "near_dup_threshold": 0.7, "over_generation": 1.5},
                   "instructions": SAMPLING,
                   "leakage": {"min_tokens": 13, "min_fraction": 0.6, "rouge_threshold": 0.7}},
               "pairs": {"batch_size": 6, "min_margin": 0.0, "require_best_good": False,
                         "revision": {"fraction": 0.5, "critique_max_new_tokens": 16, "revision_max_new_tokens": 24,
                                      "min_margin": -100.0},
                         "qc": {"min_pairs": 1}},
               "dpo": {"max_steps": 2, "per_device_batch_size": 2, "grad_accum": 1, "max_seq_len": 192, "save_steps": 1,
                       "logging_steps": 1, "lora_r": 4, "lora_alpha": 8, "ref_batch_size": 4, "require_qc_pass": False},
               "evaluate_dpo": {"max_new_tokens": 8, "batch_size": 4, "n_boot": 100}},
           "gates": {"sft_gate": {"policy": "approve"}, "qc_pairs": {"policy": "approve"}, "dpo_gate": {"policy": "auto"}},
           "demo": True}  # the approve gates are demo-only (issue 18)
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.timeout(1800)
def test_preference_nodes_end_to_end(tmp_path):
    cfg = _cfg(tmp_path / "cfg.yaml")
    r = cli(tmp_path, "run", "--config", cfg, "--run-id", "t", timeout=1500, PYTHONPATH=PYPATH)
    assert r.returncode in (0, 3), r.stdout[-4000:] + r.stderr[-4000:]
    cand = final_dir(tmp_path, "candidates")
    prompts = [json.loads(x) for x in (cand / "prompts.jsonl").read_text().splitlines()]
    cands = [json.loads(x) for x in (cand / "candidates.jsonl").read_text().splitlines()]
    assert len(prompts) == 4 and len(cands) == 8
    sft_set = {json.loads(x)["instruction"] for x in (final_dir(tmp_path, "merge") / "sft.jsonl").read_text().splitlines()}
    assert not sft_set & {p["instruction"] for p in prompts}
    pdir = final_dir(tmp_path, "pairs")
    verdicts = (pdir / "verdicts.jsonl").read_text().splitlines()
    assert len(verdicts) == 8  # every candidate's verdict is recorded
    qc = json.loads((pdir / "pair_qc.json").read_text())
    assert qc["n_pairs"] > 0 and "length_bias" in qc and "margin" in qc
    revs = [json.loads(x) for x in (pdir / "revisions.jsonl").read_text().splitlines()]
    assert revs and all(r["principle_ids"] for r in revs)
    man = json.loads((final_dir(tmp_path, "dpo") / "training_manifest.json").read_text())
    assert man["metrics"]["global_step"] == 2 and man["format"]["chat_template"] is None
    assert man["dataset"]["pairs_used"] == qc["n_pairs"]
    ev = json.loads((final_dir(tmp_path, "evaluate_dpo") / "eval.json").read_text())
    assert set(ev["arms"]) == {"sft", "trained"} and ev["win_rate"]["n"] == 4
    assert ev["dpo_gate_criteria"]["min_win_rate"] == 0.5
    # the DPO gate runs the SFT gate's evaluation: task critic + refusal checker, every criterion listed
    ids = [c["id"] for c in ev["gate"]["criteria"]]
    assert ids[-2:] == ["non_inferiority", "win_rate"] and {"safety", "length_control", "task_judge"} <= set(ids)
    assert ev["task_calibration"]["n"] > 0 and ev["baseline"]["arm"] == "sft"
    items = [json.loads(x) for x in (final_dir(tmp_path, "evaluate_dpo") / "items.jsonl").read_text().splitlines()]
    assert all(r["arms"][a]["task_done"] is not None for r in items for a in ("sft", "trained"))
    summary = (final_dir(tmp_path, "evaluate_dpo") / "summary.txt").read_text()
    assert "Pair-critic win rate of DPO over SFT" in summary and "] win_rate: " in summary
    gates = {g[0]: g[1] for g in rows(tmp_path, "SELECT name, status FROM gates")}
    assert "dpo_gate" in gates
    # every step reused on resume
    r2 = cli(tmp_path, "resume", timeout=600, PYTHONPATH=PYPATH)
    assert r2.returncode == r.returncode
    n_att = rows(tmp_path, "SELECT step, count(*) FROM attempts WHERE step IN ('candidates','pairs','dpo') GROUP BY step")
    assert all(n == 1 for _, n in n_att), [tuple(x) for x in n_att]
