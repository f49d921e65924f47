"""Sharded steps under real processes (crash tier): N = 1, 2, 3 workers give byte-identical
outputs (top-up round included); a worker SIGKILLed mid-shard has its shard reclaimed with
nothing lost or done twice; racing claimers, racing lease acquirers and racing `runner resume`s
on both backends (SQLite file and a real PostgreSQL server the tests start themselves).

Run: .venv/bin/pytest tests/crash/test_crash_shards.py -q
Subject: runner/examples/sharded.py (no ML).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from helpers_pg import pg_server, pg_url, state_url  # noqa: F401  (fixtures)
from helpers_runner import REPO, cli, spawn, wait_for
from state import shards as claims
from state.store import Store

pytestmark = pytest.mark.crash

SHARDED = REPO / "runner" / "examples" / "sharded.yaml"


def _config(path: Path, **draw) -> Path:
    cfg = yaml.safe_load(SHARDED.read_text())
    cfg["params"]["draw"].update(draw)
    path.write_text(yaml.safe_dump(cfg, sort_keys=True))
    return path


def _home(tmp_path: Path, name: str, url: str | None, **draw) -> tuple[Path, list[str]]:
    home = tmp_path / name
    home.mkdir()
    g = ["--db-url", url] if url else []
    cli(home, *g, "init", "--config", _config(tmp_path / f"{name}.yaml", **draw), "--run-id", "s", check=0)
    return home, g


def _outputs(home: Path, url: str | None) -> dict[str, bytes]:
    """Every file of the draw and merge steps' committed outputs, by path below the step."""
    store = Store.open(home, db_url=url, create=False)
    try:
        out = {}
        for step in ("draw", "merge"):
            (a,) = [a for a in store.attempts("s", step) if a.status == "succeeded"]
            root = home / a.output_dir
            out.update({f"{step}/{p.relative_to(root)}": p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()})
        return out
    finally:
        store.close()


def _shard_rows(home: Path, url: str | None, key_step: str = "draw"):
    store = Store.open(home, db_url=url, create=False)
    try:
        (a,) = [a for a in store.attempts("s", key_step)][-1:]
        return claims.rows(store, "s", key_step, a.cache_key, "items"), store.events("s", limit=5000)
    finally:
        store.close()


def _assert_each_shard_done_once(home: Path, url: str | None) -> list:
    rows, events = _shard_rows(home, url)
    assert rows and all(r.status == "done" for r in rows), [(r.idx, r.status) for r in rows]
    done = [json.loads(e.data_json)["shard"] for e in events if e.kind == "shard_done"]
    assert sorted(done) == [r.idx for r in rows], "a shard was lost or completed twice"
    for r in rows:  # the recorded directory is the completing generation's own
        assert r.output_path.endswith(f"{r.idx:04d}.g{r.generation}")
    return events


DRAW = {"items": 24, "shard_size": 4, "batch_size": 2, "keep": 0.5, "target_kept": 18, "max_top_up_rounds": 2}


def test_one_two_three_workers_give_byte_identical_outputs(tmp_path):
    ref, g = _home(tmp_path, "n1", None, **DRAW)
    cli(ref, *g, "resume", timeout=300, check=0)
    want = _outputs(ref, None)
    report = json.loads(want["draw/top_up.json"])
    assert report["rounds"] >= 2 and report["met"], report  # the top-up round ran
    for n in (2, 3):
        home, g = _home(tmp_path, f"n{n}", None, **DRAW)
        p = cli(home, *g, "resume", "--workers", str(n), timeout=300, check=0)
        assert f"{n} workers started" in p.stdout
        assert _outputs(home, None) == want, f"--workers {n} produced other bytes"
        _assert_each_shard_done_once(home, None)


def test_top_up_stops_at_its_cap_and_says_so(tmp_path):
    home, g = _home(tmp_path, "cap", None, **{**DRAW, "target_kept": 1000, "max_top_up_rounds": 0})
    cli(home, *g, "resume", timeout=300, check=0)
    report = json.loads(_outputs(home, None)["draw/top_up.json"])
    assert report["rounds"] == 1 and report["cap_hit"] and not report["met"] and report["kept"] < 1000
    rows, _ = _shard_rows(home, None)
    assert len(rows) == 6  # the planned shards only: nothing was added past the cap


def _kill_a_worker_mid_shard(home: Path, g: list[str], url: str | None) -> int:
    """Start `resume --workers 2`, wait for a shard with a committed batch but unfinished, SIGKILL its worker."""
    p = spawn(home, *g, "resume", "--workers", "2")
    store = Store.open(home, db_url=url, create=False)
    victim = {}

    def mid_shard() -> bool:
        att = [a for a in store.attempts("s", "draw")]
        if not att:
            return False
        for r in claims.rows(store, "s", "draw", att[-1].cache_key, "items"):
            if r.status == "claimed" and store.batches("s", "draw", att[-1].cache_key, f"s{r.idx * 4:06d}"):
                victim.update(pid=r.pid, idx=r.idx)
                return True
        return False

    try:
        assert wait_for(mid_shard, timeout=120), "no worker was ever seen mid-shard"
        os.kill(victim["pid"], signal.SIGKILL)
        code = p.wait(timeout=300)
        out = p.stdout.read()
        assert code == 0, out
        return victim["idx"]
    finally:
        if p.poll() is None:
            p.kill()
        store.close()


def test_sigkilled_worker_mid_shard_is_reclaimed_nothing_lost_or_doubled(tmp_path, state_url):  # noqa: F811
    draw = {**DRAW, "target_kept": 0, "delay": 0.05}
    ref, g = _home(tmp_path, "ref", None, **{**draw, "delay": 0.0})
    cli(ref, *g, "resume", timeout=300, check=0)
    home, g = _home(tmp_path, "kill", state_url, **draw)
    idx = _kill_a_worker_mid_shard(home, g, state_url)
    assert _outputs(home, state_url) == _outputs(ref, None)
    events = _assert_each_shard_done_once(home, state_url)
    kinds = [(e.kind, json.loads(e.data_json or "{}").get("shard")) for e in events]
    assert ("shard_reclaimed", idx) in kinds
    assert any(e.kind == "worker_restarted" for e in events)


RACER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from state import shards as claims
    from state.store import Fence, Owner, Store
    home, url, n, gen = sys.argv[1], sys.argv[2] or None, int(sys.argv[3]), int(sys.argv[4])
    store = Store.open(Path(home), db_url=url, create=False)
    fence = Fence("r", "owner-0", gen)
    me = Owner(owner_id=f"racer-{n}", host="h", pid=5000 + n, pid_start_time=1.0)
    Path(home, f"ready-{n}").touch()
    while not Path(home, "go").exists():
        time.sleep(0.01)
    done = []
    while True:
        c = claims.claim(store, fence, "s", "k", "set", me, n, 60.0, lambda r: None, 3)
        if c is None:
            break
        claims.complete(store, fence, c, me, f"out/{c.idx}.g{c.generation}", "d", {"by": n})
        done.append(c.idx)
    print(json.dumps(done))
""")

ACQUIRER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from state.store import Owner, Store
    home, url, n = sys.argv[1], sys.argv[2] or None, int(sys.argv[3])
    store = Store.open(Path(home), db_url=url, create=False)
    Path(home, f"ready-{n}").touch()
    while not Path(home, "go").exists():
        time.sleep(0.005)
    fence, holder, why = store.acquire_lease("r2", Owner(f"o{n}", "h", 7000 + n, 1.0), 60, lambda lease: None)
    print("WON" if fence else "LOST")
""")


def _race(home: Path, script: str, args: list[list[str]]) -> list[str]:
    """Start one process per args list, release them together, return their stdouts."""
    procs = [subprocess.Popen([sys.executable, "-c", script, *a], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO)}) for a in args]
    ready = [home / f"ready-{a[2]}" for a in args]
    assert wait_for(lambda: all(r.exists() for r in ready) or any(p.poll() is not None for p in procs),
                    timeout=120)
    (home / "go").touch()
    outs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    return [o[0] for o in outs]


@pytest.fixture
def store(tmp_path, state_url):  # noqa: F811
    s = Store.open(tmp_path / "home", db_url=state_url)
    s.create_run("r", "runner.examples.sharded:pipeline", None, {}, [], seed=1)
    s.create_run("r2", "runner.examples.sharded:pipeline", None, {}, [], seed=1)
    yield s
    s.close()


def test_racing_claimers_in_separate_processes_take_each_shard_once(store, state_url):  # noqa: F811
    from state.store import Owner
    fence, _, _ = store.acquire_lease("r", Owner("owner-0", "h", 1, 1.0), 60, lambda lease: None)
    claims.plan(store, fence, "s", "k", "set", [{"i": i} for i in range(30)])
    outs = _race(store.home, RACER, [[str(store.home), state_url or "", str(n), str(fence.generation)]
                                     for n in range(4)])
    done = [i for out in outs for i in json.loads(out.strip().splitlines()[-1])]
    assert sorted(done) == list(range(30))  # every shard once: none lost, none twice
    assert all(r.status == "done" and r.generation == 1 for r in claims.rows(store, "r", "s", "k", "set"))
    assert len(store.events("r", limit=1000, kinds=["shard_done"])) == 30


def test_racing_lease_acquirers_exactly_one_wins(store, state_url):  # noqa: F811
    outs = _race(store.home, ACQUIRER, [[str(store.home), state_url or "", str(n)] for n in range(5)])
    assert sorted(o.strip() for o in outs) == ["LOST"] * 4 + ["WON"]
    assert store.get_lease("r2").generation == 1


def test_two_racing_resumes_exactly_one_runs(tmp_path, state_url):  # noqa: F811
    home, g = _home(tmp_path, "race", state_url, **{**DRAW, "target_kept": 0, "delay": 0.03})
    a, b = spawn(home, *g, "resume", "--workers", "2"), spawn(home, *g, "resume", "--workers", "2")
    out = {p.pid: (p.wait(timeout=300), p.stdout.read()) for p in (a, b)}
    assert sorted(code for code, _ in out.values()) == [0, 4], out
    winner = next(pid for pid, (code, _) in out.items() if code == 0)
    assert f"pid {winner}" in next(text for code, text in out.values() if code == 4)
    store = Store.open(home, db_url=state_url, create=False)
    try:
        assert [a.step for a in store.attempts("s")] == ["draw", "merge"]
    finally:
        store.close()
    _assert_each_shard_done_once(home, state_url)


def test_a_shard_that_keeps_failing_fails_the_step_with_its_error(tmp_path):
    home, g = _home(tmp_path, "fail", None, **{**DRAW, "target_kept": 0, "fail_shard": 1})
    p = cli(home, *g, "resume", "--workers", "2", timeout=300, RUNNER_SHARD_MAX_FAILURES=2)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "shard 1 of set 'items' failed 2 time(s)" in p.stdout and "fails on purpose" in p.stdout, p.stdout
    rows, events = _shard_rows(home, None)
    assert [r.status for r in rows if r.idx == 1] == ["failed"]
    assert sum(e.kind == "shard_failed" for e in events) == 2
