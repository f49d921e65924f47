"""Instruction-list parsing and filtering.

Run: .venv/bin/pytest tests/unit/test_instructions.py
"""

import pytest

from phases.instructions import normalize_instruction, parse_instructions, parse_numbered_list
from phases.prompts import instruction_generation_prompt

# A realistic continuation of a list prompt that ended with "9."
COMPLETION = (
    " Write a limerick about a cat who loves cheese.\n"
    "10) Summarize the main idea of the following sentence: \"The early bird catches the worm.\"\n"
    "11. **List three ways to reduce plastic waste at home.**\n"
    "12. Here are some more instructions:\n"
    "13. Poem.\n"
    "14. Explain the difference between weather and climate to\n"
    "15. The weather in Paris is nice today.\n"
    "16. write a limerick about a cat who loves cheese\n"
    "17. What is the tallest mountain in Africa?\n"
    "This list continues with more tasks below.\n"
    "18. Please translate 'good luck' into Italian.\n"
    "19. Classify the following animals as mammals or reptiles:\n"
    "20. Describe the smell of rain in"
)


def test_parse_realistic_completion():
    r = parse_instructions(COMPLETION, first_index=9)
    assert r.kept == [
        "Write a limerick about a cat who loves cheese.",
        'Summarize the main idea of the following sentence: "The early bird catches the worm."',
        "List three ways to reduce plastic waste at home.",
        "What is the tallest mountain in Africa?",
        "Please translate 'good luck' into Italian.",
    ]
    assert r.dropped == [
        ("Here are some more instructions:", "meta"),
        ("Poem.", "too_short"),
        ("Explain the difference between weather and climate to", "ends_mid_sentence"),
        ("The weather in Paris is nice today.", "no_instruction_verb"),
        ("write a limerick about a cat who loves cheese", "duplicate"),
        ("Classify the following animals as mammals or reptiles:", "ends_mid_sentence"),
        ("Describe the smell of rain in", "ends_mid_sentence"),
    ]
    assert r.unnumbered_lines == 1
    c = r.counts()
    assert c["parsed"] == 12 and c["kept"] == 5 and c["dropped_meta"] == 1


def test_cut_last_item_without_punctuation_dropped_but_terminated_kept():
    assert parse_instructions(" Name two rivers in Europe\n", first_index=3).kept == ["Name two rivers in Europe"]
    r = parse_instructions(" Name two rivers in Europe", first_index=3)
    assert r.kept == [] and r.dropped[0][1] == "ends_mid_sentence"


def test_stops_at_new_prompt_line():
    items, _, _ = parse_numbered_list(" Describe a sunset.\nInstruction: Write more.\n4. Give a tip.", first_index=3)
    assert items == ["Describe a sunset."]


def test_roundtrip_with_prompt_builder():
    prompt = instruction_generation_prompt(["Write a haiku about snow.", "List two fruits."])
    assert prompt.endswith("\n3.")
    r = parse_instructions(prompt.split("\n", 2)[2] + " Describe a busy market.\n", first_index=None)
    assert r.kept == ["Write a haiku about snow.", "List two fruits.", "Describe a busy market."]


def test_normalize_instruction():
    assert normalize_instruction('  "Name a   color."  ') == "Name a color."
    assert normalize_instruction('Say "hi" to "Bob".') == 'Say "hi" to "Bob".'
    assert normalize_instruction("- **Explain gravity.**") == "Explain gravity."


def test_empty_and_bad_input():
    r = parse_instructions("")
    assert r.kept == [] and r.dropped == []
    with pytest.raises(ValueError, match="completion must be a string"):
        parse_instructions(None)
