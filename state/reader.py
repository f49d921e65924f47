"""A read-only view of the state database on the stdlib ``sqlite3`` module, for `runner status`.

Library module (no command); tested by `.venv/bin/python -m pytest tests/unit/test_status_reader.py`.

``open_reader(home)`` returns a ``Reader`` with the same read methods `runner.status.run_state`
uses on a ``state.store.Store`` (rows are attribute objects like the sqlmodel ones), or None
when the fast path does not apply: no SQLite file, a schema version other than this code's
(then the full Store migrates or explains), or a file that is not a runner database (the full
Store refuses it with a clear message). It opens the file with ``mode=ro``: it never writes,
never migrates, never creates anything. Queries: state/queries.py.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

from state.errors import StateError
from state.queries import BOOL_COLUMNS, QUERIES, SCHEMA_VERSION

STATE_DIR = ".runner"  # same as state.store (tested)
DB_NAME = "runner.db"
BUSY_TIMEOUT_S = 30.0


class Row(SimpleNamespace):
    """A row with attribute access, like a sqlmodel instance."""


class Reader:
    def __init__(self, home: Path, con: sqlite3.Connection):
        self.home, self._con = home, con

    def _rows(self, name: str, *args: Any) -> list[Row]:
        table, sql = QUERIES[name]
        cur = self._con.execute(sql, args)
        cols = [d[0] for d in cur.description]
        bools = BOOL_COLUMNS.get(table, ())
        out = []
        for r in cur.fetchall():
            d = dict(zip(cols, r))
            for b in bools:
                if b in d and d[b] is not None:
                    d[b] = bool(d[b])
            out.append(Row(**d))
        return out

    def _scalar(self, name: str, *args: Any) -> Any:
        return self._con.execute(QUERIES[name][1], args).fetchone()[0]

    # ---- the Store's read API used by runner.status / runner.cli ------------------------------
    def run_ids(self) -> list[str]:
        return [r.id for r in self._rows("run_ids")]

    def latest_run_id(self) -> Optional[str]:
        ids = self.run_ids()
        return ids[-1] if ids else None

    def get_run(self, run_id: str) -> Row:
        rows = self._rows("run", run_id)
        if not rows:
            known = ", ".join(self.run_ids()) or "none"
            raise StateError(f"unknown run {run_id!r} in {self.home} (runs: {known})")
        return rows[0]

    def get_lease(self, run_id: str) -> Optional[Row]:
        rows = self._rows("lease", run_id)
        return rows[0] if rows else None

    def attempts(self, run_id: str, step: Optional[str] = None) -> list[Row]:
        rows = self._rows("attempts", run_id)
        return rows if step is None else [r for r in rows if r.step == step]

    def events(self, run_id: str, limit: int = 50, kinds: Optional[list[str]] = None) -> list[Row]:  # limit <= 100
        """The newest ``limit`` events of the given kinds (oldest first); `runner status` asks for
        one kind at a time (the running step's ``ledger_started``)."""
        if not kinds:
            raise ValueError("Reader.events needs kinds (status reads one event kind at a time)")
        rows: list[Row] = []
        for k in kinds:
            rows += self._rows("last_events_of_kind", run_id, k)
        return sorted(rows, key=lambda r: r.id)[-limit:]

    def batches(self, run_id: str, step: str, cache_key: str, ledger: str) -> list[Row]:
        return self._rows("batches", run_id, step, cache_key, ledger)

    def batch_progress(self, run_id: str) -> dict[tuple[str, str], int]:
        cur = self._con.execute(QUERIES["batch_progress"][1], (run_id,))
        return {(r[0], r[1]): r[2] for r in cur.fetchall()}

    def gates(self, run_id: str, name: str) -> list[Row]:
        return self._rows("gates", run_id, name)

    def reviews(self, run_id: str) -> list[Row]:
        return self._rows("reviews", run_id)

    def cost_totals(self, run_id: str) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for step, kind, total in self._con.execute(QUERIES["cost_totals"][1], (run_id,)).fetchall():
            out.setdefault(step or "(run)", {})[kind] = float(total or 0)
        return out

    def event_count(self, run_id: str) -> int:
        return int(self._scalar("event_count", run_id))

    def close(self) -> None:
        self._con.close()


def open_reader(home: Path) -> Optional[Reader]:
    """A Reader on ``home``'s SQLite state file, or None when the full Store must handle it."""
    home = Path(home).resolve()
    path = home / STATE_DIR / DB_NAME
    try:
        if not path.is_file() or path.stat().st_size == 0:
            return None
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
    except (OSError, sqlite3.Error):
        return None
    try:
        con.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        version = con.execute(QUERIES["schema_version"][1]).fetchone()[0]
    except sqlite3.Error:
        con.close()
        return None  # not ours, corrupt or unreadable: the Store says which, clearly
    if version != SCHEMA_VERSION:
        con.close()
        return None
    return Reader(home, con)
