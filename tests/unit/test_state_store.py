"""The state store's guarantees: fenced writes, exactly-once completion, SQLite settings, and
network file system detection.

Run: .venv/bin/pytest tests/unit/test_state_store.py -q
"""
from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from state.db import StateError
from state.mounts import FsKind, classify, filesystem_kind, is_network_fstype, parse_mountinfo
from state.schema import Attempt
from state.store import LeaseLost, Owner, Store


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path)
    s.create_run("r", "runner.examples.toy:pipeline", None, {}, [], seed=1)
    yield s
    s.close()


def _owner(n: int) -> Owner:
    return Owner(owner_id=f"owner-{n}", host="h", pid=1000 + n, pid_start_time=1.0)


def _take(store, n, dead="dead for the test"):
    fence, holder, _ = store.acquire_lease("r", _owner(n), 60, lambda lease: dead)
    assert fence is not None, holder
    return fence


def test_stale_generation_write_raises_lease_lost_and_writes_nothing(store):
    old = _take(store, 1)
    new = _take(store, 2)  # takes over: the holder is "dead"
    assert new.generation == old.generation + 1
    with pytest.raises(LeaseLost, match="now held by h:1002"):
        store.start_attempt(old, "s", "1", "k", {}, {})
    with pytest.raises(LeaseLost):
        store.heartbeat(old, 60)
    with pytest.raises(LeaseLost):
        store.update_run(old, "r", status="running")
    assert store.attempts("r") == []
    store.start_attempt(new, "s", "1", "k", {}, {})  # the new owner writes fine
    assert len(store.attempts("r")) == 1


def test_live_holder_is_not_taken_over(store):
    _take(store, 1)
    fence, holder, why = store.acquire_lease("r", _owner(2), 60, lambda lease: None)
    assert fence is None and holder.pid == 1001 and "held by h pid 1001" in why


def test_released_lease_is_free_and_expired_lease_is_taken(store):
    f = _take(store, 1)
    store.release_lease(f)
    fence, _, why = store.acquire_lease("r", _owner(2), 60, lambda lease: None)
    assert fence is not None and why == "free"
    store.heartbeat(fence, -5)  # expired five seconds ago
    fence3, _, why = store.acquire_lease("r", _owner(3), 60, lambda lease: None)
    assert fence3 is not None and why.startswith("expired")


def test_duplicate_completion_raises(store):
    f = _take(store, 1)
    a = store.start_attempt(f, "s", "1", "k", {}, {})
    store.succeed_attempt(f, a, "out", "h", [("x.txt", 1, "d")], {"n": 1})
    with pytest.raises(StateError, match="duplicate completion"):
        store.succeed_attempt(f, a, "out", "h", [("x.txt", 1, "d")], {"n": 1})
    b = store.start_attempt(f, "s", "1", "k", {}, {})
    assert b.number == 2
    with pytest.raises(StateError, match="already succeeded"):
        store.succeed_attempt(f, b, "out2", "h2", [], None)
    assert [x.status for x in store.attempts("r", "s")] == ["succeeded", "running"]
    assert len(store.artifacts(a.id)) == 1 and store.artifacts(b.id) == []


def test_duplicate_attempt_number_fails_loudly(store):
    f = _take(store, 1)
    a = store.start_attempt(f, "s", "1", "k", {}, {})
    with pytest.raises(IntegrityError):
        with store.db.write() as s:
            s.add(Attempt(run_id="r", step="s", step_version="1", cache_key="k", number=a.number,
                          status="running", owner_id="x", lease_generation=1, started_at=0.0))


def test_orphans_of_a_dead_owner_become_interrupted(store):
    f1 = _take(store, 1)
    a = store.start_attempt(f1, "s", "1", "k", {}, {})
    f2 = _take(store, 2)
    orphans = store.mark_orphans_interrupted(f2)
    assert [o.id for o in orphans] == [a.id]
    assert store.attempts("r")[0].status == "interrupted"
    assert [x.status for x in store.counting_failures("r", "s", "k")] == ["interrupted"]
    assert [e.kind for e in store.events("r", kinds=["attempt_interrupted"])] == ["attempt_interrupted"]


def test_sqlite_settings(tmp_path, monkeypatch):
    monkeypatch.delenv("RUNNER_FS_TYPE", raising=False)
    monkeypatch.delenv("RUNNER_NETWORK_FS", raising=False)
    s = Store.open(tmp_path)
    try:
        with s.db.writer.connect() as c:
            if not filesystem_kind(tmp_path).network:
                assert c.execute(text("PRAGMA journal_mode")).scalar().lower() == "wal"
            assert c.execute(text("PRAGMA busy_timeout")).scalar() >= 30000
            assert c.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
    finally:
        s.close()


def test_network_fs_uses_delete_journal(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNNER_FS_TYPE", "nfs")
    monkeypatch.delenv("RUNNER_NETWORK_FS", raising=False)
    s = Store.open(tmp_path)
    try:
        assert s.db.journal_mode == "DELETE"
        with s.db.writer.connect() as c:
            assert c.execute(text("PRAGMA journal_mode")).scalar().lower() == "delete"
        s.create_run("r", "p:x", None, {}, [], 0)  # still usable
        assert s.run_ids() == ["r"]
    finally:
        s.close()


def test_network_fs_refused_on_request(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNNER_FS_TYPE", "nfs4")
    monkeypatch.setenv("RUNNER_NETWORK_FS", "refuse")
    with pytest.raises(StateError, match=r"network file system \(nfs4\).*pod-local disk.*Postgres"):
        Store.open(tmp_path)
    assert not (tmp_path / ".runner" / "runner.db").exists()


MOUNTINFO = r"""22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:26 / /proc rw,nosuid - proc proc rw
40 22 0:40 / /workspace rw,relatime shared:5 - nfs4 10.0.0.5:/export rw,vers=4.1
41 22 0:41 / /mnt/share rw,relatime - cifs //server/share rw
42 22 0:42 / /mnt/remote\040dir rw,nosuid - fuse.sshfs user@host:/data rw
43 22 0:43 / /var/lib/docker/overlay2/merged rw - overlay overlay rw,lowerdir=/a
44 40 8:2 / /workspace/local rw - ext4 /dev/sdb1 rw
"""


def test_parse_mountinfo_decodes_escapes():
    mounts = parse_mountinfo(MOUNTINFO)
    assert ("/", "ext4") in mounts
    assert ("/mnt/remote dir", "fuse.sshfs") in mounts
    assert ("/workspace", "nfs4") in mounts and len(mounts) == 7


@pytest.mark.parametrize("path, mount, fstype, network", [
    ("/workspace/run/.runner", "/workspace", "nfs4", True),
    ("/workspace", "/workspace", "nfs4", True),
    ("/workspace/local/x", "/workspace/local", "ext4", False),  # the longest prefix wins
    ("/workspaces/x", "/", "ext4", False),  # a prefix of the name is not a parent directory
    ("/mnt/share/h", "/mnt/share", "cifs", True),
    ("/mnt/remote dir/h", "/mnt/remote dir", "fuse.sshfs", True),
    ("/var/lib/docker/overlay2/merged/app", "/var/lib/docker/overlay2/merged", "overlay", False),
    ("/home/me", "/", "ext4", False),
])
def test_classify(path, mount, fstype, network):
    from pathlib import Path
    assert classify(Path(path), parse_mountinfo(MOUNTINFO)) == FsKind(mount, fstype, network)


@pytest.mark.parametrize("fstype, network", [
    ("nfs", True), ("NFS4", True), ("cifs", True), ("smb3", True), ("ceph", True), ("lustre", True),
    ("fuse.sshfs", True), ("fuse.s3fs", True), ("fuse.juicefs", True), ("ext4", False), ("xfs", False),
    ("overlay", False), ("tmpfs", False), ("fuse", False), ("fuse.lxcfs", False), ("btrfs", False),
])
def test_is_network_fstype(fstype, network):
    assert is_network_fstype(fstype) is network


def test_filesystem_kind_override(monkeypatch, tmp_path):
    monkeypatch.setenv("RUNNER_FS_TYPE", "cifs")
    assert filesystem_kind(tmp_path).network
    monkeypatch.setenv("RUNNER_FS_TYPE", "ext4")
    assert not filesystem_kind(tmp_path).network


def test_interrupted_attempt_with_progress_does_not_count_toward_dead_lettering(store):
    f1 = _take(store, 1)
    a = store.start_attempt(f1, "s", "1", "k", {}, {})
    store.commit_batch(f1, "s", "k", "main", 0, 3, "x/b0.json", "d0", a.id)  # progress, then killed
    f2 = _take(store, 2)
    store.mark_orphans_interrupted(f2)
    b = store.start_attempt(f2, "s", "1", "k", {}, {})  # killed before finishing any batch
    f3 = _take(store, 3)
    store.mark_orphans_interrupted(f3)
    c = store.start_attempt(f3, "s", "1", "k", {}, {})
    store.fail_attempt(f3, c, "Traceback ...\nRuntimeError: boom")  # failures always count
    assert [x.id for x in store.counting_failures("r", "s", "k")] == [b.id, c.id]
    assert store.counting_failures("r", "s", "other") == []
