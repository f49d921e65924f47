"""Shard claims: the durable work queue of a sharded step (table ``shard_claims``).

A sharded step plans its shards as rows (``plan``); worker processes take them one at a time
(``claim``), renew their claim while they work (``renew``), and finish it (``complete``) or
give it back after an error (``fail``). Every operation is one write transaction that first
checks the *run's* fence (the coordinating runner still holds the run lease), and every
change to a claimed row is a compare-and-swap on ``(id, generation)``: an ``UPDATE ... WHERE
generation = :seen``. That makes the same code correct on SQLite (where ``BEGIN IMMEDIATE``
serialises writers anyway) and on PostgreSQL under READ COMMITTED (where two claimers may read
the same row, but only one UPDATE matches; the other sees rowcount 0 and moves on).

A claim is *taken over* when its holder's claim expired (no renewal for ``ttl_s``) or its
holder is provably dead (``is_dead(row)`` returns a reason: same host and the pid is gone).
The new holder gets generation + 1; the old holder's ``renew``/``complete`` then raise
``ClaimLost`` and its output directory (named by generation) is never recorded, so a slow
worker is never counted twice. Times are UTC epoch seconds.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from sqlalchemy import update
from sqlmodel import select

from state.files import canonical_json
from state.schema import ShardClaim
from state.store import Fence, Owner, Store


class ClaimLost(RuntimeError):
    """This worker no longer holds the shard (it was reclaimed); drop its output and move on."""


class ShardFailed(RuntimeError):
    """A shard failed more often than allowed; the message names the shard and its last error."""


@dataclass(frozen=True)
class Claim:
    """What a worker holds: the row id, the shard index and spec, and its fencing generation."""

    id: int
    step: str
    idx: int
    spec: Any
    generation: int
    reclaimed_from: Optional[str] = None  # why the previous holder lost it, if it had one


def _now() -> float:
    return time.time()


def _where(run_id: str, step: str, cache_key: str, shard_set: str):
    return (ShardClaim.run_id == run_id, ShardClaim.step == step, ShardClaim.cache_key == cache_key,
            ShardClaim.shard_set == shard_set)


def rows(store: Store, run_id: str, step: str, cache_key: str, shard_set: str) -> list[ShardClaim]:
    """Every planned shard of the set, by index."""
    with store.db.read() as s:
        return list(s.exec(select(ShardClaim).where(*_where(run_id, step, cache_key, shard_set))
                           .order_by(ShardClaim.idx)).all())


def plan(store: Store, fence: Fence, step: str, cache_key: str, shard_set: str, specs: list[Any],
         round_: int = 0, first_idx: int = 0) -> int:
    """Insert rows for shards ``first_idx..first_idx+len(specs)-1`` that do not exist yet.

    Idempotent: a resumed coordinator re-plans the same shards and nothing changes. A row that
    exists with a *different* spec means the step planned differently this time (its code is
    not deterministic): that raises ValueError rather than mixing two plans. Returns the number
    of rows inserted.
    """
    t = _now()
    added = 0
    with store.fenced(fence) as s:
        have = {r.idx: r for r in s.exec(select(ShardClaim).where(*_where(fence.run_id, step, cache_key, shard_set)))}
        for i, spec in enumerate(specs, start=first_idx):
            text = canonical_json(spec)
            if i in have:
                if have[i].spec_json != text:
                    raise ValueError(f"step {step}: shard {i} of set {shard_set!r} was planned as {have[i].spec_json} "
                                     f"and is now {text}; a sharded step must plan the same shards on every run "
                                     f"(use `runner rerun {step}` after changing how it plans)")
                continue
            s.add(ShardClaim(run_id=fence.run_id, step=step, cache_key=cache_key, shard_set=shard_set, idx=i,
                             spec_json=text, round=round_, created_at=t, updated_at=t))
            added += 1
    return added


def claim(store: Store, fence: Fence, step: str, cache_key: str, shard_set: str, owner: Owner, worker: int,
          ttl_s: float, is_dead: Callable[[Any], Optional[str]], max_failures: int) -> Optional[Claim]:
    """Take the lowest-index shard that is pending, or held by an expired or dead holder.

    Returns None when nothing is claimable right now (all done, or held by live workers).
    Raises ShardFailed when a shard has failed ``max_failures`` times.
    """
    for _ in range(50):  # lost CAS races only; each retry re-reads
        t = _now()
        cands = rows(store, fence.run_id, step, cache_key, shard_set)
        failed = [r for r in cands if r.status == "failed"]
        if failed:
            r = failed[0]
            raise ShardFailed(f"step {step}: shard {r.idx} of set {shard_set!r} failed {r.failures} time(s) "
                              f"(limit {max_failures}); last error:\n{r.error}")
        pick, why = None, None
        for r in cands:
            if r.status == "pending":
                pick = r
                break
            if r.status == "claimed":
                if r.expires_at is not None and r.expires_at < t:
                    pick, why = r, f"claim expired {t - r.expires_at:.0f}s ago (worker {r.worker}, {r.host}:{r.pid})"
                    break
                dead = is_dead(r)
                if dead:
                    pick, why = r, f"worker {r.worker}: {dead}"
                    break
        if pick is None:
            return None
        with store.fenced(fence) as s:
            res = s.execute(update(ShardClaim).where(ShardClaim.id == pick.id, ShardClaim.generation == pick.generation,
                                                     ShardClaim.status == pick.status)
                            .values(status="claimed", generation=pick.generation + 1, owner_id=owner.owner_id,
                                    host=owner.host, pid=owner.pid, pid_start_time=owner.pid_start_time,
                                    worker=worker, heartbeat_at=t, expires_at=t + ttl_s, updated_at=t,
                                    reclaims=pick.reclaims + (1 if why else 0)))
            if res.rowcount == 1:
                store.add_event(s, fence.run_id, "shard_reclaimed" if why else "shard_claimed",
                                f"{shard_set} shard {pick.idx} -> worker {worker} gen {pick.generation + 1}"
                                + (f" ({why})" if why else ""), step=step,
                                data={"shard_set": shard_set, "shard": pick.idx, "worker": worker,
                                      "generation": pick.generation + 1, "pid": owner.pid, "reason": why})
                return Claim(pick.id, step, pick.idx, json.loads(pick.spec_json), pick.generation + 1, why)
    raise RuntimeError(f"step {step}: could not claim a shard of {shard_set!r} after 50 lost races")


def _cas(store: Store, fence: Fence, c: Claim, owner: Owner, values: dict, event: tuple | None = None) -> None:
    with store.fenced(fence) as s:
        res = s.execute(update(ShardClaim).where(ShardClaim.id == c.id, ShardClaim.generation == c.generation,
                                                 ShardClaim.owner_id == owner.owner_id,
                                                 ShardClaim.status == "claimed").values(updated_at=_now(), **values))
        if res.rowcount != 1:
            row = s.get(ShardClaim, c.id)
            holder = f"worker {row.worker} gen {row.generation}, status {row.status}" if row else "nobody"
            raise ClaimLost(f"shard {c.idx}: claim generation {c.generation} lost (now {holder})")
        if event is not None:
            store.add_event(s, fence.run_id, event[0], event[1], step=c.step, data=event[2])


def renew(store: Store, fence: Fence, c: Claim, owner: Owner, ttl_s: float) -> None:
    """Extend the claim by ``ttl_s``; ClaimLost if it was taken over."""
    t = _now()
    _cas(store, fence, c, owner, {"heartbeat_at": t, "expires_at": t + ttl_s})


def complete(store: Store, fence: Fence, c: Claim, owner: Owner, output_path: str, output_sha256: str,
             result: Any) -> None:
    """Record the shard done with this generation's output; ClaimLost if it was taken over."""
    _cas(store, fence, c, owner, {"status": "done", "output_path": output_path, "output_sha256": output_sha256,
                                  "result_json": canonical_json(result), "expires_at": None},
         ("shard_done", f"shard {c.idx} done (gen {c.generation})", {"shard": c.idx, "generation": c.generation}))


def fail(store: Store, fence: Fence, c: Claim, owner: Owner, error: str, max_failures: int) -> bool:
    """Give the shard back after an error (pending again, or ``failed`` at ``max_failures``).

    Returns True when the shard is now permanently failed. ClaimLost if it was taken over.
    """
    with store.db.read() as s:
        row = s.get(ShardClaim, c.id)
    n = (row.failures if row else 0) + 1
    final = n >= max_failures
    _cas(store, fence, c, owner, {"status": "failed" if final else "pending", "failures": n, "error": error[-4000:],
                                  "owner_id": None, "expires_at": None},
         ("shard_failed", f"shard {c.idx} failed ({n}/{max_failures})", {"shard": c.idx, "failures": n}))
    return final


def reset_outputs(store: Store, fence: Fence, claim_id: int) -> None:
    """Send a done shard back to pending (its recorded output went missing or was edited)."""
    with store.fenced(fence) as s:
        s.execute(update(ShardClaim).where(ShardClaim.id == claim_id)
                  .values(status="pending", output_path=None, output_sha256=None, result_json=None,
                          owner_id=None, expires_at=None, updated_at=_now()))


def reset_failed(store: Store, fence: Fence, step: str, cache_key: str, shard_set: str) -> list[int]:
    """A new attempt of the step gives its failed shards new chances: back to pending, count 0.

    (The engine's ``max_attempts`` bounds how often that happens.) Returns the shard indices.
    """
    with store.fenced(fence) as s:
        failed = list(s.exec(select(ShardClaim).where(*_where(fence.run_id, step, cache_key, shard_set),
                                                      ShardClaim.status == "failed")).all())
        for r in failed:
            s.execute(update(ShardClaim).where(ShardClaim.id == r.id, ShardClaim.generation == r.generation)
                      .values(status="pending", failures=0, updated_at=_now()))
    return [r.idx for r in failed]
