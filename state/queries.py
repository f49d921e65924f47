"""The read queries of `runner status`, in plain SQL beside the schema (state/schema.py).

Library module (no command). `state/reader.py` runs them with the stdlib ``sqlite3`` module in
read-only mode, so a cold `runner status --json` does not import sqlalchemy/sqlmodel (their
import alone costs ~0.3 s on 2 cores). The tables stay defined once, in state/schema.py:
`tests/unit/test_status_reader.py` checks that every table and column named here exists there,
that ``BOOL_COLUMNS`` lists exactly the schema's boolean columns, that ``SCHEMA_VERSION``
equals the schema's, and that the reader's `run_state` equals the sqlmodel Store's.
"""
from __future__ import annotations

# Must equal state.schema.SCHEMA_VERSION (tested). An older or newer database is read through
# the full Store instead, which migrates it or says what to do.
SCHEMA_VERSION = 3

# Columns SQLite stores as 0/1 that the schema declares bool (converted back on read).
BOOL_COLUMNS = {"leases": ("released",), "reviews": ("ok",)}

# name -> (table, sql). Every table and the columns in WHERE/ORDER BY/GROUP BY are checked
# against the schema by the test above; SELECT * returns whatever columns the schema has.
QUERIES = {
    "schema_version": ("schema_migrations", "SELECT max(version) FROM schema_migrations"),
    "run": ("runs", "SELECT * FROM runs WHERE id = ?"),
    "run_ids": ("runs", "SELECT id FROM runs ORDER BY created_at"),
    "lease": ("leases", "SELECT * FROM leases WHERE run_id = ?"),
    "attempts": ("attempts", "SELECT * FROM attempts WHERE run_id = ? ORDER BY id"),
    "batch_progress": ("batches", "SELECT step, cache_key, count(*) FROM batches WHERE run_id = ? "
                                  "GROUP BY step, cache_key"),
    "gates": ("gates", "SELECT * FROM gates WHERE run_id = ? AND name = ? ORDER BY id"),
    "reviews": ("reviews", "SELECT * FROM reviews WHERE run_id = ? ORDER BY id"),
    "cost_totals": ("costs", "SELECT step, kind, sum(amount) FROM costs WHERE run_id = ? GROUP BY step, kind"),
    "event_count": ("events", "SELECT count(*) FROM events WHERE run_id = ?"),
    "last_events_of_kind": ("events", "SELECT * FROM events WHERE run_id = ? AND kind = ? ORDER BY id DESC LIMIT 100"),
    "batches": ("batches", "SELECT * FROM batches WHERE run_id = ? AND step = ? AND cache_key = ? AND ledger = ? "
                           "ORDER BY idx"),
}
