"""Extra CLI commands contributed by other runner modules (agent briefing, hooks, supervisor).

Each module listed in ``MODULES`` exposes ``register(sub, add)`` where ``add(name, fn, help,
example)`` is the CLI's helper for adding a documented sub-command. Modules that fail to import
are skipped so a broken extension never takes down `runner status`.
"""
from __future__ import annotations

import importlib
from typing import Callable

MODULES: list[str] = ["runner.brief", "runner.hooks", "runner.supervise", "runner.report"]


def register(sub, add: Callable) -> None:  # noqa: ANN001
    for name in MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        mod.register(sub, add)
