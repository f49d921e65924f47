"""Declaring a pipeline: steps are plain decorated functions, gates are named checkpoints.

    from runner import Pipeline, gate, step

    @step(outputs=["items.jsonl"], params={"items": 20})
    def make_items(ctx): ...

    @step(inputs=["make_items"], outputs=["done.json"])
    def process(ctx): ...

    pipeline = Pipeline("toy", [make_items, gate("approve_items"), process])

A step is identified by name + version + effective params + the content hashes of its inputs
+ the versions of the shared pieces it declares in ``uses=`` (the cache key), never by call
order. A gate blocks every node after it until it passes.

Pieces are opaque to the runner: an entry of ``uses`` is either an object with a ``name`` and a
``version`` (a string, or a zero-argument callable returning one), or a callable
``(params) -> {name: version}`` for pieces chosen by a param (e.g. a prompt builder's name).
The pipeline's package computes the versions (for cai-stage1: `phases/pieces.py`, hashes of
rubric text and source), so editing a rubric re-runs exactly the steps that use it.
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

from runner.errors import ConfigError
from state.files import canonical_json, sha256_text

POLICIES = ("auto", "human", "review", "review+human", "approve")


@dataclass(frozen=True)
class StepSpec:
    name: str
    fn: Callable[..., Any]
    version: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: dict
    description: str
    max_attempts: Optional[int] = None
    uses: tuple = ()
    gpu: bool = False  # holds the accelerator: GPU-seconds are recorded, the budget is checked first
    size: Optional[Callable[..., Any]] = None  # (inputs: {step: dir}, params) -> work units, for projections


def step(name: str | None = None, *, version: str = "1", inputs: Sequence[str] = (),
         outputs: Sequence[str] = (), params: dict | None = None, description: str | None = None,
         max_attempts: int | None = None, uses: Sequence[Any] = (), gpu: bool = False,
         size: Callable[..., Any] | None = None) -> Callable[[Callable], Callable]:
    """Declare a step. ``inputs`` name earlier steps; ``outputs`` are files the step must write
    under ``ctx.out_dir``; ``params`` are the defaults (config overrides them, type-checked);
    ``uses`` lists the shared pieces whose versions enter the cache key (see the module
    docstring); bump ``version`` when the step's own code changes what it produces.
    ``gpu=True``: the step holds the accelerator (its GPU-seconds are costed and the budget is
    checked before it runs); ``size(inputs, params)`` returns its work units (items, examples) so
    its cost can be projected from measured rates (runner/costs.py). Neither enters the cache key."""
    for u in uses:
        if not (callable(u) or (hasattr(u, "name") and hasattr(u, "version"))):
            raise ConfigError(f"step {name or '?'}: uses entry {u!r} is neither a piece (with .name and "
                              ".version) nor a callable (params) -> {{name: version}}")

    def deco(fn: Callable) -> Callable:
        doc = (fn.__doc__ or "").strip().splitlines()
        fn.__step__ = StepSpec(name or fn.__name__, fn, str(version), tuple(inputs), tuple(outputs),
                               dict(params or {}), description or (doc[0] if doc else ""), max_attempts,
                               tuple(uses), bool(gpu), size)
        return fn
    return deco


def piece_versions(spec: StepSpec, params: dict) -> dict[str, str]:
    """The versions of the pieces ``spec`` declares in ``uses``, resolved now: ``{name: version}``.

    Resolved at every resume (never stored with the step), so a piece edited since the last
    run changes the key. Two entries resolving one name to different versions is an error."""
    out: dict[str, str] = {}
    for u in spec.uses:
        if hasattr(u, "name") and hasattr(u, "version"):
            v = u.version() if callable(u.version) else u.version
            got = {str(u.name): v}
        else:
            got = u(params)
            if not isinstance(got, dict):
                raise ConfigError(f"step {spec.name!r}: uses entry {u!r} returned {type(got).__name__}, "
                                  "expected a dict of piece name -> version")
        for k, v in got.items():
            if not isinstance(v, str) or not v:
                raise ConfigError(f"step {spec.name!r}: piece {k!r} has version {v!r}; expected a non-empty str")
            if out.get(k, v) != v:
                raise ConfigError(f"step {spec.name!r}: piece {k!r} resolves to two versions ({out[k]}, {v})")
            out[k] = v
    return dict(sorted(out.items()))


@dataclass(frozen=True)
class GateCheck:
    """What a gate's automatic check found. ``summary`` is shown in status and sent to reviewers."""

    passed: bool
    summary: dict = field(default_factory=dict)
    reasons: list = field(default_factory=list)


@dataclass(frozen=True)
class GateSpec:
    name: str
    check: Optional[Callable[..., Any]] = None
    policy: str = "human"
    criteria: tuple = ()
    evidence: Optional[Callable[..., Any]] = None  # (GateContext) -> dict of evidence + samples
    description: str = ""


def gate(name: str, *, check: Callable | None = None, policy: str = "human", criteria: Sequence[str] = (),
         evidence: Callable | None = None, description: str = "") -> GateSpec:
    """Declare a gate. ``check(ctx) -> GateCheck | bool`` decides automatically under policy
    ``auto``; ``human`` always waits; ``review``/``review+human`` consult the LLM reviewer;
    ``approve`` passes whatever the check says (demo profiles only: it records the check and
    says loudly that the gate was approved without a decision)."""
    if policy not in POLICIES:
        raise ConfigError(f"gate {name!r}: policy {policy!r} is not one of {', '.join(POLICIES)}")
    return GateSpec(name, check, policy, tuple([criteria] if isinstance(criteria, str) else criteria),
                    evidence, description)


Node = Union[StepSpec, GateSpec]


class Pipeline:
    """An ordered set of steps and gates. ``expand_config`` may turn a user's config into the
    runner's shape before validation (e.g. a stage YAML into per-step params)."""

    def __init__(self, name: str, nodes: Sequence[Union[Callable, GateSpec, StepSpec]],
                 expand_config: Callable[[dict, Any], dict] | None = None, goal: str = ""):
        self.name, self.goal, self.expand_config = name, goal, expand_config
        self.nodes: list[Node] = []
        seen: set[str] = set()
        steps: set[str] = set()
        for n in nodes:
            spec = getattr(n, "__step__", n)
            if not isinstance(spec, (StepSpec, GateSpec)):
                raise ConfigError(f"pipeline {name!r}: {n!r} is neither a @step function nor a gate()")
            if spec.name in seen:
                raise ConfigError(f"pipeline {name!r}: node name {spec.name!r} is used twice")
            if isinstance(spec, StepSpec):
                for i in spec.inputs:
                    if i not in steps:
                        raise ConfigError(f"pipeline {name!r}: step {spec.name!r} reads {i!r}, which is not "
                                          "an earlier step")
                steps.add(spec.name)
            seen.add(spec.name)
            self.nodes.append(spec)

    @property
    def steps(self) -> dict[str, StepSpec]:
        return {n.name: n for n in self.nodes if isinstance(n, StepSpec)}

    @property
    def gates(self) -> dict[str, GateSpec]:
        return {n.name: n for n in self.nodes if isinstance(n, GateSpec)}

    def descendants(self, name: str) -> list[str]:
        """``name`` and every step that reads it, directly or not, in pipeline order."""
        hit = {name}
        for n in self.nodes:
            if isinstance(n, StepSpec) and any(i in hit for i in n.inputs):
                hit.add(n.name)
        return [n.name for n in self.nodes if isinstance(n, StepSpec) and n.name in hit]

    def plan(self) -> list[dict]:
        """The nodes as data, stored in the run so `status` never imports the pipeline."""
        out = []
        for n in self.nodes:
            if isinstance(n, StepSpec):
                out.append({"kind": "step", "name": n.name, "version": n.version, "inputs": list(n.inputs),
                            "outputs": list(n.outputs), "description": n.description})
                if n.gpu:
                    out[-1]["gpu"] = True
            else:
                out.append({"kind": "gate", "name": n.name, "policy": n.policy, "criteria": list(n.criteria),
                            "description": n.description})
        return out


def load_pipeline(path: str) -> Pipeline:
    """Import ``module:attr`` and return the Pipeline it names (clear errors otherwise)."""
    if ":" not in path:
        raise ConfigError(f"pipeline path {path!r} must look like 'package.module:attr' "
                          "(e.g. runner.examples.toy:pipeline)")
    mod_name, attr = path.split(":", 1)
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name and (mod_name == e.name or mod_name.startswith(e.name + ".")):
            raise ConfigError(f"pipeline module {mod_name!r} not found ({e}); check the path {path!r}") from e
        raise ConfigError(f"pipeline module {mod_name!r} failed to import: it needs module {e.name!r}, "
                          "which is not installed (see setup.sh)") from e
    except Exception as e:  # noqa: BLE001 - any error while importing user code is a config problem
        where = ""
        tb = e.__traceback__
        while tb is not None:
            where = f" at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"
            tb = tb.tb_next
        raise ConfigError(f"pipeline module {mod_name!r} raised while importing{where}: "
                          f"{type(e).__name__}: {e}; fix that module (pipeline path {path!r})") from e
    obj = getattr(mod, attr, None)
    if obj is None:
        raise ConfigError(f"module {mod_name!r} has no attribute {attr!r} (pipeline path {path!r})")
    if callable(obj) and not isinstance(obj, Pipeline):
        # Only a factory that says so (return annotation Pipeline) is called: naming an arbitrary
        # function must not run it.
        ret = getattr(obj, "__annotations__", {}).get("return") if inspect.isfunction(obj) else None
        if ret is Pipeline or ret in ("Pipeline", "runner.pipeline.Pipeline"):
            obj = obj()
        else:
            raise ConfigError(f"{path!r} is a {type(obj).__name__} {getattr(obj, '__name__', '')!r}, not a runner "
                              "Pipeline; name the Pipeline object (e.g. runner.examples.toy:pipeline), or "
                              "annotate a factory function with '-> Pipeline'. It was not called.")
    if not isinstance(obj, Pipeline):
        raise ConfigError(f"{path!r} is a {type(obj).__name__}, not a runner Pipeline")
    return obj


def derive_seed(run_seed: int, *parts: Any) -> int:
    """A 63-bit seed from the run seed and any labels (step name, ledger, batch index).

    Independent of call order and of how often a step was interrupted.
    """
    digest = hashlib.sha256("/".join([str(run_seed), *map(str, parts)]).encode()).hexdigest()
    return int(digest[:16], 16) & ((1 << 63) - 1)


def cache_key(spec: StepSpec, params: dict, input_hashes: dict[str, str],
              pieces: dict[str, str] | None = None) -> str:
    """Step version + effective params + input content hashes + piece versions -> the step's
    identity. ``pieces`` defaults to `piece_versions(spec, params)`; a step that uses no
    pieces keeps the key it had before pieces existed."""
    pieces = piece_versions(spec, params) if pieces is None else pieces
    ident = {"step": spec.name, "version": spec.version, "params": params, "inputs": input_hashes}
    if pieces:
        ident["pieces"] = pieces
    return sha256_text(canonical_json(ident))
