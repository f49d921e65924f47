"""The deterministic route rule (phases/models/fast_rules.py): which critic/generation path runs.

Run: .venv/bin/pytest -m integration tests/integration/test_fast_rules.py -q   (a few seconds)
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers_models import tiny  # noqa: E402

pytestmark = pytest.mark.integration

RUBRIC = list(range(10, 50))  # 40 shared tokens


def test_small_models_take_the_plain_critic_path():
    from phases.models import fast_rules

    rows = [RUBRIC + [100 + i, 200 + i, 7] for i in range(8)]
    assert fast_rules.model_params(tiny().model) < fast_rules.PREFIX_MIN_PARAMS
    assert fast_rules.critic_route(tiny().model, rows) == "plain"


def test_big_models_take_the_prefix_path_only_when_the_prefix_saves_enough(monkeypatch):
    from phases.models import fast_rules

    monkeypatch.setattr(fast_rules, "PREFIX_MIN_PARAMS", 0)
    shared = [RUBRIC + [100 + i, 200 + i, 7] for i in range(8)]
    assert fast_rules.saved_fraction(shared) == pytest.approx(7 * 40 / (8 * 43))
    assert fast_rules.critic_route(tiny().model, shared) == "prefix"
    # a short shared head (< MIN_PREFIX tokens) saves nothing
    unshared = [[1, 2, 3] + [100 + i] * 40 for i in range(8)]
    assert fast_rules.saved_fraction(unshared) == 0.0
    assert fast_rules.critic_route(tiny().model, unshared) == "plain"
    # the same inputs always give the same route (no timing involved)
    assert {fast_rules.critic_route(tiny().model, shared) for _ in range(3)} == {"prefix"}


def test_generation_rule_keeps_the_graph_path():
    from phases.models import fast_rules

    assert fast_rules.generation_route(tiny().model, 64) == "fast"
