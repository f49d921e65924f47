"""DPO killed with SIGKILL mid-training resumes from its last checkpoint and ends with the same adapter.

Run: .venv/bin/pytest -m crash tests/crash/test_dpo_resume.py -q   (about a minute on 2 cores)

Three real processes of tests/crash/dpo_job.py on the tiny random Qwen2 (CPU, fp32, same seed):
one uninterrupted; one killed (SIGKILL) after a complete checkpoint, then started again. The
final adapters' tensors must be equal.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from helpers_runner import kill9, wait_for  # noqa: E402

pytestmark = [pytest.mark.crash, pytest.mark.integration]
JOB = Path(__file__).resolve().parent / "dpo_job.py"
REPO = Path(__file__).resolve().parents[2]


def _env(**extra):
    e = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
    e.update({k: str(v) for k, v in extra.items()})
    return e


def _job(model_dir, sft, work, out, **env):
    return [sys.executable, str(JOB), str(model_dir), str(sft), str(work), str(out), "7"], _env(**env)


def _tensors(adapter: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(adapter / "adapter_model.safetensors"))


def test_dpo_resumes_after_sigkill_with_the_same_final_adapter(tmp_path):
    from dpo_fixtures import make_sft_adapter
    from helpers_models import tiny_dir

    model_dir = tiny_dir()
    sft = make_sft_adapter(model_dir, tmp_path / "sft_adapter")
    # the uninterrupted reference run
    cmd, env = _job(model_dir, sft, tmp_path / "work-a", tmp_path / "out-a")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert '"resumed_from": null' in r.stdout

    # the killed run
    work, out = tmp_path / "work-b", tmp_path / "out-b"
    cmd, env = _job(model_dir, sft, work, out, CAI_SFT_STEP_DELAY_S="1.0")
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)

    def complete():
        return [c for c in (work / "trainer").glob("checkpoint-*") if (c / ".complete").is_file()]

    try:
        assert wait_for(lambda: complete() or p.poll() is not None, timeout=240, every=0.1)
        assert p.poll() is None, "the job ended before a checkpoint could be observed"
    finally:
        kill9(p)
    assert not (out / "adapter").exists(), "the kill must land mid-training"
    last = max(int(c.name.split("-")[-1]) for c in complete())
    assert last < 6
    refs_before = (work / "refs.json").read_text()

    r = subprocess.run(cmd[:], env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads([ln for ln in r.stdout.splitlines() if ln.startswith('{"result"')][-1])["result"]
    assert res["resumed_from"]["step"] == last >= 2 and res["global_step"] == 6
    assert (work / "refs.json").read_text() == refs_before  # the stored reference pass was not redone
    a, b = _tensors(tmp_path / "out-a" / "adapter"), _tensors(out / "adapter")
    assert sorted(a) == sorted(b) and a
    diffs = {k: float((a[k] - b[k]).abs().max()) for k in a}
    assert all(d == 0.0 for d in diffs.values()), {k: d for k, d in diffs.items() if d}
    assert any(float(t.abs().max()) > 0 for k, t in a.items() if "lora_B" in k), "training changed nothing"
