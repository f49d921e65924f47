"""Crash safety of `runner resume` with real processes: SIGKILL at random moments, a crash
between renaming an artifact and committing it, poison pills, torn files, param edits.

Run: .venv/bin/pytest -m crash tests/crash -q
"""
from __future__ import annotations

import json
import random
import time

import pytest
import yaml

from helpers_runner import (assert_items_exactly_once, attempt_counts, batches_done, cli, count_events,
                            final_bytes, final_dir, init_run, kill9, rows, spawn, status_json, toy_config,
                            wait_for)

pytestmark = pytest.mark.crash

N = 40


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of the crash-test config: the bytes every crashed run must match."""
    home = tmp_path_factory.mktemp("ref")
    cfg = toy_config(home / "cfg.yaml", items=N, delay=0.02, batch_size=3, max_attempts=50)
    init_run(home, cfg)
    cli(home, "resume", check=0)
    return final_bytes(home)


def _crash_home(tmp_path, **kw):
    cfg = toy_config(tmp_path / "cfg.yaml", **{"items": N, "delay": 0.02, "batch_size": 3, "max_attempts": 50, **kw})
    home = tmp_path / "home"
    home.mkdir()
    init_run(home, cfg)
    return home, cfg


def test_sigkill_at_random_moments_then_resume_is_byte_identical(tmp_path, reference):
    # Kills that interrupt process after it committed a batch do not count toward max_attempts
    # (progress); kills that land before its first batch, or in make_items/summarize, do. On a
    # loaded machine more kills land there, so allow more than the 8 kills can use up.
    home, _ = _crash_home(tmp_path, max_attempts=10)
    rng = random.Random(20240611)
    kills = 0
    for _ in range(8):
        p = spawn(home, "resume")
        # Anchor the random moment at the lease take-over, not at spawn: interpreter start-up
        # takes 0.5-3 s depending on machine load and would swallow most kills.
        wait_for(lambda: p.poll() is not None or any(
            r[0] == p.pid and not r[1] for r in rows(home, "SELECT pid, released FROM leases")), timeout=30)
        time.sleep(rng.uniform(0.0, 0.6))
        if p.poll() is None:
            kills += 1
        kill9(p)
        if p.returncode == 0:
            break
    assert kills >= 3, "the kills never landed while the runner was alive; the test proves nothing"
    cli(home, "resume", check=0)
    print(f"{kills} kills, {count_events(home, 'attempt_interrupted')} interrupted attempts")
    assert final_bytes(home) == reference
    assert_items_exactly_once(home, N)
    # every batch of the final attempt's key is recorded once, no duplicate rows
    b = rows(home, "SELECT idx, count(*) FROM batches WHERE step='process' GROUP BY cache_key, idx")
    assert sorted(r[0] for r in b) == list(range((N + 2) // 3)) and all(r[1] == 1 for r in b)
    interrupted = count_events(home, "attempt_interrupted")
    assert interrupted >= 1, "the event log shows no interrupted attempt"
    st = status_json(home)
    assert st["state"] == "done"
    assert any(e["status"] == "interrupted" for e in st["errors"])
    log = json.loads(cli(home, "log", "--json", "--limit", "1000", "--errors", check=0).stdout)
    assert any(e["kind"] == "attempt_interrupted" for e in log)


def test_crash_between_rename_and_commit(tmp_path, reference):
    home, _ = _crash_home(tmp_path)
    p = cli(home, "resume", RUNNER_FAULT="after_rename:process")
    assert p.returncode == 137, p.stdout + p.stderr
    # the output directory is in place but no attempt says so: the step is not done
    assert rows(home, "SELECT count(*) FROM attempts WHERE step='process' AND status='succeeded'")[0][0] == 0
    assert rows(home, "SELECT status FROM attempts WHERE step='process'")[0][0] == "running"
    cli(home, "resume", check=0)
    assert final_bytes(home) == reference
    assert_items_exactly_once(home, N)
    statuses = [r[0] for r in rows(home, "SELECT status FROM attempts WHERE step='process' ORDER BY id")]
    assert statuses == ["interrupted", "succeeded"]
    # every batch was committed before the crash: the second attempt redid none of them
    assert count_events(home, "ledger_resumed", "process") == 1


def test_poison_pill_is_dead_lettered(tmp_path):
    # item 5 sits in batch 2: the first attempt commits batches 0-1 before dying (progress, so
    # it does not count, like an outside kill); the next two die with no progress and count.
    cfg = toy_config(tmp_path / "cfg.yaml", items=10, batch_size=2, max_attempts=2, crash_on_item=5)
    home = tmp_path / "home"
    home.mkdir()
    init_run(home, cfg)
    codes = [cli(home, "resume").returncode for _ in range(3)]
    assert codes == [9, 9, 9], codes  # the pill kills the process (os._exit(9)) each time
    p = cli(home, "resume")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "dead-lettered" in p.stdout and "runner retry process" in p.stdout
    st = status_json(home)
    assert st["state"] == "dead_lettered"
    assert st["next_action"]["command"] == "runner retry process"
    proc = next(s for s in st["steps"] if s["name"] == "process")
    assert proc["status"] == "dead_lettered"
    assert count_events(home, "step_dead_lettered", "process") == 1
    # still dead-lettered on the next resume, without starting another attempt
    assert cli(home, "resume").returncode == 1
    assert attempt_counts(home)["process"] == 3
    assert [r[0] for r in rows(home, "SELECT status FROM attempts WHERE step='process' ORDER BY id")] == [
        "interrupted", "interrupted", "dead_lettered"]
    # retry clears it: with the pill removed from the config, the run completes
    toy_config(cfg, items=10, batch_size=2, max_attempts=2)
    cli(home, "retry", "process", check=0)
    cli(home, "resume", check=0)
    assert_items_exactly_once(home, 10)


def test_edited_artifact_is_detected_and_its_producer_rerun(tmp_path, reference):
    home, _ = _crash_home(tmp_path, delay=0.0)
    cli(home, "resume", check=0)
    target = final_dir(home, "process") / "processed.jsonl"
    with open(target, "ab") as f:
        f.write(b"x")
    p = cli(home, "resume", check=0)
    assert "changed" in p.stdout
    assert count_events(home, "artifact_mismatch", "process") == 1
    assert final_bytes(home) == reference
    assert attempt_counts(home) == {"make_items": 1, "process": 2, "summarize": 1}


def test_torn_ledger_batch_is_redone(tmp_path, reference):
    home, _ = _crash_home(tmp_path)
    p = spawn(home, "resume")
    assert wait_for(lambda: batches_done(home) >= 4, timeout=30), "no batches were committed"
    kill9(p)
    batch = rows(home, "SELECT path FROM batches WHERE step='process' AND idx=1")[0][0]
    path = home / batch
    assert ".work-" in batch and "ledger-items" in batch
    path.write_bytes(path.read_bytes()[:-7])  # torn: the tail is gone
    cli(home, "resume", check=0)
    assert count_events(home, "batch_torn", "process") == 1
    assert final_bytes(home) == reference
    assert_items_exactly_once(home, N)


def test_param_edit_reruns_only_affected_steps(tmp_path):
    cfg = toy_config(tmp_path / "cfg.yaml", items=12, batch_size=3)
    home = tmp_path / "home"
    home.mkdir()
    init_run(home, cfg)
    cli(home, "resume", check=0)
    assert attempt_counts(home) == {"make_items": 1, "process": 1, "summarize": 1}

    def edit(section, **kv):
        data = yaml.safe_load(cfg.read_text())
        data["params"][section].update(kv)
        cfg.write_text(yaml.safe_dump(data))

    # batch_size changes process's output (batch indices, seeds): process + summarize re-run
    edit("process", batch_size=4)
    cli(home, "resume", check=0)
    assert attempt_counts(home) == {"make_items": 1, "process": 2, "summarize": 2}
    # delay changes process's key but not its bytes: process re-runs, summarize is reused
    # (its inputs' content hashes are unchanged)
    edit("process", delay=0.001)
    cli(home, "resume", check=0)
    assert attempt_counts(home) == {"make_items": 1, "process": 3, "summarize": 2}
    # items changes everything downstream of make_items
    edit("make_items", items=15)
    cli(home, "resume", check=0)
    assert attempt_counts(home) == {"make_items": 2, "process": 4, "summarize": 3}
    assert_items_exactly_once(home, 15)
    # back to the original config: every step is found done already (cache hit), nothing re-runs
    toy_config(cfg, items=12, batch_size=3)
    out = cli(home, "resume", check=0).stdout
    assert attempt_counts(home) == {"make_items": 2, "process": 4, "summarize": 3}
    for s in ("make_items", "process", "summarize"):
        assert f"= {s}: done earlier (attempt 1," in out, out
