"""Leases, gates and concurrency with real processes: stale-owner takeover (same host / other
host), two racing resumes, a gate approved with no runner alive, status readers during writes,
and `resume --detach` + `wait`.

Run: .venv/bin/pytest -m crash tests/crash/test_crash_lease.py -q
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from helpers_runner import (REPO, attempt_counts, batches_done, cli, cli_at_terminal, count_events, env,  # noqa: E402
                            init_run, kill9, rows, spawn, status_json, toy_config, wait_for)

pytestmark = pytest.mark.crash


def _home(tmp_path, **kw):
    cfg = toy_config(tmp_path / "cfg.yaml", **{"items": 40, "delay": 0.02, "batch_size": 3, **kw})
    home = tmp_path / "home"
    home.mkdir()
    init_run(home, cfg)
    return home


def _kill_mid_step(home, **env_extra):
    p = spawn(home, "resume", **env_extra)
    assert wait_for(lambda: batches_done(home) >= 2, timeout=30), "the runner never committed a batch"
    kill9(p)
    lease = rows(home, "SELECT * FROM leases")[0]
    assert lease["pid"] == p.pid and not lease["released"]
    return p


def _last_lease_reason(home) -> str:
    r = rows(home, "SELECT data_json FROM events WHERE kind='lease_acquired' ORDER BY id DESC LIMIT 1")
    return json.loads(r[0][0])["reason"]


def test_dead_owner_on_this_host_is_taken_over_at_once(tmp_path):
    home = _home(tmp_path)
    _kill_mid_step(home)  # the default TTL (60 s) is far from expiring
    t = time.time()
    cli(home, "resume", check=0)
    assert time.time() - t < 30
    assert "gone from this host" in _last_lease_reason(home)
    assert count_events(home, "attempt_interrupted", "process") == 1


def test_lease_from_another_host_is_taken_over_only_after_expiry(tmp_path):
    home = _home(tmp_path)
    _kill_mid_step(home, RUNNER_LEASE_TTL=3)
    c = __import__("sqlite3").connect(str(home / ".runner" / "runner.db"))
    with c:
        c.execute("UPDATE leases SET host='gpu-pod-7', pid=4242, expires_at=?", (time.time() + 60,))
    p = cli(home, "resume", RUNNER_LEASE_TTL=3)
    assert p.returncode == 4, p.stdout + p.stderr
    assert "gpu-pod-7" in p.stdout and "4242" in p.stdout
    assert attempt_counts(home)["process"] == 1  # nothing ran
    st = status_json(home)
    assert st["state"] == "running" and st["next_action"]["command"].startswith("runner wait")
    with c:  # the other host stopped heartbeating: let its lease run out for real
        c.execute("UPDATE leases SET expires_at=?", (time.time() + 1.0,))
    c.close()
    time.sleep(max(0.0, rows(home, "SELECT expires_at FROM leases")[0][0] - time.time()) + 0.2)
    cli(home, "resume", check=0, RUNNER_LEASE_TTL=3)
    assert "expired" in _last_lease_reason(home)
    assert count_events(home, "attempt_interrupted", "process") == 1


def test_two_racing_resumes_exactly_one_runs(tmp_path):
    home = _home(tmp_path, delay=0.05)  # ~2 s of work: the loser starts long before it ends
    a, b = spawn(home, "resume"), spawn(home, "resume")
    out = {p.pid: (p.wait(timeout=60), p.stdout.read()) for p in (a, b)}
    codes = sorted(code for code, _ in out.values())
    assert codes == [0, 4], out
    winner = next(pid for pid, (code, _) in out.items() if code == 0)
    loser_text = next(text for code, text in out.values() if code == 4)
    assert f"pid {winner}" in loser_text, loser_text  # the message names the owner
    assert count_events(home, "attempt_started", "process") == 1
    assert count_events(home, "attempt_started", "make_items") == 1
    assert attempt_counts(home) == {"make_items": 1, "process": 1, "summarize": 1}


def test_gate_approved_while_no_runner_is_alive(tmp_path):
    home = _home(tmp_path, gate="human", delay=0.0)
    p = cli(home, "resume")
    assert p.returncode == 3, p.stdout + p.stderr
    st = status_json(home)
    assert st["state"] == "waiting" and st["exit_code"] == 3
    assert st["next_action"]["command"] == "runner show approve_items"
    assert not st["lease"]["live"]
    code, out = cli_at_terminal(home, "approve", "approve_items", "--note", "fine", "--who", "tester",
                                typed="approve_items")
    assert code == 0, out
    assert status_json(home)["state"] == "ready"
    cli(home, "resume", check=0)
    assert count_events(home, "gate_approved") == 1
    g = rows(home, "SELECT status, decided_by, note FROM gates")
    assert [tuple(r) for r in g] == [("approved", "tester", "fine")]
    assert status_json(home)["state"] == "done"


READER = textwrap.dedent("""
    import contextlib, io, json, sys, os
    from runner.cli import main
    home, stop = sys.argv[1], sys.argv[2]
    n = bad = 0
    while not os.path.exists(stop) or n < 3:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["--home", home, "status", "--json"])
        n += 1
        try:
            json.loads(out.getvalue())
        except ValueError:
            bad += 1
        if code != 0 or "locked" in (out.getvalue() + err.getvalue()).lower():
            print("FAIL", code, err.getvalue()[-500:], flush=True)
            sys.exit(1)
    print("OK", n, bad, flush=True)
""")


def test_many_status_readers_during_writes(tmp_path):
    home = _home(tmp_path, items=150, delay=0.0, batch_size=1)
    stop = tmp_path / "stop"
    writer = spawn(home, "resume")
    readers = [subprocess.Popen([sys.executable, "-c", READER, str(home), str(stop)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env(), cwd=str(REPO))
               for _ in range(4)]
    try:
        code = writer.wait(timeout=120)
        wout = writer.stdout.read()
    finally:
        stop.touch()
    results = [(r.wait(timeout=60), r.stdout.read()) for r in readers]
    assert code == 0, wout
    assert "locked" not in wout.lower()
    for rc, text in results:
        assert rc == 0 and text.startswith("OK"), text
        _ok, n, bad = text.split()
        assert int(bad) == 0, text
    assert sum(int(t.split()[1]) for _, t in results) >= 12
    assert batches_done(home) == 150


def test_detach_returns_at_once_and_wait_reports_the_outcome(tmp_path):
    home = _home(tmp_path, gate="human", items=20, delay=0.05, batch_size=2)
    t = time.time()
    p = cli(home, "resume", "--detach")
    assert time.time() - t < 10, "resume --detach did not return at once"
    # make_items is instant, so the background runner may already have stopped at the gate
    # within detach's start-up check; then detach reports its exit code (3) instead of 0
    assert p.returncode in (0, 3), p.stdout + p.stderr
    assert ".log" in p.stdout
    w = cli(home, "wait", "--timeout", "60", timeout=90)
    assert w.returncode == 3, w.stdout + w.stderr
    assert "approve_items" in w.stdout
    code, out = cli_at_terminal(home, "approve", "approve_items", typed="approve_items")
    assert code == 0, out
    t = time.time()
    cli(home, "resume", "--detach", check=0)
    assert time.time() - t < 10
    assert status_json(home)["state"] in ("running", "done")
    w = cli(home, "wait", "--timeout", "60", timeout=90)
    assert w.returncode == 0, w.stdout + w.stderr
    assert status_json(home)["state"] == "done"
    logs = list((home / ".runner" / "logs").glob("*.log"))
    assert len(logs) >= 1 and any("is done" in f.read_text() for f in logs)
