"""Multi-host simulation (docs/scale-out.md): worker processes of a sharded step, some posing as
other hosts (``RUNNER_HOSTNAME``), all claiming shards from one PostgreSQL state store, SIGKILLed
at random points. Shards of a killed local worker are reclaimed at once (its pid is gone); those
of a killed "remote" worker only after its claim expires (``RUNNER_SHARD_TTL``), since a host
cannot see another host's processes. No shard may be lost or completed twice, and the outputs
must be the bytes of an undisturbed single-process run.

Run: .venv/bin/pytest -m crash tests/crash/test_scale_out_sim.py -q
(starts its own PostgreSQL server; skipped, with the reason, where it is absent)
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys

import pytest

from helpers_pg import pg_server, pg_url  # noqa: F401  (fixtures)
from helpers_runner import REPO, cli, env, spawn, wait_for
from state import shards as claims
from state.store import Store
from test_crash_shards import DRAW, _assert_each_shard_done_once, _home, _outputs

pytestmark = pytest.mark.crash


def test_workers_on_simulated_hosts_killed_at_random_lose_and_double_nothing(tmp_path, pg_url):  # noqa: F811
    draw = {**DRAW, "items": 48, "target_kept": 0, "delay": 0.03}
    ref, g = _home(tmp_path, "ref", None, **{**draw, "delay": 0.0})
    cli(ref, *g, "resume", timeout=300, check=0)
    home, g = _home(tmp_path, "sim", pg_url, **draw)
    knobs = {"RUNNER_SHARD_TTL": 3, "RUNNER_WORKER_RESTARTS": 10}
    coord = spawn(home, *g, "resume", "--workers", "2", **knobs)
    remote: list[subprocess.Popen] = []
    store = Store.open(home, db_url=pg_url, create=False)
    rng = random.Random(20261130)
    try:
        specs = lambda: sorted(home.glob("artifacts/s/draw/.work-*/worker-spec-items.json"))  # noqa: E731
        assert wait_for(lambda: bool(specs()), timeout=120), "the coordinator never started its workers"
        for j in range(2):  # two more workers that claim as if they ran on other hosts
            remote.append(subprocess.Popen(
                [sys.executable, "-m", "runner", "worker", "--spec", str(specs()[0]), "--index", str(10 + j)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(REPO),
                env=env(RUNNER_HOSTNAME=f"sim-host-{j}", **knobs), start_new_session=True))
        key = store.attempts("s", "draw")[-1].cache_key
        n_shards = len(claims.rows(store, "s", "draw", key, "items"))
        kills = []
        for threshold in sorted(rng.sample(range(1, n_shards - 2), 4)):
            done = lambda: sum(r.status == "done" for r in claims.rows(store, "s", "draw", key, "items"))  # noqa: E731
            if not wait_for(lambda: done() >= threshold, timeout=120):
                break
            held = [r for r in claims.rows(store, "s", "draw", key, "items") if r.status == "claimed"]
            if not held:
                continue
            victim = rng.choice(held)
            try:
                os.kill(victim.pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            after = next(r for r in claims.rows(store, "s", "draw", key, "items") if r.id == victim.id)
            if not (after.status == "done" and after.generation == victim.generation):  # it did not finish first
                kills.append((victim.idx, victim.host))
        code = coord.wait(timeout=400)
        assert code == 0, coord.stdout.read()[-4000:]
    finally:
        for p in [coord, *remote]:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)
        store.close()
    assert len(kills) >= 2, f"the schedule killed too few workers to mean anything: {kills}"
    assert _outputs(home, pg_url) == _outputs(ref, None)
    events = _assert_each_shard_done_once(home, pg_url)
    reclaimed = {json.loads(e.data_json)["shard"] for e in events if e.kind == "shard_reclaimed"}
    assert {idx for idx, _host in kills} <= reclaimed, (kills, reclaimed)
