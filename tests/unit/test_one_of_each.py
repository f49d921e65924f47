"""Canonical pieces exist once: the copies that drifted apart are now one function or constant.

Run: .venv/bin/pytest tests/unit/test_one_of_each.py -q
"""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_one_fence_aware_first_paragraph():
    from phases import cleaning, critic

    assert critic.first_paragraph is cleaning.first_paragraph
    fenced = "```\nx = 1\n\ny = 2\n```\n\nAfter the code."
    prompt = critic.build_critic_prompt("pair", {"instruction": "Write code.", "response": fenced})
    assert "y = 2\n```" in prompt and "After the code." not in prompt


def test_the_end_marker_is_spelled_once():
    hits = [str(p.relative_to(REPO)) for root in ("runner", "state", "phases") for p in (REPO / root).rglob("*.py")
            if '"###END###"' in p.read_text(encoding="utf-8")]
    assert hits == ["phases/prompts.py"], f"use phases.prompts.END_MARKER instead of the literal in {hits}"


def test_one_scrubber():
    from runner import brief
    from runner.review.secrets import scrub_obj

    data = {"note": "key sk-abcdefghijklmnop", "api_key": "plainvalue123", "max_new_tokens": 80}
    assert brief.scrub_data(data, []) == scrub_obj(data, [])
    assert brief.scrub_data(data, [])["api_key"] == "[REDACTED]"


def test_one_name_per_prompt_builder():
    from phases.prompts import get_builder, response_prompt

    assert get_builder("instruction") is get_builder("instruction_response") is response_prompt


def test_one_gate_policy_rule_for_engine_and_review():
    from runner import engine, gate_review
    from runner.gate_policy import effective_policy, reviewer_passes
    from runner.pipeline import gate

    assert engine.reviewer_passes is gate_review.reviewer_passes is reviewer_passes
    # `runner review` reads the policy frozen on the gate row when it was requested (issue 18),
    # so only the engine resolves the config's policy; both decide through reviewer_passes.
    assert engine.effective_policy is effective_policy
    g = gate("g", policy="review+human")
    assert effective_policy(g, {}) == "review+human"
    assert effective_policy(g, {"gates": {"g": {"policy": "review"}}}) == "review"
    assert reviewer_passes("review", "GO", True)
    assert not reviewer_passes("review", "GO", False)          # a failed check is never waved through
    assert not reviewer_passes("review+human", "GO", True)     # a person decides
    assert not reviewer_passes("review", "MODIFY", True)


def test_one_json_reader_with_clear_errors(tmp_path):
    import pytest

    from phases.sft import _read_json
    from phases.steps.common import load_json
    from runner.errors import DataError

    bad = tmp_path / "qc_summary.json"
    bad.write_text('{"a": 1,,}')
    for read in (load_json, lambda p: _read_json(p, "the QC summary")):
        with pytest.raises(DataError, match=r"qc_summary\.json: .*not valid JSON \(.* at line 1 column 9\); re-run"):
            read(bad)
        with pytest.raises(DataError, match=r"nope\.json: .*is missing; re-run"):
            read(tmp_path / "nope.json")
