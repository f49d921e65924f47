"""The whole state schema, in one module: every table the runner persists.

Contract:
- All timestamps are UTC epoch seconds (float).
- JSON columns hold UTF-8 JSON text (never pickles); ``*_json`` names mark them.
- ``events`` is append-only: nothing updates or deletes its rows.
- ``attempts`` is the step ledger: a step is *done* for a cache key when one attempt row with
  ``status='succeeded'`` and ``invalidated_at IS NULL`` exists. ``UNIQUE(run_id, step,
  cache_key, number)`` makes a duplicate attempt number fail loudly.
- The schema version is the highest ``schema_migrations.version``; named migrations live in
  ``state/migrations.py`` and are recorded here when applied.

Attempt status values: running, succeeded, failed, interrupted, dead_lettered.
Run status values: created, running, waiting, failed, dead_lettered, rejected, done.
Gate status values: pending, approved, rejected.
Shard claim status values: pending, claimed, done, failed (see ``state/shards.py``).
"""
from __future__ import annotations

from typing import Optional

from sqlalchemy import Index, UniqueConstraint
from sqlmodel import Field, SQLModel

SCHEMA_VERSION = 3


class SchemaMigration(SQLModel, table=True):
    __tablename__ = "schema_migrations"
    version: int = Field(primary_key=True)
    name: str
    applied_at: float


class Run(SQLModel, table=True):
    __tablename__ = "runs"
    id: str = Field(primary_key=True)
    pipeline: str  # dotted path module:attr
    config_path: Optional[str] = None  # re-read on every resume so edits take effect
    config_json: str = "{}"  # the effective config at the last init/resume
    plan_json: str = "[]"  # the pipeline's nodes, so status never imports the pipeline
    seed: int = 0
    status: str = "created"
    status_detail: str = ""
    goal: str = ""
    created_at: float
    updated_at: float


class Lease(SQLModel, table=True):
    """One live writer per run. ``generation`` is the fencing token checked on every write."""

    __tablename__ = "leases"
    run_id: str = Field(primary_key=True)
    owner_id: str
    host: str
    pid: int
    pid_start_time: float  # the owner process's start time: a reused pid has another
    generation: int
    acquired_at: float
    heartbeat_at: float
    expires_at: float
    released: bool = False


class Attempt(SQLModel, table=True):
    __tablename__ = "attempts"
    __table_args__ = (
        UniqueConstraint("run_id", "step", "cache_key", "number", name="uq_attempt"),
        Index("ix_attempt_lookup", "run_id", "step", "cache_key"),
    )
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: str = Field(index=True)
    step: str
    step_version: str
    cache_key: str
    number: int
    status: str  # running, succeeded, failed, interrupted, dead_lettered
    owner_id: str
    lease_generation: int
    started_at: float
    ended_at: Optional[float] = None
    error: Optional[str] = None
    output_dir: Optional[str] = None  # relative to the home directory
    output_hash: Optional[str] = None
    summary_json: Optional[str] = None  # what the step returned (shown in status)
    params_json: str = "{}"
    inputs_json: str = "{}"  # {input step: output_hash}
    invalidated_at: Optional[float] = None  # set by rerun/retry: no longer counts


class Artifact(SQLModel, table=True):
    __tablename__ = "artifacts"
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: str = Field(index=True)
    attempt_id: int = Field(index=True)
    step: str
    path: str  # relative to the home directory
    size: int
    sha256: str
    created_at: float


class Batch(SQLModel, table=True):
    """The batch ledger: one row per committed batch of a long step."""

    __tablename__ = "batches"
    __table_args__ = (
        UniqueConstraint("run_id", "step", "cache_key", "ledger", "idx", name="uq_batch"),
    )
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: str
    step: str
    cache_key: str
    ledger: str
    idx: int
    n_items: int
    path: str  # relative to the home directory
    sha256: str
    attempt_id: int
    created_at: float


class Gate(SQLModel, table=True):
    """A durable suspension. ``gate_key`` hashes the evidence (upstream outputs)."""

    __tablename__ = "gates"
    __table_args__ = (UniqueConstraint("run_id", "name", "gate_key", name="uq_gate"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: str = Field(index=True)
    name: str
    gate_key: str
    policy: str
    status: str  # pending, approved, rejected
    check_json: Optional[str] = None  # the automatic check's result
    wait_reason: str = ""  # why it waits (e.g. a reviewer that failed closed)
    requested_at: float
    decided_at: Optional[float] = None
    decided_by: Optional[str] = None
    note: Optional[str] = None


class GateDecision(SQLModel, table=True):
    """Append-only audit of every decision on a gate (auto, reviewer, human)."""

    __tablename__ = "gate_decisions"
    id: Optional[int] = Field(default=None, primary_key=True)
    gate_id: int = Field(index=True)
    run_id: str
    source: str  # auto, reviewer, human (confirmed at a terminal), cli (unverified), agent
    decision: str  # approve, reject, regate, wait, GO, NO-GO, MODIFY
    who: str
    note: Optional[str] = None
    created_at: float


class Review(SQLModel, table=True):
    """An LLM review at a gate, memoized by ``memo_key`` (added in schema version 2)."""

    __tablename__ = "reviews"
    __table_args__ = (UniqueConstraint("run_id", "memo_key", name="uq_review"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: str = Field(index=True)
    gate: str
    gate_key: str
    memo_key: str
    backend: str
    model: str
    prompt_hash: str
    input_hash: str
    ok: bool
    decision: Optional[str] = None
    verdict_json: Optional[str] = None
    error: Optional[str] = None
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: Optional[float] = None
    request_path: Optional[str] = None
    response_path: Optional[str] = None
    created_at: float


class Event(SQLModel, table=True):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_run", "run_id", "id"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: str
    ts: float
    kind: str
    step: Optional[str] = None
    gate: Optional[str] = None
    attempt_id: Optional[int] = None
    message: str = ""
    data_json: Optional[str] = None


class Cost(SQLModel, table=True):
    """The cost ledger: wall seconds, GPU seconds, LLM tokens and dollars per step/attempt."""

    __tablename__ = "costs"
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: str = Field(index=True)
    step: Optional[str] = None
    attempt_id: Optional[int] = None
    kind: str  # wall_s, gpu_s, llm_tokens_in, llm_tokens_out, usd
    amount: float
    created_at: float


class ShardClaim(SQLModel, table=True):
    """One shard of a sharded step, claimed by one worker at a time (see ``state/shards.py``).

    ``generation`` is the claim's fencing token: it grows by one on every claim, and a
    worker's renewals and its completion succeed only while the row still carries the
    generation it claimed with, so a worker that stalled and was reclaimed cannot finish
    its shard a second time. ``output_path`` (relative to the home) is the directory of the
    one generation that completed.
    """

    __tablename__ = "shard_claims"
    __table_args__ = (
        UniqueConstraint("run_id", "step", "cache_key", "shard_set", "idx", name="uq_shard_claim"),
        Index("ix_shard_claim_lookup", "run_id", "step", "cache_key", "shard_set"),
    )
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: str
    step: str
    cache_key: str
    shard_set: str
    idx: int
    spec_json: str  # the shard's description (JSON), as the step planned it
    round: int = 0  # 0 = the first plan; 1, 2, ... = top-up rounds
    status: str = "pending"  # pending, claimed, done, failed
    generation: int = 0
    owner_id: Optional[str] = None
    host: Optional[str] = None
    pid: Optional[int] = None
    pid_start_time: Optional[float] = None
    worker: Optional[int] = None  # the worker index that holds (or completed) it
    expires_at: Optional[float] = None
    heartbeat_at: Optional[float] = None
    failures: int = 0  # failed runs of this shard (an exception, not a kill)
    reclaims: int = 0  # times it was taken from an expired or dead holder
    error: Optional[str] = None
    output_path: Optional[str] = None
    output_sha256: Optional[str] = None
    result_json: Optional[str] = None  # what the shard function returned
    created_at: float
    updated_at: float
