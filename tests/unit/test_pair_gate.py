"""The ``qc_pairs`` gate under each policy, on real pair QC over planted pairs (no model).

Run: .venv/bin/pytest tests/unit/test_pair_gate.py -q
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from runner.cli import main

HERE = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def _path(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    sys.modules.pop("pair_gate_pipeline", None)


def _run(tmp: Path, policy: str, planted: str, capsys) -> tuple[int, str, dict]:
    cfg = tmp / f"cfg-{policy}-{planted}.yaml"
    cfg.write_text(yaml.safe_dump({"pipeline": "pair_gate_pipeline:pipeline", "seed": 3,
                                   "params": {"pairs": {"planted": planted}},
                                   "gates": {"qc_pairs": {"policy": policy}},
                                   **({"demo": True} if policy == "approve" else {})}))
    home = tmp / f"h-{policy}-{planted}"
    rc = main(["--home", str(home), "run", "--config", str(cfg)])
    out = capsys.readouterr().out
    main(["--home", str(home), "status", "--json"])
    return rc, out, json.loads(capsys.readouterr().out)


def test_auto_passes_balanced_pairs(tmp_path, capsys):
    rc, _, st = _run(tmp_path, "auto", "balanced", capsys)
    assert rc == 0 and st["gates"][0]["name"] == "qc_pairs"


def test_auto_waits_on_a_length_biased_set_and_says_why(tmp_path, capsys):
    rc, out, st = _run(tmp_path, "auto", "longer_wins", capsys)
    assert rc == 3
    assert "longer side wins" in out or "longer side wins" in json.dumps(st)
    home = tmp_path / "h-auto-longer_wins"
    assert main(["--home", str(home), "approve", "qc_pairs", "--note", "seen"]) == 0
    capsys.readouterr()
    assert main(["--home", str(home), "resume"]) == 0


def test_human_waits_even_when_qc_passes(tmp_path, capsys):
    rc, _, st = _run(tmp_path, "human", "balanced", capsys)
    assert rc == 3


def test_approve_passes_a_failed_qc_and_records_no_decision(tmp_path, capsys):
    rc, out, st = _run(tmp_path, "approve", "longer_wins", capsys)
    assert rc == 0 and "no decision was taken" in out
    assert st["gates"][0]["decided_by"] == "policy:approve"


def test_review_without_a_reviewer_fails_closed(tmp_path, capsys):
    rc, _, _ = _run(tmp_path, "review", "balanced", capsys)
    assert rc == 3


def test_reject_stops_the_run(tmp_path, capsys):
    rc, _, _ = _run(tmp_path, "human", "longer_wins", capsys)
    home = tmp_path / "h-human-longer_wins"
    assert main(["--home", str(home), "reject", "qc_pairs", "--reason", "length bias"]) == 0
    capsys.readouterr()
    assert main(["--home", str(home), "resume"]) == 5


def _report(lift_lo: float, win_rate, gate_reasons=(), go=False, criteria=None) -> dict:
    rep = {"comparison": {"overall": {"lift": 0.0, "lift_ci": [lift_lo, 0.1], "mcnemar": {"p_value": 0.5}}},
           "gate": {"go": go, "reasons": list(gate_reasons)}, "arms": {"sft": {"rate": 0.5}, "trained": {"rate": 0.5}},
           "win_rate": {"win_rate": win_rate, "wilson_ci": [0.4, 0.8]}}
    if criteria:
        rep["dpo_gate_criteria"] = criteria
    return rep


def test_dpo_gate_decision_reuses_the_sft_gate_regressions_and_adds_win_rate_and_non_inferiority():
    from phases.steps.preferences import dpo_gate_decision

    ok, reasons, nums = dpo_gate_decision(_report(-0.02, 0.6, ["overall McNemar p = 0.5 is not < 0.01"]))
    assert ok and reasons == [] and nums["win_rate"] == 0.6  # no significant improvement needed by default
    ok, reasons, _ = dpo_gate_decision(_report(-0.02, 0.6, ["significant regression on protected type(s): safety_refusals"]))
    assert not ok and reasons == ["significant regression on protected type(s): safety_refusals"]
    ok, reasons, _ = dpo_gate_decision(_report(-0.08, 0.6))
    assert not ok and "non-inferiority fails" in reasons[0]
    ok, reasons, _ = dpo_gate_decision(_report(0.0, 0.45))
    assert not ok and "win rate 0.45 < min_win_rate 0.5" in reasons[0]
    ok, reasons, _ = dpo_gate_decision(_report(0.0, None))
    assert not ok and "win rate None" in reasons[0]
    # criteria from the YAML (recorded in eval.json) apply
    ok, reasons, _ = dpo_gate_decision(_report(0.0, 0.6, ["overall McNemar p = 0.5 is not < 0.01"],
                                               criteria={"require_significant_improvement": True}))
    assert not ok and reasons == ["overall McNemar p = 0.5 is not < 0.01"]
    assert dpo_gate_decision(_report(0.0, 0.6, criteria={"min_win_rate": 0.7}))[0] is False
