"""`runner brief` at each state of the toy run, its bounds and scrubbing, and the network-FS
detection that decides the state DB's journal mode.

    .venv/bin/pytest tests/unit/test_brief.py -q
"""
from __future__ import annotations

import json
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from runner.brief import MAX_CHARS, build_brief, render_markdown
from runner.cli import main

TOY = Path(__file__).resolve().parents[2] / "runner" / "examples" / "toy.yaml"


def write_cfg(d: Path, gate: str = "human", fail_on_item: int = -1, items: int = 8) -> Path:
    cfg = d / "cfg.yaml"
    cfg.write_text(
        "pipeline: runner.examples.toy:pipeline\nseed: 1234\nmax_attempts: 3\n"
        f"params:\n  make_items: {{items: {items}}}\n"
        f"  process: {{delay: 0.0, batch_size: 4, fail_on_item: {fail_on_item}}}\n"
        f"gates:\n  approve_items: {{policy: {gate}}}\n")
    return cfg


def brief_md(home: Path) -> str:
    return render_markdown(build_brief(home))


def next_cmds(home: Path) -> list[str]:
    return build_brief(home)["next_commands"]


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RUNNER_HOME", raising=False)
    monkeypatch.delenv("RUNNER_RUN", raising=False)
    return tmp_path


def test_no_run_names_the_start_command_and_creates_nothing(home):
    b = build_brief(home)
    assert b["state"] == "no_run"
    assert b["next_commands"][0].startswith("runner run --config")
    assert "No run yet" in render_markdown(b)
    assert not (home / ".runner").exists()


def test_created_run_says_resume(home):
    assert main(["--home", str(home), "init", "--config", str(write_cfg(home)), "--run-id", "toy"]) == 0
    b = build_brief(home)
    assert b["state"] == "created" and b["run"] == "toy"
    assert b["next_commands"][0] == "runner resume --detach"
    assert "runner wait --timeout 540" in b["next_commands"][1]
    md = render_markdown(b)
    assert "`runner resume --detach`" in md and "## Do not" in md and "exit code 4" in md


def test_at_gate_names_show_and_warns_about_approving(home):
    assert main(["--home", str(home), "run", "--config", str(write_cfg(home)), "--run-id", "toy"]) == 3
    b = build_brief(home)
    assert b["state"] == "waiting" and b["detail"] == "approve_items"
    assert b["next_commands"][0].startswith("runner show approve_items")
    assert "ONLY if the operator authorised it" in b["next_commands"][1]
    assert b["waiting"][0]["gate"] == "approve_items"
    md = render_markdown(b)
    assert "**approve_items** (human) WAITS" in md
    assert "make_items: {\"items\": 8}" in md  # finished step with its one-line summary


def test_failed_names_the_error_and_resume(home):
    cfg = write_cfg(home, gate="auto", fail_on_item=5)
    assert main(["--home", str(home), "run", "--config", str(cfg), "--run-id", "toy"]) == 1
    b = build_brief(home)
    assert b["state"] == "failed" and b["detail"] == "process"
    assert any("cannot process item 5" in f["error"] for f in b["failures"])
    assert b["next_commands"][0].startswith("runner log --errors")
    assert b["next_commands"][1].startswith("runner resume --detach")
    assert "cannot process item 5" in render_markdown(b)


def test_done_says_nothing_to_do(home):
    assert main(["--home", str(home), "run", "--config", str(write_cfg(home, gate="auto")), "--run-id", "toy"]) == 0
    b = build_brief(home)
    assert b["state"] == "done" and b["next_commands"] == []
    assert [f["step"] for f in b["finished"]] == ["make_items", "process", "summarize"]
    assert "nothing: the run is done" in render_markdown(b)


def test_running_names_owner_progress_and_wait(home):
    from runner.lease import this_owner
    from state.store import Store
    assert main(["--home", str(home), "init", "--config", str(write_cfg(home)), "--run-id", "toy"]) == 0
    store = Store.open(home)
    owner = this_owner()  # this test process is the live owner
    fence, _, _ = store.acquire_lease("toy", owner, 60.0, lambda lease: None)
    a = store.start_attempt(fence, "process", "1", "k" * 64, {}, {})
    store.update_run(fence, "toy", status="running", status_detail="process")
    for i in range(3):
        store.commit_batch(fence, "process", "k" * 64, "items", i, 4, f"x/b{i}", "0" * 64, a.id)
    b = build_brief(home)
    assert b["state"] == "running"
    assert b["running"]["pid"] == owner.pid and b["running"]["step"] == "process"
    assert b["running"]["batches"]["batches"] == 3 and b["running"]["batches"]["items"] == 12
    assert b["next_commands"][0].startswith("runner wait --timeout 540")
    md = render_markdown(b)
    assert f"pid {owner.pid}" in md and "3 batches (12 items) committed" in md
    store.close()


def test_other_home_and_run_are_named_in_commands(home, tmp_path_factory):
    other = tmp_path_factory.mktemp("elsewhere")
    assert main(["--home", str(other), "init", "--config", str(write_cfg(other)), "--run-id", "a"]) == 0
    assert main(["--home", str(other), "init", "--config", str(write_cfg(other)), "--run-id", "b"]) == 0
    b = build_brief(other, run_id="a")
    assert b["next_commands"][0] == f"runner --home {other.resolve()} resume --detach --run a"
    assert b["other_runs"] == ["b"]


def test_bounded_with_100k_events_and_long_strings(home):
    assert main(["--home", str(home), "run", "--config", str(write_cfg(home)), "--run-id", "toy"]) == 3
    con = sqlite3.connect(home / ".runner" / "runner.db")
    t = time.time()
    con.executemany("INSERT INTO events (run_id, ts, kind, message) VALUES (?, ?, ?, ?)",
                    [("toy", t, "step_log", f"event {i} " + "x" * 400) for i in range(100_000)])
    con.commit()
    con.close()
    t0 = time.time()
    b = build_brief(home)
    md = render_markdown(b)
    assert time.time() - t0 < 5.0
    assert b["events_total"] > 100_000
    assert len(md) <= MAX_CHARS
    assert len(b["recent_events"]) == 8
    assert all(len(e["message"]) <= 160 for e in b["recent_events"])
    assert len(json.dumps(b)) < 12_000


def test_secrets_are_scrubbed(home, monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-very-secret-value-42")
    monkeypatch.setenv("DB_PASSWORD", "hunter2hunter2")
    assert main(["--home", str(home), "run", "--config", str(write_cfg(home)), "--run-id", "toy"]) == 3
    from state.store import Store
    store = Store.open(home)
    store.event("toy", "agent_note", "keys: tok-very-secret-value-42 hunter2hunter2 sk-abcdefghijklmnop123")
    store.close()
    text = render_markdown(build_brief(home)) + json.dumps(build_brief(home))
    for secret in ("tok-very-secret-value-42", "hunter2hunter2", "sk-abcdefghijklmnop123"):
        assert secret not in text
    assert "[REDACTED]" in text


def test_brief_cli_json_and_no_torch(home):
    import subprocess
    assert main(["--home", str(home), "run", "--config", str(write_cfg(home)), "--run-id", "toy"]) == 3
    code = ("import sys, runpy; sys.argv=['runner','--home',%r,'brief','--json'];"
            "import runner.cli as c; rc=c.main(sys.argv[1:]);"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import';"
            "sys.exit(rc)") % str(home)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["state"] == "waiting"


# ---- state on a volume: network file system detection ----------------------------------------------
MOUNTINFO = """\
22 1 0:21 / / rw,relatime shared:1 - overlay overlay rw,lowerdir=/a
40 22 0:35 / /workspace rw,relatime shared:20 - nfs4 10.0.0.5:/vol rw,vers=4.1
41 22 8:1 / /workspace/local rw,relatime shared:21 - ext4 /dev/sda1 rw
42 22 0:40 / /mnt/s3 rw - fuse.s3fs s3fs rw
43 22 0:41 / /mnt/my\\040disk rw - xfs /dev/sdb rw
44 22 0:42 / /mnt/sshfs rw - fuse.sshfs host:/ rw
45 22 0:43 / /mnt/loc rw - fuse.lxcfs lxcfs rw
"""


def test_mountinfo_classification():
    from state.mounts import classify, parse_mountinfo
    mounts = parse_mountinfo(MOUNTINFO)
    assert ("/mnt/my disk", "xfs") in mounts
    assert classify(Path("/workspace/runs"), mounts).network is True
    assert classify(Path("/workspace/runs"), mounts).fstype == "nfs4"
    assert classify(Path("/workspace/local/runs"), mounts).network is False  # longest prefix wins
    assert classify(Path("/workspacex"), mounts).fstype == "overlay"  # not a path prefix
    assert classify(Path("/mnt/s3/x"), mounts).network is True
    assert classify(Path("/mnt/sshfs"), mounts).network is True
    assert classify(Path("/mnt/loc/x"), mounts).network is False
    assert classify(Path("/root"), mounts).network is False


def test_network_fs_policy_delete_and_refuse(tmp_path, monkeypatch):
    from state.db import StateError, open_database
    monkeypatch.setenv("RUNNER_FS_TYPE", "nfs4")
    monkeypatch.delenv("RUNNER_NETWORK_FS", raising=False)
    db = open_database(path=tmp_path / "a" / "runner.db")
    assert db.journal_mode == "DELETE" and db.fs.network
    db.close()
    con = sqlite3.connect(tmp_path / "a" / "runner.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    con.close()
    monkeypatch.setenv("RUNNER_NETWORK_FS", "refuse")
    with pytest.raises(StateError, match="network file system.*pod-local disk or use a Postgres URL"):
        open_database(path=tmp_path / "b" / "runner.db")
    monkeypatch.setenv("RUNNER_NETWORK_FS", "bogus")
    with pytest.raises(StateError, match="RUNNER_NETWORK_FS='bogus'"):
        open_database(path=tmp_path / "c" / "runner.db")
    monkeypatch.setenv("RUNNER_FS_TYPE", "ext4")
    db = open_database(path=tmp_path / "d" / "runner.db")
    assert db.journal_mode == "WAL" and not db.fs.network
    db.close()
