"""What a running step sees: its params, inputs, output directory, seeds and batch ledger.

Contract for step authors:
- Write every output under ``ctx.out_dir`` (a staging directory). The engine fsyncs, renames
  it into place and hashes it only after the function returns; a crash before that leaves no
  half-written output behind.
- ``ctx.work_dir`` survives interrupted attempts of the same cache key (trainer checkpoints,
  ledger batches) and is deleted after the step succeeds.
- A step that advances in other durable units (trainer checkpoints) reports each one with
  ``ctx.progress(marker)`` once it is on disk: interrupted attempts that made progress are not
  counted toward dead-lettering.
- Long steps go through ``ctx.ledger(name).run(items, batch_size, fn)``: each finished batch is
  written durably and recorded, so a resumed attempt redoes only unfinished batches, and every
  batch's seed depends only on (run seed, step, ledger, batch index).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

from runner.pipeline import derive_seed
from runner.progress import Progress
from runner.shards import ShardSet
from state.files import atomic_write_bytes, sha256_file
from state.schema import Attempt
from state.store import PROGRESS_EVENT, Fence, Store


@dataclass(frozen=True)
class BatchInfo:
    index: int
    start: int  # index of the batch's first item in the full item list
    seed: int
    n_batches: int


class BatchLedger:
    """Durable progress of a long step at batch granularity."""

    def __init__(self, ctx: "StepContext", name: str):
        self.ctx, self.name = ctx, name
        self.dir = ctx.work_dir / f"ledger-{name}"

    def _file(self, idx: int) -> Path:
        return self.dir / f"b{idx:06d}.json"

    def committed(self) -> dict[int, Any]:
        """{batch index: Batch row} for batches whose file still matches its recorded hash."""
        ok, bad = {}, []
        for b in self.ctx.store.batches(self.ctx.run_id, self.ctx.step, self.ctx.cache_key, self.name):
            p = self.ctx.store.home / b.path
            if p.exists() and sha256_file(p) == b.sha256:
                ok[b.idx] = b
            else:
                bad.append(b.idx)
        if bad:  # one event, not one per batch (a re-run after success finds them all gone)
            self.ctx.log(f"ledger {self.name}: {len(bad)} committed batch file(s) missing or torn "
                         f"(first: {bad[:5]}); redoing them", kind="batch_torn", batches=bad[:50])
        return ok

    def run(self, items: Sequence[Any], batch_size: int,
            fn: Callable[[list, BatchInfo], list]) -> list:
        """Apply ``fn`` to each unfinished batch; return all results in item order.

        ``fn(batch_items, info)`` must return a list of JSON-serialisable results and must be
        deterministic given ``info.seed``. Results of finished batches are read back from disk.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n_batches = math.ceil(len(items) / batch_size)
        done = self.committed()
        self.dir.mkdir(parents=True, exist_ok=True)
        resumed = sum(1 for i in done if i < n_batches)
        self.ctx.store.event(self.ctx.run_id, "ledger_started", f"ledger {self.name}: {n_batches} batches, "
                             f"{len(items)} items ({resumed} done)", fence=self.ctx.fence, step=self.ctx.step,
                             attempt_id=self.ctx.attempt.id,
                             data={"ledger": self.name, "n_batches": n_batches, "items": len(items),
                                   "batch_size": batch_size})
        bar = Progress(f"{self.ctx.step}/{self.name}", len(items),
                       done=sum(min(batch_size, len(items) - i * batch_size) for i in done if i < n_batches))
        if resumed:
            self.ctx.log(f"ledger {self.name}: {resumed}/{n_batches} batches already done; resuming",
                         kind="ledger_resumed")
        try:
            for i in range(n_batches):
                if i in done:
                    continue
                start = i * batch_size
                info = BatchInfo(i, start, derive_seed(self.ctx.run_seed, self.ctx.step, self.name, i), n_batches)
                results = fn(list(items[start:start + batch_size]), info)
                if not isinstance(results, list):
                    raise TypeError(f"ledger {self.name}: batch function must return a list, got {type(results).__name__}")
                payload = json.dumps({"index": i, "results": results}, sort_keys=True, ensure_ascii=False).encode()
                path = self._file(i)
                atomic_write_bytes(path, payload)
                self.ctx.store.commit_batch(self.ctx.fence, self.ctx.step, self.ctx.cache_key, self.name, i,
                                            len(results), str(path.relative_to(self.ctx.store.home)),
                                            sha256_file(path), self.ctx.attempt.id)
                bar.advance(len(items[start:start + batch_size]))
        finally:
            bar.close()
        out: list = []
        for i in range(n_batches):
            out.extend(json.loads(self._file(i).read_text(encoding="utf-8"))["results"])
        return out


class StepContext:
    def __init__(self, store: Store, fence: Fence, run_id: str, run_seed: int, step: str, cache_key: str,
                 params: dict, inputs: dict[str, Path], out_dir: Path, work_dir: Path, attempt: Attempt,
                 config: Mapping[str, Any]):
        self.store, self.fence, self.run_id, self.run_seed = store, fence, run_id, run_seed
        self.step, self.cache_key = step, cache_key
        self.params = MappingProxyType(dict(params))
        self.inputs = dict(inputs)
        self.out_dir, self.work_dir, self.attempt = out_dir, work_dir, attempt
        self.config = MappingProxyType(dict(config))
        self.seed = derive_seed(run_seed, step)

    @property
    def home(self) -> Path:
        return self.store.home

    @property
    def run_dir(self) -> Path:
        return self.store.home / "artifacts" / self.run_id

    def input(self, name: str) -> Path:
        """The output directory of the input step ``name`` (declared in ``inputs=``)."""
        if name not in self.inputs:
            raise KeyError(f"step {self.step!r} did not declare input {name!r} (inputs: {', '.join(self.inputs)})")
        return self.inputs[name]

    def seed_for(self, *parts: Any) -> int:
        return derive_seed(self.run_seed, self.step, *parts)

    def ledger(self, name: str = "main") -> BatchLedger:
        return BatchLedger(self, name)

    # Set by runner/worker.py when this context runs inside a `runner worker` process.
    worker = None

    def shards(self, name: str = "main") -> ShardSet:
        """A sharded part of this step, run by 1..N worker processes; see runner/shards.py."""
        return ShardSet(self, name)

    def log(self, message: str, kind: str = "step_log", **data: Any) -> None:
        """Record a line in the run's event log (and print it)."""
        print(f"[{self.step}] {message}", flush=True)
        self.store.event(self.run_id, kind, message, fence=self.fence, step=self.step,
                         attempt_id=self.attempt.id, data=data or None)

    def progress(self, marker: str, message: str = "", **data: Any) -> None:
        """Report durable progress: call it only *after* what ``marker`` names is safely on disk
        (a complete trainer checkpoint, a finished shard) so that a resumed attempt continues from
        it. An interrupted attempt that reported progress (or committed a ledger batch) never
        counts toward ``max_attempts`` (state/store.py ``counting_failures``)."""
        self.log(message or f"progress: {marker}", kind=PROGRESS_EVENT, marker=marker, **data)

    def add_cost(self, kind: str, amount: float) -> None:
        """Add to the cost ledger (``gpu_s``, ``llm_tokens_in``, ``llm_tokens_out``, ``usd``)."""
        self.store.add_cost(self.fence, kind, amount, step=self.step, attempt_id=self.attempt.id)


class GateContext:
    """What a gate's check and evidence functions see: upstream outputs and the run config."""

    def __init__(self, run_id: str, gate: str, outputs: dict[str, Path], summaries: dict[str, Any],
                 config: Mapping[str, Any], run_seed: int):
        self.run_id, self.gate, self.outputs, self.summaries = run_id, gate, outputs, summaries
        self.config, self.run_seed = config, run_seed

    def output(self, step: str) -> Path:
        if step not in self.outputs:
            raise KeyError(f"gate {self.gate!r}: no finished step {step!r} before it")
        return self.outputs[step]

