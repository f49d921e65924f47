"""Cleaning and runaway detection on realistic base-model completions.

Run: .venv/bin/pytest tests/unit/test_cleaning.py
"""

import json
from pathlib import Path

import pytest

from phases.cleaning import clean_response, first_paragraph, is_runaway, marker_leaked, runaway_reason

DATA = Path(__file__).parent / "data" / "raw_completions.jsonl"
CASES = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_fixture_has_realistic_variety():
    assert len(CASES) >= 15
    long_good = [c for c in CASES if not c["runaway"] and len(c["text"].split()) >= 40]
    assert len(long_good) >= 3, "need long-but-good answers to guard against length heuristics"


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_clean_realistic_completion(case):
    result = clean_response(case["raw"])
    assert result.text == case["text"]
    assert result.marker_found == case["marker_found"]
    assert result.heuristic_cut == case["heuristic_cut"]
    assert is_runaway(result.text) == case["runaway"]
    assert not marker_leaked(result.text)


def test_long_good_answers_are_not_runaway_whatever_their_length():
    long_answer = " ".join(["The committee reviewed the budget line by line and agreed on the changes."] * 30)
    assert not is_runaway(long_answer)


def test_runaway_reasons_by_pattern():
    assert runaway_reason("Sure.\n\nInstruction: do more") == "blank_then_instruction"
    assert runaway_reason("Fine.\nUser: hi") == "line_prompt_label"
    assert runaway_reason("Ok.\nQ: next?") == "line_prompt_label"
    assert runaway_reason("Ok. Question: what next?") == "inline_prompt_label"
    assert runaway_reason("Ok\n### Instruction\nmore") == "markdown_prompt_heading"
    assert runaway_reason("Step 1: add.\nAnswer: 42") is None
    assert runaway_reason("1. What is it?\n2. Why?") is None


def test_partial_marker_and_leakage():
    assert marker_leaked("text ###END### more")
    assert marker_leaked("text\n###E")
    assert not marker_leaked("### Step 1\nMix the flour.")
    r = clean_response("Done.\n###")
    assert r.text == "Done." and r.partial_marker_stripped


def test_no_marker_mode_and_custom_marker():
    assert clean_response(" a ###END### b", end_marker=None).text == "a ###END### b"
    r = clean_response("Water boils at 100 °C.\n```\n\n# Query:", end_marker="```")
    assert r.text == "Water boils at 100 °C." and r.marker_found


def test_crlf_and_none():
    assert clean_response(" One.\r\n\r\nTwo.").text == "One."
    with pytest.raises(ValueError, match="raw completion must be a string"):
        clean_response(None)


def test_first_paragraph():
    assert first_paragraph("\n\nPara one\nline two\n\nPara two") == "Para one\nline two"
    assert first_paragraph("```\na\n\nb\n```\n\nafter") == "```\na\n\nb\n```"
    assert first_paragraph("") == ""
