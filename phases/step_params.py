"""Typed checks for ``params.sft`` and ``params.evaluate``, as strict as the stage keys.

Not runnable; `phases.steps.config.expand_stage_config` calls `check_step_params` on every
``runner init/run/resume/validate --config phases/stages/*.yaml``. Tests:
tests/unit/test_step_params.py.

The schema is built from the steps' own defaults (`phases.sft.SFT_DEFAULTS`,
`phases.evaluate.EVAL_DEFAULTS`: a key's type is its default's type) plus the limits below
(ranges and choices), and validated by the same code as the stage keys
(`phases.stage_config._build`), so errors read the same: ``file:line: params.sft.lora_r = 0:
expected a value >= 1``. A default without limits here is still type-checked. Unknown keys are
left to the runner's validation, which names them. Every problem is reported, not the first.
``params.sft.trainer: unsloth`` (a removed value) gets the step's own message, which says where
Unsloth is measured instead, not the generic "expected one of".
"""
from __future__ import annotations

import dataclasses
from typing import Any

from phases.evaluate import BASE_ARMS, EVAL_DEFAULTS
from phases.models.devices import DEVICES, QUANTIZATIONS
from phases.sft import SFT_DEFAULTS, TRAINERS, trainer_error
from phases.stage_config import _build, _f, _Reported
from runner.errors import ConfigError

_DEVICE = {"choices": list(DEVICES) + [f"cuda:{i}" for i in range(16)]}
_QUANT = {"choices": list(QUANTIZATIONS)}
_FRACTION = {"lo": 0.0, "hi": 1.0}

SFT_LIMITS: dict[str, dict] = {
    "device": _DEVICE, "quantization": _QUANT,
    "trainer": {"choices": list(TRAINERS)}, "kernels": {"choices": ["auto", "liger", "none"]},
    "compile": {"choices": ["auto", "layers", "off"]},
    "fast_max_tokens": {"lo": 1},
    "lora_r": {"lo": 1}, "lora_alpha": {"lo": 1}, "lora_dropout": {"lo": 0.0, "hi": 0.9},
    "learning_rate": {"lo": 0.0, "lo_open": True, "hi": 1.0}, "weight_decay": {"lo": 0.0},
    "warmup_ratio": _FRACTION,
    "lr_scheduler": {"choices": ["linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                                 "constant_with_warmup", "inverse_sqrt", "reduce_lr_on_plateau"]},
    "per_device_batch_size": {"lo": 1}, "grad_accum": {"lo": 1}, "epochs": {"lo": 0.0, "lo_open": True},
    "max_steps": {"lo": -1}, "max_seq_len": {"lo": 16}, "dev_fraction": {"lo": 0.0, "hi": 0.5},
    "early_stopping_patience": {"lo": 0}, "save_steps": {"lo": 1}, "save_total_limit": {"lo": 1},
    "logging_steps": {"lo": 1}, "gradient_checkpointing": {"choices": ["auto", "on", "off"]},
    "max_examples": {"lo": 0},
}

EVAL_LIMITS: dict[str, dict] = {
    "device": _DEVICE, "quantization": _QUANT,
    "max_new_tokens": {"lo": 1}, "batch_size": {"lo": 1},
    "arms": {"choices": sorted(BASE_ARMS)},
    "critic_threshold": {"lo": 0.0}, "ifeval_limit": {"lo": -1}, "ifeval_max_new_tokens": {"lo": 1},
    "ifeval_batch_size": {"lo": 0},
    "alpha": {"lo": 0.0, "lo_open": True, "hi": 0.5}, "fdr": {"lo": 0.0, "lo_open": True, "hi": 1.0},
    "confidence": {"lo": 0.5, "hi": 0.999}, "n_boot": {"lo": 0}, "max_items": {"lo": 0},
}

SCHEMAS: dict[str, tuple[dict, dict]] = {"sft": (SFT_DEFAULTS, SFT_LIMITS), "evaluate": (EVAL_DEFAULTS, EVAL_LIMITS)}


def _schema(step: str, defaults: dict, limits: dict) -> type:
    fields = []
    for key, default in defaults.items():
        tp: Any = type(default)
        if isinstance(default, list):
            tp = list[str] if all(isinstance(x, str) for x in default) else list
        fields.append((key, tp, _f(default, **limits.get(key, {}))))
    return dataclasses.make_dataclass(f"{step.capitalize()}Params", fields)


def check_step_params(params: dict, sources: dict[tuple, str], errors: list[str]) -> None:
    """Append an error (``file:line: params.<step>.<key> = value: expected ...``) for every
    value of ``params.sft``/``params.evaluate`` that breaks its type, range or choices."""
    for step, (defaults, limits) in SCHEMAS.items():
        user = params.get(step)
        if not isinstance(user, dict):
            continue  # absent, or not a mapping: the runner's validation names that
        known = {k: v for k, v in user.items() if k in defaults}
        if step == "sft" and known.get("trainer") == "unsloth":
            errors.append(f"{_where(sources, step, 'trainer')}: params.sft.trainer = 'unsloth': "
                          f"{trainer_error('unsloth')}")
            del known["trainer"]
        if isinstance(known.get("arms"), list) and not known["arms"]:
            errors.append(f"{_where(sources, step, 'arms')}: params.{step}.arms = []: expected a non-empty list "
                          f"of {sorted(BASE_ARMS)}")
            continue
        try:
            _build(_schema(step, defaults, limits), known, ("params", step), sources, errors=errors)
        except _Reported:
            pass
        except ConfigError as e:
            errors.append(str(e))


def _where(sources: dict, *path: Any) -> str:
    full = ("params",) + tuple(path)
    for n in range(len(full), 0, -1):
        if full[:n] in sources:
            return sources[full[:n]]
    return "config"


__all__ = ["SFT_LIMITS", "EVAL_LIMITS", "check_step_params"]
