"""D5: `runner supervise` against a live owner on this host whose lease expired (a stalled
heartbeat) must not spawn refused resumes in a loop: it names the owner and exits 4, and a
child that is refused the lease anyway counts as a restart without progress (backoff + cap).

    .venv/bin/python -m pytest -m crash tests/crash/test_supervise_backoff.py -q
"""
from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from runner.lease import hostname

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers_runner import cli, env, toy_config  # noqa: E402

pytestmark = pytest.mark.crash


def _stalled_owner_lease(home: Path, pid: int, expired_s: float) -> None:
    con = sqlite3.connect(home / ".runner" / "runner.db", timeout=30)
    try:
        t = time.time()
        con.execute("INSERT INTO leases (run_id, owner_id, host, pid, pid_start_time, generation, acquired_at, "
                    "heartbeat_at, expires_at, released) VALUES (?,?,?,?,?,?,?,?,?,0)",
                    ("t", uuid.uuid4().hex, hostname(), pid, psutil.Process(pid).create_time(), 1,
                     t - 120, t - 100, t - expired_s))
        con.commit()
    finally:
        con.close()


def test_supervise_does_not_storm_a_live_owner_with_an_expired_lease(tmp_path):
    cfg = toy_config(tmp_path / "c.yaml", items=3, gate="auto")
    home = tmp_path / "h"
    cli(home, "init", "--config", cfg, "--run-id", "t", check=0)
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        _stalled_owner_lease(home, owner.pid, expired_s=5)
        p = subprocess.run([sys.executable, "-m", "runner", "--home", str(home), "supervise", "--run", "t",
                            "--max-restarts", "2", "--backoff-max", "1"],
                           capture_output=True, text=True, timeout=90, env=env())
        out = p.stdout + p.stderr
        assert p.returncode == 4, out
        assert out.count("starting:") <= 3, f"spawned {out.count('starting:')} refused resumes:\n{out}"
        assert f"pid {owner.pid}" in out and "expired" in out, out
    finally:
        owner.kill()
        owner.wait(timeout=30)
