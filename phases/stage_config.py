"""Stage configs: YAML data with `include:`, deep merge and strict typed validation.

A stage is data (`phases/stages/*.yaml`); nothing branches on a stage's name. Imported by the
pipeline; not runnable on its own. Check a file with
`.venv/bin/python -c "from phases.stage_config import load_stage; print(load_stage('phases/stages/demo.yaml').to_dict())"`.
Tests: `.venv/bin/pytest tests/unit/test_stage_config.py`.

Loading rules:
- ``include: other.yaml`` (a path relative to the including file) loads that stage first; the
  including file's keys are deep-merged over it: mappings merge key by key, lists and scalars
  are replaced whole. Chains are allowed, cycles raise.
- Duplicate keys in one YAML mapping raise (PyYAML would silently keep the last).
- Every key is checked against the schema below: an unknown key, a wrong type or an
  out-of-range value raises `ConfigError` naming the file that set it, the dotted key path, the
  value and what is allowed. Omitted keys take the dataclass defaults (METHOD.md defaults).
- ``seeds_file`` is resolved relative to the file that set it; see `load_seeds` for its format.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phases.checks import draw, validate_spec
from phases.prompts import DEFAULT_LIST_HEADER, END_MARKER, FRAMING_BUILDERS, INSTRUCTION_BUILDERS, RESPONSE_BUILDERS
from phases.qc import MAX_RETRIES, QCThresholds
from runner.config import ConfigDoc, load_yaml, read_yaml
from runner.errors import ConfigError, DataError

__all__ = [
    "SamplingParams", "GenerationConfig", "Family", "PromptsConfig", "InstructionGenConfig",
    "HeldoutConfig", "PilotConfig", "ScaleConfig", "CriticConfig", "QCConfig", "LeakageConfig",
    "StageInfo", "StageConfig", "load_stage", "load_seeds", "ConfigError", "DataError",
]


def _f(default: Any = dataclasses.MISSING, *, lo: float | None = None, hi: float | None = None,
       lo_open: bool = False, choices: Any = None, doc: str = "") -> Any:
    meta = {"lo": lo, "hi": hi, "lo_open": lo_open, "choices": choices, "doc": doc}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: typing.cast(Any, type(d))(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class SamplingParams:
    """Generation parameters passed to the model layer. ``stop``: stop strings (not tokens)."""

    max_new_tokens: int = _f(80, lo=1)
    temperature: float = _f(0.4, lo=0.0, hi=2.0)
    top_p: float = _f(0.9, lo=0.0, hi=1.0, lo_open=True)
    repetition_penalty: float = _f(1.1, lo=0.5, hi=2.0)
    do_sample: bool = _f(True)
    stop: list[str] = _f([])


@dataclass
class GenerationConfig:
    batch_size: int = _f(16, lo=1)
    instructions: SamplingParams = field(default_factory=lambda: SamplingParams(max_new_tokens=200, temperature=0.7))
    responses: SamplingParams = field(default_factory=lambda: SamplingParams(stop=[END_MARKER]))


@dataclass
class Family:
    """An instruction family (task type); the held-out set and training data are typed by it."""

    description: str = _f()
    weight: float = _f(1.0, lo=0.0, doc="relative share of generated instructions")
    refusal_expected: bool = _f(False, doc="unsafe requests: the good answer is a brief refusal")
    enabled: bool = _f(True)


@dataclass
class PromptsConfig:
    response_builder: str = _f("instruction_response", choices=list(RESPONSE_BUILDERS))
    instruction_builder: str = _f("numbered_list", choices=list(INSTRUCTION_BUILDERS))
    eval_arms: list[str] = _f(["raw", "instruction_response", "fewshot", "urial"],
                              choices=list(FRAMING_BUILDERS) + ["fewshot"],
                              doc="base-model framings the evaluation compares (params.evaluate.arms); "
                                  "fewshot = instruction_response after the seeds' response_fewshot examples")
    end_marker: str = _f(END_MARKER)
    use_response_fewshot: bool = _f(True, doc="prepend the seeds file's response_fewshot examples")
    list_header: str = _f(DEFAULT_LIST_HEADER)


@dataclass
class InstructionGenConfig:
    examples_per_prompt: int = _f(8, lo=1)
    over_generation: float = _f(1.75, lo=1.0, hi=5.0, doc="generate this many times the target count")
    min_words: int = _f(3, lo=1)
    max_words: int = _f(60, lo=1)
    near_dup_threshold: float = _f(0.7, lo=0.0, hi=1.0, lo_open=True)


@dataclass
class HeldoutConfig:
    size: int = _f(1000, lo=1)
    seed: int = _f(1001)
    max_family_rounds: int = _f(3, lo=1, doc="instruction-generation rounds in all: round 0 asks every family "
                                            "for its quota, later rounds only the families still short; a "
                                            "family short after the cap is reported (manifest, log)")


@dataclass
class PilotConfig:
    size: int = _f(150, lo=1, doc="instructions in the pilot (METHOD.md: 100-200)")


@dataclass
class ScaleConfig:
    target_kept: int = _f(15000, lo=1)
    shard_size: int = _f(1000, lo=1, doc="instructions per shard (one manifest per shard)")
    max_top_up_rounds: int = _f(2, lo=0, doc="extra shard rounds when the shards keep fewer than needed "
                                           "(deterministic; the shortfall is reported past the cap)")


@dataclass
class CriticConfig:
    threshold: float = _f(1.0, lo=0.0, doc="confident when |logp(A) - logp(B)| >= threshold")
    both_orders: bool = _f(True, doc="score both label orders and combine (position bias)")
    enforce: bool = _f(True, doc="false (demo profiles only): verdicts are computed, recorded and counted in "
                                 "QC, but do not filter what is kept; records say not_enforced")


@dataclass(frozen=True)
class QCConfig(QCThresholds):
    """The stage's ``qc:`` section: `phases.qc.QCThresholds` (fields, defaults and ranges are
    declared there, once) plus the number of automatic pilot retries."""

    max_retries: int = _f(MAX_RETRIES, lo=0, hi=MAX_RETRIES)

    def thresholds(self) -> QCThresholds:
        return QCThresholds.from_params(dataclasses.asdict(self))


@dataclass
class LeakageConfig:
    min_tokens: int = _f(13, lo=1)
    min_fraction: float = _f(0.6, lo=0.0, hi=1.0, lo_open=True)
    rouge_threshold: typing.Optional[float] = _f(0.7, lo=0.0, hi=1.0, lo_open=True)


@dataclass
class StageInfo:
    name: str = _f()
    description: str = _f("")


@dataclass
class StageConfig:
    """A validated, merged stage. YAML keys are the fields up to ``leakage``; the rest is derived."""

    stage: StageInfo = _f()
    seeds_file: str = _f()
    families: dict[str, Family] = _f()
    seed: int = _f(1234, doc="run seed; per-batch seeds derive from it")
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    instruction_generation: InstructionGenConfig = field(default_factory=InstructionGenConfig)
    heldout: HeldoutConfig = field(default_factory=HeldoutConfig)
    pilot: PilotConfig = field(default_factory=PilotConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    critics: CriticConfig = field(default_factory=CriticConfig)
    qc: QCConfig = field(default_factory=QCConfig)
    leakage: LeakageConfig = field(default_factory=LeakageConfig)
    checks: list[typing.Any] = _f([], doc="held-out constraints: entries of phases.checks.REGISTRY by name with "
                                          "args (IFEval-backed ones only here); [] = the stage-1 set")
    # Derived, not YAML keys:
    source_files: list[str] = field(default_factory=list, metadata={"derived": True})
    seeds: dict[str, list[str]] = field(default_factory=dict, metadata={"derived": True})
    response_fewshot: list[tuple[str, str]] = field(default_factory=list, metadata={"derived": True})
    seeds_sha256: str = field(default="", metadata={"derived": True})

    @property
    def enabled_families(self) -> list[str]:
        return [name for name, fam in self.families.items() if fam.enabled]

    def to_dict(self) -> dict[str, Any]:
        """The effective merged config (YAML keys, defaults filled) plus ``seeds_sha256``.

        Machine-independent (no absolute paths), JSON-ready: use it for cache keys.
        """
        out = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self) if not f.metadata.get("derived")}
        out["seeds_sha256"] = self.seeds_sha256
        return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _read_yaml(path: Path, error: type[Exception]) -> Any:
    """The project's one strict YAML reader (`runner.config.read_yaml`), with this module's error type."""
    return read_yaml(path, error)


def _deep_update(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _deep_update(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _source(sources: dict[tuple, str], path: tuple) -> str:
    for n in range(len(path), 0, -1):
        if path[:n] in sources:
            return sources[path[:n]]
    return next(iter(sources.values()), "<config>")


def _build(tp: Any, value: Any, path: tuple, sources: dict[tuple, str], meta: dict | None = None,
           errors: list[str] | None = None) -> Any:
    """Validate ``value`` as ``tp`` and build it. With ``errors`` (a list), problems are appended
    and building goes on with the defaults (so one pass reports them all); else the first raises."""
    dotted = ".".join(str(p) for p in path) or "<top level>"

    def sub_build(sub_tp: Any, sub: Any, sub_path: tuple, sub_meta: dict | None = None) -> Any:
        if errors is None:
            return _build(sub_tp, sub, sub_path, sources, sub_meta)
        try:
            return _build(sub_tp, sub, sub_path, sources, sub_meta, errors)
        except _Reported:
            return dataclasses.MISSING
        except ConfigError as e:
            errors.append(str(e))
            return dataclasses.MISSING

    def fail(expected: str) -> typing.NoReturn:
        raise ConfigError(f"{_source(sources, path)}: {dotted} = {value!r}: expected {expected}")

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _build(inner, value, path, sources, meta)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            fail(f"a mapping with keys {[f.name for f in dataclasses.fields(tp) if not f.metadata.get('derived')]}")
        hints = typing.get_type_hints(tp)
        allowed = {f.name: f for f in dataclasses.fields(tp) if not f.metadata.get("derived")}
        kwargs = {}
        for key, sub in value.items():
            if key not in allowed:
                sub_path = path + (key,)
                msg = (f"{_source(sources, sub_path)}: {'.'.join(map(str, sub_path))} = {sub!r}: unknown key; "
                       f"allowed keys here: {sorted(allowed)}")
                if errors is None:
                    raise ConfigError(msg)
                errors.append(msg)
                continue
            fdef = allowed[key]
            if isinstance(sub, dict) and dataclasses.is_dataclass(hints[key]) and fdef.default_factory is not dataclasses.MISSING:
                # A partial nested mapping overrides the parent's own default for that field
                # (generation.instructions defaults differ from generation.responses).
                sub = _deep_update(_plain(fdef.default_factory()), sub)
            built = sub_build(hints[key], sub, path + (key,), dict(fdef.metadata))
            if built is not dataclasses.MISSING:
                kwargs[key] = built
        missing = [n for n, f in allowed.items() if n not in value and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ConfigError(f"{_source(sources, path)}: {dotted}: missing required key(s) {missing}")
        if any(n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
               for n, f in allowed.items()):
            raise _Reported()  # a required key was invalid; its error is already in ``errors``
        return tp(**kwargs)
    if origin is dict:
        if not isinstance(value, dict) or not value:
            fail(f"a non-empty mapping of name -> {_type_name(args[1])}")
        built_d = {str(k): sub_build(args[1], v, path + (k,)) for k, v in value.items()}
        return {k: v for k, v in built_d.items() if v is not dataclasses.MISSING}
    if origin is list:
        if not isinstance(value, list):
            fail(f"a list of {_type_name(args[0])}")
        built_l = [sub_build(args[0], v, path + (i,), meta) for i, v in enumerate(value)]
        return [v for v in built_l if v is not dataclasses.MISSING]
    meta = meta or {}
    if tp is bool:
        if not isinstance(value, bool):
            fail("true or false")
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail("an integer")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail("a number")
        value = float(value)
    elif tp is str:
        if not isinstance(value, str):
            fail("a string")
    lo, hi, choices = meta.get("lo"), meta.get("hi"), meta.get("choices")
    if lo is not None and (value < lo or (meta.get("lo_open") and value == lo)):
        fail(f"a value {'>' if meta.get('lo_open') else '>='} {lo}" + (f" and <= {hi}" if hi is not None else ""))
    if hi is not None and value > hi:
        fail(f"a value <= {hi}" + (f" and {'>' if meta.get('lo_open') else '>='} {lo}" if lo is not None else ""))
    if choices is not None and value not in choices:
        fail(f"one of {choices}")
    return value


class _Reported(ConfigError):
    """A value could not be built because of errors already collected (collecting mode only)."""


def load_seeds(path: str | os.PathLike) -> tuple[dict[str, list[str]], list[tuple[str, str]], str]:
    """Load a seeds file: ``(family -> seed instructions, response few-shot pairs, sha256)``.

    Format::

        response_fewshot:            # optional; list of {instruction, response}
          - instruction: ...
            response: ...
        families:                    # required, non-empty
          family_name: [instruction, ...]   # >= 3 non-empty, single-line, distinct strings

    Raises `DataError` naming the file and key for a missing/empty/malformed file.
    """
    p = Path(path)
    data = _read_yaml(p, DataError)
    if data is None:
        raise DataError(f"{p}: the seeds file is empty; it needs a 'families' mapping of family -> list of seed instructions")
    if not isinstance(data, dict):
        raise DataError(f"{p}: top level must be a mapping with 'families' (and optional 'response_fewshot'), got {type(data).__name__}")
    unknown = sorted(set(data) - {"families", "response_fewshot"})
    if unknown:
        raise DataError(f"{p}: unknown key(s) {unknown}; allowed: ['families', 'response_fewshot']")
    fams = data.get("families")
    if not isinstance(fams, dict) or not fams:
        raise DataError(f"{p}: families = {fams!r}: expected a non-empty mapping of family -> list of seed instructions")
    seeds: dict[str, list[str]] = {}
    for name, items in fams.items():
        if not isinstance(items, list) or len(items) < 3:
            raise DataError(f"{p}: families.{name} = {items!r}: expected a list of at least 3 seed instructions")
        clean = []
        for i, item in enumerate(items):
            if not isinstance(item, str) or not item.strip() or "\n" in item.strip():
                raise DataError(f"{p}: families.{name}.{i} = {item!r}: expected a non-empty, single-line string")
            if item.strip() in clean:
                raise DataError(f"{p}: families.{name}.{i} = {item!r}: duplicate seed in this family; remove it")
            clean.append(item.strip())
        seeds[str(name)] = clean
    fewshot = []
    for i, ex in enumerate(data.get("response_fewshot") or []):
        if not isinstance(ex, dict) or set(ex) != {"instruction", "response"} or not all(isinstance(v, str) and v.strip() for v in ex.values()):
            raise DataError(f"{p}: response_fewshot.{i} = {ex!r}: expected a mapping with non-empty 'instruction' and 'response' strings")
        fewshot.append((ex["instruction"].strip(), ex["response"].strip()))
    return seeds, fewshot, hashlib.sha256(p.read_bytes()).hexdigest()


# Top-level keys of a combined runner + stage file that belong to the runner (validated there).
RUNNER_KEYS = frozenset({"pipeline", "goal", "max_attempts", "lease_ttl_s", "params", "gates", "reviewer",
                         "budget", "prices", "demo"})


def load_stage(path: str | os.PathLike, ignore_keys: typing.Iterable[str] = RUNNER_KEYS) -> StageConfig:
    """Load, merge (``include:``) and validate a stage file, and load its seeds file.

    ``ignore_keys``: top-level keys of every file in the include chain that are not stage data
    and are skipped (default: the runner's keys, since phases/stages/*.yaml are combined
    runner + stage configs; the runner validates those).

    Cross-checks: every enabled family has seeds and every seeds family is declared in
    ``families``; ``instruction_generation.min_words <= max_words``; few-shot responses do not
    contain the end marker. Raises `ConfigError` (config) or `DataError` (seeds file).
    """
    doc = load_yaml(Path(path), ignore_keys)
    if not doc:
        raise ConfigError(f"{Path(path).resolve()}: the stage file is empty (no stage keys); it needs at least "
                          "'stage', 'seeds_file' and 'families' (or an 'include' of a file that has them)")
    return stage_from_doc(doc)


def stage_from_doc(doc: ConfigDoc, ignore_keys: typing.Iterable[str] = ()) -> StageConfig:
    """Validate an already merged config (`runner.config.load_yaml`) as a stage: the one config
    path, read once, with every key's ``file:line``. Keys in ``ignore_keys`` are not stage data.
    All schema errors are reported together (one per line); see `load_stage` for cross-checks."""
    sources: dict[tuple, str] = dict(getattr(doc, "sources", {}) or {})
    ignore = frozenset(ignore_keys) | {"include"}
    raw = {k: v for k, v in doc.items() if k not in ignore}
    if not raw:
        raise ConfigError(f"{_source(sources, ()) if sources else 'config'}: no stage keys; a stage needs at least "
                          "'stage', 'seeds_file' and 'families' (or an 'include' of a file that has them)")
    seeds_abs = None
    if isinstance(raw.get("seeds_file"), str):
        declared_in = _source(sources, ("seeds_file",)).rsplit(":", 1)[0]
        seeds_abs = str((Path(declared_in).parent / raw["seeds_file"]).resolve())
    errors: list[str] = []
    try:
        cfg = _build(StageConfig, raw, (), sources, errors=errors)
    except _Reported:
        cfg = None
    except ConfigError as e:
        errors.append(str(e))
    if errors:
        raise ConfigError("\n".join(errors))
    cfg.source_files = sorted({src.rsplit(":", 1)[0] for src in sources.values()})
    where = _source(sources, ("seeds_file",))
    seeds, fewshot, sha = load_seeds(seeds_abs)
    missing = [f for f in cfg.enabled_families if f not in seeds]
    if missing:
        raise DataError(f"{seeds_abs}: no seed instructions for enabled famil(ies) {missing} declared in {_source(sources, ('families',))}")
    undeclared = sorted(set(seeds) - set(cfg.families))
    if undeclared:
        raise DataError(f"{seeds_abs}: seed famil(ies) {undeclared} are not declared in 'families' of {where}; known: {sorted(cfg.families)}")
    ig = cfg.instruction_generation
    if ig.min_words > ig.max_words:
        raise ConfigError(f"{_source(sources, ('instruction_generation',))}: instruction_generation.min_words = {ig.min_words} > max_words = {ig.max_words}")
    marker = cfg.prompts.end_marker
    for i, (inst, resp) in enumerate(fewshot):
        if marker and (marker in resp or marker in inst):
            raise DataError(f"{seeds_abs}: response_fewshot.{i} contains the end marker {marker!r}; remove it")
    cfg.checks = _validate_checks(cfg.checks, _source(sources, ("checks",)))
    cfg.seeds, cfg.response_fewshot, cfg.seeds_sha256 = seeds, fewshot, sha
    return cfg


def _validate_checks(specs: list, where: str) -> list[dict]:
    """Each ``checks`` entry names a registry check (phases/checks.py) that IFEval can score,
    since the held-out set is scored by `phases.ifeval` (memory checks belong to multi-turn)."""
    import random

    out = []
    for i, spec in enumerate(specs):
        ok = validate_spec(spec, f"{where}: checks.{i}")
        if draw(ok, random.Random(0))["instruction_id"] is None:
            raise ConfigError(f"{where}: checks.{i}.name = {ok['name']!r}: a memory check cannot score a single-turn "
                              "held-out item; use an IFEval-backed check (lowercase, max_words, keywords, ifeval, ...)")
        out.append(ok)
    return out
