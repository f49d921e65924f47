"""Typed operations on the state database, used by the engine and the CLI.

Every write that belongs to a run's live runner is *fenced*: it runs inside a ``BEGIN
IMMEDIATE`` transaction that first checks the run's lease still carries the caller's
generation, so a runner that lost its lease (it stalled past expiry and was taken over) can
never write again: it gets ``LeaseLost``. Writes that need no live runner (``approve``,
``reject``, notes) are plain transactions.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from state.db import Database, StateError, open_database
from state.errors import LeaseLost  # noqa: F401  (re-exported: state.store.LeaseLost)
from state.files import canonical_json
from state.schema import (Artifact, Attempt, Batch, Cost, Event, Gate, GateDecision, Lease,
                          Review, Run)

STATE_DIR = ".runner"
PROGRESS_EVENT = "step_progress"  # a step's durable progress marker (see counting_failures)
DB_NAME = "runner.db"




@dataclass(frozen=True)
class Fence:
    run_id: str
    owner_id: str
    generation: int


@dataclass(frozen=True)
class Owner:
    owner_id: str
    host: str
    pid: int
    pid_start_time: float


def now() -> float:
    return time.time()


def dumps(obj: Any) -> str:
    return canonical_json(obj)


class Store:
    """The state of every run under one home directory."""

    def __init__(self, home: Path, db: Database):
        self.home = Path(home)
        self.db = db

    # ---- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, home: Path, db_url: str | None = None, create: bool = True) -> "Store":
        home = Path(home).resolve()
        try:
            home.stat()
        except FileNotFoundError:
            pass
        except OSError as e:  # e.g. a parent directory we may not enter: not a traceback
            raise StateError(f"cannot access home directory {home}: {e.strerror}; fix its permissions "
                             "or choose another --home or RUNNER_HOME") from e
        if not home.exists():
            if not create:
                raise StateError(f"home directory {home} does not exist; pass --home or set RUNNER_HOME")
            try:
                home.mkdir(parents=True)
            except OSError as e:
                raise StateError(f"cannot create home directory {home}: {e.strerror}; choose a writable "
                                 "--home or RUNNER_HOME") from e
        if not home.is_dir():
            raise StateError(f"home {home} is not a directory; pass a directory with --home")
        if create and not _writable(home):
            raise StateError(f"home directory {home} is not writable; choose a writable --home or RUNNER_HOME")
        if db_url:
            db = open_database(url=db_url, create=create)
        else:
            db = open_database(path=home / STATE_DIR / DB_NAME, create=create)
        return cls(home, db)

    def close(self) -> None:
        self.db.close()

    # ---- fencing -------------------------------------------------------------------------
    def _check_fence(self, s: Session, fence: Fence) -> None:
        # FOR SHARE on PostgreSQL: a take-over (which locks the row FOR UPDATE) waits until this
        # write commits, so no write lands after the lease changed hands. SQLite ignores it
        # (BEGIN IMMEDIATE already serialises writers).
        lease = s.get(Lease, fence.run_id, with_for_update={"read": True})
        if lease is None or lease.released or lease.owner_id != fence.owner_id or lease.generation != fence.generation:
            holder = f"{lease.host}:{lease.pid} (generation {lease.generation})" if lease else "nobody"
            raise LeaseLost(f"lease on run {fence.run_id} lost: now held by {holder}; this runner stops")

    def fenced(self, fence: Fence):
        """Context manager: a write transaction that first checks the fence."""
        store = self

        class _Ctx:
            def __enter__(self_inner):
                self_inner._cm = store.db.write()
                s = self_inner._cm.__enter__()
                try:
                    store._check_fence(s, fence)
                except BaseException as e:
                    self_inner._cm.__exit__(type(e), e, e.__traceback__)
                    raise
                return s

            def __exit__(self_inner, *exc):
                return self_inner._cm.__exit__(*exc)

        return _Ctx()

    def _tx(self, fence: Fence | None):
        """A fenced write transaction for the live runner, a plain one for everyone else."""
        return self.db.write() if fence is None else self.fenced(fence)

    # ---- runs ----------------------------------------------------------------------------
    def create_run(self, run_id: str, pipeline: str, config_path: Optional[str], config: dict,
                   plan: list[dict], seed: int, goal: str = "") -> Run:
        t = now()
        run = Run(id=run_id, pipeline=pipeline, config_path=config_path, config_json=dumps(config),
                  plan_json=dumps(plan), seed=seed, goal=goal, status="created", created_at=t, updated_at=t)
        with self.db.write() as s:
            if s.get(Run, run_id) is not None:
                raise StateError(f"run {run_id!r} already exists in {self.home}")
            s.add(run)
            s.add(Event(run_id=run_id, ts=t, kind="run_created", message=f"pipeline {pipeline}"))
        return run

    def get_run(self, run_id: str) -> Run:
        with self.db.read() as s:
            run = s.get(Run, run_id)
        if run is None:
            known = ", ".join(self.run_ids()) or "none"
            raise StateError(f"unknown run {run_id!r} in {self.home} (runs: {known})")
        return run

    def run_ids(self) -> list[str]:
        with self.db.read() as s:
            return list(s.exec(select(Run.id).order_by(Run.created_at)).all())

    def latest_run_id(self) -> Optional[str]:
        with self.db.read() as s:
            return s.exec(select(Run.id).order_by(Run.created_at.desc()).limit(1)).first()  # type: ignore[attr-defined]

    def update_run(self, fence: Optional[Fence], run_id: str, **fields: Any) -> None:
        def apply(s: Session) -> None:
            run = s.get(Run, run_id)
            assert run is not None
            for k, v in fields.items():
                setattr(run, k, v)
            run.updated_at = now()
            s.add(run)
        with self._tx(fence) as s:
            apply(s)

    # ---- events --------------------------------------------------------------------------
    def add_event(self, s: Session, run_id: str, kind: str, message: str = "", step: str | None = None,
                  gate: str | None = None, attempt_id: int | None = None, data: dict | None = None) -> None:
        s.add(Event(run_id=run_id, ts=now(), kind=kind, message=message, step=step, gate=gate,
                    attempt_id=attempt_id, data_json=dumps(data) if data is not None else None))

    def event(self, run_id: str, kind: str, message: str = "", fence: Fence | None = None, **kw: Any) -> None:
        with self._tx(fence) as s:
            self.add_event(s, run_id, kind, message, **kw)

    def events(self, run_id: str, limit: int = 50, kinds: list[str] | None = None,
               after_id: int = 0) -> list[Event]:
        """The newest ``limit`` events (returned oldest first), optionally filtered by kind."""
        with self.db.read() as s:
            q = select(Event).where(Event.run_id == run_id, Event.id > after_id)
            if kinds:
                q = q.where(Event.kind.in_(kinds))  # type: ignore[attr-defined]
            rows = s.exec(q.order_by(Event.id.desc()).limit(limit)).all()  # type: ignore[attr-defined]
        return list(reversed(rows))

    def event_count(self, run_id: str) -> int:
        with self.db.read() as s:
            return s.exec(select(func.count()).select_from(Event).where(Event.run_id == run_id)).one()

    def last_event_id(self, run_id: str) -> int:
        with self.db.read() as s:
            return s.exec(select(func.max(Event.id)).where(Event.run_id == run_id)).one() or 0

    # ---- leases --------------------------------------------------------------------------
    def get_lease(self, run_id: str) -> Optional[Lease]:
        with self.db.read() as s:
            return s.get(Lease, run_id)

    def acquire_lease(self, run_id: str, owner: Owner, ttl_s: float,
                      is_dead: Callable[[Lease], Optional[str]]) -> tuple[Optional[Fence], Optional[Lease], str]:
        """Take the lease if it is free, released, expired or held by a provably dead owner.

        Returns (fence, None, reason) on success, or (None, holder, why-not) when a live owner
        holds it. ``is_dead(lease)`` returns a reason string when the holder is provably gone.
        The check and the take-over happen in one ``BEGIN IMMEDIATE`` transaction, so two
        racing runners cannot both win.
        """
        try:
            return self._acquire_lease(run_id, owner, ttl_s, is_dead)
        except IntegrityError:  # PostgreSQL: another runner inserted the first lease row first
            return self._acquire_lease(run_id, owner, ttl_s, is_dead)

    def _acquire_lease(self, run_id: str, owner: Owner, ttl_s: float,
                       is_dead: Callable[[Lease], Optional[str]]) -> tuple[Optional[Fence], Optional[Lease], str]:
        t = now()
        with self.db.write() as s:
            # FOR UPDATE: on PostgreSQL two racing runners serialise here; SQLite ignores it.
            lease = s.get(Lease, run_id, with_for_update=True)
            reason = "free"
            if lease is not None and not lease.released:
                if lease.owner_id == owner.owner_id:
                    reason = "re-entrant"
                elif lease.expires_at < t:
                    reason = f"expired {t - lease.expires_at:.0f}s ago (owner {lease.host}:{lease.pid})"
                else:
                    dead = is_dead(lease)
                    if dead is None:
                        return None, lease, f"held by {lease.host} pid {lease.pid} until {lease.expires_at:.0f}"
                    reason = dead
            gen = (lease.generation + 1) if lease is not None else 1
            if lease is None:
                lease = Lease(run_id=run_id, owner_id=owner.owner_id, host=owner.host, pid=owner.pid,
                              pid_start_time=owner.pid_start_time, generation=gen, acquired_at=t,
                              heartbeat_at=t, expires_at=t + ttl_s, released=False)
            else:
                lease.owner_id, lease.host, lease.pid = owner.owner_id, owner.host, owner.pid
                lease.pid_start_time, lease.generation = owner.pid_start_time, gen
                lease.acquired_at = lease.heartbeat_at = t
                lease.expires_at, lease.released = t + ttl_s, False
            s.add(lease)
            self.add_event(s, run_id, "lease_acquired", f"{owner.host} pid {owner.pid} gen {gen}: {reason}",
                           data={"host": owner.host, "pid": owner.pid, "generation": gen, "reason": reason})
        return Fence(run_id, owner.owner_id, gen), None, reason

    def heartbeat(self, fence: Fence, ttl_s: float) -> None:
        with self.fenced(fence) as s:
            lease = s.get(Lease, fence.run_id)
            t = now()
            lease.heartbeat_at, lease.expires_at = t, t + ttl_s
            s.add(lease)

    def release_lease(self, fence: Fence) -> None:
        try:
            with self.fenced(fence) as s:
                lease = s.get(Lease, fence.run_id)
                lease.released = True
                s.add(lease)
                self.add_event(s, fence.run_id, "lease_released", f"gen {fence.generation}")
        except LeaseLost:
            pass

    # ---- attempts ------------------------------------------------------------------------
    def attempts(self, run_id: str, step: str | None = None, cache_key: str | None = None) -> list[Attempt]:
        with self.db.read() as s:
            q = select(Attempt).where(Attempt.run_id == run_id)
            if step is not None:
                q = q.where(Attempt.step == step)
            if cache_key is not None:
                q = q.where(Attempt.cache_key == cache_key)
            return list(s.exec(q.order_by(Attempt.id)).all())

    def succeeded_attempt(self, run_id: str, step: str, cache_key: str) -> Optional[Attempt]:
        with self.db.read() as s:
            return s.exec(select(Attempt).where(
                Attempt.run_id == run_id, Attempt.step == step, Attempt.cache_key == cache_key,
                Attempt.status == "succeeded", Attempt.invalidated_at.is_(None))).first()  # type: ignore[union-attr]

    def counting_failures(self, run_id: str, step: str, cache_key: str) -> list[Attempt]:
        """Attempts that count toward dead-lettering (not invalidated), oldest first.

        Progress is progress: an *interrupted* attempt (killed from outside: pod restart,
        SIGKILL, SIGTERM) that advanced its step, i.e. committed a ledger batch or reported a
        durable progress marker (``ctx.progress``, event kind ``PROGRESS_EVENT``, e.g. a
        complete trainer checkpoint), never counts, and it clears the interrupted attempts before
        it: only interruptions *since the last progress* count, so a long step killed any number
        of times still finishes as long as its attempts keep moving it forward, while one that
        dies N times in a row without progress (a crash loop at load) is dead-lettered. Failed
        attempts (the step raised: a poison pill) always count.
        """
        with self.db.read() as s:
            progressed = set(s.exec(select(Batch.attempt_id).where(
                Batch.run_id == run_id, Batch.step == step, Batch.cache_key == cache_key)).all())
            progressed |= set(s.exec(select(Event.attempt_id).where(
                Event.run_id == run_id, Event.step == step, Event.kind == PROGRESS_EVENT)).all())
        rows = [a for a in self.attempts(run_id, step, cache_key)
                if a.status in ("failed", "interrupted", "dead_lettered") and a.invalidated_at is None]
        last_progress = max((a.id for a in self.attempts(run_id, step, cache_key) if a.id in progressed), default=0)
        return [a for a in rows
                if a.status != "interrupted" or (a.id not in progressed and a.id > last_progress)]

    def progress_markers(self, run_id: str) -> int:
        """How many durable progress markers (``ctx.progress``) the run's steps reported."""
        with self.db.read() as s:
            return s.exec(select(func.count()).select_from(Event).where(
                Event.run_id == run_id, Event.kind == PROGRESS_EVENT)).one()

    def mark_orphans_interrupted(self, fence: Fence) -> list[Attempt]:
        """Attempts left ``running`` by an earlier owner become ``interrupted``."""
        with self.fenced(fence) as s:
            rows = s.exec(select(Attempt).where(Attempt.run_id == fence.run_id, Attempt.status == "running",
                                                Attempt.owner_id != fence.owner_id)).all()
            for a in rows:
                a.status, a.ended_at = "interrupted", now()
                a.error = a.error or "owner died while the attempt was running"
                s.add(a)
                self.add_event(s, fence.run_id, "attempt_interrupted", f"attempt {a.number} of {a.step} was "
                               "running when its owner died", step=a.step, attempt_id=a.id)
            return list(rows)

    def start_attempt(self, fence: Fence, step: str, version: str, cache_key: str,
                      params: dict, inputs: dict) -> Attempt:
        with self.fenced(fence) as s:
            prev = s.exec(select(func.max(Attempt.number)).where(
                Attempt.run_id == fence.run_id, Attempt.step == step, Attempt.cache_key == cache_key)).one()
            a = Attempt(run_id=fence.run_id, step=step, step_version=version, cache_key=cache_key,
                        number=(prev or 0) + 1, status="running", owner_id=fence.owner_id,
                        lease_generation=fence.generation, started_at=now(), params_json=dumps(params),
                        inputs_json=dumps(inputs))
            s.add(a)
            s.flush()
            self.add_event(s, fence.run_id, "attempt_started", f"{step} attempt {a.number} (key {cache_key[:12]})",
                           step=step, attempt_id=a.id)
        return a

    def succeed_attempt(self, fence: Fence, attempt: Attempt, output_dir: str, output_hash: str,
                        files: list[tuple[str, int, str]], summary: Any) -> None:
        """Commit a step as done, with its artifacts. Fails loudly on a duplicate completion."""
        with self.fenced(fence) as s:
            a = s.get(Attempt, attempt.id)
            if a is None or a.status != "running":
                raise StateError(f"attempt {attempt.id} of {attempt.step} is {a.status if a else 'missing'}, "
                                 "not running: refusing a duplicate completion")
            other = s.exec(select(Attempt).where(
                Attempt.run_id == a.run_id, Attempt.step == a.step, Attempt.cache_key == a.cache_key,
                Attempt.status == "succeeded", Attempt.invalidated_at.is_(None))).first()  # type: ignore[union-attr]
            if other is not None:
                raise StateError(f"step {a.step} already succeeded for key {a.cache_key[:12]} (attempt "
                                 f"{other.number}): refusing a duplicate completion")
            t = now()
            a.status, a.ended_at, a.output_dir, a.output_hash = "succeeded", t, output_dir, output_hash
            a.summary_json = dumps(summary) if summary is not None else None
            s.add(a)
            for rel, size, digest in files:
                s.add(Artifact(run_id=a.run_id, attempt_id=a.id, step=a.step, path=f"{output_dir}/{rel}",
                               size=size, sha256=digest, created_at=t))
            s.add(Cost(run_id=a.run_id, step=a.step, attempt_id=a.id, kind="wall_s",
                       amount=t - a.started_at, created_at=t))
            self.add_event(s, a.run_id, "attempt_succeeded", f"{a.step} attempt {a.number} in "
                           f"{t - a.started_at:.1f}s", step=a.step, attempt_id=a.id,
                           data={"output_hash": output_hash, "files": len(files)})

    def fail_attempt(self, fence: Fence, attempt: Attempt, error: str, status: str = "failed") -> None:
        with self.fenced(fence) as s:
            a = s.get(Attempt, attempt.id)
            t = now()
            a.status, a.ended_at, a.error = status, t, error[-4000:]
            s.add(a)
            s.add(Cost(run_id=a.run_id, step=a.step, attempt_id=a.id, kind="wall_s",
                       amount=t - a.started_at, created_at=t))
            self.add_event(s, a.run_id, f"attempt_{status}", error.strip().splitlines()[-1][:500] if error.strip() else status,
                           step=a.step, attempt_id=a.id)

    def dead_letter(self, fence: Fence, run_id: str, step: str, cache_key: str, reason: str) -> None:
        with self.fenced(fence) as s:
            rows = s.exec(select(Attempt).where(Attempt.run_id == run_id, Attempt.step == step,
                                                Attempt.cache_key == cache_key,
                                                Attempt.invalidated_at.is_(None))).all()  # type: ignore[union-attr]
            last = max(rows, key=lambda a: a.number)
            last.status = "dead_lettered"
            s.add(last)
            self.add_event(s, run_id, "step_dead_lettered", reason, step=step, attempt_id=last.id)

    def invalidate(self, run_id: str, steps: list[str], statuses: tuple[str, ...], reason: str,
                   fence: Fence | None = None) -> int:
        """Mark matching attempts of ``steps`` invalidated (they stop counting). Returns the count."""
        def apply(s: Session) -> int:
            rows = s.exec(select(Attempt).where(Attempt.run_id == run_id, Attempt.step.in_(steps),  # type: ignore[attr-defined]
                                                Attempt.status.in_(statuses),  # type: ignore[attr-defined]
                                                Attempt.invalidated_at.is_(None))).all()  # type: ignore[union-attr]
            for a in rows:
                a.invalidated_at = now()
                s.add(a)
            self.add_event(s, run_id, "invalidated", reason, data={"steps": steps, "attempts": len(rows)})
            return len(rows)
        with self._tx(fence) as s:
            return apply(s)

    def artifacts(self, attempt_id: int) -> list[Artifact]:
        with self.db.read() as s:
            return list(s.exec(select(Artifact).where(Artifact.attempt_id == attempt_id).order_by(Artifact.path)).all())

    # ---- batch ledger --------------------------------------------------------------------
    def batches(self, run_id: str, step: str, cache_key: str, ledger: str) -> list[Batch]:
        with self.db.read() as s:
            return list(s.exec(select(Batch).where(Batch.run_id == run_id, Batch.step == step,
                                                   Batch.cache_key == cache_key, Batch.ledger == ledger)
                               .order_by(Batch.idx)).all())

    def commit_batch(self, fence: Fence, step: str, cache_key: str, ledger: str, idx: int, n_items: int,
                     path: str, digest: str, attempt_id: int) -> None:
        with self.fenced(fence) as s:
            old = s.exec(select(Batch).where(Batch.run_id == fence.run_id, Batch.step == step,
                                             Batch.cache_key == cache_key, Batch.ledger == ledger,
                                             Batch.idx == idx)).first()
            if old is not None:  # a torn batch file was detected and redone: replace its row
                s.delete(old)
                s.flush()
            s.add(Batch(run_id=fence.run_id, step=step, cache_key=cache_key, ledger=ledger, idx=idx,
                        n_items=n_items, path=path, sha256=digest, attempt_id=attempt_id, created_at=now()))

    def batch_progress(self, run_id: str) -> dict[tuple[str, str], int]:
        with self.db.read() as s:
            rows = s.exec(select(Batch.step, Batch.cache_key, func.count()).where(Batch.run_id == run_id)
                          .group_by(Batch.step, Batch.cache_key)).all()
        return {(r[0], r[1]): r[2] for r in rows}

    # ---- gates ---------------------------------------------------------------------------
    def gates(self, run_id: str, name: str | None = None) -> list[Gate]:
        with self.db.read() as s:
            q = select(Gate).where(Gate.run_id == run_id)
            if name is not None:
                q = q.where(Gate.name == name)
            return list(s.exec(q.order_by(Gate.id)).all())

    def gate(self, run_id: str, name: str, gate_key: str) -> Optional[Gate]:
        with self.db.read() as s:
            return s.exec(select(Gate).where(Gate.run_id == run_id, Gate.name == name,
                                             Gate.gate_key == gate_key)).first()

    def request_gate(self, fence: Fence, name: str, gate_key: str, policy: str, check: Any,
                     wait_reason: str) -> Gate:
        with self.fenced(fence) as s:
            g = s.exec(select(Gate).where(Gate.run_id == fence.run_id, Gate.name == name,
                                          Gate.gate_key == gate_key)).first()
            if g is None:
                g = Gate(run_id=fence.run_id, name=name, gate_key=gate_key, policy=policy, status="pending",
                         check_json=dumps(check) if check is not None else None, wait_reason=wait_reason,
                         requested_at=now())
                s.add(g)
                s.flush()
                self.add_event(s, fence.run_id, "gate_requested", wait_reason, gate=name)
            elif g.status == "pending":  # the policy stays as frozen at the request (see engine)
                g.wait_reason = wait_reason
                g.check_json = dumps(check) if check is not None else g.check_json
                s.add(g)
            return g

    def decide_gate(self, gate_id: int, decision: str, who: str, note: str | None, source: str,
                    fence: Fence | None = None) -> Gate:
        """Record a decision (approve/reject) if the gate is still pending, in one transaction; a
        gate decided meanwhile (a racing `runner reject`) is returned unchanged: the first wins."""
        assert decision in ("approve", "reject")
        def apply(s: Session) -> Gate:
            g = s.get(Gate, gate_id)
            if g.status != "pending":
                return g
            g.status = "approved" if decision == "approve" else "rejected"
            g.decided_at, g.decided_by, g.note = now(), who, note
            s.add(g)
            s.add(GateDecision(gate_id=g.id, run_id=g.run_id, source=source, decision=decision, who=who,
                               note=note, created_at=now()))
            self.add_event(s, g.run_id, f"gate_{g.status}", f"by {who}" + (f": {note}" if note else ""), gate=g.name)
            return g
        with self._tx(fence) as s:
            return apply(s)

    def decide_pending_gate(self, run_id: str, name: str, gate_id: int, policy: str, decision: str, who: str,
                            note: str | None, source: str, data: dict | None = None) -> tuple[Gate, bool]:
        """Decide gate ``name``'s newest instance in one ``BEGIN IMMEDIATE`` transaction.

        The check (it is still instance ``gate_id``, still ``pending``, still under ``policy``) and
        the write (gate row, decision row, event, run status) share one transaction, so of any
        number of racing approves and rejects exactly one is recorded. Returns (gate, True) when
        this call decided it, (gate, False) when it already carried this same decision. Raises
        ``StateError`` when it carries the other decision or changed since the caller read it.
        """
        assert decision in ("approve", "reject")
        want = "approved" if decision == "approve" else "rejected"
        with self.db.write() as s:
            g = s.exec(select(Gate).where(Gate.run_id == run_id, Gate.name == name)
                       .order_by(Gate.id.desc())).first()  # type: ignore[attr-defined]
            if g is None or g.id != gate_id:
                raise StateError(f"gate {name!r} of run {run_id} changed while this decision was being made "
                                 "(a new instance was requested); run the command again")
            if g.status == want:
                return g, False
            if g.status != "pending":
                raise StateError(f"gate {name!r} was already {g.status} by {g.decided_by}"
                                 + (f" ({g.note})" if g.note else "") + "; a decided gate is final for this "
                                 "evidence. To revisit it, change the config and `runner rerun` the step that "
                                 "feeds it.")
            if g.policy != policy:
                raise StateError(f"gate {name!r}'s policy changed from {policy!r} to {g.policy!r} while this "
                                 "decision was being made; run the command again")
            t = now()
            g.status, g.decided_at, g.decided_by, g.note = want, t, who, note
            s.add(g)
            s.add(GateDecision(gate_id=g.id, run_id=run_id, source=source, decision=decision, who=who,
                               note=note, created_at=t))
            self.add_event(s, run_id, f"gate_{want}", f"by {who} ({source})" + (f": {note}" if note else ""),
                           gate=name, data=data)
            run = s.get(Run, run_id)
            if decision == "reject":
                run.status, run.status_detail = "rejected", name
            elif run.status in ("waiting", "rejected"):
                run.status, run.status_detail = "ready", f"gate {name} approved"
            run.updated_at = t
            s.add(run)
            return g, True

    def regate(self, run_id: str, name: str, gate_id: int, old_policy: str, new_policy: str, who: str,
               data: dict | None = None) -> Gate:
        """Change a pending gate's frozen policy (``runner regate``), recorded as an event."""
        with self.db.write() as s:
            g = s.get(Gate, gate_id)
            if g is None or g.run_id != run_id or g.status != "pending" or g.policy != old_policy:
                raise StateError(f"gate {name!r} of run {run_id} is no longer pending under policy "
                                 f"{old_policy!r}; run `runner status` and try again")
            g.policy = new_policy
            g.wait_reason = f"policy changed from {old_policy!r} to {new_policy!r} by {who}; resume applies it"
            s.add(g)
            s.add(GateDecision(gate_id=g.id, run_id=run_id, source=(data or {}).get("source", "human"),
                               decision="regate", who=who, note=f"{old_policy} -> {new_policy}", created_at=now()))
            self.add_event(s, run_id, "gate_policy_changed", f"{name}: {old_policy} -> {new_policy} by {who}",
                           gate=name, data={**(data or {}), "old_policy": old_policy, "new_policy": new_policy})
            return g

    def record_gate_note(self, gate_id: int, source: str, decision: str, who: str, note: str | None,
                         fence: Fence | None = None) -> None:
        def apply(s: Session) -> None:
            g = s.get(Gate, gate_id)
            s.add(GateDecision(gate_id=gate_id, run_id=g.run_id, source=source, decision=decision, who=who,
                               note=note, created_at=now()))
        with self._tx(fence) as s:
            apply(s)

    def gate_decisions(self, gate_id: int) -> list[GateDecision]:
        with self.db.read() as s:
            return list(s.exec(select(GateDecision).where(GateDecision.gate_id == gate_id)
                               .order_by(GateDecision.id)).all())

    # ---- reviews -------------------------------------------------------------------------
    def review_by_memo(self, run_id: str, memo_key: str) -> Optional[Review]:
        with self.db.read() as s:
            return s.exec(select(Review).where(Review.run_id == run_id, Review.memo_key == memo_key)).first()

    def reviews(self, run_id: str, gate: str | None = None) -> list[Review]:
        with self.db.read() as s:
            q = select(Review).where(Review.run_id == run_id)
            if gate is not None:
                q = q.where(Review.gate == gate)
            return list(s.exec(q.order_by(Review.id)).all())

    def add_review(self, review: Review, fence: Fence | None = None) -> Review:
        def apply(s: Session) -> Review:
            s.add(review)
            s.flush()
            if review.tokens_in or review.tokens_out:
                t = now()
                s.add(Cost(run_id=review.run_id, step=None, kind="llm_tokens_in", amount=review.tokens_in, created_at=t))
                s.add(Cost(run_id=review.run_id, step=None, kind="llm_tokens_out", amount=review.tokens_out, created_at=t))
            if review.cost_usd:
                s.add(Cost(run_id=review.run_id, step=None, kind="usd", amount=review.cost_usd, created_at=now()))
            self.add_event(s, review.run_id, "review_recorded",
                           f"{review.gate}: {review.decision or 'failed: ' + (review.error or '')}", gate=review.gate)
            return review
        with self._tx(fence) as s:
            return apply(s)

    # ---- costs ---------------------------------------------------------------------------
    def add_cost(self, fence: Fence, kind: str, amount: float, step: str | None = None,
                 attempt_id: int | None = None) -> None:
        with self.fenced(fence) as s:
            s.add(Cost(run_id=fence.run_id, step=step, attempt_id=attempt_id, kind=kind, amount=amount,
                       created_at=now()))

    def cost_totals(self, run_id: str) -> dict[str, dict[str, float]]:
        """{step or "(run)": {kind: total}}."""
        with self.db.read() as s:
            rows = s.exec(select(Cost.step, Cost.kind, func.sum(Cost.amount)).where(Cost.run_id == run_id)
                          .group_by(Cost.step, Cost.kind)).all()
        out: dict[str, dict[str, float]] = {}
        for step, kind, total in rows:
            out.setdefault(step or "(run)", {})[kind] = float(total or 0)
        return out


def _writable(path: Path) -> bool:
    import os
    return os.access(path, os.W_OK | os.X_OK)


def loads(text: str | None) -> Any:
    return json.loads(text) if text else None
