"""Schema versions: a frozen version-1 database is migrated to the current schema, and the
migrated tables equal state/schema.py column for column (so migrations and schema can't drift).
Newer, corrupt or unreadable databases fail with a clear error.

Run: .venv/bin/pytest tests/unit/test_state_migrations.py -q
"""
from __future__ import annotations

import functools
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect
from sqlmodel import SQLModel

import state.schema  # noqa: F401  (registers the tables)
from state import migrations
from state.db import StateError
from state.schema import SCHEMA_VERSION
from state.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers_runner import cli  # noqa: E402

V1_SQL = Path(__file__).resolve().parents[1] / "data" / "state_v1.sql"


def _home_from_sql(tmp_path: Path, sql: str) -> Path:
    home = tmp_path / "home"
    (home / ".runner").mkdir(parents=True)
    c = sqlite3.connect(home / ".runner" / "runner.db")
    c.executescript(sql)
    c.close()
    return home


def _columns(engine, table: str) -> dict[str, tuple]:
    """{column: (type, nullable, primary key)} as SQLite reports it."""
    return {c["name"]: (str(c["type"]).upper(), bool(c["nullable"]), bool(c.get("primary_key")))
            for c in inspect(engine).get_columns(table)}


def _uniques(engine, table: str) -> set[tuple]:
    return {tuple(u["column_names"]) for u in inspect(engine).get_unique_constraints(table)}


def test_fixture_is_version_1_without_reviews(tmp_path):
    home = _home_from_sql(tmp_path, V1_SQL.read_text())
    c = sqlite3.connect(home / ".runner" / "runner.db")
    names = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "reviews" not in names and "runs" in names
    assert [r[0] for r in c.execute("SELECT version FROM schema_migrations")] == [1]


def test_v1_database_is_migrated_and_matches_the_schema_module(tmp_path):
    assert SCHEMA_VERSION == migrations.MIGRATIONS[-1].version == 3
    home = _home_from_sql(tmp_path, V1_SQL.read_text())
    store = Store.open(home, create=False)
    try:
        assert store.db.schema_version() == SCHEMA_VERSION
        # the old run is intact and readable through the current code
        run = store.get_run("toy-v1")
        assert (run.status, run.seed, run.goal) == ("waiting", 7, "a v1 run")
        assert [e.kind for e in store.events("toy-v1")] == ["run_created", "lease_acquired", "attempt_started",
                                                            "attempt_succeeded", "gate_requested"]
        assert store.succeeded_attempt("toy-v1", "make_items", "k1").output_hash == "h1"
        assert store.gates("toy-v1")[0].status == "pending"
        assert store.cost_totals("toy-v1") == {"make_items": {"wall_s": 1.5}}
        assert store.reviews("toy-v1") == []
        from runner.status import run_state
        st = run_state(store, "toy-v1")
        assert st["state"] == "waiting" and st["next_action"]["command"] == "runner show approve_items"
    finally:
        store.close()
    migrated = create_engine(f"sqlite:///{home / '.runner' / 'runner.db'}")
    fresh_path = tmp_path / "fresh.db"
    fresh = create_engine(f"sqlite:///{fresh_path}")
    SQLModel.metadata.create_all(fresh)
    try:
        want_tables = set(SQLModel.metadata.tables)
        assert set(inspect(migrated).get_table_names()) == want_tables
        for table in sorted(want_tables):
            assert _columns(migrated, table) == _columns(fresh, table), f"table {table} drifted"
            assert _uniques(migrated, table) == _uniques(fresh, table), f"table {table}: unique constraints drifted"
            meta_cols = [c.name for c in SQLModel.metadata.tables[table].columns]
            assert sorted(_columns(migrated, table)) == sorted(meta_cols), table
        rows = sqlite3.connect(home / ".runner" / "runner.db").execute(
            "SELECT version, name FROM schema_migrations ORDER BY version").fetchall()
        assert rows == [(m.version, m.name) for m in migrations.MIGRATIONS]
    finally:
        migrated.dispose()
        fresh.dispose()


def test_migration_is_idempotent_on_reopen(tmp_path):
    home = _home_from_sql(tmp_path, V1_SQL.read_text())
    for _ in range(2):
        s = Store.open(home, create=False)
        assert s.db.schema_version() == SCHEMA_VERSION
        s.close()
    n = sqlite3.connect(home / ".runner" / "runner.db").execute("SELECT count(*) FROM schema_migrations").fetchone()
    assert n[0] == len(migrations.MIGRATIONS)


def test_fresh_database_records_every_migration(tmp_path):
    s = Store.open(tmp_path / "h")
    try:
        assert s.db.schema_version() == SCHEMA_VERSION
        names = set(inspect(s.db.reader).get_table_names())
        assert names == set(SQLModel.metadata.tables)
    finally:
        s.close()


def test_newer_schema_version_is_a_clear_error(tmp_path):
    home = _home_from_sql(tmp_path, V1_SQL.read_text()
                          + "\nINSERT INTO schema_migrations VALUES (99, 'from_the_future', 0);\n")
    with pytest.raises(StateError, match=rf"schema version 99, newer than this code's {SCHEMA_VERSION}"):
        Store.open(home, create=False)
    p = cli(home, "status")
    assert p.returncode == 2 and "newer than this code" in p.stderr, p.stderr


@pytest.mark.parametrize("head", [b"", b"SQLite format 3\x00"])
def test_corrupt_database_file_is_a_clear_error(tmp_path, head):
    home = tmp_path / "home"
    (home / ".runner").mkdir(parents=True)
    db = home / ".runner" / "runner.db"
    data = head + random.Random(5).randbytes(8192)
    db.write_bytes(data)
    with pytest.raises(StateError, match="corrupt|not an SQLite database"):
        Store.open(home, create=False)
    p = cli(home, "status", "--json")
    assert p.returncode == 2, p.stdout + p.stderr
    assert "corrupt" in p.stderr and "Traceback" not in p.stderr
    assert db.read_bytes() == data  # nothing was written over it


def test_missing_home_is_a_clear_error_and_creates_nothing(tmp_path):
    home = tmp_path / "nope"
    with pytest.raises(StateError, match="does not exist"):
        Store.open(home, create=False)
    for args in (["status"], ["resume"], ["approve", "g"], ["log"]):
        p = cli(home, *args)
        assert p.returncode == 2, (args, p.stdout, p.stderr)
        assert str(home) in p.stderr and "Traceback" not in p.stderr
    assert not home.exists()


def test_home_without_state_says_init_first(tmp_path):
    p = cli(tmp_path, "status")
    assert p.returncode == 2 and "runner init" in p.stderr
    assert not (tmp_path / ".runner").exists()


def test_home_that_is_a_file_is_a_clear_error(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(StateError, match="not a directory"):
        Store.open(f)
    with pytest.raises(StateError, match="cannot (create|access) home directory"):
        Store.open(f / "sub")


_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@functools.lru_cache(maxsize=1)
def _nobody_can_import_runner() -> bool:
    """Can the unprivileged user import this checkout (and its venv) at all?"""
    p = subprocess.run([*_NOBODY, sys.executable, "-c", "import runner.cli, sqlmodel"],
                       capture_output=True, text=True, timeout=60, cwd="/")
    return p.returncode == 0


def _as_unprivileged(cmd: list[str]) -> list[str]:
    """Root ignores file permissions: run the command as nobody (setpriv) to test them for real."""
    if os.geteuid() != 0:
        return cmd
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot test file permissions")
    if not _nobody_can_import_runner():
        # e.g. a clone inside a 0700 `mktemp -d` directory: nobody cannot read the code itself
        pytest.skip("the unprivileged user cannot read this checkout or its .venv (a parent directory "
                    "is private); file-permission tests need a checkout others can read")
    return [*_NOBODY, *cmd]


def _run_cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = _as_unprivileged([sys.executable, "-m", "runner", "--home", str(home), *args])
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd="/")


@pytest.fixture
def open_tmp():
    """A temp dir others may enter (pytest's tmp_path is 0700: nobody could not reach it)."""
    d = Path(tempfile.mkdtemp(prefix="runner-perm-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_read_only_home_is_a_clear_error(open_tmp):
    tmp_path = open_tmp
    home = tmp_path / "ro"
    home.mkdir()
    home.chmod(0o555)
    try:
        if os.geteuid() != 0:
            with pytest.raises(StateError, match="not writable"):
                Store.open(home)
        toy = Path(__file__).resolve().parents[2] / "runner/examples/toy.yaml"
        p = _run_cli(home, "init", "--config", str(toy))
        assert p.returncode == 2 and "not writable" in p.stderr, p.stdout + p.stderr
        assert list(home.iterdir()) == []
    finally:
        home.chmod(0o755)


def test_read_only_database_is_a_clear_error(open_tmp):
    tmp_path = open_tmp
    Store.open(tmp_path).close()
    db = tmp_path / ".runner" / "runner.db"
    db.chmod(0o444)
    try:
        if os.geteuid() != 0:
            with pytest.raises(StateError, match="read-only"):
                Store.open(tmp_path, create=False)
        p = _run_cli(tmp_path, "status")
        assert p.returncode == 2 and "read-only" in p.stderr, p.stdout + p.stderr
    finally:
        db.chmod(0o644)


def test_unreachable_home_is_a_clear_error(tmp_path):
    # pytest's tmp_path is 0700 and owned by us: an unprivileged user cannot even stat inside it
    if os.geteuid() != 0:
        tmp_path.chmod(0o000)
    try:
        p = _run_cli(tmp_path / "home", "status")
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stdout + p.stderr
        assert "home directory" in p.stderr
    finally:
        tmp_path.chmod(0o700)
