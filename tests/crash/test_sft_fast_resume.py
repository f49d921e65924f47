"""The fast SFT trainer killed with SIGKILL mid-training resumes to the same adapter as an uninterrupted run.

Run: .venv/bin/pytest -m crash tests/crash/test_sft_fast_resume.py -q   (about 60 s on 2 cores)

A child process runs ``phases.sft.run_sft`` (trainer ``fast``, tiny random Qwen2, CPU fp32) with
CAI_SFT_STEP_DELAY_S slowing each optimizer step; it is killed once a complete checkpoint exists
before the last step. ``run_sft`` on the same work dir then resumes from that checkpoint, across an
epoch boundary of the token-budget batches, and its adapter must equal, tensor for tensor, the
adapter of an uninterrupted run with the same seed. Twice: eager layers, and compiled layers
(``compile: layers``, the step's CUDA default for bf16 LoRA; here Inductor's CPU backend, so each of
the three trainings compiles the layers again in its own process).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers_runner import kill9, wait_for  # noqa: E402

pytestmark = pytest.mark.crash
REPO = Path(__file__).resolve().parents[2]
MAX_STEPS = 8
PARAMS = {"trainer": "fast", "max_steps": MAX_STEPS, "save_steps": 2, "per_device_batch_size": 2, "grad_accum": 2,
          "fast_max_tokens": 300, "max_seq_len": 128, "logging_steps": 1, "dev_fraction": 0.0, "lora_r": 4,
          "lora_alpha": 8, "lora_dropout": 0.1, "device": "cpu"}
RECORDS = [{"instruction": f"Question {i}: name thing number {i}.", "response": "Thing " + "and more " * (i % 5) + f"{i}."}
           for i in range(10)]

CHILD = """
import json, sys
from pathlib import Path
from phases.sft import run_sft
args = json.loads(sys.argv[1])
run_sft(args["records"], "tiny-random-qwen2", args["params"], Path(args["work"]), Path(args["out"]), 5,
        lambda *a, **k: None)
"""


def _run(work: Path, out: Path, params: dict) -> tuple[dict, list[dict]]:
    from phases.sft import run_sft

    events: list[dict] = []
    res = run_sft(RECORDS, "tiny-random-qwen2", params, work, out, 5, lambda m, **k: events.append({"msg": m, **k}))
    return res, events


def _adapter(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


@pytest.mark.parametrize("compile_mode", ["off", "layers"])
def test_killed_fast_training_resumes_to_the_uninterrupted_adapter(tmp_path, compile_mode):
    import torch

    params = {**PARAMS, "compile": compile_mode}
    work, out = tmp_path / "work", tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "CAI_SFT_STEP_DELAY_S": "1.0", "OMP_NUM_THREADS": "1"}
    arg = json.dumps({"records": RECORDS, "params": params, "work": str(work), "out": str(tmp_path / "never")})
    p = subprocess.Popen([sys.executable, "-c", CHILD, arg], env=env, cwd=str(REPO),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def complete():
        return [c for c in (work / "trainer").glob("checkpoint-*") if (c / ".complete").is_file()]

    try:
        # wait for checkpoint-4 (past the first epoch boundary with these lengths and budget)
        assert wait_for(lambda: any(c.name == "checkpoint-4" for c in complete()) or p.poll() is not None,
                        timeout=300, every=0.05)
        assert p.poll() is None, "the child ended before checkpoint-4 could be observed"
    finally:
        kill9(p)
    last = max(int(c.name.split("-")[-1]) for c in complete())
    assert last < MAX_STEPS, "the kill must land mid-training"

    resumed, events = _run(work, out, params)
    assert resumed["trainer"] == "fast" and resumed["compile"]["applied"] is (compile_mode == "layers")
    assert resumed["resumed_from"] == {"checkpoint": f"checkpoint-{last}", "step": last}
    assert resumed["metrics"]["global_step"] == MAX_STEPS
    assert [e for e in events if e.get("kind") == "sft_resumed"]

    ref, _ = _run(tmp_path / "work_ref", tmp_path / "out_ref", params)
    assert ref["resumed_from"] is None and ref["metrics"]["global_step"] == MAX_STEPS
    # the batches per epoch are fewer than MAX_STEPS: the runs cross an epoch boundary
    assert ref["metrics"]["epochs_done"] > 1
    a, b = _adapter(out), _adapter(tmp_path / "out_ref")
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k}: resumed adapter differs from the uninterrupted one"
    assert [x["loss"] for x in resumed["loss_curve"]["train"]] == [x["loss"] for x in ref["loss_curve"]["train"]]
    # the same tokens in all, and the resumed attempt's own share is what it trained after the checkpoint
    m, mr = resumed["metrics"], ref["metrics"]
    assert m["tokens_trained"] == mr["tokens_trained"] == mr["tokens_this_attempt"]
    assert 0 < m["tokens_this_attempt"] < m["tokens_trained"]
    assert m["throughput"]["steps"] <= MAX_STEPS - last
