"""Pilot/scale's instruction filter on a ``refusal_expected`` family (`build_records`): with
``critics.enforce: true`` its instructions are judged by the request-safety critic with the
sense flipped (`phases.qc.instruction_rule`, the held-out step's rule), not by the
instruction critic, whose rubric calls every unsafe request bad. Other families unchanged.
No model: a fake critic (judge_items) and a fake responder.

Run: .venv/bin/python -m pytest tests/unit/test_refusal_family_filter.py
"""
from __future__ import annotations

import pytest

from tests.unit.test_stage1_steps import _Ctx, _step_params


def _v(good: bool, confident: bool) -> dict:
    a, b = (-0.5, -3.0) if good else (-3.0, -0.5)
    if not confident:
        a, b = (-1.0, -1.4) if good else (-1.4, -1.0)
    return {"is_good": good, "label": "A" if good else "B", "logp_a": a, "logp_b": b, "margin": abs(a - b),
            "confident": confident, "keep": good and confident}


# what the fake request-safety critic says, by a word in the instruction
SAFETY = {"SAFE": _v(True, True), "UNSURE": _v(True, False), "DECLINE": _v(False, True)}


@pytest.fixture
def fake(monkeypatch):
    import phases.steps.generation as g

    calls = []

    def judge_items(ctx, model, rubric, items, threshold, batch_size, ledger, enforce=True):
        calls.append((rubric, ledger, list(items)))
        out = []
        for it in items:
            if rubric == "instruction":
                out.append(_v("GOOD" in it, True))  # every unsafe request is "bad" to this rubric
            elif rubric == "request_safety":
                out.append(next(v for w, v in SAFETY.items() if w in it))
            elif rubric == "pair":
                out.append(_v(True, True))
            else:
                raise AssertionError(rubric)
        if not enforce:
            out = [{**v, "keep": True, "not_enforced": True} for v in out]
        return out

    def generate_responses(ctx, model, p, recs, gen, seed_base, ledger):
        return [{"id": r["id"], "response": "I can't help with that, but here is a safe alternative.",
                 "raw_completion": "x", "raw_tokens": 9, "cleaned_tokens": 9, "hit_token_limit": False,
                 "finish_reason": "eos", "marker_found": True, "heuristic_cut": None, "cut_line": None,
                 "partial_marker_stripped": False, "runaway": None, "prompt": "x", "response_seed": 1}
                for r in recs]

    monkeypatch.setattr(g, "judge_items", judge_items)
    monkeypatch.setattr(g, "generate_responses", generate_responses)
    return calls


CANDS = [{"id": "c1", "family": "safety_refusals", "instruction": "How do I pick a lock? UNSURE"},
         {"id": "c2", "family": "safety_refusals", "instruction": "Write a phishing email. DECLINE"},
         {"id": "c3", "family": "safety_refusals", "instruction": "How do I bake bread? SAFE"},
         {"id": "c4", "family": "simple_qa", "instruction": "What is the capital of France? GOOD"},
         {"id": "c5", "family": "simple_qa", "instruction": "Do the thing. BAD"}]


def _build(enforce: bool, respond_all: bool):
    from phases.steps.generation import build_records

    p = _step_params()
    p["critics"] = {**p["critics"], "enforce": enforce}
    gen = {"instructions": p["generation"]["instructions"], "responses": p["generation"]["responses"]}
    return {r["id"]: r for r in build_records(_Ctx(), None, p, CANDS, gen, 7, "t", respond_all=respond_all)}


@pytest.mark.parametrize("respond_all", [True, False])  # pilot responds to all, scale to kept only
def test_enforced_refusal_family_uses_the_flipped_request_safety_rule(fake, respond_all):
    recs = _build(enforce=True, respond_all=respond_all)
    # the instruction critic calls c1..c3 bad; the request-safety rule decides instead
    assert all(recs[i]["instruction_critic_verdict"]["label"] == "B" for i in ("c1", "c2", "c3"))
    assert recs["c1"]["kept"]          # not confidently safe (low confidence): kept
    assert recs["c2"]["kept"]          # confidently "should be declined": kept
    assert not recs["c3"]["kept"]      # confidently safe to answer: teaches no refusal, dropped
    assert recs["c3"]["instruction_verdict"]["rubric"] == "request_safety"
    # other families: the instruction critic, exactly as before (no request-safety verdict)
    assert recs["c4"]["kept"] and not recs["c5"]["kept"]
    assert "instruction_critic_verdict" not in recs["c4"] and "rubric" not in recs["c4"]["instruction_verdict"]
    judged = {rubric: items for rubric, _, items in fake}
    assert judged["request_safety"] == [c["instruction"] for c in CANDS[:3]]
    assert judged["instruction"] == [c["instruction"] for c in CANDS]  # unchanged input for every family
    # scale (responses for kept instructions only): the dropped refusal candidate gets none
    assert (recs["c3"]["response"] is None) == (not respond_all)
    assert recs["c1"]["response"] and recs["c2"]["response"]


def test_qc_counts_each_rule_and_sft_record_names_the_rubric(fake):
    from phases.qc import compute_qc
    from phases.steps.generation import sft_record

    recs = _build(enforce=True, respond_all=True)
    qc = compute_qc(list(recs.values()), sentinels_passed=True)
    assert qc["counts"]["instruction_rules"] == {"instruction": {"judged": 2, "kept": 1, "dropped": 1},
                                                 "request_safety": {"judged": 3, "kept": 2, "dropped": 1}}
    # instruction acceptance is over the instruction-rubric records only (1 good of 2)
    assert qc["acceptance"]["instruction"]["generated"] == 2 and qc["acceptance"]["instruction"]["rate"] == 0.5
    assert qc["counts"]["kept"] == 3
    gen = {"instructions": {}, "responses": {}}
    assert sft_record(recs["c2"], {}, gen, "pilot")["instruction_verdict"]["rubric"] == "request_safety"
    assert "rubric" not in sft_record(recs["c4"], {}, gen, "pilot")["instruction_verdict"]


def test_not_enforced_keeps_everything_and_still_counts(fake):
    recs = _build(enforce=False, respond_all=True)
    assert all(r["kept"] for r in recs.values())
    from phases.qc import compute_qc
    qc = compute_qc(list(recs.values()), sentinels_passed=True)
    assert qc["counts"]["instruction_rules"]["request_safety"] == {"judged": 3, "kept": 3, "dropped": 0}


def test_heldout_and_pilot_share_one_rule():
    import phases.qc as qc
    import phases.steps.generation as g
    import phases.steps.heldout as h

    assert h.heldout_verdict is qc.instruction_rule is g.instruction_rule


def test_gate_evidence_names_the_request_safety_rule(fake):
    from phases.steps.qc_gates import _why

    recs = _build(enforce=True, respond_all=True)
    assert _why(recs["c3"]).startswith("request-safety critic: confidently safe")
    assert _why(recs["c5"]) == "instruction critic bad"
