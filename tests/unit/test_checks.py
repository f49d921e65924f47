"""The check registry (phases/checks.py): specs by name with args, seeded draws, strict verdicts.

Run: .venv/bin/pytest tests/unit/test_checks.py -q
"""
from __future__ import annotations

import random

import pytest

from phases.checks import REGISTRY, draw, has_word, validate_spec, verify
from runner.errors import ConfigError


def test_every_registered_check_draws_and_verifies_something():
    args = {"ifeval": {"instruction_id": "punctuation:no_comma", "text": "No commas."},
            "recall": {"facts": ["Priya"]}, "resolve_reference": {"referent": "the red bike"},
            "avoid": {"words": ["very"]}}
    for name in REGISTRY:
        spec = validate_spec({"name": name, "args": args.get(name, {})}, f"test.{name}")
        inst = draw(spec, random.Random(3))
        assert inst["check"] == name and isinstance(inst["text"], str)
        assert inst == draw(spec, random.Random(3)), "draws must be seeded"
        assert verify(inst, "") is False, "a blank response follows nothing"


def test_args_choose_what_is_drawn():
    spec = validate_spec({"name": "max_words", "args": {"choices": [7]}}, "s")
    inst = draw(spec, random.Random(0))
    assert inst["kwargs"] == {"num_words": 7, "relation": "less than"}
    assert verify(inst, "one two three") and not verify(inst, " ".join(["w"] * 12))


@pytest.mark.parametrize("spec, msg", [
    ({"name": "nope"}, "unknown check"),
    ({"name": "max_words", "args": {"n": 3}}, "has no argument 'n'"),
    ({"name": "max_words", "args": {"choices": 3}}, "expected list"),
    ({"name": "recall"}, "needs argument"),
    ({"name": "keywords", "args": {"pool": ["a"], "count": 2}}, "cannot be drawn"),
    ({"name": "ifeval", "args": {"instruction_id": "bogus:x", "text": "t"}}, "cannot be drawn"),
    ({"name": "lowercase", "extra": 1}, "unknown key"),
])
def test_bad_specs_name_where_and_what(spec, msg):
    with pytest.raises(ConfigError, match=msg) as e:
        validate_spec(spec, "stage9.yaml: checks.0")
    assert "stage9.yaml: checks.0" in str(e.value)


def test_memory_checks_are_whole_word_and_case_insensitive():
    recall = draw(validate_spec({"name": "recall", "args": {"facts": ["Priya"]}}, "s"), random.Random(0))
    assert verify(recall, "Sure, PRIYA, here it is.") and not verify(recall, "Sure, Priyanka.")
    avoid = draw(validate_spec({"name": "avoid", "args": {"words": ["very"]}}, "s"), random.Random(0))
    assert verify(avoid, "It is every bit as good.") and not verify(avoid, "It is Very good.")
    ref = draw(validate_spec({"name": "resolve_reference", "args": {"referent": "red  bike"}}, "s"), random.Random(0))
    assert verify(ref, "The red bike is cheaper.") and not verify(ref, "It is cheaper.")
    assert has_word("a  b\nc", "b c")


def test_ifeval_backed_check_uses_the_canonical_checker():
    inst = draw(validate_spec({"name": "lowercase"}, "s"), random.Random(0))
    assert inst["instruction_id"] == "change_case:english_lowercase"
    assert verify(inst, "all lower here") and not verify(inst, "Not lower")
