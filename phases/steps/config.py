"""Turn a combined runner + stage YAML into the runner's config with per-step params.

Not runnable; the runner calls `expand_stage_config(raw, path)` (the pipeline's
``expand_config`` hook) on ``runner init/run/resume/validate --config phases/stages/demo.yaml``.
Check a file without a model: ``.venv/bin/runner validate --config phases/stages/demo.yaml``.

One file is both configs (``include:`` chains allowed, resolved by both loaders):
- runner keys (``pipeline``, ``seed``, ``goal``, ``max_attempts``, ``lease_ttl_s``, ``params``,
  ``gates``, ``reviewer``) are validated by `runner.config.validate`; ``params`` may only set
  steps that are not fed by the stage (``prepare_model``, and the SFT/eval steps);
- stage keys (``stage``, ``seeds_file``, ``families``, ``prompts``, ``generation``, ...) are
  validated by `phases.stage_config.load_stage` (errors name the file and the dotted key);
- ``seed`` is shared: it is the run seed (every per-batch/per-item seed derives from it);
- any other top-level key is an error naming the file and the key.

Each data step gets only the slice of the stage it uses, so its cache key changes only when
that slice does: e.g. editing ``generation.responses`` re-runs ``pilot`` and what follows, but
not ``heldout`` (which uses ``generation.instructions``) or ``prepare_model``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from runner.config import TOP_KEYS
from runner.errors import ConfigError

# The runner's keys; `stage` is left out because it is also a stage key (the stage's name).
RUNNER_KEYS = frozenset(TOP_KEYS - {"stage", "include"})
# Steps whose params come only from the stage keys; `params.<step>` for them is an error.
STAGE_FED_STEPS = ("heldout", "pilot", "scale", "merge")


def stage_keys() -> frozenset[str]:
    from phases.stage_config import StageConfig

    return frozenset(f.name for f in dataclasses.fields(StageConfig) if not f.metadata.get("derived"))


def step_params(stage: Any) -> dict[str, dict]:
    """The per-step params derived from a validated `StageConfig` (JSON-ready)."""
    d = stage.to_dict()
    gen = d["generation"]
    families = {name: d["families"][name] for name in stage.enabled_families}
    seeds = {name: list(stage.seeds[name]) for name in stage.enabled_families}
    common_instr = {
        "families": families,
        "seeds": seeds,
        "list_header": d["prompts"]["list_header"],
        "instruction_builder": d["prompts"]["instruction_builder"],
        "instruction_generation": d["instruction_generation"],
        "critics": d["critics"],
        "batch_size": gen["batch_size"],
    }
    responses_cfg = {
        "response_builder": d["prompts"]["response_builder"],
        "end_marker": d["prompts"]["end_marker"],
        "response_fewshot": [list(p) for p in stage.response_fewshot] if d["prompts"]["use_response_fewshot"] else [],
    }
    return {
        "heldout": {**common_instr, "instructions": gen["instructions"], "heldout": d["heldout"],
                    "checks": d["checks"]},
        "pilot": {**common_instr, **responses_cfg, "generation": {"instructions": gen["instructions"],
                                                                   "responses": gen["responses"]},
                  "size": d["pilot"]["size"], "qc": d["qc"], "leakage": d["leakage"],
                  "stage_name": d["stage"]["name"]},
        # scale's generation params come from the pilot's output (its final, possibly adjusted, try).
        "scale": {**common_instr, **responses_cfg, "scale": d["scale"], "qc": d["qc"], "leakage": d["leakage"],
                  "stage_name": d["stage"]["name"]},
        "merge": {"target_kept": d["scale"]["target_kept"], "include_pilot": True, "qc": d["qc"],
                  "leakage": d["leakage"], "near_dup_threshold": d["instruction_generation"]["near_dup_threshold"],
                  "end_marker": d["prompts"]["end_marker"], "stage_name": d["stage"]["name"]},
    }


def expand_stage_config(raw: dict, path: Any, extra_keys: frozenset = frozenset()) -> dict:
    """The pipeline's ``expand_config`` hook (see the module docstring). Returns a new dict.

    ``extra_keys``: top-level keys another pipeline validates itself (e.g. stage 6's
    ``constitution``); they are neither stage nor runner keys and are left out of the result."""
    from phases.stage_config import load_stage

    if path is None:
        raise ConfigError("pipeline cai-stage1 needs a config file with the stage keys "
                          "(e.g. --config phases/stages/demo.yaml)")
    path = Path(path)
    skeys = stage_keys()
    unknown = sorted(set(raw) - skeys - RUNNER_KEYS - {"include"} - set(extra_keys))
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {', '.join(unknown)}; runner keys: "
                          f"{', '.join(sorted(RUNNER_KEYS))}; stage keys: {', '.join(sorted(skeys))}")
    stage = load_stage(path, ignore_keys=(RUNNER_KEYS - {"seed"}) | set(extra_keys))
    out = {k: v for k, v in raw.items() if k in RUNNER_KEYS}
    out["seed"] = stage.seed  # shared key; load_stage validated it (an int)
    # Kept in the run's stored config so a child run's lineage (runner init --from-run) names it.
    out["stage"] = {"name": stage.stage.name, "description": stage.stage.description}
    user_params = raw.get("params") or {}
    if not isinstance(user_params, dict):
        raise ConfigError(f"{path}: 'params' must be a mapping of step name -> params")
    params = {k: dict(v) if isinstance(v, dict) else v for k, v in user_params.items()}
    for name, derived in step_params(stage).items():
        if name in params:
            raise ConfigError(f"{path}: params.{name}: this step's params come from the stage keys "
                              f"(generation, pilot, scale, qc, ...); set them there instead")
        params[name] = derived
    out["params"] = params
    return out
