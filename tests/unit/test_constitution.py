"""Constitution validation and balanced principle sampling.

Run: .venv/bin/pytest tests/unit/test_constitution.py
"""

from collections import Counter

import pytest

from phases.constitution import CATEGORIES, load_constitution, sample_principles
from runner.errors import ConfigError


def test_shipped_constitution():
    c = load_constitution()
    assert len(c.principles) == 15 and len({p.id for p in c.principles}) == 15
    assert set(p.category for p in c.principles) == set(CATEGORIES)


def test_balanced_deterministic_sampling():
    c = load_constitution()
    for seed in range(20):
        for k in (3, 6, 9):
            got = sample_principles(k, seed, c)
            counts = Counter(p.category for p in got)
            assert len(got) == k and len({p.id for p in got}) == k
            assert set(counts) == set(CATEGORIES) and max(counts.values()) - min(counts.values()) == 0
        assert sample_principles(5, seed, c) == sample_principles(5, seed, c)
    assert {tuple(p.id for p in sample_principles(3, s, c)) for s in range(20)}.__len__() > 1
    assert len(sample_principles(15, 0, c)) == 15  # beyond balance the larger category continues
    with pytest.raises(ValueError, match=r"\[1, 15\]"):
        sample_principles(16, 0, c)


def write(tmp_path, body):
    p = tmp_path / "c.yaml"
    p.write_text(body, encoding="utf-8")
    return p


GOOD = [("a", "helpfulness"), ("b", "harmlessness"), ("c", "honesty")]


def body(items):
    return "version: 1\nprinciples:\n" + "".join(f"  - {{id: {i}, category: {c}, text: Be good.}}\n" for i, c in items)


def test_validation_errors(tmp_path):
    assert len(load_constitution(write(tmp_path, body(GOOD))).principles) == 3
    for text, match in [
        (body(GOOD + [("a", "honesty")]), r"principles\.3\.id = 'a': duplicate id"),
        (body(GOOD + [("d", "kindness")]), r"principles\.3\.category = 'kindness': expected one of"),
        (body(GOOD[:2]), r"categor\(ies\) \['honesty'\]"),
        (body([("Bad-Id", "honesty")] + GOOD), "snake_case"),
        ("version: 1\nprinciples: []\n", "non-empty list"),
        ("principles: []\n", "exactly the keys"),
        ("version: 1\nprinciples:\n  - {id: a, category: honesty}\n", "exactly 'id', 'category' and 'text'"),
    ]:
        p = write(tmp_path, text)
        with pytest.raises(ConfigError, match=match) as e:
            load_constitution(p)
        assert str(p) in str(e.value)
    with pytest.raises(ConfigError, match="not found"):
        load_constitution(tmp_path / "missing.yaml")
