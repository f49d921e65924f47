"""The deterministic route rule (phases/models/fast_rules.py): which critic/generation path runs.

Run: .venv/bin/pytest -m integration tests/integration/test_fast_rules.py -q   (a few seconds)
The rule's boundaries as a pure function: tests/unit/test_fast_rules_rule.py.
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


def test_rows_per_forward_is_what_score_ids_runs():
    """The rule's batch term reads the prefix path's own chunking (prefix_cache.plan_forwards)."""
    from phases.models import fast_rules, prefix_cache

    m = tiny()
    # two label orders -> two prefix groups, like critic.judge's calls; one odd length
    orders = {o: RUBRIC[:10] + [o + k for k in range(20)] for o in (50, 70)}
    rows = [orders[o] + [100 + i, 200 + i, 7] + [9] * (i % 3) for i in range(10) for o in orders]
    for max_batch, want in ((64, [10, 10]), (4, [4, 4, 2, 4, 4, 2])):
        stats: dict = {}
        prefix_cache.score_ids(m.model, rows, [5, 6], pad_id=m.backend.pad_id, max_batch=max_batch, stats=stats)
        assert stats["forward_rows"] == want
        assert [len(idx) for _, idx in prefix_cache.plan_forwards(rows, max_batch=max_batch)] == want
        assert fast_rules.rows_per_forward(rows, max_batch) == pytest.approx(len(rows) / len(want))


def test_small_models_take_the_prefix_path_from_enough_rows_per_forward(monkeypatch):
    from phases.models import fast_rules

    monkeypatch.setattr(fast_rules, "PREFIX_SMALL_MIN_ROWS", 8)  # the tiny model cannot reach 128 rows quickly
    shared = [RUBRIC + [100 + i, 200 + i, 7] for i in range(8)]  # one group of 8 rows
    assert fast_rules.critic_route(tiny().model, shared, max_batch=64) == "prefix"  # 8 rows per forward
    assert fast_rules.critic_route(tiny().model, shared, max_batch=4) == "plain"  # 4 rows per forward
    assert fast_rules.critic_route(tiny().model, shared[:7], max_batch=64) == "plain"  # 7 rows


def test_backend_follows_and_names_the_route(monkeypatch):
    """HFBackend.critic_route is the path next_token_logprobs runs (benchmarks record it)."""
    from phases.critic import CANDIDATES
    from phases.models import fast_rules, prefix_cache

    be = tiny().backend
    rubric = "Judge the instruction below. A means clear and specific, B means vague or unsafe. " * 2
    prompts = [f"{rubric}Instruction: item number {i} of the list\nLabel:" for i in range(8)]
    rows = be.encode_rows(prompts, 0, "error")
    monkeypatch.setattr(be, "fast_paths", False)
    plain = be.next_token_logprobs(prompts, list(CANDIDATES))
    assert be.critic_route(rows) == "plain"
    monkeypatch.setattr(be, "fast_paths", "auto")
    assert be.critic_route(rows) == "plain"  # "auto" on CPU: the plain path
    monkeypatch.setattr(be, "_use_fast", lambda: True)  # as on CUDA
    calls = []
    real = prefix_cache.score_ids
    monkeypatch.setattr(prefix_cache, "score_ids", lambda *a, **k: calls.append(k["max_batch"]) or real(*a, **k))
    rpf = fast_rules.rows_per_forward(rows, be._prefix_max_batch())
    assert rpf == len(rows)  # one rubric group, under the 64-row minimum batch
    monkeypatch.setattr(fast_rules, "PREFIX_SMALL_MIN_ROWS", rpf + 1)
    assert be.critic_route(rows) == "plain"
    be.next_token_logprobs(prompts, list(CANDIDATES))
    assert calls == []
    monkeypatch.setattr(fast_rules, "PREFIX_SMALL_MIN_ROWS", rpf)
    assert be.critic_route(rows) == "prefix"
    fast = be.next_token_logprobs(prompts, list(CANDIDATES))
    assert calls == [max(be.batch_size, 64)]
    assert max(abs(a[c] - b[c]) for a, b in zip(plain, fast) for c in CANDIDATES) < 1e-4


def test_generation_rule_keeps_the_graph_path():
    from phases.models import fast_rules

    assert fast_rules.generation_route(tiny().model, 64) == "fast"
