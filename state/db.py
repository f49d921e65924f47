"""Opening the state database: engine, SQLite pragmas, transactions, schema migrations.

SQLite (the default) is opened in WAL mode with ``synchronous=FULL`` (a committed transition
survives a power cut), ``busy_timeout`` 30 s, and write transactions that start with
``BEGIN IMMEDIATE`` so two writers never deadlock on a lock upgrade. Readers use deferred
transactions and never block writers in WAL mode. Any other SQLAlchemy URL (e.g.
``postgresql+psycopg://user@host/db``) is accepted and used with its defaults.
"""
from __future__ import annotations

import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, inspect, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DatabaseError, OperationalError
from sqlmodel import Session, SQLModel

from state import migrations
from state.errors import StateError  # noqa: F401  (re-exported: state.db.StateError)
from state.mounts import filesystem_kind
from state.schema import SCHEMA_VERSION, SchemaMigration

BUSY_TIMEOUT_S = 30.0




def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def _sqlite_engine(path: Path, immediate: bool, journal_mode: str) -> Engine:
    engine = create_engine(
        sqlite_url(path),
        connect_args={"timeout": BUSY_TIMEOUT_S, "isolation_level": None, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # noqa: ANN001
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        cur.execute(f"PRAGMA journal_mode={journal_mode}")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        # pysqlite's own transaction handling is off (isolation_level=None), so we emit BEGIN.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class Database:
    """A state database: a write engine (``BEGIN IMMEDIATE``) and a read engine.

    ``url`` may be any SQLAlchemy URL; ``path`` is set for SQLite files only.
    """

    def __init__(self, url: str, path: Path | None = None, journal_mode: str = "WAL"):
        self.url = url
        self.path = path
        self.journal_mode = journal_mode
        self.fs = None  # state.mounts.FsKind of the SQLite file's directory (set by open_database)
        if path is not None:
            self.writer = _sqlite_engine(path, immediate=True, journal_mode=journal_mode)
            self.reader = _sqlite_engine(path, immediate=False, journal_mode=journal_mode)
        else:
            self.writer = create_engine(url, pool_pre_ping=True)
            self.reader = self.writer

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction: committed on normal exit, rolled back on an exception."""
        with Session(self.writer, expire_on_commit=False) as session:
            with session.begin():
                yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        with Session(self.reader, expire_on_commit=False) as session:
            with session.begin():
                yield session

    def schema_version(self) -> int:
        with self.read() as s:
            rows = s.exec(SchemaMigration.__table__.select()).all()  # type: ignore[attr-defined]
            return max((r.version for r in rows), default=0)

    def close(self) -> None:
        self.writer.dispose()
        if self.reader is not self.writer:
            self.reader.dispose()


def open_database(url: str | None = None, path: Path | None = None, create: bool = True) -> Database:
    """Open (and create or migrate) the state database.

    Exactly one of ``url``/``path`` is used: ``path`` for the default SQLite file. On a network
    file system (detected from /proc/self/mountinfo, see ``state/mounts.py``; ``RUNNER_FS_TYPE``
    overrides the detection), where SQLite's WAL and locks are unsafe, ``RUNNER_NETWORK_FS``
    decides: ``delete`` (default) uses journal_mode=DELETE, ``refuse`` raises a StateError that
    says what to do. ``db.fs`` records what was detected, for `runner brief`/`supervise`.
    """
    if path is None and url and url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
    if path is not None:
        path = Path(path)
        if not path.parent.exists():
            if not create:
                raise StateError(f"state directory {path.parent} does not exist; run `runner init` first")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StateError(f"cannot create state directory {path.parent}: {e.strerror}. "
                                 "Choose a writable home with --home or RUNNER_HOME.") from e
        if not create and not path.exists():
            raise StateError(f"no state database at {path}; run `runner init` first (or pass --home)")
        # No peeking at the file with open()/close() here: closing any descriptor on the database
        # drops every POSIX lock this process holds on it (fcntl semantics), which lets another
        # process checkpoint the WAL under our live connections ("disk I/O error"). SQLite itself
        # reports a non-database file ("file is not a database"), handled in the except below.
        if path.exists() and not os.access(path, os.W_OK):
            raise StateError(f"state database {path} is read-only; fix its permissions or use another --home")
        if path.exists():
            _refuse_foreign(path)
        fs = filesystem_kind(path.parent)
        journal = "WAL"
        if fs.network:
            policy = os.environ.get("RUNNER_NETWORK_FS", "delete")
            if policy not in ("delete", "refuse"):
                raise StateError(f"RUNNER_NETWORK_FS={policy!r} is not one of: delete, refuse")
            if policy == "refuse":
                raise StateError(
                    f"{path.parent} is on a network file system ({fs.fstype}); SQLite locking is unsafe "
                    "there. Put RUNNER_HOME on a pod-local disk or use a Postgres URL (--db-url)."
                )
            journal = "DELETE"
        db = Database(sqlite_url(path), path=path, journal_mode=journal)
        db.fs = fs
    else:
        db = Database(url or "", path=None)
    try:
        migrate(db)
    except (DatabaseError, OperationalError, sqlite3.DatabaseError) as e:
        db.close()
        msg = str(getattr(e, "orig", e))
        if "not a database" in msg or "malformed" in msg:
            raise StateError(f"state database {path or url} is corrupt ({msg}). Move it aside and "
                             "restore a backup, or start a new home with --home.") from e
        if "readonly" in msg or "read-only" in msg:
            raise StateError(f"state database {path or url} is read-only ({msg}); use a writable --home") from e
        if "unable to open" in msg:
            raise StateError(f"cannot open state database {path or url} ({msg}); check the directory "
                             "exists and is writable, or pass --home") from e
        raise StateError(f"cannot open state database {path or url}: {msg}") from e
    return db


def _refuse_foreign(path: Path) -> None:
    """Refuse a file that is not a runner state database before anything writes to it.

    A zero-byte file (``touch``, or another tool's placeholder) and a SQLite database of another
    application would otherwise get the runner's tables and WAL mode written into them. The
    check opens the file read-only through the same SQLite library (which keeps POSIX locks of
    this process intact when the handle closes).
    """
    try:
        size = path.stat().st_size
    except OSError:
        return
    if size == 0:
        raise StateError(f"{path} is empty (0 bytes), not a runner state database; nothing was written. "
                         "If it is a leftover, delete it and run `runner init`; otherwise use another --home")
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            con.close()
    except sqlite3.DatabaseError:
        return  # not SQLite at all / corrupt: the open below reports it with what to do
    tables.discard("sqlite_sequence")
    if tables and not tables & {"runs", "schema_migrations"}:
        names = ", ".join(sorted(tables)[:8])
        raise StateError(f"{path} is not a runner state database (it holds other tables: {names}); "
                         "nothing was written. Use another --home (or move that file aside)")


def migrate(db: Database) -> list[str]:
    """Bring the schema to ``SCHEMA_VERSION``; return the names of the migrations applied.

    A fresh database gets every table at once and records every migration. An older one gets
    the pending named migrations in order, each in its own transaction.
    """
    with db.writer.begin() as conn:
        # Create the migrations table first (idempotent); decide fresh vs old by the runs table.
        SchemaMigration.__table__.create(conn, checkfirst=True)  # type: ignore[attr-defined]
        existing = set(inspect(conn).get_table_names())
        fresh = "runs" not in existing
        table = SchemaMigration.__table__  # type: ignore[attr-defined]
        applied = {r[0] for r in conn.execute(select(table.c.version))}
        if fresh:
            SQLModel.metadata.create_all(conn)
            for m in migrations.MIGRATIONS:
                _record(conn, m)
            return [m.name for m in migrations.MIGRATIONS]
        newest = max(applied, default=0)
        if newest > SCHEMA_VERSION:
            raise StateError(
                f"state database has schema version {newest}, newer than this code's {SCHEMA_VERSION}; "
                "upgrade cai-bootstrap (git pull) before using this home"
            )
    done = []
    for m in migrations.MIGRATIONS:
        if m.version in applied:
            continue
        with db.writer.begin() as conn:
            m.apply(conn)
            _record(conn, m)
        done.append(m.name)
    return done


def _record(conn, m) -> None:  # noqa: ANN001
    table = SchemaMigration.__table__  # type: ignore[attr-defined]
    conn.execute(table.insert().values(version=m.version, name=m.name, applied_at=time.time()))
