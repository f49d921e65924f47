"""File-system facts the state layer needs: is a directory on a network file system?

SQLite's WAL mode needs shared memory and POSIX locks that network file systems (NFS, SMB,
Ceph, Lustre, FUSE mounts of object stores...) do not provide reliably; a pod's "network
volume" is often one of these. ``filesystem_kind`` reads ``/proc/self/mountinfo`` (Linux) and
classifies the mount that holds a path. Elsewhere it reports "unknown" and local.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

NETWORK_FS = {
    "nfs", "nfs4", "cifs", "smb", "smb2", "smb3", "smbfs", "ceph", "glusterfs", "lustre",
    "gpfs", "afs", "beegfs", "9p", "ncpfs", "coda", "davfs", "orangefs", "pvfs2", "ocfs2",
}
NETWORK_FUSE = ("sshfs", "s3fs", "gcsfuse", "juicefs", "goofys", "rclone", "mountpoint-s3",
                "blobfuse", "cephfs", "glusterfs", "lizardfs", "moosefs", "weka")


@dataclass(frozen=True)
class FsKind:
    mount_point: str
    fstype: str
    network: bool


def is_network_fstype(fstype: str) -> bool:
    t = fstype.lower()
    if t in NETWORK_FS:
        return True
    if t.startswith("fuse"):
        return any(name in t for name in NETWORK_FUSE)
    return False


def parse_mountinfo(text: str) -> list[tuple[str, str]]:
    """(mount point, fstype) pairs from /proc/self/mountinfo text (octal escapes decoded)."""
    out = []
    for line in text.splitlines():
        if " - " not in line:
            continue
        left, right = line.split(" - ", 1)
        fields = left.split()
        if len(fields) < 5:
            continue
        mount_point = fields[4].encode().decode("unicode_escape")
        fstype = right.split()[0] if right.split() else ""
        out.append((mount_point, fstype))
    return out


def classify(path: Path, mounts: list[tuple[str, str]]) -> FsKind:
    """The mount holding ``path``: the longest mount point that is a prefix of it."""
    p = str(path)
    best = ("/", "unknown")
    for mp, fstype in mounts:
        if (p == mp or p.startswith(mp.rstrip("/") + "/") or mp == "/") and len(mp) >= len(best[0]):
            best = (mp, fstype)
    return FsKind(best[0], best[1], is_network_fstype(best[1]))


def filesystem_kind(path: Path) -> FsKind:
    """Classify the file system of ``path``. ``RUNNER_FS_TYPE`` overrides it (for tests)."""
    forced = os.environ.get("RUNNER_FS_TYPE")
    if forced:
        return FsKind("(forced)", forced, is_network_fstype(forced))
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return FsKind("/", "unknown", False)
    return classify(Path(os.path.realpath(path)), parse_mountinfo(text))
