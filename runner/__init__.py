"""cai-bootstrap's durable runner: resumable pipelines with state in SQLite.

Public step API (import from here): ``step``, ``gate``, ``GateCheck``, ``Pipeline``,
``StepContext``. The runner knows nothing about ML and imports no phase module by name.
"""
__all__ = ["BatchInfo", "GateCheck", "GateContext", "Pipeline", "StepContext", "derive_seed", "gate", "step"]

_FROM = {"BatchInfo": "runner.context", "GateContext": "runner.context", "StepContext": "runner.context",
         "GateCheck": "runner.pipeline", "Pipeline": "runner.pipeline", "derive_seed": "runner.pipeline",
         "gate": "runner.pipeline", "step": "runner.pipeline"}


def __getattr__(name: str):  # noqa: ANN202 - PEP 562: `python -m runner status` need not import sqlmodel
    if name in _FROM:
        import importlib
        value = getattr(importlib.import_module(_FROM[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'runner' has no attribute {name!r}")
