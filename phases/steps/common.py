"""Shared plumbing of the stage-1 data steps: the model step, model handles, manifests.

Not runnable; imported by `phases/steps/*.py`. Heavy imports (torch, transformers) happen
inside functions only, so `runner status` never pays for them.

- `prepare_model` (a step): loads the model once through the canonical loader
  (`phases.models.loader.load_model`, which runs the contamination guard and sentinels) and
  writes ``model.json`` = ``{"request": {model, device, dtype, quantization, backend},
  "provenance": <loader provenance incl. sentinel results>, "fingerprint", "sentinels_passed"}``.
- `open_model(ctx)`: later steps load the same model once per step with the same request,
  skipping the sentinel generations (already recorded by prepare_model for the same files),
  and refuse to go on if the loader's fingerprint differs from model.json's.
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
from phases.models.embedded import ModelNotPreparedError
from phases.models.loader import fingerprint, load_model
from runner import step
from runner.errors import DataError
from state.files import atomic_write_json, canonical_json, read_json, read_jsonl, sha256_file, sha256_text, write_jsonl

# On a shared or oversubscribed CPU, OpenMP threads that spin while waiting made generation 8x
# slower (SmolLM2, 2 cores, load 7: 31 s -> 4 s per batch with PASSIVE). Must be set before torch
# is first imported, which in the runner happens inside a step, after this module is loaded.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"


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


# ---- the model ------------------------------------------------------------------------------

def _request(p: Any) -> dict:
    req = {"model": p["model"], "device": p["device"], "dtype": p["dtype"] or None,
           "quantization": p["quantization"] or None, "backend": p["backend"]}
    if p.get("kind"):
        req["kind"] = p["kind"]  # only when declared: older model.json records have no kind
    return req


# kind: "" (the profile says; an unknown folder is "unknown" and its sentinel failures only warn)
# or "base" (a pod's local base-model folder: a sentinel failure aborts prepare_model) / "instruct".
@step(outputs=["model.json"], version="1", gpu=True,
      params={"model": DEFAULT_MODEL, "device": "auto", "dtype": "", "quantization": "", "backend": "auto",
              "kind": ""})
def prepare_model(ctx):
    """Load the model through the canonical loader and record its provenance and sentinels."""
    req = _request(ctx.params)
    try:
        m = load_model(req["model"], device=req["device"], dtype=req["dtype"], quantization=req["quantization"],
                       backend=req["backend"], kind=req.get("kind"))
    except (FileNotFoundError, ModelNotPreparedError) as e:
        raise DataError(f"{e} (the model is params.prepare_model.model in the run config)") from e
    prov = m.provenance
    sentinels = prov.get("sentinels") or {}
    passed = bool(sentinels.get("all_passed")) if not sentinels.get("skipped") else None
    dump(ctx.out_dir / "model.json", {"request": req, "provenance": prov, "fingerprint": fingerprint(prov),
                                      "sentinels_passed": passed})
    ctx.log(f"model {m.model_id} ({m.kind}) on {m.device}/{m.dtype} via {prov['backend']}; sentinels passed: {passed}")
    return {"model": m.model_id, "kind": m.kind, "device": m.device, "backend": prov["backend"],
            "sentinels_passed": passed, "stand_in_note": m.stand_in_note}


MODEL_IDENTITY = ("model_id", "model_revision", "file_hashes", "quantization", "dtype", "device", "backend",
                  "template_disabled", "add_special_tokens", "eos_token", "stop_tokens")


def model_info(ctx) -> dict:
    return load_json(ctx.input("prepare_model") / "model.json")


def open_model(ctx, batch_size: int):
    """Load the recorded model once for this step (no sentinel re-run; fingerprint checked)."""
    info = model_info(ctx)
    req = info["request"]
    m = load_model(req["model"], device=req["device"], dtype=req["dtype"], quantization=req["quantization"],
                   backend=req["backend"], batch_size=batch_size, run_sentinels=False, kind=req.get("kind"))
    # The model's identity, not the loader fingerprint: that includes the checkout's git SHA,
    # which moves with every commit to the repo while a run is in progress.
    old, new = info["provenance"], m.provenance
    changed = [k for k in MODEL_IDENTITY if old.get(k) != new.get(k)]
    if changed:
        raise DataError(f"the model loaded by step {ctx.step} is not the one prepare_model recorded "
                        f"(changed: {', '.join(changed)}). Run `runner rerun prepare_model`.")
    if old.get("loader_version") != new.get("loader_version"):
        ctx.log(f"loader version moved from {old.get('loader_version')} to {new.get('loader_version')} "
                "since prepare_model; same model files and settings")
    return m, info


def record_meta(info: dict, gen_params: dict | None = None) -> dict:
    """METHOD.md SFT-record metadata (no wall-clock time: see the module docstring)."""
    prov = info["provenance"]
    out = {"git_sha": prov.get("loader_version"), "loader_version": prov.get("loader_version"),
           "model": prov.get("model_id"), "model_revision": prov.get("model_revision"),
           "quantization": prov.get("quantization"), "template_disabled": prov.get("template_disabled"),
           "add_special_tokens": prov.get("add_special_tokens")}
    if gen_params is not None:
        out["generation_params"] = gen_params
    return out


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
