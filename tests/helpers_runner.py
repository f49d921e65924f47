"""Shared helpers for the runner's unit and crash tests: write toy configs, run the CLI as a
real subprocess, read events and attempts straight from the state database.

Used by tests/unit/test_runner_*.py, tests/unit/test_state_*.py and tests/crash/*.py (pytest
puts tests/ on sys.path because tests/conftest.py lives there).
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import yaml

REPO = Path(__file__).resolve().parents[1]
TOY_YAML = REPO / "runner" / "examples" / "toy.yaml"
RUN_ID = "t"


def toy_config(path: Path, items: int = 20, delay: float = 0.0, batch_size: int = 4,
               gate: str = "auto", max_attempts: int = 3, seed: int = 1234, **process: Any) -> Path:
    """Write a toy config (a copy of toy.yaml, edited) to ``path`` and return it."""
    cfg = yaml.safe_load(TOY_YAML.read_text())
    cfg["seed"] = seed
    cfg["max_attempts"] = max_attempts
    cfg["params"] = {"make_items": {"items": items},
                     "process": {"delay": float(delay), "batch_size": batch_size, **process}}
    cfg["gates"] = {"approve_items": {"policy": gate}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=True))
    return path


def env(**extra: Any) -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
    e["PYTHONUNBUFFERED"] = "1"
    e.update({k: str(v) for k, v in extra.items()})
    return e


def cli_cmd(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "runner", "--home", str(home), *map(str, args)]


def cli(home: Path, *args: str, timeout: float = 60, check: Optional[int] = None,
        **env_extra: Any) -> subprocess.CompletedProcess:
    """Run ``python -m runner --home HOME ARGS`` to completion; optionally assert its exit code."""
    p = subprocess.run(cli_cmd(home, *args), capture_output=True, text=True, timeout=timeout,
                       env=env(**env_extra), cwd=str(home) if Path(home).is_dir() else None)
    if check is not None:
        assert p.returncode == check, (f"runner {' '.join(map(str, args))} exited {p.returncode}, wanted {check}\n"
                                       f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


def cli_at_terminal(home: Path, *args: str, typed: str = "", timeout: float = 60,
                    **env_extra: Any) -> tuple[int, str]:
    """Run the CLI with a real pseudo-terminal as stdin/stdout (a person at a terminal) who
    types ``typed`` (plus a newline) when prompted. Returns (exit code, everything printed)."""
    import pty
    import select
    master, slave = pty.openpty()
    p = subprocess.Popen(cli_cmd(home, *args), stdin=slave, stdout=slave, stderr=slave, env=env(**env_extra),
                         start_new_session=True)
    os.close(slave)
    out, sent, deadline = b"", False, time.time() + timeout
    try:
        while time.time() < deadline:
            r, _, _ = select.select([master], [], [], 0.2)
            if r:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
                if not sent and b"type the gate's name" in out:
                    os.write(master, typed.encode() + b"\n")
                    sent = True
            elif p.poll() is not None:
                break
        code = p.wait(timeout=max(1.0, deadline - time.time()))
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)
    return code, out.decode(errors="replace")


def spawn(home: Path, *args: str, **env_extra: Any) -> subprocess.Popen:
    """Start the CLI in the background (its own process group, so a SIGKILL hits only it)."""
    return subprocess.Popen(cli_cmd(home, *args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env(**env_extra), start_new_session=True)


def kill9(p: subprocess.Popen) -> None:
    if p.poll() is None:
        os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    if p.stdout is not None:
        p.stdout.read()


def init_run(home: Path, config: Path, run_id: str = RUN_ID) -> None:
    cli(home, "init", "--config", config, "--run-id", run_id, check=0)


def db(home: Path) -> sqlite3.Connection:
    c = sqlite3.connect(str(Path(home) / ".runner" / "runner.db"), timeout=30)
    c.row_factory = sqlite3.Row
    return c


def rows(home: Path, sql: str, *params: Any) -> list[sqlite3.Row]:
    c = db(home)
    try:
        return c.execute(sql, params).fetchall()
    finally:
        c.close()


def event_kinds(home: Path, step: Optional[str] = None) -> list[str]:
    q = "SELECT kind FROM events" + (" WHERE step = ?" if step else "") + " ORDER BY id"
    return [r[0] for r in rows(home, q, *([step] if step else []))]


def count_events(home: Path, kind: str, step: Optional[str] = None) -> int:
    return sum(1 for k in event_kinds(home, step) if k == kind)


def attempt_counts(home: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows(home, "SELECT step, count(*) FROM attempts GROUP BY step"):
        out[r[0]] = r[1]
    return out


def status_json(home: Path, **env_extra: Any) -> dict:
    p = cli(home, "status", "--json", check=0, **env_extra)
    return json.loads(p.stdout)


def final_dir(home: Path, step: str, run_id: str = RUN_ID) -> Path:
    """The output directory of ``step``'s current succeeded attempt."""
    r = rows(home, "SELECT output_dir FROM attempts WHERE run_id=? AND step=? AND status='succeeded' "
                   "AND invalidated_at IS NULL ORDER BY id DESC LIMIT 1", run_id, step)
    assert r, f"no succeeded attempt of {step} in {home}"
    return Path(home) / r[0][0]


def final_bytes(home: Path, run_id: str = RUN_ID) -> dict[str, bytes]:
    """The toy's final artifacts as bytes: what must be identical between runs."""
    return {"items.jsonl": (final_dir(home, "make_items", run_id) / "items.jsonl").read_bytes(),
            "processed.jsonl": (final_dir(home, "process", run_id) / "processed.jsonl").read_bytes(),
            "summary.json": (final_dir(home, "summarize", run_id) / "summary.json").read_bytes()}


def assert_items_exactly_once(home: Path, n: int, run_id: str = RUN_ID) -> None:
    lines = (final_dir(home, "process", run_id) / "processed.jsonl").read_text().splitlines()
    ids = [json.loads(x)["id"] for x in lines]
    assert ids == list(range(n)), f"processed ids are not 0..{n - 1} exactly once: {ids}"


def wait_for(pred, timeout: float = 30, every: float = 0.05) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(every)
    return False


def batches_done(home: Path, step: str = "process") -> int:
    try:
        return rows(home, "SELECT count(*) FROM batches WHERE step=?", step)[0][0]
    except sqlite3.OperationalError:
        return 0
