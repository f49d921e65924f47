"""`runner report`: a self-contained HTML page for a finished run, a run stopped mid-step, and a
run whose runner is writing while the report is made; checked by parsing and in headless Chromium.

Run: .venv/bin/pytest tests/unit/test_report.py -q -m "not gpu"   (the Chromium tests are marked slow)
(the Chromium checks skip, saying why, when Debian's chromium is not installed).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from runner.cli import main
from runner.errors import EXIT_DONE

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers_browser import assert_self_contained, screenshot_and_image_check  # noqa: E402
from helpers_runner import batches_done, init_run, kill9, spawn, status_json, toy_config, wait_for  # noqa: E402


def _report(home: Path, out: Path, run: str = "t") -> str:
    assert main(["--home", str(home), "report", run, "--out", str(out)]) == EXIT_DONE
    return (out / "report.html").read_text(encoding="utf-8")


@pytest.mark.slow  # headless Chromium twice: ~20 s
def test_report_of_a_finished_run_in_chromium(tmp_path, capsys, person_at_terminal):
    home = tmp_path / "home"
    home.mkdir()
    cfg = toy_config(tmp_path / "toy.yaml", items=12, delay=0.01, gate="human")
    assert main(["--home", str(home), "run", "--config", str(cfg), "--run-id", "t"]) == 3
    assert main(["--home", str(home), "approve", "approve_items", "--note", "twelve items, as asked"]) == EXIT_DONE
    assert main(["--home", str(home), "resume"]) == EXIT_DONE
    html = _report(home, tmp_path / "rep")
    facts = assert_self_contained(html)
    assert "Run t — <span class=\"st-done\">done</span>" in html
    assert "twelve items, as asked" in html  # the human note in the gate history
    assert "processed.jsonl: 12 records" in html  # found in the committed folder, not from a step list
    assert "make_items" in html and "summarize" in html
    assert len(facts.imgs) >= 2  # timeline + cost ledger at least
    shot = screenshot_and_image_check(tmp_path / "rep" / "report.html", tmp_path)
    assert shot["nonwhite"] > 0.05, f"the page looks blank ({shot['nonwhite']:.3f} of pixels drawn)"
    assert shot["images"]["total"] == len(facts.imgs)
    assert shot["images"]["loaded"] == shot["images"]["total"], f"some plots did not load: {shot['images']}"


@pytest.mark.slow
def test_report_of_a_run_stopped_mid_step(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    cfg = toy_config(tmp_path / "toy.yaml", items=40, delay=0.1, batch_size=4)
    init_run(home, cfg)
    p = spawn(home, "resume")
    try:
        assert wait_for(lambda: batches_done(home) >= 2, timeout=120), "process never committed two batches"
    finally:
        kill9(p)
    assert status_json(home)["state"] == "interrupted"
    html = _report(home, tmp_path / "rep")
    assert_self_contained(html)
    assert 'class="st-interrupted">interrupted' in html
    assert "runner resume --detach" in html  # the next command, as status says
    shot = screenshot_and_image_check(tmp_path / "rep" / "report.html", tmp_path)
    assert shot["nonwhite"] > 0.05
    assert shot["images"]["loaded"] == shot["images"]["total"] > 0


def test_report_while_the_runner_writes(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    cfg = toy_config(tmp_path / "toy.yaml", items=60, delay=0.05, batch_size=2)
    init_run(home, cfg)
    p = spawn(home, "resume")
    try:
        assert wait_for(lambda: batches_done(home) >= 1, timeout=120)
        made = 0
        while p.poll() is None and made < 3:
            html = _report(home, tmp_path / f"rep{made}")
            assert_self_contained(html)
            made += 1
        assert made >= 1
        p.wait(timeout=300)
        assert p.returncode == 0, p.stdout.read()
    finally:
        kill9(p)
    assert status_json(home)["state"] == "done"
    assert "processed.jsonl: 60 records" in _report(home, tmp_path / "final")


def test_records_findings_group_margins_by_critic_and_label_order():
    from runner.report_data import records_findings
    rows = [{"kept": True, "cleaned_tokens": 5, "pair_verdict": {"label": "A", "margin": 1.0,
                                                                 "ab": {"label": "A", "margin": 2.0},
                                                                 "ba": {"label": "B", "margin": 0.5}}},
            {"kept": False, "cleaned_tokens": 9, "pair_verdict": {"label": "B", "margin": 0.2,
                                                                  "ab": {"label": "B", "margin": 0.1},
                                                                  "ba": {"label": "B", "margin": 0.3}}}]
    f = records_findings(rows)
    assert f["margins"] == {"pair_verdict": {"label A": [1.0], "label B": [0.2]},
                            "pair_verdict, order ab": {"label A": [2.0], "label B": [0.1]},
                            "pair_verdict, order ba": {"label B": [0.5, 0.3]}}
    assert f["lengths"] == {"cleaned_tokens": {"kept": [5.0], "rejected": [9.0]}}
    assert (f["n_kept"], f["n_rejected"]) == (1, 1)
    assert f["sample_kept"][0]["cleaned_tokens"] == 5 and f["sample_rejected"][0]["cleaned_tokens"] == 9
