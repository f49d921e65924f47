"""Sharded steps: a step's shards run in N worker processes, claimed through the state store.

A step hands its shards to ``ctx.shards(name).run(specs, fn, top_up=...)``:
- ``specs`` is a list of JSON-serialisable shard descriptions (e.g. index ranges);
- ``fn(spec, out_dir)`` computes one shard into the empty directory ``out_dir`` and returns a
  JSON-serialisable result. It must be a pure function of the spec (seeds derived from the
  run seed and the spec, e.g. through ``ctx.ledger``), so any worker, any number of times,
  writes the same bytes;
- ``top_up(results, round)`` (optional) returns more specs after every shard planned so far is
  done, or ``[]`` to stop; it must be deterministic given the results. The step owns its cap.
``run`` returns a ``ShardResult`` per shard, in index order, once every shard is done.

Workers (``runner resume --workers N``, which sets ``RUNNER_WORKERS``; default 1):
- N = 1: the runner's own process claims and runs the shards one by one.
- N > 1: the runner (the *coordinator*) spawns N processes ``python -m runner worker``, worker
  i (runner/worker.py) with ``CUDA_VISIBLE_DEVICES`` = the i-th entry of ``RUNNER_WORKER_DEVICES`` (comma list;
  default: the runner's own ``CUDA_VISIBLE_DEVICES`` list, else ``0..N-1``). Each worker
  re-enters the step function (so it loads its own model) and, at ``run``, claims shards until
  every shard is done; the coordinator never calls ``fn``. It restarts a worker that died while
  shards remain (up to ``RUNNER_WORKER_RESTARTS``, default 2 per worker), and fails the step
  when a shard failed ``RUNNER_SHARD_MAX_FAILURES`` times (default 3).
Claims, leases and fencing are in ``state/shards.py``: a claim expires after
``RUNNER_SHARD_TTL`` seconds (default 60) without renewal, or at once when its holder is a dead
pid on this host; the holder renews every ttl/3. Each claim generation writes its own directory
``<work_dir>/shards-<name>/<idx>.g<generation>``; only the directory of the generation that
completed is recorded (with its tree hash), so a reclaimed slow worker's output is never used.
Every worker writes with the coordinator's run fence: if the coordinator loses the run lease,
the workers' writes fail too.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from runner.lease import dead_reason, this_owner
from state import shards as claims
from state.files import atomic_write_json, fsync_tree, hash_tree, tree_digest
from state.store import LeaseLost

POLL_S = 0.2  # how often the coordinator and idle workers look at the claims table


@dataclass(frozen=True)
class ShardResult:
    idx: int
    spec: Any
    result: Any
    path: Path  # the completed generation's directory (read-only by convention)
    round: int


@dataclass(frozen=True)
class WorkerRole:
    """Set on the StepContext of a worker process: which shard set it serves, as which worker."""

    shard_set: str
    index: int


class WorkerFinished(BaseException):
    """Raised inside a worker when every shard of its set is done; ends the step function.

    A BaseException so that a step's ``except Exception`` does not swallow it.
    """


def _env_int(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        v = int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer; unset it or give a whole number") from None
    if v < minimum:
        raise ValueError(f"environment variable {name}={v} must be >= {minimum}")
    return v


def worker_count() -> int:
    """``RUNNER_WORKERS`` (set by ``runner resume --workers N``), default 1."""
    return _env_int("RUNNER_WORKERS", 1)


def worker_devices(n: int) -> list[str]:
    raw = os.environ.get("RUNNER_WORKER_DEVICES") or os.environ.get("CUDA_VISIBLE_DEVICES") or ""
    devs = [d.strip() for d in raw.split(",") if d.strip()]
    return devs or [str(i) for i in range(n)]


class ShardSet:
    def __init__(self, ctx, name: str):  # noqa: ANN001
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"shard set name {name!r} must be a plain non-empty name (no '/', no leading '.')")
        self.ctx, self.name = ctx, name
        self.root = ctx.work_dir / f"shards-{name}"
        self.ttl = float(os.environ.get("RUNNER_SHARD_TTL") or 60.0)
        self.max_failures = _env_int("RUNNER_SHARD_MAX_FAILURES", 3)
        self.rounds = 0

    # ---- what the step calls -------------------------------------------------------------------
    def run(self, specs: list, fn: Callable[[Any, Path], Any],
            top_up: Optional[Callable[[list[ShardResult], int], list]] = None) -> list[ShardResult]:
        ctx = self.ctx
        role = getattr(ctx, "worker", None)
        if role is not None and role.shard_set != self.name:
            # A worker re-entering the step passes through earlier shard sets: they must be done.
            return self._results_or_raise()
        if role is not None:
            self._work(fn, role.index)
            raise WorkerFinished(self.name)
        n = worker_count()
        claims.plan(ctx.store, ctx.fence, ctx.step, ctx.cache_key, self.name, list(specs), 0, 0)
        again = claims.reset_failed(ctx.store, ctx.fence, ctx.step, ctx.cache_key, self.name)
        if again:
            ctx.log(f"shard set {self.name}: shards {again} failed in an earlier attempt; trying them again",
                    kind="shards_retried")
        while True:
            self._verify_done()
            if n == 1:
                self._work(fn, 0)
            else:
                self._coordinate(n)
            results = self._results_or_raise()
            # Rows of a later round may exist already (planned before a crash): they were just run
            # too, and top_up sees them, so what it plans next depends only on the results.
            round_ = max((r.round for r in results), default=0)
            self.rounds = round_ + 1
            more = list(top_up(results, round_ + 1)) if top_up is not None else []
            if not more:
                return results
            ctx.log(f"shard set {self.name}: top-up round {round_ + 1} plans {len(more)} more shard(s)",
                    kind="shards_top_up")
            claims.plan(ctx.store, ctx.fence, ctx.step, ctx.cache_key, self.name, more, round_ + 1, len(results))

    # ---- helpers ------------------------------------------------------------------------------
    def _rows(self):
        c = self.ctx
        return claims.rows(c.store, c.run_id, c.step, c.cache_key, self.name)

    def _results_or_raise(self) -> list[ShardResult]:
        rows = self._rows()
        missing = [r.idx for r in rows if r.status != "done"]
        if missing:
            raise RuntimeError(f"step {self.ctx.step}: shard set {self.name!r} has unfinished shards {missing[:10]}; "
                               "a worker reached it before the coordinator finished it (report this as a bug)")
        home = self.ctx.store.home
        return [ShardResult(r.idx, json.loads(r.spec_json), json.loads(r.result_json), home / r.output_path, r.round)
                for r in rows]

    def _verify_done(self) -> None:
        """A done shard whose directory is missing or changed goes back to pending."""
        c = self.ctx
        for r in self._rows():
            if r.status != "done":
                continue
            d = c.store.home / (r.output_path or "")
            if not d.is_dir() or tree_digest(hash_tree(d)) != r.output_sha256:
                c.log(f"shard set {self.name}: shard {r.idx}'s output {r.output_path} is missing or changed; "
                      "redoing it", kind="shard_torn")
                claims.reset_outputs(c.store, c.fence, r.id)

    # ---- a worker's loop (also the N = 1 path) ------------------------------------------------
    def _work(self, fn: Callable[[Any, Path], Any], index: int) -> None:
        c = self.ctx
        owner = this_owner()
        while True:
            got = claims.claim(c.store, c.fence, c.step, c.cache_key, self.name, owner, index, self.ttl,
                               dead_reason, self.max_failures)
            if got is None:
                rows = self._rows()
                if all(r.status == "done" for r in rows):
                    return
                # Others hold the rest; wait, so a dead holder's shard is reclaimed here.
                time.sleep(POLL_S)
                continue
            self._one(fn, got, owner, index)

    def _one(self, fn, got: claims.Claim, owner, index: int) -> None:  # noqa: ANN001
        c = self.ctx
        out = self.root / f"{got.idx:04d}.g{got.generation}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        c.log(f"shard set {self.name}: worker {index} runs shard {got.idx} (gen {got.generation})"
              + (f"; reclaimed: {got.reclaimed_from}" if got.reclaimed_from else ""), kind="shard_started")
        lost = threading.Event()
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.ttl / 3):
                try:
                    claims.renew(c.store, c.fence, got, owner, self.ttl)
                except (claims.ClaimLost, LeaseLost):
                    lost.set()
                    return
                except Exception:  # a busy database: the next beat retries; expiry has slack
                    continue

        t = threading.Thread(target=beat, name=f"shard-{got.idx}-renew", daemon=True)
        t.start()
        try:
            result = fn(got.spec, out)
            json.dumps(result)  # fail here, not at completion, if it is not JSON-able
        except (LeaseLost, KeyboardInterrupt):
            raise
        except Exception:
            stop.set()
            t.join(timeout=5)
            err = traceback.format_exc()
            c.log(f"shard set {self.name}: shard {got.idx} failed in worker {index}: {err.strip().splitlines()[-1]}",
                  kind="shard_error")
            try:
                final = claims.fail(c.store, c.fence, got, owner, err, self.max_failures)
            except claims.ClaimLost:
                return
            if final:
                raise claims.ShardFailed(f"step {c.step}: shard {got.idx} of set {self.name!r} failed "
                                         f"{self.max_failures} time(s); last error:\n{err}") from None
            return
        stop.set()
        t.join(timeout=5)
        fsync_tree(out)
        digest = tree_digest(hash_tree(out))
        try:
            claims.complete(c.store, c.fence, got, owner, out.relative_to(c.store.home).as_posix(), digest, result)
        except claims.ClaimLost as e:
            # Another worker took the shard over while this one was slow: its result counts, ours not.
            c.log(f"shard set {self.name}: {e}; discarding worker {index}'s copy", kind="shard_claim_lost")
            shutil.rmtree(out, ignore_errors=True)

    # ---- the coordinator (N > 1) --------------------------------------------------------------
    def _spec_file(self) -> Path:
        c = self.ctx
        run = c.store.get_run(c.run_id)
        spec = {"home": str(c.store.home), "db_url": None if c.store.db.path is not None else c.store.db.url,
                "run_id": c.run_id, "run_seed": c.run_seed, "pipeline": run.pipeline, "step": c.step,
                "cache_key": c.cache_key, "attempt_id": c.attempt.id, "shard_set": self.name,
                "fence": {"owner_id": c.fence.owner_id, "generation": c.fence.generation},
                "params": dict(c.params), "config": dict(c.config),
                "inputs": {k: str(v) for k, v in c.inputs.items()}, "work_dir": str(c.work_dir)}
        path = c.work_dir / f"worker-spec-{self.name}.json"
        atomic_write_json(path, spec)  # holds the fence: readable by this user only
        os.chmod(path, 0o600)
        return path

    def _spawn(self, spec_path: Path, i: int, device: str) -> subprocess.Popen:
        log = self.ctx.work_dir / f"worker-{self.name}-{i}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": device, "RUNNER_WORKERS": "1"}
        with open(log, "ab") as f:
            return subprocess.Popen([sys.executable, "-m", "runner", "worker", "--spec", str(spec_path),
                                     "--index", str(i)], stdout=f, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, start_new_session=True)

    def _coordinate(self, n: int) -> None:
        c = self.ctx
        spec_path = self._spec_file()
        devices = worker_devices(n)
        restarts_left = {i: _env_int("RUNNER_WORKER_RESTARTS", 2, minimum=0) for i in range(n)}
        procs = {i: self._spawn(spec_path, i, devices[i % len(devices)]) for i in range(n)}
        c.log(f"shard set {self.name}: {n} workers started (pids {[p.pid for p in procs.values()]}, "
              f"devices {[devices[i % len(devices)] for i in range(n)]})", kind="workers_started")
        try:
            while True:
                rows = self._rows()
                failed = [r for r in rows if r.status == "failed"]
                if failed:
                    raise claims.ShardFailed(f"step {c.step}: shard {failed[0].idx} of set {self.name!r} failed "
                                             f"{failed[0].failures} time(s); last error:\n{failed[0].error}")
                all_done = all(r.status == "done" for r in rows)
                if all_done:
                    break
                for i, p in list(procs.items()):
                    rc = p.poll()
                    if rc is None:
                        continue
                    log = c.work_dir / f"worker-{self.name}-{i}.log"
                    if restarts_left[i] <= 0:
                        raise RuntimeError(f"step {c.step}: worker {i} of shard set {self.name!r} exited with {rc} "
                                           f"and used up its restarts (RUNNER_WORKER_RESTARTS); see {log}")
                    restarts_left[i] -= 1
                    procs[i] = self._spawn(spec_path, i, devices[i % len(devices)])
                    c.log(f"shard set {self.name}: worker {i} exited with {rc}; restarted as pid {procs[i].pid} "
                          f"({restarts_left[i]} restart(s) left); its shard is reclaimed", kind="worker_restarted",
                          rc=rc, worker=i)
                time.sleep(POLL_S)
            for i, p in procs.items():  # every shard is done: workers exit on their own
                try:
                    p.wait(timeout=max(30.0, self.ttl))
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        finally:
            for p in procs.values():
                if p.poll() is None:
                    _terminate(p)


def _terminate(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    except ProcessLookupError:
        p.wait()
