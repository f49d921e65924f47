"""Verdict parsing: structured JSON, JSON buried in prose, DECISION lines, and fail-closed cases.

Run: .venv/bin/python -m pytest tests/unit/test_review_parse.py -q
"""
from __future__ import annotations

import pytest

from runner.review import Verdict, VerdictParseError, parse_verdict
from runner.review.verdict import normalize_decision


def test_plain_json():
    v = parse_verdict('{"decision": "GO", "summary": "ok", "reasons": ["a"], "requested_changes": []}')
    assert v == Verdict("GO", "ok", ["a"], [])


def test_json_in_fence_with_prose():
    text = "Sure.\n```json\n{\"decision\": \"modify\", \"summary\": \"s\", \"reasons\": [], \"requested_changes\": [\"x\"]}\n```\nThanks"
    v = parse_verdict(text)
    assert v.decision == "MODIFY" and v.requested_changes == ["x"]


def test_bare_json_after_prose_and_lenient_shapes():
    v = parse_verdict('My review: {"decision": "No Go", "summary": "bad", "reasons": "one reason"} end.')
    assert v.decision == "NO-GO" and v.reasons == ["one reason"] and v.requested_changes == []


def test_nested_verdict_object():
    v = parse_verdict('{"verdict": {"decision": "GO", "summary": "fine"}}')
    assert v.decision == "GO"


def test_decision_lines_with_markdown():
    text = """## Review
**Decision:** MODIFY
**Summary:** Pilot is too small
to judge.
Reasons:
- n = 20
- no CI reported
Requested changes:
1. raise n to 200
2) report Wilson CIs
"""
    v = parse_verdict(text)
    assert v.decision == "MODIFY"
    assert v.summary == "Pilot is too small to judge."
    assert v.reasons == ["n = 20", "no CI reported"]
    assert v.requested_changes == ["raise n to 200", "report Wilson CIs"]


def test_think_block_is_ignored():
    text = "<think>DECISION: NO-GO? no wait</think>\nDECISION: GO\nSUMMARY: fine"
    assert parse_verdict(text).decision == "GO"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "looks good to me",
        '{"summary": "no decision key"}',
        '{"decision": "MAYBE", "summary": "x"}',
        "DECISION: probably fine",
        "<think>DECISION: GO</think>",
        'I considered {"decision": "GO"} but then {"decision": "NO-GO"}',
        "DECISION: GO\nDECISION: NO-GO",
    ],
)
def test_unusable_answers_raise(text):
    with pytest.raises(VerdictParseError):
        parse_verdict(text)


def test_none_raises():
    with pytest.raises(VerdictParseError, match="empty"):
        parse_verdict(None)


@pytest.mark.parametrize(
    "raw, norm",
    [("GO", "GO"), ("go", "GO"), ("NO-GO", "NO-GO"), ("no go", "NO-GO"), ("NO_GO", "NO-GO"),
     ("NoGo", "NO-GO"), ("**MODIFY**", "MODIFY"), ("GO.", "GO"), ("GOOD", None), ("go ahead", None)],
)
def test_normalize_decision(raw, norm):
    assert normalize_decision(raw) == norm


def test_verdict_rejects_bad_decision():
    with pytest.raises(ValueError, match="decision"):
        Verdict("YES")
