"""Gates with the LLM reviewer: policies, memoization, fail-closed, audit, secrets.

The real `openai` client talks to a scripted OpenAI-compatible server on 127.0.0.1
(tests/unit/review_server.py); the runner is driven through its CLI entry point in-process,
and in a subprocess for the kill test.
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

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from review_server import FakeReviewServer, http_error, text_reply, verdict_reply  # noqa: E402

from runner.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-test-SECRETVALUE-0123456789abcdef"


def write_cfg(tmp: Path, base_url: str, policy: str, **process) -> Path:
    cfg = {
        "pipeline": "runner.examples.toy:pipeline", "seed": 7, "max_attempts": 3,
        "params": {"make_items": {"items": 6}, "process": {"delay": 0.0, "batch_size": 2, **process}},
        "gates": {"approve_items": {"policy": policy, "criteria": ["items are well formed"]}},
        "reviewer": {"base_url": base_url, "model": "fake-reviewer", "timeout_s": 2, "max_retries": 1,
                     "backoff_s": 0.01, "reasoning_effort": None},
    }
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("RUNNER_RUN", raising=False)
    h = tmp_path / "home"
    h.mkdir()
    return h


def run(home: Path, *args: str) -> int:
    return main(["--home", str(home), *args])


def reviews(home: Path) -> list[tuple]:
    con = sqlite3.connect(home / ".runner" / "runner.db")
    try:
        return con.execute("SELECT gate, ok, decision, error, tokens_in FROM reviews ORDER BY id").fetchall()
    finally:
        con.close()


def test_go_passes_and_is_recorded(home, tmp_path):
    with FakeReviewServer(script=[verdict_reply("GO", summary="fine")]) as srv:
        cfg = write_cfg(tmp_path, srv.base_url, "review")
        assert run(home, "run", "--config", str(cfg)) == 0
        assert srv.count == 1
    [(gate, ok, decision, error, tokens)] = reviews(home)
    assert (gate, ok, decision, error) == ("approve_items", 1, "GO", None) and tokens > 0
    audit = list((home / "artifacts").glob("*/reviews/*"))
    assert any(p.name.endswith(".request.md") for p in audit) and any(p.name.endswith(".json") for p in audit)


@pytest.mark.parametrize("decision", ["NO-GO", "MODIFY"])
def test_nogo_and_modify_wait_for_a_human(home, tmp_path, capsys, decision):
    with FakeReviewServer(script=[verdict_reply(decision, summary="needs work")]) as srv:
        cfg = write_cfg(tmp_path, srv.base_url, "review")
        assert run(home, "run", "--config", str(cfg)) == 3
        assert run(home, "resume") == 3          # memoized: no second call
        assert srv.count == 1
        capsys.readouterr()
        run(home, "status", "--json")
        st = json.loads(capsys.readouterr().out)
        gate = st["gates"][0]
        assert gate["status"] == "pending" and gate["review"]["decision"] == decision
        assert decision in gate["wait_reason"]
        assert st["next_action"]["command"] == "runner show approve_items"
        assert run(home, "approve", "approve_items", "--note", "human overrides") == 0
        assert run(home, "resume") == 0
        assert srv.count == 1


def test_review_plus_human_always_waits(home, tmp_path):
    with FakeReviewServer(script=[verdict_reply("GO")]) as srv:
        cfg = write_cfg(tmp_path, srv.base_url, "review+human")
        assert run(home, "run", "--config", str(cfg)) == 3
        assert srv.count == 1
    assert reviews(home)[0][2] == "GO"


def test_server_error_then_success_is_retried(home, tmp_path):
    with FakeReviewServer(script=[http_error(500), verdict_reply("GO")]) as srv:
        cfg = write_cfg(tmp_path, srv.base_url, "review")
        assert run(home, "run", "--config", str(cfg)) == 0
        assert srv.count == 2


@pytest.mark.parametrize("script", [[text_reply("I think it is probably fine?")] * 4, [http_error(500)] * 4])
def test_garbage_or_persistent_errors_fail_closed(home, tmp_path, capsys, script):
    with FakeReviewServer(script=list(script), default=script[0]) as srv:
        cfg = write_cfg(tmp_path, srv.base_url, "review")
        assert run(home, "run", "--config", str(cfg)) == 3
    capsys.readouterr()
    run(home, "status", "--json")
    st = json.loads(capsys.readouterr().out)
    assert "failed closed" in st["gates"][0]["wait_reason"]
    assert reviews(home)[0][1] == 0


def test_no_key_falls_back_to_a_human_without_calling(home, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("OPENAI_API_KEY")
    with FakeReviewServer() as srv:
        cfg = write_cfg(tmp_path, srv.base_url, "review")
        assert run(home, "run", "--config", str(cfg)) == 3
        assert srv.count == 0
    out = capsys.readouterr().out
    assert "OPENAI_API_KEY" in out and "a human decides" in out


def test_explicit_review_reasks_and_applies_policy(home, tmp_path):
    with FakeReviewServer(script=[verdict_reply("MODIFY"), verdict_reply("GO")]) as srv:
        cfg = write_cfg(tmp_path, srv.base_url, "review")
        assert run(home, "run", "--config", str(cfg)) == 3
        assert run(home, "review", "approve_items") == 0   # GO now: approved by the reviewer
        assert srv.count == 2
        assert run(home, "resume") == 0
        assert srv.count == 2


def test_api_key_is_in_no_file_under_home(home, tmp_path):
    with FakeReviewServer(script=[http_error(401, f"bad key {KEY}"), verdict_reply("NO-GO", summary=f"key {KEY}")]) as srv:
        cfg = write_cfg(tmp_path, srv.base_url, "review")
        run(home, "run", "--config", str(cfg))
        run(home, "review", "approve_items")
    for p in home.rglob("*"):
        if p.is_file():
            assert KEY.encode() not in p.read_bytes(), p


@pytest.mark.crash
def test_reviewer_called_once_across_kill_and_resume(home, tmp_path):
    """GO is recorded, the runner is SIGKILLed while processing, resume never asks again."""
    with FakeReviewServer(default=verdict_reply("GO")) as srv:
        cfg = write_cfg(tmp_path, srv.base_url, "review", delay=0.3)
        env = {**os.environ, "OPENAI_API_KEY": KEY, "RUNNER_LEASE_TTL": "3"}
        cmd = [sys.executable, "-m", "runner", "--home", str(home), "run", "--config", str(cfg)]
        p = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while time.time() < deadline and not list((home / "artifacts").glob("*/process/.work-*/ledger-items/b*")):
            time.sleep(0.05)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        assert srv.count == 1
        r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert srv.count == 1
    assert len(reviews(home)) == 1
