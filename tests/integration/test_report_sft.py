"""`runner report` on a real small training run: the SFT fixture pipeline (fixture data steps,
then the real SFT and evaluation on the tiny random Qwen2 model), through the CLI.

Checks that the report finds, from the committed artifacts alone, the training curve (and the
TensorBoard logs SFT writes under its step folder), the evaluation's forest plot and arms, the
QC summary of the fixture merge step, the gate history and the GPU-step costs; then renders it
in headless Chromium (skipped, saying why, without Debian's chromium).

Run: .venv/bin/pytest -m integration tests/integration/test_report_sft.py -q
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from helpers_runner import cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers_browser import assert_self_contained, screenshot_and_image_check  # noqa: E402

pytestmark = pytest.mark.integration
HERE = Path(__file__).resolve().parent
PYPATH = f"{HERE}:{HERE.parents[1]}"  # the fixture pipeline, and this checkout's code before any installed copy


def _cfg(path: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "pipeline": "sft_fixture_pipeline:pipeline", "seed": 7, "max_attempts": 3, "budget": 300,
        "params": {"prepare_model": {"model": "tiny-random-qwen2"}, "heldout": {"n": 4},
                   "sft": {"max_steps": 3, "per_device_batch_size": 2, "grad_accum": 1, "max_seq_len": 128,
                           "save_steps": 2, "logging_steps": 1, "dev_fraction": 0.25, "lora_r": 4, "lora_alpha": 8},
                   "evaluate": {"max_new_tokens": 8, "batch_size": 4, "n_boot": 200, "arms": ["raw", "instruction"],
                                "critic": False, "ifeval_limit": 0, "task_critic": False, "refusal_critic": False}},
        "gates": {"sft_gate": {"policy": "auto"}}}))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    from phases.models import embedded
    embedded.prepare("tiny-random-qwen2")  # built offline into the model cache (seconds), as the runs expect
    home = tmp_path_factory.mktemp("report-sft")
    p = cli(home, "run", "--config", _cfg(home / "cfg.yaml"), "--run-id", "t", timeout=600, PYTHONPATH=PYPATH)
    assert p.returncode in (0, 3), p.stdout[-3000:] + p.stderr[-3000:]  # done, or NO-GO at the sft gate
    (home / "run.log").write_text(p.stdout + p.stderr)
    return home


def test_training_and_evaluation_show_plain_progress_lines(trained):
    log = (trained / "run.log").read_text()  # not a terminal: plain lines, never bar redraws
    assert "[progress] sft/optimizer-steps: 0/3 items" in log and "[progress] sft/optimizer-steps: 3/3 items" in log
    assert "[progress] evaluate/" in log


def test_report_of_a_training_run(trained, tmp_path):
    p = cli(trained, "report", "--out", tmp_path / "rep", check=0, PYTHONPATH=PYPATH)
    assert "report for run t" in p.stdout
    html = (tmp_path / "rep" / "report.html").read_text(encoding="utf-8")
    facts = assert_self_contained(html)
    assert "No training step has finished yet" not in html and "logged points" in html
    assert "No evaluation has finished yet" not in html and "baseline arm" in html
    assert '<h3>merge — <span class="st-succeeded">' in html  # every step of the stored plan, by data
    sft_dirs = list((trained / "artifacts" / "t" / "sft").glob("[0-9a-f]*/tensorboard"))
    try:
        import tensorboard  # noqa: F401
        assert sft_dirs and any(sft_dirs[0].rglob("events.out.tfevents.*")), "SFT wrote no TensorBoard events"
        assert "tensorboard --logdir" in html
    except ImportError:
        assert not sft_dirs
    assert "gate history" in html.lower() and "sft_gate" in html
    assert len(facts.imgs) >= 5  # timeline, loss curve, forest plot(s), arms, costs (+ the steps' own PNGs)
    shot = screenshot_and_image_check(tmp_path / "rep" / "report.html", tmp_path)
    assert shot["nonwhite"] > 0.05
    assert shot["images"]["loaded"] == shot["images"]["total"] == len(facts.imgs)


def test_gpu_steps_are_costed(trained):
    import json
    st = json.loads(cli(trained, "status", "--json", check=0, PYTHONPATH=PYPATH).stdout)
    led = st["ledger"]
    assert led["budget_usd"] == 300.0
    for step in ("sft", "evaluate"):  # declared gpu=True: their seconds are in the ledger
        assert led["steps"][step]["gpu_s"] > 0 and led["steps"][step]["usd"] > 0
    assert led["steps"]["merge"]["gpu_s"] == 0  # a fixture step that holds no GPU
