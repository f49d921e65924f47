"""The `runner` command line: a thin layer over the engine and the state store.

    python -m runner --help        (or `runner --help` once installed)

Every command prints what happened and the one command to run next. Exit codes are documented
in runner/errors.py and docs/cli.md. `status`, `wait`, `log`, `show`, `approve` and `reject`
never import the pipeline (nor torch).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable

from runner.errors import EXIT_CODES, EXIT_DONE, EXIT_USAGE, RunnerError

EPILOG_EXIT = "exit codes: " + "; ".join(f"{k} {v.split(':')[0].split(' (')[0]}" for k, v in EXIT_CODES.items())


def _home(args: argparse.Namespace) -> Path:
    return Path(args.home or os.environ.get("RUNNER_HOME") or os.getcwd())


def open_store(args: argparse.Namespace, create: bool = False):
    from state.store import Store
    return Store.open(_home(args), db_url=args.db_url or os.environ.get("RUNNER_DB_URL"), create=create)


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


def say_next(command: str, why: str = "") -> None:
    if command:
        print(f"next: {command}" + (f"    # {why}" if why else ""))


# ---- commands ---------------------------------------------------------------------------
def cmd_init(args: argparse.Namespace) -> int:
    from runner.commands import _pipeline_path, init_run, load_run_inputs
    # Validate before open_store creates .runner/: a bad config or pipeline leaves the home untouched.
    if not args.from_run:
        load_run_inputs(_pipeline_path(args.pipeline, args.config), args.config)
    run_id = init_run(open_store(args, create=bool(not args.from_run)), args.pipeline, args.config, args.run_id,
                      args.from_run)
    print(f"created run {run_id}")
    say_next(f"runner resume --detach --run {run_id}", "runs it in the background; then `runner wait`")
    return EXIT_DONE


def cmd_run(args: argparse.Namespace) -> int:
    from runner.commands import _pipeline_path, find_or_init, load_run_inputs, resume_run
    # Validate before open_store creates .runner/: a bad config or pipeline leaves the home untouched.
    if not args.from_run:
        load_run_inputs(_pipeline_path(args.pipeline, args.config), args.config)
    store = open_store(args, create=not args.from_run)
    run_id, created = find_or_init(store, args.pipeline, args.config, args.run_id, args.from_run)
    print(f"{'created' if created else 'continuing'} run {run_id}")
    return resume_run(store, run_id, detach=args.detach, home=_home(args), db_url=args.db_url)


def cmd_resume(args: argparse.Namespace) -> int:
    from runner.commands import resume_run
    store = open_store(args)
    return resume_run(store, resolve_run(store, args), detach=args.detach, home=_home(args), db_url=args.db_url)


def cmd_status(args: argparse.Namespace) -> int:
    from runner.status import run_state
    store = open_store(args)
    st = run_state(store, resolve_run(store, args))
    if args.json:
        print(json.dumps(st, indent=2, sort_keys=True, default=str))
    else:
        from runner.render import print_status
        print_status(st)
    return EXIT_DONE


def cmd_wait(args: argparse.Namespace) -> int:
    from runner.commands import wait_run
    store = open_store(args)
    return wait_run(store, resolve_run(store, args), args.timeout, args.json)


def cmd_approve(args: argparse.Namespace) -> int:
    from runner.commands import decide
    store = open_store(args)
    return decide(store, resolve_run(store, args), args.gate, "approve", args.note, args.who)


def cmd_reject(args: argparse.Namespace) -> int:
    from runner.commands import decide
    store = open_store(args)
    return decide(store, resolve_run(store, args), args.gate, "reject", args.reason, args.who)


def cmd_retry(args: argparse.Namespace) -> int:
    from runner.commands import retry_step
    store = open_store(args)
    return retry_step(store, resolve_run(store, args), args.step)


def cmd_rerun(args: argparse.Namespace) -> int:
    from runner.commands import rerun_step
    store = open_store(args)
    return rerun_step(store, resolve_run(store, args), args.step)


def cmd_log(args: argparse.Namespace) -> int:
    from runner.render import print_events
    store = open_store(args)
    run_id = resolve_run(store, args)
    kinds = args.kind or None
    if args.errors:
        kinds = ["attempt_failed", "attempt_interrupted", "step_dead_lettered", "artifact_mismatch", "batch_torn"]
    events = store.events(run_id, limit=args.limit, kinds=kinds)
    if args.step:
        events = [e for e in events if e.step == args.step]
    print_events(events, as_json=args.json)
    return EXIT_DONE


def cmd_show(args: argparse.Namespace) -> int:
    from runner.render import print_gate
    store = open_store(args)
    return print_gate(store, resolve_run(store, args), args.gate, args.json)


def cmd_validate(args: argparse.Namespace) -> int:
    from runner.commands import validate_config
    print(validate_config(args.pipeline, args.config))
    return EXIT_DONE


def cmd_review(args: argparse.Namespace) -> int:
    from runner.commands import review_gate
    store = open_store(args)
    return review_gate(store, resolve_run(store, args), args.gate)


# ---- parser ----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="runner", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Durable, resumable pipeline runner (state in SQLite under --home).",
        epilog=EPILOG_EXIT + "\n\nexample:\n  runner run --config runner/examples/toy.yaml && runner status")
    p.add_argument("--home", help="directory holding .runner/ (state) and artifacts/ (default: $RUNNER_HOME or .)")
    p.add_argument("--db-url", help="SQLAlchemy URL of the state DB instead of the SQLite file "
                                    "(e.g. postgresql+psycopg://user@host/db; default: $RUNNER_DB_URL)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, fn: Callable, help_: str, example: str, run_opt: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_, epilog=f"example:\n  {example}",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.set_defaults(fn=fn)
        if run_opt:
            sp.add_argument("--run", help="run id (default: $RUNNER_RUN or the newest run)")
        return sp

    sp = add("init", cmd_init, "Create a run from a pipeline and a config file.",
             "runner init --config runner/examples/toy.yaml", run_opt=False)
    sp.add_argument("--pipeline", help="module:attr of the pipeline (default: the config's 'pipeline' key)")
    sp.add_argument("--config", help="YAML config file (params, gates, seed)")
    sp.add_argument("--run-id", help="name of the run (default: <pipeline>-<timestamp>)")
    sp.add_argument("--from-run", metavar="RUN", help="chain: expose run RUN's outputs (same home) to this run as "
                    "config key from_run; the pipeline decides what they mean (e.g. its final adapter)")

    sp = add("run", cmd_run, "Create the run if needed (same config file = same run), then resume it.",
             "runner run --config runner/examples/toy.yaml", run_opt=False)
    sp.add_argument("--pipeline")
    sp.add_argument("--config")
    sp.add_argument("--run-id")
    sp.add_argument("--from-run", metavar="RUN", help="chain from run RUN (see `runner init --help`)")
    sp.add_argument("--detach", action="store_true", help="run in the background; return at once")

    sp = add("resume", cmd_resume, "Continue the run until it is done, reaches a gate, or a step fails.",
             "runner resume --detach && runner wait --timeout 540")
    sp.add_argument("--detach", action="store_true", help="run in the background with a log file; return at once")

    sp = add("wait", cmd_wait, "Block until the run stops running (done, gate, failure) or the timeout passes.",
             "runner wait --timeout 540")
    sp.add_argument("--timeout", type=float, default=540.0, help="seconds (default 540)")
    sp.add_argument("--json", action="store_true")

    sp = add("status", cmd_status, "Show steps, gates, errors, costs and the next command (instant).",
             "runner status --json | jq .next_action")
    sp.add_argument("--json", action="store_true", help="machine-readable, with next_action")

    sp = add("approve", cmd_approve, "Approve a waiting gate (no live runner needed).",
             'runner approve qc_pilot --note "QC numbers look right"')
    sp.add_argument("gate")
    sp.add_argument("--note", default=None)
    sp.add_argument("--who", default=None, help="who decides (default: $USER)")

    sp = add("reject", cmd_reject, "Reject a waiting gate; the run stops there.",
             'runner reject qc_pilot --reason "runaway rate too high"')
    sp.add_argument("gate")
    sp.add_argument("--reason", required=True)
    sp.add_argument("--who", default=None)

    sp = add("retry", cmd_retry, "Clear a step's failure count (e.g. after dead-lettering) so resume tries again.",
             "runner retry process && runner resume --detach")
    sp.add_argument("step")

    sp = add("rerun", cmd_rerun, "Invalidate a finished step and everything downstream of it.",
             "runner rerun make_items && runner resume --detach")
    sp.add_argument("step")

    sp = add("log", cmd_log, "Show the event log (newest last).", "runner log --errors --limit 20")
    sp.add_argument("--limit", type=int, default=40)
    sp.add_argument("--kind", action="append", help="only events of this kind (repeatable)")
    sp.add_argument("--step")
    sp.add_argument("--errors", action="store_true", help="only failures, interruptions, dead letters")
    sp.add_argument("--json", action="store_true")

    sp = add("show", cmd_show, "Show a gate: its evidence, check, reviewer verdicts and decisions.",
             "runner show qc_pilot")
    sp.add_argument("gate")
    sp.add_argument("--json", action="store_true")

    sp = add("review", cmd_review, "Ask (or re-ask) the LLM reviewer at a gate, e.g. after a MODIFY was handled.",
             "runner review qc_pilot")
    sp.add_argument("gate")

    sp = add("validate", cmd_validate, "Check a config against the pipeline's steps and gates; runs nothing.",
             "runner validate --config runner/examples/toy.yaml", run_opt=False)
    sp.add_argument("--pipeline")
    sp.add_argument("--config")

    from runner import extensions
    extensions.register(sub, add)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "fn", None):
        parser.print_help()
        return EXIT_USAGE
    from state.db import StateError
    from state.store import LeaseLost
    try:
        return int(args.fn(args) or 0)
    except RunnerError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except StateError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except LeaseLost as e:
        print(f"error: {e}", file=sys.stderr)
        return 4
    except BrokenPipeError:
        return EXIT_DONE
    except Exception as e:  # database-level trouble gets a clear message, not a traceback
        from sqlalchemy.exc import OperationalError
        if not isinstance(e, OperationalError):
            raise
        msg = str(getattr(e, "orig", e))
        if "locked" in msg or "busy" in msg:
            print(f"error: the state database stayed locked for more than 30 s ({msg}); another process "
                  "holds a long write. Retry; if it persists, find it with `fuser .runner/runner.db`.", file=sys.stderr)
        elif "full" in msg:
            print(f"error: the disk holding the state database is full ({msg}); free space and retry — "
                  "nothing was half-written (the failed transaction was rolled back).", file=sys.stderr)
        else:
            print(f"error: state database error: {msg}", file=sys.stderr)
        return EXIT_USAGE


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
