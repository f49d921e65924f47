"""Reviewer `command` backend with a small Python script standing in for a CLI like `codex exec -`.

Run: .venv/bin/python -m pytest tests/unit/test_review_command.py -q
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from runner.review import ReviewerConfig, ReviewRequest, review

FAKE_CLI = r'''
import json, os, subprocess, sys, time
mode = sys.argv[1]
prompt = sys.stdin.read()
if mode == "go" and len(sys.argv) > 2:
    open(sys.argv[2], "w", encoding="utf-8").write(prompt)
assert "# Gate review request: " in prompt
if mode == "go":
    print("thinking... done")
    print(json.dumps({"decision": "GO", "summary": "fine", "reasons": ["criteria met"], "requested_changes": []}))
elif mode == "nogo":
    print("**DECISION:** NO-GO\nSUMMARY: contaminated\nREASONS:\n- assistant-style refusals in samples\n")
elif mode == "garbage":
    print("I could not decide; maybe?")
elif mode == "fail":
    print("partial output")
    print("fatal: not logged in", file=sys.stderr)
    sys.exit(3)
elif mode == "hang":
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    open(sys.argv[2], "w").write(str(child.pid))
    time.sleep(60)
'''


@pytest.fixture
def cli(tmp_path) -> Path:
    p = tmp_path / "fake_cli.py"
    p.write_text(FAKE_CLI, encoding="utf-8")
    return p


def request() -> ReviewRequest:
    return ReviewRequest(gate="sft_gate", run_id="r1", criteria="win rate >= 0.55",
                         evidence={"eval": {"win_rate": 0.61, "n": 200}}, samples=[{"id": 1}])


def cfg(cli: Path, *args: str, timeout: float = 2.0) -> ReviewerConfig:
    return ReviewerConfig(backend="command", command=[sys.executable, str(cli), *args], timeout_s=timeout)


def test_command_go_gets_exact_request_on_stdin(tmp_path, cli):
    seen = tmp_path / "stdin.txt"
    out = review(request(), cfg(cli, "go", str(seen)), tmp_path / "reviews", env={})
    assert out.ok and out.verdict.decision == "GO" and out.verdict.reasons == ["criteria met"]
    assert out.backend == "command" and out.attempts == 1
    assert seen.read_text(encoding="utf-8") == out.request_path.read_text(encoding="utf-8")
    rec = json.loads(out.response_path.read_text())
    assert rec["raw_response"]["returncode"] == 0 and "thinking" in rec["raw_response"]["stdout"]


def test_command_nogo_line_format(tmp_path, cli):
    out = review(request(), cfg(cli, "nogo"), tmp_path, env={})
    assert out.ok and out.verdict.decision == "NO-GO"
    assert out.verdict.summary == "contaminated"
    assert out.verdict.reasons == ["assistant-style refusals in samples"]


def test_command_garbage_fails_closed(tmp_path, cli):
    out = review(request(), cfg(cli, "garbage"), tmp_path, env={})
    assert not out.ok and out.error.startswith("unparseable reviewer answer")


def test_command_nonzero_exit_fails_closed(tmp_path, cli):
    out = review(request(), cfg(cli, "fail"), tmp_path, env={})
    assert not out.ok and "exited with status 3" in out.error and "not logged in" in out.error
    rec = json.loads(out.response_path.read_text())
    assert rec["raw_response"]["stdout"].strip() == "partial output"


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, just not reaped yet


def test_command_hang_is_killed_with_its_children(tmp_path, cli):
    pidfile = tmp_path / "child.pid"
    t0 = time.monotonic()
    out = review(request(), cfg(cli, "hang", str(pidfile), timeout=0.7), tmp_path, env={})
    elapsed = time.monotonic() - t0
    assert not out.ok and "timed out after 0.7 s" in out.error
    assert elapsed < 3, f"hung command must be cut at the timeout, took {elapsed:.2f}s"
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 2
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(child), "the whole process group must be killed, grandchildren included"


def test_command_not_found_fails_closed(tmp_path):
    c = ReviewerConfig(backend="command", command=["definitely-not-a-reviewer-cli-xyz", "exec", "-"], timeout_s=1)
    out = review(request(), c, tmp_path, env={})
    assert not out.ok and "not found" in out.error


def test_command_backend_needs_no_api_key(tmp_path, cli):
    out = review(request(), cfg(cli, "go"), tmp_path, env={})
    assert out.ok


def test_command_string_is_split_without_shell():
    c = ReviewerConfig.from_mapping({"backend": "command", "command": "codex exec --skip-git-repo-check -"}, env={})
    assert c.command == ["codex", "exec", "--skip-git-repo-check", "-"]
