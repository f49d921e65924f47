"""The fast read path of `runner status` (state/reader.py + state/queries.py) against the one
definition of the tables (state/schema.py) and the sqlmodel Store: same schema, same answers,
no sqlalchemy/sqlmodel import, never a write.

Run: .venv/bin/python -m pytest tests/unit/test_status_reader.py -q
"""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from runner.cli import main
from runner.status import run_state
from state import queries, reader, schema, store
from state.reader import open_reader
from state.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers_runner import toy_config  # noqa: E402


def test_queries_match_the_schema(tmp_path):
    assert queries.SCHEMA_VERSION == schema.SCHEMA_VERSION
    assert (reader.STATE_DIR, reader.DB_NAME) == (store.STATE_DIR, store.DB_NAME)
    from sqlmodel import SQLModel
    bools = {t.name: tuple(c.name for c in t.columns if c.type.python_type is bool)
             for t in SQLModel.metadata.sorted_tables}
    assert queries.BOOL_COLUMNS == {t: cols for t, cols in bools.items() if cols}
    Store.open(tmp_path).close()  # every table, created from state/schema.py
    r = open_reader(tmp_path)
    assert r is not None
    try:
        for name, (table, sql) in queries.QUERIES.items():
            assert table in bools, f"query {name}: no table {table!r} in state/schema.py"
            n = sql.count("?")
            r._con.execute(sql, ("x",) * n).fetchall()  # SQLite itself checks every column name
    finally:
        r.close()


def _drop_clock(st: dict) -> dict:
    st = json.loads(json.dumps(st, default=str))
    if st.get("lease"):
        st["lease"].pop("heartbeat_age_s"), st["lease"].pop("expires_in_s")
    return st


@pytest.mark.parametrize("gate, extra", [("human", {}), ("auto", {"fail_on_item": 5})])
def test_reader_and_store_give_the_same_status(tmp_path, capsys, gate, extra):
    cfg = toy_config(tmp_path / "c.yaml", items=8, gate=gate, **extra)
    home = tmp_path / "h"
    main(["--home", str(home), "run", "--config", str(cfg), "--run-id", "t"])
    capsys.readouterr()
    s = Store.open(home, create=False)
    r = open_reader(home)
    try:
        a, b = run_state(s, "t"), run_state(r, "t")
        assert _drop_clock(a) == _drop_clock(b)
        assert b["steps"] and b["gates"] and b["lease"]["released"] is True
        assert r.latest_run_id() == s.latest_run_id() == "t"
    finally:
        s.close()
        r.close()


def test_status_json_imports_no_sqlalchemy(tmp_path, capsys):
    cfg = toy_config(tmp_path / "c.yaml", items=2, gate="human")
    home = tmp_path / "h"
    assert main(["--home", str(home), "run", "--config", str(cfg), "--run-id", "t"]) == 3
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "runner", "--home", str(home), "status", "--json"],
                       capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert p.returncode == 0 and json.loads(p.stdout)["state"] == "waiting", p.stderr[-2000:]
    modules = {ln.split("|")[-1].strip().split(".")[0] for ln in p.stderr.splitlines() if ln.startswith("import time:")}
    assert "state" in modules
    assert not modules & {"sqlalchemy", "sqlmodel", "rich", "torch"}, sorted(modules & {"sqlalchemy", "sqlmodel", "rich"})


def test_reader_declines_what_it_must_not_touch(tmp_path):
    assert open_reader(tmp_path) is None  # no database
    (tmp_path / ".runner").mkdir()
    db = tmp_path / ".runner" / "runner.db"
    db.touch()
    assert open_reader(tmp_path) is None and db.stat().st_size == 0  # zero bytes: the Store refuses it
    db.unlink()
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE notes (x)")
    con.commit()
    con.close()
    before = db.read_bytes()
    assert open_reader(tmp_path) is None and db.read_bytes() == before  # foreign
    db.unlink()
    Store.open(tmp_path).close()
    con = sqlite3.connect(db)
    con.execute("UPDATE schema_migrations SET version = version + 100")
    con.commit()
    con.close()
    assert open_reader(tmp_path) is None  # another schema version: the Store migrates or explains
