"""A throw-away PostgreSQL server for tests, started by the tests themselves.

``pg_server`` (session fixture) runs ``initdb`` + ``pg_ctl start`` in a temporary directory,
listening only on a unix socket in that directory (no TCP), with trust auth for the user
``postgres``. PostgreSQL refuses to run as root, so as root the server runs as ``nobody``
(via ``runuser``) in a directory it owns. ``pg_url`` gives each test a fresh database.
Skipped, with the reason, when the server binaries (Debian: ``apt-get install -y postgresql``)
or ``psycopg`` (``pip install 'psycopg[binary]'``, in the ``postgres`` extra) are missing.

Used by tests/unit/test_state_shards.py and tests/crash/test_crash_shards.py:
    from helpers_pg import pg_server, pg_url, state_url  # noqa: F401  (fixtures)
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest


def pg_bin() -> Path | None:
    """Directory holding initdb/pg_ctl: $PG_BIN, then PATH, then Debian's /usr/lib/postgresql/*/bin."""
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    cands = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(cands[-1]).parent if cands else None


def why_no_postgres() -> str | None:
    if pg_bin() is None:
        return "PostgreSQL server binaries not found (apt-get install -y postgresql, or set PG_BIN)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]'; the project's 'postgres' extra)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: PostgreSQL refuses to run as root"
    return None


class PgServer:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="cai-pg-"))
        self.data = self.root / "data"
        self.sock = self.root  # the unix socket lives here; short path (socket paths are limited to ~100 bytes)
        self.log = self.root / "server.log"
        self.bin = pg_bin()
        self.as_root = os.geteuid() == 0

    def _cmd(self, *args: str) -> list[str]:
        return (["runuser", "-u", "nobody", "--"] if self.as_root else []) + list(args)

    def start(self) -> "PgServer":
        if self.as_root:
            os.chmod(self.root, 0o755)
            shutil.chown(self.root, user="nobody")
        subprocess.run(self._cmd(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                                 "--no-sync", "-E", "UTF8"), check=True, capture_output=True, text=True, timeout=120)
        opts = f"-k {self.sock} -c listen_addresses='' -F -c max_connections=200"
        subprocess.run(self._cmd(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", opts,
                                 "-w", "-t", "60", "start"), check=True, capture_output=True, text=True, timeout=120)
        return self

    def stop(self) -> None:
        subprocess.run(self._cmd(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"),
                       capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, db: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@/{db}?host={self.sock}"

    def create_db(self) -> str:
        import psycopg
        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(host=str(self.sock), user="postgres", dbname="postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="session")
def pg_server():
    why = why_no_postgres()
    if why:
        pytest.skip(why)
    server = PgServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server) -> str:  # noqa: ANN001
    """A fresh, empty database on the test server."""
    return pg_server.create_db()


@pytest.fixture(params=["sqlite", "postgres"])
def state_url(request, tmp_path) -> str | None:  # noqa: ANN001
    """Run a test on both backends: None means the home's SQLite file; else a PostgreSQL URL."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("pg_url")
