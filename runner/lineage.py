"""Chaining runs: a finished (or partly finished) run's outputs exposed to a new run, generically.

Used by ``runner init/run --config FILE --from-run PARENT`` (and on every resume of such a run).
Not runnable; tests: ``.venv/bin/pytest tests/unit/test_lineage.py -q``.

The runner knows nothing about models: `parent_view` reads the parent's rows from the state
store and returns JSON data that is merged into the child's config as the top-level key
``from_run`` before the pipeline's ``expand_config`` hook sees it; the pipeline decides what a
parent output means (phases/chain.py takes the parent's ``sft`` adapter). Shape::

    {"run_id": "stage1-a", "pipeline": "phases.pipeline:pipeline", "status": "done",
     "config_path": "/abs/stage1.yaml", "stage": {...parent config's 'stage' key or null},
     "outputs": {step: {"dir": "/abs/artifacts/...", "hash": "<tree digest>", "cache_key": "..."}},
     "chain": [ ...the parent's own from_run views, oldest first, without their 'chain' ... ]}

``outputs`` holds, per step of the parent's plan, its newest succeeded attempt that was not
invalidated. The view is recomputed on every resume of the child, so a parent re-run that
changed an output changes ``hash`` and thereby the cache key of every child step that reads it.
"""
from __future__ import annotations

import json
from typing import Any

from runner.errors import ConfigError

__all__ = ["parent_view", "lineage_line", "resolve_from_key"]


def resolve_from_key(store: Any, config_path: str | None) -> str | None:
    """The parent run named by the config's ``from:`` key, or None when it has none.

    ``from: {run: ID}`` names a run; ``from: {config: PATH}`` (relative to the file passed as
    ``--config``) means the newest run created from that config file in this home.
    ``--from-run`` wins over both.
    """
    from pathlib import Path

    from runner.config import load_yaml  # lazy: yaml; kept off the `runner status` path

    if not config_path:
        return None
    fr = load_yaml(Path(config_path)).get("from")
    if not isinstance(fr, dict):
        return None
    if "run" in fr:
        return str(fr["run"])
    want = str((Path(config_path).resolve().parent / str(fr["config"])).resolve())
    ids = [r for r in store.run_ids() if store.get_run(r).config_path == want]
    if not ids:
        raise ConfigError(f"{config_path}: from.config = {fr['config']!r}: no run of {want} in {store.home}; "
                          f"run it first (runner run --config {fr['config']}) or pass --from-run RUN")
    return ids[-1]


def parent_view(store: Any, run_id: str) -> dict:
    """The ``from_run`` data for ``run_id`` (see the module docstring). ``ConfigError`` if unknown."""
    if run_id not in store.run_ids():
        raise ConfigError(f"--from-run {run_id}: no such run in {store.home}; list runs with `runner status --run ...` "
                          "or pass the parent's --home")
    run = store.get_run(run_id)
    plan = json.loads(run.plan_json or "[]")
    cfg = json.loads(run.config_json or "{}")
    outputs: dict[str, dict] = {}
    for node in plan:
        if node.get("kind") != "step":
            continue
        ok = [a for a in store.attempts(run_id, node["name"]) if a.status == "succeeded" and a.invalidated_at is None]
        if ok:
            a = ok[-1]
            outputs[node["name"]] = {"dir": str((store.home / a.output_dir).resolve()), "hash": a.output_hash,
                                     "cache_key": a.cache_key}
    if not outputs:
        raise ConfigError(f"--from-run {run_id}: that run has no finished step yet (status {run.status}); "
                          f"resume it first: runner resume --run {run_id}")
    grand = cfg.get("from_run") if isinstance(cfg.get("from_run"), dict) else None
    chain = []
    if grand:
        chain = list(grand.get("chain") or []) + [{k: v for k, v in grand.items() if k != "chain"}]
    return {"run_id": run_id, "pipeline": run.pipeline, "status": run.status, "config_path": run.config_path,
            "stage": cfg.get("stage"), "outputs": outputs, "chain": chain}


def lineage_line(cfg: dict) -> str:
    """One line for `runner status`: ``from run A (stage1) <- run B (stage0)`` or ''."""
    fr = cfg.get("from_run") if isinstance(cfg, dict) else None
    if not isinstance(fr, dict):
        return ""
    links = [fr] + list(reversed(fr.get("chain") or []))

    def name(v: dict) -> str:
        st = v.get("stage")
        label = st.get("name") if isinstance(st, dict) else None
        return f"run {v.get('run_id')}" + (f" ({label})" if label else "")

    return "from " + " <- ".join(name(v) for v in links)
