"""Shared plumbing of the pipeline's steps: step-output files, sampling params, manifests.

Not runnable; imported by `phases/steps/*.py` and the stage modules. Heavy imports (torch,
transformers) happen inside functions only, so `runner status` never pays for them. The model
step and model handles are in `phases/steps/model.py`.

- `dump` / `load_json` / `read_records` / `write_records`: a step's JSON and JSONL outputs
  (atomic writes; a missing or malformed input is a `DataError` naming the step to re-run).
- `session_manifest(ctx, ...)`: METHOD.md's session manifest (environment, git, loader
  provenance, params, seeds); its ``created_at`` is the only wall-clock time in the outputs,
  so datasets themselves are byte-identical across interrupted and uninterrupted runs.
"""
from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from phases.models.backends.base import GenerationParams
from runner.errors import DataError
from state.files import atomic_write_json, canonical_json, read_json, read_jsonl, sha256_file, sha256_text, write_jsonl

# On a shared or oversubscribed CPU, OpenMP threads that spin while waiting made generation 8x
# slower (SmolLM2, 2 cores, load 7: 31 s -> 4 s per batch with PASSIVE). Must be set before torch
# is first imported, which in the runner happens inside a step, after this module is loaded.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[2]


def dump(path: Path, obj: Any) -> None:
    atomic_write_json(path, obj, indent=2)


def load_json(path: Path) -> Any:
    """A step output's JSON; missing or malformed is a `DataError` saying which step to re-run."""
    return read_json(path, "this step output", DataError, "re-run the step that writes it (`runner rerun <step>`)",
                     expect=None)


def read_records(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(f"{path} is missing; re-run the step that writes it")
    return read_jsonl(path)


def write_records(path: Path, records: list[dict]) -> str:
    """Write JSONL (sorted keys, UTF-8, one record per line); return the file's sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, records)
    return sha256_file(path)


def record_hash(rec: dict) -> str:
    return sha256_text(canonical_json(rec))


def sampling(d: dict, batch_size: int | None = None):
    """A stage `SamplingParams` mapping -> `GenerationParams` (stop as a tuple)."""
    return GenerationParams(max_new_tokens=int(d["max_new_tokens"]), temperature=float(d["temperature"]),
                            top_p=float(d["top_p"]), repetition_penalty=float(d["repetition_penalty"]),
                            do_sample=bool(d["do_sample"]), stop=tuple(d.get("stop") or ()))


# ---- environment and manifests ---------------------------------------------------------------

def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    env: dict[str, Any] = {"host": socket.gethostname(), "python": sys.version.split()[0],
                           "platform": platform.platform(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    try:
        import torch
        import transformers

        env.update(torch=torch.__version__, transformers=transformers.__version__, cuda=torch.version.cuda,
                   cuda_available=torch.cuda.is_available())
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                       gpu_count=torch.cuda.device_count())
        else:
            env.update(gpu=None, gpu_memory_gib=None, gpu_count=0)
    except ImportError:
        pass
    return env


def git_info() -> dict:
    status = _git("status", "--porcelain")
    return {"commit": _git("rev-parse", "HEAD"), "branch": _git("rev-parse", "--abbrev-ref", "HEAD"),
            "dirty": bool(status) if status is not None else None}


def session_manifest(ctx, kind: str, info: dict | None, files: dict[str, str], counts: dict, **extra: Any) -> dict:
    """METHOD.md session/dataset manifest. ``files``: {name: sha256} of the produced files."""
    return {
        "schema": "manifest/v1",
        "kind": kind,
        "id": f"{ctx.run_id}/{ctx.step}/{ctx.cache_key[:12]}",
        "run_id": ctx.run_id,
        "step": ctx.step,
        "cache_key": ctx.cache_key,
        "attempt": ctx.attempt.number,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git": git_info(),
        "environment": environment(),
        "model": None if info is None else info["provenance"].get("model_id"),
        "git_sha": git_info()["commit"],
        "loader": None if info is None else {"request": info["request"], "fingerprint": info["fingerprint"],
                                             "sentinels_passed": info["sentinels_passed"],
                                             "provenance": info["provenance"]},
        "params": dict(ctx.params),
        # Which runs, stages and models this one descends from (phases/chain.py); [] for a first stage.
        "lineage": [] if info is None else info.get("lineage", []),
        "seeds": {"run_seed": ctx.run_seed, "step_seed": ctx.seed},
        "counts": counts,
        "files": files,
        # Test hooks change what is kept or checked; a manifest must say when one was active.
        "test_hooks": {k: v for k, v in sorted(os.environ.items()) if k.startswith("CAI_TEST_")},
        **extra,
    }
