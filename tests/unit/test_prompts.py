"""Exact strings of the canonical prompt builders.

Run: .venv/bin/pytest tests/unit/test_prompts.py
"""

import pytest

from phases.prompts import (
    BUILDERS,
    get_builder,
    instruction_generation_prompt,
    raw_prompt,
    response_prompt,
    urial_prompt,
)


def test_response_prompt_plain():
    assert response_prompt("  Name a color. ") == "Instruction: Name a color.\nResponse:"


def test_response_prompt_fewshot():
    got = response_prompt("Q3", fewshot=[("Q1", "A1"), ("Q2", " A2 ")])
    assert got == (
        "Instruction: Q1\nResponse: A1\n###END###\n\n"
        "Instruction: Q2\nResponse: A2\n###END###\n\n"
        "Instruction: Q3\nResponse:"
    )
    assert response_prompt("x", fewshot=[("a", "b")], end_marker="<END>").startswith("Instruction: a\nResponse: b\n<END>\n\n")


def test_response_prompt_errors():
    with pytest.raises(ValueError, match="empty"):
        response_prompt("   ")
    with pytest.raises(ValueError, match="end marker"):
        response_prompt("x", fewshot=[("a", "b ###END###")])
    with pytest.raises(ValueError, match="pair"):
        response_prompt("x", fewshot=[("a",)])


def test_instruction_generation_prompt():
    got = instruction_generation_prompt(["Write a haiku.", "List two fruits."], start_index=3, family="poetry", header="Tasks:")
    assert got == "Tasks:\nTopic: poetry\n\n3. Write a haiku.\n4. List two fruits.\n5."
    assert instruction_generation_prompt(["A b c."], header="") == "1. A b c.\n2."
    with pytest.raises(ValueError, match="at least one"):
        instruction_generation_prompt([])
    with pytest.raises(ValueError, match="one line"):
        instruction_generation_prompt(["a\nb"])


def test_raw_and_urial():
    assert raw_prompt(" Translate to Pig Latin: hello world ") == "Translate to Pig Latin: hello world\n"
    u = urial_prompt("Name a prime.")
    assert u.endswith("# Query:\n```\nName a prime.\n```\n\n# Answer:\n```\n")
    assert u.count("# Query:\n```\n") == 4 and u.startswith("# Instruction\n\n")
    assert urial_prompt("x", examples=[]).endswith("\n\n# Query:\n```\nx\n```\n\n# Answer:\n```\n")


def test_registry():
    assert set(BUILDERS) == {"instruction_response", "numbered_list", "raw", "urial", "critique", "revision"}
    assert get_builder("raw") is raw_prompt
    with pytest.raises(KeyError, match="known builders"):
        get_builder("chat")


def test_critique_and_revision_prompts_are_exact_completion_framings():
    from phases.prompts import critique_prompt, revision_prompt

    c = critique_prompt(" Name a color. ", " Blue.\n", " Be concise. ")
    assert c == ("Instruction: Name a color.\nResponse: Blue.\n\nPrinciple: Be concise.\n"
                 "Critique of the response, judged only against the principle:")
    r = revision_prompt("Name a color.", "Blue.", "Be concise.", " Fine as is. ")
    assert r == c + (" Fine as is.\n\nRewrite the response so that it follows the principle, keeping what was right.\n"
                     "Instruction: Name a color.\nRevised response:")
    assert not r.endswith(" ") and "<|im_start|>" not in r
    with pytest.raises(ValueError, match="critique"):
        revision_prompt("Name a color.", "Blue.", "Be concise.", "  ")
