"""Named schema migrations, applied in order and recorded in ``schema_migrations``.

To change the schema: edit ``state/schema.py`` (the latest shape, used for fresh databases),
bump ``SCHEMA_VERSION`` there, and append a migration here that brings a database of the
previous version to the new shape. Never edit a migration that has shipped.
``tests/unit/test_state_migrations.py`` opens a frozen version-1 database and checks that the
migrated tables match the schema module column for column.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from sqlalchemy.engine import Connection

from state.schema import Review, ShardClaim


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[Connection], None]


def _initial(conn: Connection) -> None:
    # Version 1 databases are created whole; nothing to do when recording it.
    return None


def _add_reviews(conn: Connection) -> None:
    """v2: LLM reviewer verdicts become first-class audited records."""
    Review.__table__.create(conn, checkfirst=True)  # type: ignore[attr-defined]


def _add_shard_claims(conn: Connection) -> None:
    """v3: shards of a sharded step are claimed by worker processes (per-shard lease + fencing)."""
    ShardClaim.__table__.create(conn, checkfirst=True)  # type: ignore[attr-defined]


MIGRATIONS: list[Migration] = [
    Migration(1, "initial", _initial),
    Migration(2, "add_reviews", _add_reviews),
    Migration(3, "add_shard_claims", _add_shard_claims),
]
