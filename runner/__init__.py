"""cai-bootstrap's durable runner: resumable pipelines with state in SQLite.

Public step API (import from here): ``step``, ``gate``, ``GateCheck``, ``Pipeline``,
``StepContext``. The runner knows nothing about ML and imports no phase module by name.
"""
from runner.context import BatchInfo, GateContext, StepContext
from runner.pipeline import GateCheck, Pipeline, derive_seed, gate, step

__all__ = ["BatchInfo", "GateCheck", "GateContext", "Pipeline", "StepContext", "derive_seed", "gate", "step"]
