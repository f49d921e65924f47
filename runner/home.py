"""Where a CLI command's home, state store and run come from (arguments, then environment).

Not runnable; used by `runner/cli.py` and by the modules that add commands to it
(`runner/brief.py`, `runner/hooks.py`, `runner/supervise.py`), which must not import the CLI
module itself (that made an import cycle through `runner/extensions.py`).

- home: ``--home``, else ``$RUNNER_HOME``, else the current directory;
- store: ``--db-url``, else ``$RUNNER_DB_URL``, else SQLite under the home;
- run: ``--run``, else ``$RUNNER_RUN``, else the newest run in the store.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from runner.errors import RunnerError


def home_dir(args: argparse.Namespace) -> Path:
    return Path(args.home or os.environ.get("RUNNER_HOME") or os.getcwd())


def open_store(args: argparse.Namespace, create: bool = False):
    from state.store import Store  # lazy: sqlmodel/sqlalchemy cost ~0.3 s; `runner status` reads via state.reader
    return Store.open(home_dir(args), db_url=args.db_url or os.environ.get("RUNNER_DB_URL"), create=create)


def resolve_run(store, args: argparse.Namespace) -> str:
    run_id = getattr(args, "run", None) or os.environ.get("RUNNER_RUN")
    if run_id:
        store.get_run(run_id)  # clear error if unknown
        return run_id
    latest = store.latest_run_id()
    if latest is None:
        raise RunnerError(f"no run in {store.home}; create one with `runner init --config FILE` "
                          "(or `runner run --config FILE`)")
    return latest
