"""A training killed with SIGKILL after a checkpoint resumes from that checkpoint, not from step 0.

Run: .venv/bin/pytest -m crash tests/crash/test_sft_resume.py -q   (about 40 s on 2 cores)

The real runner runs the fixture pipeline (tests/integration/sft_fixture_pipeline.py) on the tiny
random Qwen2; CAI_SFT_STEP_DELAY_S slows each optimizer step so the kill lands mid-training.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers_runner import cli, final_dir, kill9, rows, spawn, wait_for  # noqa: E402

pytestmark = pytest.mark.crash
FIXTURES = Path(__file__).resolve().parents[1] / "integration"


def test_killed_training_resumes_from_its_last_checkpoint(tmp_path):
    cfg = {"pipeline": "sft_fixture_pipeline:pipeline", "seed": 11, "max_attempts": 3,
           "params": {"prepare_model": {"model": "tiny-random-qwen2"},
                      "sft": {"max_steps": 8, "save_steps": 2, "per_device_batch_size": 2, "grad_accum": 1,
                              "max_seq_len": 128, "logging_steps": 1, "dev_fraction": 0.0, "lora_r": 4,
                              "lora_alpha": 8},
                      "evaluate": {"max_new_tokens": 4, "arms": ["instruction"], "critic": False, "n_boot": 100,
                                   "ifeval_limit": 0, "task_critic": False, "refusal_critic": False}},
           "gates": {"sft_gate": {"policy": "auto"}}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    p = spawn(tmp_path, "run", "--config", tmp_path / "cfg.yaml", "--run-id", "t",
              PYTHONPATH=str(FIXTURES), CAI_SFT_STEP_DELAY_S="1.0")

    def complete_checkpoint():
        return [c for c in (tmp_path / "artifacts").glob("t/sft/.work-*/trainer/checkpoint-*") if (c / ".complete").is_file()]

    try:
        assert wait_for(lambda: complete_checkpoint() or p.poll() is not None, timeout=180, every=0.1)
        assert p.poll() is None, ("the runner ended (exit %s) before a checkpoint could be observed:\n%s"
                                  % (p.returncode, p.stdout.read() if p.stdout else ""))
        time.sleep(0.3)
        done = complete_checkpoint()
    finally:
        kill9(p)
    step_at_kill = max(int(c.name.split("-")[-1]) for c in done)
    assert step_at_kill < 8, "the kill must land mid-training"
    # the newest complete checkpoint after the kill (a later one may have completed meanwhile)
    ckpts = complete_checkpoint()
    last = max(int(c.name.split("-")[-1]) for c in ckpts)

    r = cli(tmp_path, "resume", timeout=300, PYTHONPATH=str(FIXTURES))
    assert r.returncode == 3, r.stdout + r.stderr  # ends waiting at sft_gate (random model: no lift)
    ev = rows(tmp_path, "SELECT message, data_json FROM events WHERE kind='sft_resumed'")
    assert len(ev) == 1, [tuple(x) for x in ev]
    data = json.loads(ev[0][1])
    assert data["from_step"] == last >= 2 and data["checkpoint"] == f"checkpoint-{last}"
    assert f"global step {last}" in ev[0][0] and "not from step 0" in ev[0][0]
    assert not rows(tmp_path, "SELECT id FROM events WHERE kind='sft_started' AND id > "
                              "(SELECT min(id) FROM events WHERE kind='sft_resumed')")
    man = json.loads((final_dir(tmp_path, "sft") / "training_manifest.json").read_text())
    assert man["resumed_from"] == {"checkpoint": f"checkpoint-{last}", "step": last}
    assert man["metrics"]["global_step"] == 8
    # the loss curve is whole: the steps before the kill come from the checkpoint's trainer state
    assert [x["step"] for x in man["loss_curve"]["train"]] == list(range(1, 9))
    st = json.loads(cli(tmp_path, "status", "--json", check=0, PYTHONPATH=str(FIXTURES)).stdout)
    sft = next(s for s in st["steps"] if s["name"] == "sft")
    assert sft["summary"]["resumed_from_step"] == last
