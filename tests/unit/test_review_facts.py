"""The reviewer reads facts: thresholds and values from the run, the experiment from the pipeline.

Run: .venv/bin/pytest tests/unit/test_review_facts.py -q

The newcomer's second test: change a QC threshold in the stage YAML -> the QC verdict (the
gate's automatic check) and the reviewer's evidence both show the new number, and the request
holds no prose copy of any threshold. Also: the reviewer's system prompt describes no
experiment; the experiment text comes from the pipeline (`Pipeline.goal`) or the config's
``goal:``.
"""
from __future__ import annotations

import json
from pathlib import Path

from runner.config import effective_params, load_config
from runner.context import GateContext
from runner.gate_review import build_request, experiment_text
from runner.review import SYSTEM_PROMPT
from state.files import write_jsonl

from phases.pipeline import pipeline
from phases.qc import compute_qc
from phases.steps.qc_gates import qc_thresholds

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "phases" / "stages" / "demo.yaml"


def _verdict(good: bool = True) -> dict:
    return {"label": "A" if good else "B", "is_good": good, "confident": True, "logp_a": -0.1, "logp_b": -3.0,
            "margin": 2.9}


def _records(n: int = 10, runaways: int = 1) -> list[dict]:
    out = []
    for i in range(n):
        resp = f"Answer number {i}." + ("\n\nInstruction: write another one" if i < runaways else "")
        out.append({"id": f"r{i}", "family": "f", "instruction": f"Do thing {i}.", "response": resp,
                    "raw_tokens": 10, "cleaned_tokens": 5, "hit_token_limit": False, "marker_found": True,
                    "instruction_verdict": _verdict(), "pair_verdict": _verdict(), "kept": i >= runaways})
    return out


def _gate_inputs(tmp_path: Path, max_runaway_rate: float | None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg_path = tmp_path / "stage.yaml"
    lines = [f"include: {DEMO}"]
    if max_runaway_rate is not None:
        lines.append(f"qc: {{max_runaway_rate: {max_runaway_rate}}}")
    cfg_path.write_text("\n".join(lines) + "\n")
    cfg = load_config(cfg_path, pipeline)
    out = tmp_path / "pilot"
    out.mkdir()
    records = _records()
    # the params the engine hands the pilot step (defaults + config), read the way the step reads them
    qc = compute_qc(records, qc_thresholds(effective_params(pipeline, cfg, "pilot")["qc"]), True)
    (out / "qc_summary.json").write_text(json.dumps(qc))
    write_jsonl(out / "records.jsonl", records)
    write_jsonl(out / "kept.jsonl", [r for r in records if r["kept"]])
    gctx = GateContext("t", "qc_pilot", {"pilot": out}, {}, cfg, 7)
    return cfg, gctx


def _runaway(check_or_evidence: list[dict]) -> dict:
    return next(c for c in check_or_evidence if c["name"] == "runaway_rate")


def test_a_qc_threshold_changed_in_yaml_reaches_the_verdict_and_the_reviewer(tmp_path):
    spec = pipeline.gates["qc_pilot"]
    for value, passes in ((None, False), (0.123, True)):
        cfg, gctx = _gate_inputs(tmp_path / str(value), value)
        check = spec.check(gctx)
        threshold = 0.05 if value is None else value
        assert check.summary["thresholds"]["runaway_rate"] == f"< {threshold}"
        assert check.summary["checks"]["runaway_rate"] is passes
        assert any("runaway_rate" in r for r in check.reasons) is (not passes)
        request = build_request("t", spec, gctx, cfg, {"passed": check.passed, "summary": check.summary,
                                                       "reasons": list(check.reasons)},
                                experiment_text(cfg, pipeline))
        fact = _runaway(request.evidence["qc_checks"])
        assert fact == {"name": "runaway_rate", "value": 0.1, "op": "<", "threshold": threshold, "passed": passes}
        text = request.render(200_000)
        assert f'"threshold": {threshold}' in text
        assert "5%" not in text and "< 40 tokens" not in text  # no prose copy of a threshold


def test_the_experiment_comes_from_the_pipeline_not_the_runner(tmp_path):
    for claim in ("DPO", "constitution", "preference"):
        assert claim not in SYSTEM_PROMPT, f"the runner's system prompt describes an experiment ({claim})"
    cfg, gctx = _gate_inputs(tmp_path, None)
    request = build_request("t", pipeline.gates["qc_pilot"], gctx, cfg, None, experiment_text(cfg, pipeline))
    assert request.experiment == pipeline.goal
    assert "## The experiment\n" + pipeline.goal in request.render(200_000)
    assert experiment_text({"goal": "Stage 2: implicit instructions."}, pipeline) == "Stage 2: implicit instructions."
    # the experiment is part of what a verdict is memoized on
    other = build_request("t", pipeline.gates["qc_pilot"], gctx, cfg, None, "another experiment")
    assert other.input_hash() != request.input_hash()
