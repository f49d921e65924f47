"""Run configuration: a YAML file, validated against the pipeline's step signatures.

    # runner init --config my.yaml
    pipeline: runner.examples.toy:pipeline
    seed: 1234
    max_attempts: 3            # failed/interrupted attempts before a step is dead-lettered
    params:
      make_items: {items: 20}
      process: {delay: 0.05}
    gates:
      approve_items: {policy: human}
    reviewer: {model: gpt-5}   # see docs/review.md

``include: other.yaml`` (relative to the including file) merges another file first; mappings
merge deeply, lists and scalars are replaced. Unknown keys and wrong types are errors that name
the file and the dotted key.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from runner.errors import ConfigError
from runner.pipeline import POLICIES, Pipeline

TOP_KEYS = {"pipeline", "seed", "goal", "max_attempts", "lease_ttl_s", "params", "gates", "reviewer",
            "include", "stage", "from_run", "from"}
GATE_KEYS = {"policy", "criteria", "reviewer", "sample_size"}


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_yaml(path: Path, _seen: tuple = ()) -> dict:
    """Read a YAML mapping, resolving ``include:`` chains (cycles are an error)."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: include cycle ({' -> '.join(map(str, _seen + (path,)))})")
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: malformed YAML: {e}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    inc = data.pop("include", None)
    if inc is None:
        return data
    incs = [inc] if isinstance(inc, str) else inc
    if not isinstance(incs, list) or not all(isinstance(i, str) for i in incs):
        raise ConfigError(f"{path}: 'include' must be a path or a list of paths, got {inc!r}")
    merged: dict = {}
    for i in incs:
        merged = deep_merge(merged, load_yaml(path.parent / i, _seen + (path,)))
    return deep_merge(merged, data)


def _type_ok(default: Any, value: Any) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, type(default))


def validate(cfg: dict, pipeline: Pipeline, source: str = "config") -> dict:
    """Check ``cfg`` against the pipeline; return the normalised config. Never runs anything."""
    unknown = set(cfg) - TOP_KEYS
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(sorted(unknown))}; allowed: "
                          f"{', '.join(sorted(TOP_KEYS - {'include'}))}")
    out = dict(cfg)
    for key, typ in (("seed", int), ("max_attempts", int), ("lease_ttl_s", (int, float)), ("goal", str)):
        if key in cfg and (not isinstance(cfg[key], typ) or isinstance(cfg[key], bool)):
            raise ConfigError(f"{source}: '{key}' must be {getattr(typ, '__name__', 'a number')}, got {cfg[key]!r}")
    if cfg.get("max_attempts", 1) < 1:
        raise ConfigError(f"{source}: 'max_attempts' must be >= 1, got {cfg['max_attempts']!r}")
    params = cfg.get("params") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{source}: 'params' must be a mapping of step name -> params")
    steps = pipeline.steps
    for sname, p in params.items():
        if sname not in steps:
            raise ConfigError(f"{source}: params.{sname}: no step named {sname!r} in pipeline "
                              f"{pipeline.name!r} (steps: {', '.join(steps)})")
        if not isinstance(p, dict):
            raise ConfigError(f"{source}: params.{sname} must be a mapping, got {p!r}")
        spec = steps[sname]
        for k, v in p.items():
            if k not in spec.params:
                raise ConfigError(f"{source}: params.{sname}.{k}: step {sname!r} has no param {k!r} "
                                  f"(params: {', '.join(sorted(spec.params)) or 'none'})")
            if not _type_ok(spec.params[k], v):
                raise ConfigError(f"{source}: params.{sname}.{k} = {v!r} has the wrong type; expected "
                                  f"{type(spec.params[k]).__name__} like the default {spec.params[k]!r}")
    gates = cfg.get("gates") or {}
    if not isinstance(gates, dict):
        raise ConfigError(f"{source}: 'gates' must be a mapping of gate name -> settings")
    for gname, g in gates.items():
        if gname not in pipeline.gates:
            raise ConfigError(f"{source}: gates.{gname}: no gate named {gname!r} in pipeline "
                              f"{pipeline.name!r} (gates: {', '.join(pipeline.gates) or 'none'})")
        if not isinstance(g, dict):
            raise ConfigError(f"{source}: gates.{gname} must be a mapping, got {g!r}")
        bad = set(g) - GATE_KEYS
        if bad:
            raise ConfigError(f"{source}: gates.{gname}: unknown key(s) {', '.join(sorted(bad))}; "
                              f"allowed: {', '.join(sorted(GATE_KEYS))}")
        if "policy" in g and g["policy"] not in POLICIES:
            raise ConfigError(f"{source}: gates.{gname}.policy = {g['policy']!r}; allowed: {', '.join(POLICIES)}")
    if "from_run" in cfg and not isinstance(cfg["from_run"], dict):
        raise ConfigError(f"{source}: 'from_run' is set by `runner init --from-run RUN` (the parent run's outputs); "
                          f"do not write it by hand (got {cfg['from_run']!r})")
    fr = cfg.get("from")
    if fr is not None and not (isinstance(fr, dict) and len(fr) == 1 and set(fr) <= {"run", "config"}
                               and isinstance(next(iter(fr.values())), str)):
        raise ConfigError(f"{source}: from = {fr!r}: expected {{run: RUN_ID}} or {{config: PATH}} (the newest run "
                          "of that config file, relative to this file); see `runner init --help`")
    if "reviewer" in cfg and not isinstance(cfg["reviewer"], dict):
        raise ConfigError(f"{source}: 'reviewer' must be a mapping (see docs/review.md)")
    out["params"], out["gates"] = params, gates
    return out


def effective_params(pipeline: Pipeline, cfg: dict, step_name: str) -> dict:
    spec = pipeline.steps[step_name]
    return {**spec.params, **(cfg.get("params") or {}).get(step_name, {})}


def load_config(path: Path | None, pipeline: Pipeline, overrides: dict | None = None) -> dict:
    """Read, expand (pipeline hook), and validate a run config. ``path`` None means defaults."""
    raw = load_yaml(path) if path is not None else {}
    if overrides:
        raw = deep_merge(raw, overrides)
    if pipeline.expand_config is not None:
        try:
            raw = pipeline.expand_config(raw, path)
        except ConfigError:
            raise
        except (ValueError, TypeError, KeyError) as e:
            raise ConfigError(f"{path}: {e}") from e
    return validate(raw, pipeline, str(path) if path else "config")
