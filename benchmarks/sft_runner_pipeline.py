"""The benchmark's pipeline for timing the `sft` step through the runner: two input steps, then the real `sft`.

Used by ``benchmarks/bench_sft.py`` (variant ``runner``), which writes a run config naming
``benchmarks.sft_runner_pipeline:pipeline`` and runs, from the repo root,
``PYTHONPATH=. python -m runner --home HOME run --config CFG --run-id bench``. Not for production runs.

- ``prepare_model`` (param ``model_path``: a model folder): writes ``model.json`` in the contract
  format (``request.model`` = the folder), which ``phases.sft.model_ref`` resolves to that folder.
- ``merge`` (param ``records``: a JSONL file of ``{"instruction", "response"}``): copies it to
  ``sft.jsonl`` and writes a passed ``qc_summary.json`` and a complete ``manifest.json`` (the
  training precondition of ``phases.sft.check_merge_inputs``). The benchmark's records are random
  words, not QC'd data: the summary says so.
- ``sft``: the stage-1 step itself (``phases/steps/train_eval.py``), its params from the config.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from phases.steps.train_eval import sft
from runner import Pipeline, step
from runner.errors import ConfigError


@step(outputs=["model.json"], params={"model_path": ""})
def prepare_model(ctx):
    """model.json naming the benchmark's model folder."""
    folder = Path(ctx.params["model_path"])
    if not (folder / "config.json").is_file():
        raise ConfigError(f"params.prepare_model.model_path = {str(folder)!r}: no config.json there; "
                          "bench_sft.py saves the random model first")
    (ctx.out_dir / "model.json").write_text(json.dumps({"request": {"model": str(folder)}, "model_path": str(folder)},
                                                       sort_keys=True))
    return {"model": str(folder)}


@step(outputs=["sft.jsonl", "qc_summary.json", "manifest.json"], params={"records": ""})
def merge(ctx):
    """The benchmark's records as the SFT dataset, with a passed QC summary and a manifest."""
    src = Path(ctx.params["records"])
    if not src.is_file():
        raise ConfigError(f"params.merge.records = {str(src)!r}: no such file; bench_sft.py writes it first")
    shutil.copyfile(src, ctx.out_dir / "sft.jsonl")
    n = sum(1 for line in src.read_text(encoding="utf-8").splitlines() if line.strip())
    (ctx.out_dir / "qc_summary.json").write_text(json.dumps(
        {"thresholds_passed": True, "failed_reasons": [], "note": "benchmark records (random words), not QC'd data"}))
    (ctx.out_dir / "manifest.json").write_text(json.dumps(
        {"created_at": "benchmark", "git_sha": "benchmark", "model": "benchmark", "counts": {"kept": n},
         "files": {"sft.jsonl": src.name}}, sort_keys=True))
    return {"kept": n}


pipeline = Pipeline("sft-bench", [prepare_model, merge, sft],
                    goal="Time the stage-1 sft step through the runner on benchmark data.")
