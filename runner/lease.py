"""The run lease: who owns a run, whether that owner is provably dead, and the heartbeat.

An owner is (host, pid, process start time). The lease is taken over when it is released,
expired, or its owner is provably gone: same host and the pid no longer exists, or the pid
exists with another start time (reused after a restart). A lease held from another host is
taken over only after it expires: we cannot see that host's processes.
"""
from __future__ import annotations

import os
import socket
import threading
import uuid
from typing import TYPE_CHECKING, Optional

import psutil

from state.errors import LeaseLost

if TYPE_CHECKING:  # `runner status` imports this module: keep sqlmodel off its path
    from state.schema import Lease
    from state.store import Fence, Owner, Store

DEFAULT_TTL_S = 60.0


def hostname() -> str:
    return os.environ.get("RUNNER_HOSTNAME") or socket.gethostname()


def process_start_time(pid: int) -> Optional[float]:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def this_owner() -> "Owner":
    from state.store import Owner  # lazy: sqlmodel; `runner status` checks owners without it
    pid = os.getpid()
    return Owner(owner_id=uuid.uuid4().hex, host=hostname(), pid=pid,
                 pid_start_time=process_start_time(pid) or 0.0)


def dead_reason(lease: Lease) -> Optional[str]:
    """Why the lease's owner is provably dead, or None if it may be alive."""
    if lease.host != hostname():
        return None  # another host: only expiry proves anything
    try:
        proc = psutil.Process(lease.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return f"owner pid {lease.pid} on this host is a zombie"
        started = proc.create_time()
    except psutil.NoSuchProcess:
        return f"owner pid {lease.pid} is gone from this host"
    except psutil.AccessDenied:
        return None
    if abs(started - lease.pid_start_time) > 1.0:
        return f"pid {lease.pid} was reused by another process (start time differs)"
    return None


def owner_alive(lease: Optional[Lease], now: float) -> bool:
    """Whether a lease is held by a live owner (for status; no writes)."""
    if lease is None or lease.released:
        return False
    if lease.host == hostname():
        return dead_reason(lease) is None and lease.expires_at > now - 3 * DEFAULT_TTL_S
    return lease.expires_at > now


class Heartbeat:
    """Renews the lease every ttl/3 in a daemon thread; records loss of the lease."""

    def __init__(self, store: Store, fence: Fence, ttl_s: float):
        self.store, self.fence, self.ttl_s = store, fence, ttl_s
        self.lost: Optional[str] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="runner-heartbeat", daemon=True)

    def start(self) -> "Heartbeat":
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self.store.heartbeat(self.fence, self.ttl_s)
            except LeaseLost as e:
                self.lost = str(e)
                return
            except Exception:  # a busy database: try again next beat; expiry has slack
                continue

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
