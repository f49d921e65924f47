"""Run configuration: THE config loader (one strict YAML reader, includes, deep merge) and the
runner's validation of a config against the pipeline's step signatures.

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
    demo: false                # true allows demo-only switches (gate policy 'approve'); recorded

Loading rules (`load_yaml`, also used for stage data by `phases.stage_config`):
- ``include: other.yaml`` or ``include: [a.yaml, b.yaml]`` (relative to the including file)
  loads those first, in order; the including file's keys are deep-merged over them: mappings
  merge key by key, lists and scalars are replaced whole. Chains are allowed; cycles are errors.
- A key written twice in one mapping is an error naming file and line (plain PyYAML silently
  keeps the last one).
- Every key's origin is kept as ``file:line`` (`ConfigDoc.sources`), so an unknown key or a
  wrong value is reported with the file and line that set it, even through includes.
- Validation reports every error it finds at once, one per line, not only the first.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable

import yaml

from runner.config_checks import check_lease_ttl, check_reviewers, env_lease_ttl
from runner.costs import BUDGET_GATE, validate_cost_keys
from runner.errors import ConfigError
from runner.pipeline import POLICIES, Pipeline, load_pipeline

TOP_KEYS = {"pipeline", "seed", "goal", "max_attempts", "lease_ttl_s", "params", "gates", "reviewer",
            "include", "stage", "budget", "prices", "demo", "from_run", "from"}
GATE_KEYS = {"policy", "criteria", "reviewer", "sample_size"}


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


# ---- the one strict YAML reader -------------------------------------------------------------
class _Mapping(dict):
    """A YAML mapping that remembers the line (1-based) of each of its keys."""

    key_lines: dict


class _StrictLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    lines: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in lines:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {lines[key]}); keep one", key_node.start_mark)
        lines[key] = key_node.start_mark.line + 1
    out = _Mapping(yaml.SafeLoader.construct_mapping(loader, node, deep=True))
    out.key_lines = lines
    return out


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj


def read_yaml(path: Path | str, error: type[Exception] = ConfigError, what: str = "file") -> Any:
    """Parse one YAML file strictly (duplicate keys refused); plain dicts/lists/scalars.

    A missing file or malformed YAML raises ``error`` naming the file (and line, from PyYAML)."""
    return _plain(_read_marked(Path(path), error, what))


def _read_marked(path: Path, error: type[Exception], what: str) -> Any:
    if not path.is_file():
        raise error(f"{what} {path} does not exist (relative includes resolve against the including file)")
    try:
        with open(path, encoding="utf-8") as f:  # a stream, so PyYAML's marks name the file
            return yaml.load(f, Loader=_StrictLoader)
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r}); "
                    "save the file as UTF-8") from None
    except yaml.YAMLError as e:
        raise error(f"{path}: malformed YAML: {e}") from None


class ConfigDoc(dict):
    """A merged config: a plain dict plus ``sources``, dotted key path (a tuple) -> ``file:line``
    of the file that set it last. Passing it on keeps the origin of every value."""

    sources: dict

    def where(self, *path: Any, default: str = "config") -> str:
        """``file:line`` of the deepest prefix of ``path`` that has a source."""
        return source_of(self.sources, tuple(path), default)


def source_of(sources: dict, path: tuple, default: str = "config") -> str:
    for n in range(len(path), 0, -1):
        if path[:n] in sources:
            return sources[path[:n]]
    return default


def _record(value: Any, file: Path, prefix: tuple, sources: dict) -> Any:
    """Plain copy of ``value``; every mapping key's ``file:line`` recorded under its path."""
    if isinstance(value, dict):
        lines = getattr(value, "key_lines", {})
        out = {}
        for k, v in value.items():
            sources[prefix + (k,)] = f"{file}:{lines.get(k, 1)}"
            out[k] = _record(v, file, prefix + (k,), sources)
        return out
    if isinstance(value, list):
        return [_record(v, file, prefix, sources) for v in value]
    return value


def _merge_sourced(base: dict, over: dict, over_sources: dict, sources: dict, prefix: tuple = ()) -> dict:
    out = dict(base)
    for k, v in over.items():
        path = prefix + (k,)
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge_sourced(out[k], v, over_sources, sources, path)
            sources[path] = over_sources[path]
            continue
        out[k] = v
        for p in [p for p in sources if p[:len(path)] == path]:
            del sources[p]
        for p, src in over_sources.items():
            if p[:len(path)] == path:
                sources[p] = src
    return out


def _load(path: Path, chain: tuple, ignore: frozenset) -> tuple[dict, dict]:
    path = path.resolve()
    if path in chain:
        raise ConfigError(f"{path}: include cycle ({' -> '.join(map(str, chain + (path,)))})")
    what = "config file" if not chain else f"file included by {chain[-1]}:"
    marked = _read_marked(path, ConfigError, what)
    if marked is None:
        marked = _Mapping()
        marked.key_lines = {}
    if not isinstance(marked, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(marked).__name__}")
    own_sources: dict = {}
    data = _record(marked, path, (), own_sources)
    for k in ignore & set(data):
        del data[k]
    inc = data.pop("include", None)
    own_sources = {p: s for p, s in own_sources.items() if p[0] in data}
    if inc is None:
        return data, own_sources
    incs = [inc] if isinstance(inc, str) else inc
    if not isinstance(incs, list) or not incs or not all(isinstance(i, str) and i.strip() for i in incs):
        raise ConfigError(f"{path}:{marked.key_lines.get('include', 1)}: include = {inc!r}: expected a path or a "
                          "list of paths (relative to this file)")
    merged: dict = {}
    sources: dict = {}
    for i in incs:
        sub, sub_sources = _load(path.parent / i, chain + (path,), ignore)
        merged = _merge_sourced(merged, sub, sub_sources, sources)
    return _merge_sourced(merged, data, own_sources, sources), sources


def load_yaml(path: Path | str, ignore_keys: Iterable[str] = ()) -> ConfigDoc:
    """Read a YAML config, resolving ``include:`` chains (see the module docstring).

    ``ignore_keys``: top-level keys dropped from every file of the chain (a stage loader skips
    the runner's keys). Returns a `ConfigDoc` (a dict, with ``sources``)."""
    data, sources = _load(Path(path), (), frozenset(ignore_keys))
    doc = ConfigDoc(data)
    doc.sources = sources
    return doc


_LOCATED = re.compile(r"^(.*?):(\d+): ")


def in_file_order(errors: Iterable[str]) -> list[str]:
    """Error lines sorted by the ``file:line`` they start with (unlocated ones last, in order)."""
    def key(item: tuple[int, str]) -> tuple:
        m = _LOCATED.match(item[1])
        return (0, m.group(1), int(m.group(2)), item[0]) if m else (1, "", 0, item[0])
    return [e for _, e in sorted(enumerate(errors), key=key)]


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
    """Check ``cfg`` against the pipeline; return the normalised config. Never runs anything.

    Every problem found is reported in one `ConfigError`, one per line, each prefixed by the
    ``file:line`` that set the key when ``cfg`` is a `ConfigDoc` (else by ``source``)."""
    sources = getattr(cfg, "sources", None) or {}
    errors: list[str] = []

    def err(path: tuple, msg: str) -> None:
        errors.append(f"{source_of(sources, path, source)}: {msg}")

    unknown = set(cfg) - TOP_KEYS
    for key in sorted(unknown, key=str):
        err((key,), f"unknown key(s) {key}; allowed: {', '.join(sorted(TOP_KEYS - {'include'}))}")
    out = dict(cfg)
    for key, typ in (("seed", int), ("max_attempts", int), ("lease_ttl_s", (int, float)), ("goal", str)):
        if key in cfg and (not isinstance(cfg[key], typ) or isinstance(cfg[key], bool)):
            err((key,), f"'{key}' must be {getattr(typ, '__name__', 'a number')}, got {cfg[key]!r}")
    if isinstance(cfg.get("max_attempts", 1), int) and cfg.get("max_attempts", 1) < 1:
        err(("max_attempts",), f"'max_attempts' must be >= 1, got {cfg['max_attempts']!r}")
    try:
        check_lease_ttl(cfg.get("lease_ttl_s"), f"{source}: lease_ttl_s")
    except ConfigError as e:
        err(("lease_ttl_s",), str(e).removeprefix(f"{source}: "))
    params = cfg.get("params") or {}
    if not isinstance(params, dict):
        err(("params",), "'params' must be a mapping of step name -> params")
        params = {}
    steps = pipeline.steps
    for sname, p in params.items():
        if sname not in steps:
            err(("params", sname), f"params.{sname}: no step named {sname!r} in pipeline "
                                   f"{pipeline.name!r} (steps: {', '.join(steps)})")
            continue
        if not isinstance(p, dict):
            err(("params", sname), f"params.{sname} must be a mapping, got {p!r}")
            continue
        spec = steps[sname]
        for k, v in p.items():
            if k not in spec.params:
                err(("params", sname, k), f"params.{sname}.{k}: step {sname!r} has no param {k!r} "
                                          f"(params: {', '.join(sorted(spec.params)) or 'none'})")
            elif v is None and spec.params[k] is not None:
                err(("params", sname, k), f"params.{sname}.{k} is null; give a "
                                          f"{type(spec.params[k]).__name__} like the default {spec.params[k]!r}, "
                                          "or delete the line to use the default")
            elif not _type_ok(spec.params[k], v):
                err(("params", sname, k), f"params.{sname}.{k} = {v!r} has the wrong type; expected "
                                          f"{type(spec.params[k]).__name__} like the default {spec.params[k]!r}")
    gates = cfg.get("gates") or {}
    if not isinstance(gates, dict):
        err(("gates",), "'gates' must be a mapping of gate name -> settings")
        gates = {}
    for gname, g in gates.items():
        if gname not in pipeline.gates:
            err(("gates", gname), f"gates.{gname}: no gate named {gname!r} in pipeline "
                                  f"{pipeline.name!r} (gates: {', '.join(pipeline.gates) or 'none'})")
            continue
        if not isinstance(g, dict):
            err(("gates", gname), f"gates.{gname} must be a mapping, got {g!r}")
            continue
        bad = set(g) - GATE_KEYS
        if bad:
            err(("gates", gname, sorted(bad)[0]), f"gates.{gname}: unknown key(s) {', '.join(sorted(bad))}; "
                                                  f"allowed: {', '.join(sorted(GATE_KEYS))}")
        if "policy" in g and g["policy"] not in POLICIES:
            err(("gates", gname, "policy"), f"gates.{gname}.policy = {g['policy']!r}; allowed: {', '.join(POLICIES)}")
        if g.get("policy") == "approve" and cfg.get("demo") is not True:
            err(("gates", gname, "policy"), f"gates.{gname}.policy = 'approve' passes the gate with no decision; "
                "it is for demo profiles only. Use auto/human/review/review+human, or declare the config a "
                "demo with 'demo: true' (the run records it)")
    if "demo" in cfg and not isinstance(cfg["demo"], bool):
        err(("demo",), f"'demo' must be true or false, got {cfg['demo']!r}")
    try:
        validate_cost_keys(cfg, source)
    except ConfigError as e:
        err(("budget",), str(e).removeprefix(f"{source}: "))
    if cfg.get("budget") is not None and BUDGET_GATE in pipeline.gates:
        err(("budget",), f"'budget' adds a gate named {BUDGET_GATE!r}, but pipeline "
                         f"{pipeline.name!r} already has one; rename that gate")
    if "from_run" in cfg and not isinstance(cfg["from_run"], dict):
        err(("from_run",), "'from_run' is set by `runner init --from-run RUN` (the parent run's outputs); "
                           f"do not write it by hand (got {cfg['from_run']!r})")
    fr = cfg.get("from")
    if fr is not None and not (isinstance(fr, dict) and len(fr) == 1 and set(fr) <= {"run", "config"}
                               and isinstance(next(iter(fr.values())), str)):
        err(("from",), f"from = {fr!r}: expected {{run: RUN_ID}} or {{config: PATH}} (the newest run "
                       "of that config file, relative to this file); see `runner init --help`")
    if "reviewer" in cfg and not isinstance(cfg["reviewer"], dict):
        err(("reviewer",), "'reviewer' must be a mapping (see docs/review.md)")
    else:
        try:
            check_reviewers(cfg, source)
        except ConfigError as e:
            err(("reviewer",), str(e).removeprefix(f"{source}: "))
    if errors:
        raise ConfigError("\n".join(in_file_order(errors)))
    out["params"], out["gates"] = params, gates
    return out


def effective_params(pipeline: Pipeline, cfg: dict, step_name: str) -> dict:
    spec = pipeline.steps[step_name]
    return {**spec.params, **(cfg.get("params") or {}).get(step_name, {})}


def load_config(path: Path | None, pipeline: Pipeline, overrides: dict | None = None) -> dict:
    """Read, expand (pipeline hook), and validate a run config. ``path`` None means defaults.

    The pipeline's ``expand_config(raw, path)`` receives the merged `ConfigDoc` (it can read
    ``raw.sources`` for file:line). If it raises `ConfigError`, the runner's own keys are still
    validated, and every error of both is reported together."""
    raw = load_yaml(path) if path is not None else ConfigDoc()
    if not hasattr(raw, "sources"):
        raw.sources = {}
    if overrides:
        merged = ConfigDoc(deep_merge(raw, overrides))
        merged.sources = raw.sources
        raw = merged
    source = str(path) if path else "config"
    if pipeline.expand_config is None:
        return validate(raw, pipeline, source)
    try:
        expanded = pipeline.expand_config(raw, path)
    except ConfigError as e:
        # Still check the runner's keys, so one `runner validate` shows every problem.
        runner_part = ConfigDoc({k: v for k, v in raw.items() if k in TOP_KEYS - {"stage"} and k != "params"})
        runner_part.sources = raw.sources
        try:
            validate(runner_part, pipeline, source)
        except ConfigError as e2:
            raise ConfigError("\n".join(in_file_order(f"{e}\n{e2}".splitlines()))) from e
        raise
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"{path}: {e}") from e
    if not hasattr(expanded, "sources"):
        expanded = ConfigDoc(expanded)
        expanded.sources = raw.sources
    return validate(expanded, pipeline, source)


def load_run_inputs(pipeline_path: str, config_path: Path | str | None, from_run: dict | None = None):
    """Import the pipeline and validate the config against it (no side effects): ``(pipeline, cfg)``.

    ``from_run``: a parent run's view (`runner.lineage.parent_view`), merged in as the config's
    ``from_run`` key before the pipeline's expand hook runs."""
    env_lease_ttl()  # RUNNER_LEASE_TTL <= 0 would busy-loop the heartbeat: refuse before anything runs
    pipe = load_pipeline(pipeline_path)
    cfg = load_config(Path(config_path) if config_path else None, pipe, {"from_run": from_run} if from_run else None)
    return pipe, cfg
