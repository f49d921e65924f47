"""Turn a combined runner + stage YAML into the runner's config with per-step params.

Not runnable; the runner calls `expand_stage_config(raw, path)` (the pipeline's
``expand_config`` hook) on ``runner init/run/resume/validate --config phases/stages/demo.yaml``.
Check a file without a model: ``.venv/bin/runner validate --config phases/stages/demo.yaml``.

One file is both configs, read ONCE by `runner.config.load_yaml` (``include:`` a path or a
list, deep merge, duplicate keys refused, each key's ``file:line`` kept):
- runner keys (``pipeline``, ``seed``, ``goal``, ``max_attempts``, ``lease_ttl_s``, ``params``,
  ``gates``, ``reviewer``) are validated by `runner.config.validate`; ``params`` may only set
  steps that are not fed by the stage (``prepare_model``, and the SFT/eval steps), and
  ``params.sft``/``params.evaluate`` are typed with ranges and choices (`phases.step_params`);
- stage keys (``stage``, ``seeds_file``, ``families``, ``prompts``, ``generation``, ...) are
  validated by `phases.stage_config.stage_from_doc` (errors name the file:line and dotted key);
- ``prompts.eval_arms`` is where the evaluated base framings are set: it becomes
  ``params.evaluate.arms`` (setting that param directly in a stage config is an error);
- the judging rules and gate thresholds set in ``params.evaluate`` (``SHARED_EVAL_KEYS`` of
  `phases.steps.dpo_eval`) are copied into ``params.evaluate_dpo`` when the config has that
  section, unless it sets them itself (the DPO gate uses the SFT gate's rules);
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

from phases.evaluate import BASE_ARMS
from phases.prompts import canonical_builder_name
from phases.stage_config import StageConfig, load_stage, stage_from_doc
from phases.step_params import check_step_params
from phases.steps.dpo_eval import SHARED_EVAL_KEYS, check_gate_criteria
from runner.config import TOP_KEYS, in_file_order, source_of
from runner.errors import ConfigError

# The runner's keys; `stage` is left out because it is also a stage key (the stage's name).
RUNNER_KEYS = frozenset(TOP_KEYS - {"stage", "include"})
# Steps whose params come only from the stage keys; `params.<step>` for them is an error.
STAGE_FED_STEPS = ("heldout", "pilot", "scale", "merge")
# Steps that get a stage slice AND user params (`params.<step>` may set the other keys).
STAGE_SLICED_STEPS = ("candidates",)


def stage_keys() -> frozenset[str]:
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
        # preference prompts are drawn like the training prompts: same families, seeds, generation, leakage
        "candidates": {k: common_instr[k] for k in ("families", "seeds", "list_header", "instruction_builder",
                                                   "instruction_generation")}
                      | {"instructions": gen["instructions"], "leakage": d["leakage"]},
        "merge": {"target_kept": d["scale"]["target_kept"], "include_pilot": True, "qc": d["qc"],
                  "leakage": d["leakage"], "near_dup_threshold": d["instruction_generation"]["near_dup_threshold"],
                  "end_marker": d["prompts"]["end_marker"], "stage_name": d["stage"]["name"]},
    }


def eval_arms(stage: Any) -> list[str]:
    """``prompts.eval_arms`` (framing builder names, plus ``fewshot``: the ``instruction_response``
    framing after the stage's few-shot examples) as the evaluate step's arm names (`BASE_ARMS`
    keys: ``instruction_response`` is the arm ``instruction``)."""
    return [a if a in BASE_ARMS else {canonical_builder_name(k): k for k in BASE_ARMS if k != "fewshot"}[
        canonical_builder_name(a)] for a in stage.prompts.eval_arms]


def expand_stage_config(raw: dict, path: Any, extra_keys: frozenset = frozenset()) -> dict:
    """The pipeline's ``expand_config`` hook (see the module docstring). Returns a new dict.

    ``extra_keys``: top-level keys another pipeline validates itself (e.g. stage 6's
    ``constitution``); they are neither stage nor runner keys and are left out of the result.

    Every problem (unknown top-level keys, stage schema errors, params set in the wrong place,
    out-of-range ``params.sft``/``params.evaluate`` values) is reported in one `ConfigError`,
    one per line, with the ``file:line`` that set the key."""
    if path is None:
        raise ConfigError("pipeline cai-stage1 needs a config file with the stage keys "
                          "(e.g. --config phases/stages/demo.yaml)")
    path = Path(path)
    sources = getattr(raw, "sources", None) or {}

    def where(*key: Any) -> str:
        return source_of(sources, key, str(path))

    errors: list[str] = []
    skeys = stage_keys()
    unknown = set(raw) - skeys - RUNNER_KEYS - {"include"} - set(extra_keys)
    for key in sorted(unknown, key=str):
        errors.append(f"{where(key)}: unknown top-level key {key}; runner keys: {', '.join(sorted(RUNNER_KEYS))}; "
                      f"stage keys: {', '.join(sorted(skeys))}")
    stage = None
    try:
        if sources:  # the runner's loader already read and merged the chain: validate that, read once
            stage = stage_from_doc(raw, ignore_keys=(RUNNER_KEYS - {"seed"}) | unknown | set(extra_keys))  # unknown: reported above
        else:
            stage = load_stage(path, ignore_keys=(RUNNER_KEYS - {"seed"}) | set(extra_keys))
    except ConfigError as e:
        errors.append(str(e))
    user_params = raw.get("params") or {}
    if not isinstance(user_params, dict):
        errors.append(f"{where('params')}: 'params' must be a mapping of step name -> params")
        user_params = {}
    params = {k: dict(v) if isinstance(v, dict) else v for k, v in user_params.items()}
    sliced = step_params(stage) if stage is not None else {}
    for name in STAGE_SLICED_STEPS:  # user params for the other keys; the stage's slice wins nowhere silently
        user = params.get(name) or {}
        for key in sorted(set(user) & set(sliced.get(name, {}))):
            errors.append(f"{where('params', name, key)}: params.{name}.{key}: this comes from the stage keys "
                          "(families, seeds, generation.instructions, leakage, ...); set it there instead")
    for name in STAGE_FED_STEPS:
        if name in params:
            errors.append(f"{where('params', name)}: params.{name}: this step's params come from the stage keys "
                          "(generation, pilot, scale, qc, ...); set them there instead")
    if isinstance(params.get("evaluate"), dict) and "arms" in params["evaluate"]:
        errors.append(f"{where('params', 'evaluate', 'arms')}: params.evaluate.arms: the evaluated framings come "
                      "from the stage key prompts.eval_arms; set them there instead")
    check_step_params(params, sources, errors)
    dpo_eval = params.get("evaluate_dpo")
    if isinstance(dpo_eval, dict) and "gate" in dpo_eval:  # refused at validate, not after the DPO run
        try:
            check_gate_criteria(dpo_eval["gate"])
        except ConfigError as e:
            errors.append(f"{where('params', 'evaluate_dpo', 'gate')}: {e}")
    if errors:
        raise ConfigError("\n".join(in_file_order("\n".join(errors).splitlines())))
    out = {k: v for k, v in raw.items() if k in RUNNER_KEYS}
    out["seed"] = stage.seed  # shared key; the stage schema validated it (an int)
    # Kept in the run's stored config so a child run's lineage (runner init --from-run) names it.
    out["stage"] = {"name": stage.stage.name, "description": stage.stage.description}
    for name, derived in step_params(stage).items():
        params[name] = {**(params.get(name) or {}), **derived} if name in STAGE_SLICED_STEPS else derived
    evaluate = params.get("evaluate")
    params["evaluate"] = {**(evaluate if isinstance(evaluate, dict) else {}), "arms": eval_arms(stage)}
    # base_skill measures the same arms unless the config narrows them (params.base_skill.arms).
    base_skill = params.get("base_skill")
    if isinstance(base_skill, dict) and "arms" not in base_skill:
        params["base_skill"] = {**base_skill, "arms": eval_arms(stage)}
    elif base_skill is None:
        params["base_skill"] = {"arms": eval_arms(stage)}
    # The evaluation arms include the few-shot framing that generated the training data: the
    # evaluate and base_skill steps get the stage's examples unless the config sets them itself.
    fewshot = [list(x) for x in stage.response_fewshot] if stage.prompts.use_response_fewshot else []
    for name in ("evaluate", "base_skill"):
        ps = params.setdefault(name, {})
        if isinstance(ps, dict):
            ps.setdefault("response_fewshot", fewshot)
    # The DPO gate judges by the SFT gate's rules and thresholds: the shared keys set in
    # params.evaluate reach params.evaluate_dpo unless it sets them itself (one rule set, not two).
    if isinstance(params.get("evaluate_dpo"), dict):
        shared = {k: params["evaluate"][k] for k in SHARED_EVAL_KEYS if k in params["evaluate"]}
        params["evaluate_dpo"] = {**shared, **params["evaluate_dpo"]}
    out["params"] = params
    _refuse_demo_switches(raw, stage, params, path)
    return out


def _refuse_demo_switches(raw: dict, stage: Any, params: dict, path: Path) -> None:
    """Switches that make a run demonstrate the machinery instead of doing the method are
    accepted only in a config that says ``demo: true`` (recorded in the run's config)."""
    if raw.get("demo") is True:
        return
    found = []
    if stage.critics.enforce is False:
        found.append("critics.enforce: false (verdicts would not filter the data)")
    if isinstance(params.get("sft"), dict) and params["sft"].get("require_qc_pass") is False:
        found.append("params.sft.require_qc_pass: false (SFT would train on data that failed QC)")
    if found:
        raise ConfigError(f"{path}: demo-only switch(es) in a config that is not a demo: {'; '.join(found)}. "
                          "Remove them, or declare the config a demo with 'demo: true' (the run records it)")
