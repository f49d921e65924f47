"""`runner supervise` under real kills: a simulated pod restart (the whole process group
SIGKILLed, the lease rewritten to look like another host / a dead pid / a reused pid), repeated
kills of the supervised child, a live owner, and SIGTERM forwarding.

    .venv/bin/pytest -m crash tests/crash/test_supervise.py -q
"""
from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from runner.lease import hostname

pytestmark = pytest.mark.crash

CFG = """pipeline: runner.examples.toy:pipeline
seed: 1234
max_attempts: 10
params:
  make_items: {items: 80}
  process: {delay: 0.05, batch_size: 4}
gates:
  approve_items: {policy: auto}
"""


def make_home(tmp: Path) -> Path:
    home = tmp / "home"
    home.mkdir()
    (home / "cfg.yaml").write_text(CFG)
    return home


def supervise(home: Path, *extra: str, env: dict | None = None, log: str = "sup.log") -> subprocess.Popen:
    """`runner supervise` in its own process group (like a pod's start command)."""
    out = open(home / log, "ab")
    return subprocess.Popen([sys.executable, "-m", "runner", "--home", str(home), "supervise", "--config",
                             str(home / "cfg.yaml"), "--run-id", "toy", "--backoff-max", "1", *extra],
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **(env or {})})


def db(home: Path) -> sqlite3.Connection:
    return sqlite3.connect(home / ".runner" / "runner.db", timeout=30)


def q(home: Path, sql: str, *args):
    con = db(home)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def batches(home: Path) -> int:
    if not (home / ".runner" / "runner.db").exists():
        return 0
    try:
        return q(home, "SELECT count(*) FROM batches WHERE step='process'")[0][0]
    except sqlite3.OperationalError:
        return 0


def wait_for(pred, timeout: float, what: str):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def artifacts(home: Path) -> dict[str, bytes]:
    root = home / "artifacts" / "toy"
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and re.fullmatch(r"[0-9a-f]{12}", p.parent.name)}


def events(home: Path, kind: str) -> list[tuple]:
    return q(home, "SELECT id, ts, message, data_json FROM events WHERE kind=? ORDER BY id", kind)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> dict[str, bytes]:
    home = make_home(tmp_path_factory.mktemp("baseline"))
    p = supervise(home)
    assert p.wait(timeout=60) == 0, (home / "sup.log").read_text()
    arts = artifacts(home)
    assert any(k.startswith("process/") for k in arts) and any(k.startswith("summarize/") for k in arts)
    return arts


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


@pytest.mark.parametrize("variant", ["other_host", "dead_pid", "reused_pid"])
def test_pod_restart(tmp_path, baseline, variant):
    home = make_home(tmp_path)
    ttl = "4" if variant == "other_host" else "60"
    env = {"RUNNER_LEASE_TTL": ttl}
    first = supervise(home, env=env)
    wait_for(lambda: batches(home) >= 4, 30, "a few committed batches")
    os.killpg(first.pid, signal.SIGKILL)  # the pod dies: supervisor and child at once
    first.wait(timeout=10)
    assert batches(home) < 20, "the run finished before the kill; make the toy slower"
    if variant == "other_host":
        q_args = ("old-pod-7f9c", 4242, 1.0)
    elif variant == "dead_pid":
        q_args = (hostname(), dead_pid(), 1.0)
    else:  # a live pid (this test process) with another start time: the pid was reused
        q_args = (hostname(), os.getpid(), 12345.0)
    con = db(home)
    con.execute("UPDATE leases SET host=?, pid=?, pid_start_time=? WHERE run_id='toy'", q_args)
    con.commit()
    con.close()
    old_expiry = q(home, "SELECT expires_at FROM leases WHERE run_id='toy'")[0][0]
    n_acq = len(events(home, "lease_acquired"))

    t0 = time.time()
    second = supervise(home, env=env, log="sup2.log")
    assert second.wait(timeout=60) == 0, (home / "sup2.log").read_text()
    acq = events(home, "lease_acquired")[n_acq:]
    assert acq, "the new supervisor's resume never took the lease"
    took_at, reason = acq[0][1], acq[0][2]
    log = (home / "sup2.log").read_text()
    if variant == "other_host":
        assert "expired" in reason, reason
        assert took_at >= old_expiry - 0.5  # only after expiry
        assert "leased by host old-pod-7f9c" in log
    else:
        assert ("gone" in reason) if variant == "dead_pid" else ("reused" in reason), reason
        assert took_at - t0 < 15 and took_at < old_expiry  # at once, long before the 60 s expiry
        assert "provably gone" in log
    assert q(home, "SELECT count(*) FROM attempts WHERE step='process' AND status='interrupted'")[0][0] == 1
    assert artifacts(home) == baseline  # byte-identical to an uninterrupted run


def test_supervise_restarts_a_killed_child_until_done(tmp_path, baseline):
    home = make_home(tmp_path)
    sup = supervise(home)
    killed: list[int] = []

    def live_child():
        rows = q(home, "SELECT pid FROM leases WHERE run_id='toy' AND released=0") if batches(home) else []
        pid = rows[0][0] if rows else None
        return pid if pid and pid not in killed and pid != sup.pid and psutil.pid_exists(pid) else None

    for _ in range(3):
        before = batches(home)
        pid = wait_for(live_child, 30, "a supervised resume child")
        wait_for(lambda: batches(home) >= before + 2, 30, "progress of the child")
        assert psutil.Process(pid).ppid() == sup.pid  # it is the supervisor's child
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
    assert sup.wait(timeout=90) == 0, (home / "sup.log").read_text()
    restarts = events(home, "supervisor_restart")
    assert len(restarts) == 3
    assert all("killed by signal 9" in r[2] for r in restarts)
    assert artifacts(home) == baseline


def test_supervise_exits_4_when_a_live_owner_holds_the_run(tmp_path):
    home = make_home(tmp_path)
    first = supervise(home)
    wait_for(lambda: batches(home) >= 1, 30, "the first supervisor's child at work")
    owner = q(home, "SELECT pid FROM leases WHERE run_id='toy'")[0][0]
    t0 = time.time()
    second = supervise(home, log="sup2.log")
    assert second.wait(timeout=20) == 4
    assert time.time() - t0 < 10
    out = (home / "sup2.log").read_text()
    assert f"owned by a live runner on this host: pid {owner}" in out
    # SIGTERM to the first supervisor is forwarded to its child: the attempt is interrupted,
    # the lease released, and the supervisor exits with the child's code (7).
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 7, (home / "sup.log").read_text()
    assert q(home, "SELECT released FROM leases WHERE run_id='toy'")[0][0] == 1
    assert q(home, "SELECT count(*) FROM attempts WHERE status='interrupted'")[0][0] == 1
    assert not psutil.pid_exists(owner) or psutil.Process(owner).status() == psutil.STATUS_ZOMBIE
