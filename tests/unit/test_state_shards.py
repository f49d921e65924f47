"""Shard claims and the run lease on both backends (SQLite file and a real PostgreSQL server):
claim order, fencing of a slow holder, reclaim of a dead or expired holder, failure limits,
idempotent planning. Racing claimers and acquirers in separate processes, and killed workers,
are in tests/crash/test_crash_shards.py.

Run: .venv/bin/pytest tests/unit/test_state_shards.py -q
(the PostgreSQL cases start a server themselves; skipped, with the reason, where it is absent)
"""
from __future__ import annotations

import json

import pytest

from helpers_pg import pg_server, pg_url, state_url  # noqa: F401  (fixtures)
from state import shards as claims
from state.store import LeaseLost, Owner, Store

@pytest.fixture
def store(tmp_path, state_url):  # noqa: F811
    s = Store.open(tmp_path / "home", db_url=state_url)
    s.create_run("r", "runner.examples.sharded:pipeline", None, {}, [], seed=1)
    yield s
    s.close()


def _owner(n: int, host: str = "h") -> Owner:
    return Owner(owner_id=f"owner-{n}", host=host, pid=1000 + n, pid_start_time=1.0)


def _fence(store, n=0):
    fence, holder, _ = store.acquire_lease("r", _owner(n), 60, lambda lease: "dead for the test")
    assert fence is not None, holder
    return fence


def _claim(store, fence, n, ttl=60.0, dead=lambda row: None):
    return claims.claim(store, fence, "s", "k", "set", _owner(n), n, ttl, dead, max_failures=2)


def test_stale_run_generation_cannot_write_anything(store):
    old = _fence(store, 1)
    new = _fence(store, 2)
    assert new.generation == old.generation + 1
    with pytest.raises(LeaseLost, match="now held by h:1002"):
        store.start_attempt(old, "s", "1", "k", {}, {})
    with pytest.raises(LeaseLost):
        claims.plan(store, old, "s", "k", "set", [{"a": 1}])
    assert claims.rows(store, "r", "s", "k", "set") == []
    store.start_attempt(new, "s", "1", "k", {}, {})
    fence, holder, why = store.acquire_lease("r", _owner(3), 60, lambda lease: None)
    assert fence is None and holder.pid == 1002 and "held by h pid 1002" in why


def test_claims_go_in_index_order_and_complete_once(store):
    f = _fence(store)
    assert claims.plan(store, f, "s", "k", "set", [{"i": 0}, {"i": 1}]) == 2
    assert claims.plan(store, f, "s", "k", "set", [{"i": 0}, {"i": 1}]) == 0  # idempotent
    a, b = _claim(store, f, 1), _claim(store, f, 2)
    assert (a.idx, a.spec, b.idx) == (0, {"i": 0}, 1)
    assert _claim(store, f, 3) is None  # both held by live workers
    claims.complete(store, f, a, _owner(1), "out/0.g1", "d0", {"n": 1})
    with pytest.raises(claims.ClaimLost):  # a second completion of the same claim fails loudly
        claims.complete(store, f, a, _owner(1), "out/0.g1", "d0", {"n": 1})
    rows = claims.rows(store, "r", "s", "k", "set")
    assert [(r.status, r.output_path, json.loads(r.result_json or "null")) for r in rows] == [
        ("done", "out/0.g1", {"n": 1}), ("claimed", None, None)]


def test_replanning_differently_is_refused(store):
    f = _fence(store)
    claims.plan(store, f, "s", "k", "set", [{"i": 0}])
    with pytest.raises(ValueError, match="must plan the same shards"):
        claims.plan(store, f, "s", "k", "set", [{"i": 99}])


def test_slow_holder_is_fenced_out_after_its_claim_expired(store):
    f = _fence(store)
    claims.plan(store, f, "s", "k", "set", [{"i": 0}])
    slow = _claim(store, f, 1, ttl=-1.0)  # expired at once: the holder stalled
    fast = _claim(store, f, 2)
    assert fast.idx == 0 and fast.generation == slow.generation + 1 and "expired" in fast.reclaimed_from
    with pytest.raises(claims.ClaimLost, match="generation 1 lost"):
        claims.renew(store, f, slow, _owner(1), 60)
    claims.complete(store, f, fast, _owner(2), "out/0.g2", "d2", {"by": 2})
    with pytest.raises(claims.ClaimLost):  # the slow one finishes later: not counted
        claims.complete(store, f, slow, _owner(1), "out/0.g1", "d1", {"by": 1})
    (row,) = claims.rows(store, "r", "s", "k", "set")
    assert (row.status, row.output_path, row.generation, row.reclaims) == ("done", "out/0.g2", 2, 1)
    assert [e.kind for e in store.events("r", kinds=["shard_claimed", "shard_reclaimed", "shard_done"])] == [
        "shard_claimed", "shard_reclaimed", "shard_done"]


def test_dead_holder_is_reclaimed_before_expiry(store):
    f = _fence(store)
    claims.plan(store, f, "s", "k", "set", [{"i": 0}])
    _claim(store, f, 1)
    assert _claim(store, f, 2) is None  # alive: not taken
    got = _claim(store, f, 2, dead=lambda row: f"pid {row.pid} is gone")
    assert got.idx == 0 and got.reclaimed_from == "worker 1: pid 1001 is gone"


def test_a_failing_shard_is_retried_then_fails_for_good(store):
    f = _fence(store)
    claims.plan(store, f, "s", "k", "set", [{"i": 0}])
    c = _claim(store, f, 1)
    assert claims.fail(store, f, c, _owner(1), "boom 1", max_failures=2) is False
    c = _claim(store, f, 1)
    assert claims.fail(store, f, c, _owner(1), "boom 2", max_failures=2) is True
    with pytest.raises(claims.ShardFailed, match="boom 2"):
        _claim(store, f, 1)


def test_failed_shards_get_new_chances_in_a_new_attempt(store):
    f = _fence(store)
    claims.plan(store, f, "s", "k", "set", [{"i": 0}, {"i": 1}])
    c = _claim(store, f, 1)
    claims.fail(store, f, c, _owner(1), "boom", max_failures=1)
    assert claims.reset_failed(store, f, "s", "k", "set") == [0]
    row = claims.rows(store, "r", "s", "k", "set")[0]
    assert (row.status, row.failures) == ("pending", 0)
    assert claims.reset_failed(store, f, "s", "k", "set") == []
