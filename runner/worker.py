"""A ``runner worker`` process: rebuild a sharded step's context and re-enter the step function.

Run by the coordinator (runner/shards.py, ``ShardSet``) as ``python -m runner worker --spec FILE
--index I`` when ``runner resume --workers N`` has N > 1; never typed by hand. Kept apart from
runner/shards.py because it builds a ``StepContext`` and ``StepContext.shards`` builds a
``ShardSet``: with both in one module the two would import each other.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
import traceback
from pathlib import Path

from runner.context import StepContext
from runner.errors import EXIT_DONE, EXIT_FAILED, EXIT_LOCKED, EXIT_USAGE
from runner.pipeline import load_pipeline
from runner.shards import WorkerFinished, WorkerRole
from state.schema import Attempt
from state.store import Fence, LeaseLost, Store


def _exit_with_parent() -> None:
    """A worker whose coordinator died exits at once: its writes would fail on the fence anyway,
    and on a GPU it would hold the memory the next coordinator's worker needs."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                print("runner worker: the coordinator is gone; exiting", flush=True)
                os._exit(4)

    threading.Thread(target=watch, name="worker-parent-watch", daemon=True).start()


def worker_main(spec_path: Path, index: int) -> int:
    """Entry of ``runner worker``: rebuild the step's context and re-enter the step function.

    Exit codes: 0 every shard of the set is done; 1 a shard failed for good or the step errored;
    4 the coordinator lost the run lease (this worker must not write).
    """
    try:
        spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        print(f"runner worker: cannot read the worker spec {spec_path}: {e}", file=sys.stderr)
        return EXIT_USAGE
    store = Store.open(Path(spec["home"]), db_url=spec["db_url"], create=False)
    try:
        pipe = load_pipeline(spec["pipeline"])
        step = pipe.steps[spec["step"]]
        with store.db.read() as s:
            attempt = s.get(Attempt, spec["attempt_id"])
        fence = Fence(spec["run_id"], spec["fence"]["owner_id"], int(spec["fence"]["generation"]))
        work_dir = Path(spec["work_dir"])
        out_dir = work_dir / f".worker-{spec['shard_set']}-{index}-out"  # what the step writes outside shards: discarded
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True)
        ctx = StepContext(store, fence, spec["run_id"], int(spec["run_seed"]), spec["step"], spec["cache_key"],
                          spec["params"], {k: Path(v) for k, v in spec["inputs"].items()}, out_dir, work_dir,
                          attempt, spec["config"])
        ctx.worker = WorkerRole(spec["shard_set"], index)
        _exit_with_parent()
        print(f"runner worker {index}: pid {os.getpid()}, step {spec['step']}, shard set {spec['shard_set']}, "
              f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')}", flush=True)
        try:
            step.fn(ctx)
        except WorkerFinished:
            print(f"runner worker {index}: every shard of {spec['shard_set']} is done", flush=True)
            return EXIT_DONE
        except LeaseLost as e:
            print(f"runner worker {index}: {e}", flush=True)
            return EXIT_LOCKED
        except Exception:
            traceback.print_exc()
            return EXIT_FAILED
        print(f"runner worker {index}: step {spec['step']} returned without reaching shard set "
              f"{spec['shard_set']!r}", flush=True)
        return EXIT_FAILED
    finally:
        shutil.rmtree(Path(spec["work_dir"]) / f".worker-{spec['shard_set']}-{index}-out", ignore_errors=True)
        store.close()
