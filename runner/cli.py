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

from runner.errors import EXIT_CODES, EXIT_DONE, EXIT_USAGE, ConfigError, RunnerError
from runner.home import home_dir, open_store, resolve_run
from runner.status import run_state
from state.errors import LeaseLost, StateError
from state.reader import open_reader

EPILOG_EXIT = "exit codes: " + "; ".join(f"{k} {v.split(':')[0].split(' (')[0]}" for k, v in EXIT_CODES.items())


_home = home_dir  # the old private name, kept for callers outside this module


def say_next(command: str, why: str = "") -> None:
    if command:
        print(f"next: {command}" + (f"    # {why}" if why else ""))


# ---- commands ---------------------------------------------------------------------------
def cmd_init(args: argparse.Namespace) -> int:
    from runner.commands import _pipeline_path, init_run, load_run_inputs  # lazy: sqlmodel, yaml (not for `status`)
    # Validate before open_store creates .runner/: a bad config or pipeline leaves the home untouched.
    if not args.from_run:
        load_run_inputs(_pipeline_path(args.pipeline, args.config), args.config)
    run_id = init_run(open_store(args, create=bool(not args.from_run)), args.pipeline, args.config, args.run_id,
                      args.from_run)
    print(f"created run {run_id}")
    say_next(f"runner resume --detach --run {run_id}", "runs it in the background; then `runner wait`")
    return EXIT_DONE


def _set_workers(args: argparse.Namespace) -> None:
    """``--workers N`` reaches sharded steps (runner/shards.py) and a detached runner via the env."""
    if getattr(args, "workers", None) is not None:
        if args.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {args.workers}")
        os.environ["RUNNER_WORKERS"] = str(args.workers)


def cmd_run(args: argparse.Namespace) -> int:
    from runner.commands import (  # lazy: sqlmodel, yaml (not for `status`)
        _pipeline_path, find_or_init, load_run_inputs, resume_run)
    _set_workers(args)
    # Validate before open_store creates .runner/: a bad config or pipeline leaves the home untouched.
    if not args.from_run:
        load_run_inputs(_pipeline_path(args.pipeline, args.config), args.config)
    store = open_store(args, create=not args.from_run)
    run_id, created = find_or_init(store, args.pipeline, args.config, args.run_id, args.from_run)
    print(f"{'created' if created else 'continuing'} run {run_id}")
    return resume_run(store, run_id, detach=args.detach, home=_home(args), db_url=args.db_url)


def cmd_resume(args: argparse.Namespace) -> int:
    from runner.commands import resume_run  # lazy: sqlmodel, yaml (not for `status`)
    _set_workers(args)
    store = open_store(args)
    return resume_run(store, resolve_run(store, args), detach=args.detach, home=_home(args), db_url=args.db_url)


def cmd_worker(args: argparse.Namespace) -> int:
    from runner.worker import worker_main  # lazy: sqlmodel (not for `status`)
    return worker_main(Path(args.spec), args.index)


def cmd_status(args: argparse.Namespace) -> int:
    store = None
    if not (args.db_url or os.environ.get("RUNNER_DB_URL")):
        store = open_reader(home_dir(args))  # stdlib sqlite3, read-only: no sqlalchemy import (fast cold start)
    store = store or open_store(args)
    st = run_state(store, resolve_run(store, args))
    if args.json:
        print(json.dumps(st, indent=2, sort_keys=True, default=str))
    else:
        from runner.render import print_status  # lazy: rich, sqlmodel (not for `status --json`)
        print_status(st)
    return EXIT_DONE


def cmd_wait(args: argparse.Namespace) -> int:
    from runner.commands import wait_run  # lazy: sqlmodel, yaml (not for `status`)
    store = open_store(args)
    return wait_run(store, resolve_run(store, args), args.timeout, args.json)


def cmd_approve(args: argparse.Namespace) -> int:
    from runner.commands import decide  # lazy: sqlmodel, yaml (not for `status`)
    store = open_store(args)
    return decide(store, resolve_run(store, args), args.gate, "approve", args.note, args.who)


def cmd_reject(args: argparse.Namespace) -> int:
    from runner.commands import decide  # lazy: sqlmodel, yaml (not for `status`)
    store = open_store(args)
    return decide(store, resolve_run(store, args), args.gate, "reject", args.reason, args.who)


def cmd_regate(args: argparse.Namespace) -> int:
    from runner.commands import regate  # lazy: sqlmodel, yaml (not for `status`)
    store = open_store(args)
    return regate(store, resolve_run(store, args), args.gate, args.who)


def cmd_retry(args: argparse.Namespace) -> int:
    from runner.commands import retry_step  # lazy: sqlmodel, yaml (not for `status`)
    store = open_store(args)
    return retry_step(store, resolve_run(store, args), args.step)


def cmd_rerun(args: argparse.Namespace) -> int:
    from runner.commands import rerun_step  # lazy: sqlmodel, yaml (not for `status`)
    store = open_store(args)
    return rerun_step(store, resolve_run(store, args), args.step)


def cmd_log(args: argparse.Namespace) -> int:
    from runner.render import print_events  # lazy: rich, sqlmodel (not for `status --json`)
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
    from runner.render import print_gate  # lazy: rich, sqlmodel (not for `status --json`)
    store = open_store(args)
    return print_gate(store, resolve_run(store, args), args.gate, args.json)


def cmd_validate(args: argparse.Namespace) -> int:
    from runner.commands import validate_config  # lazy: sqlmodel, yaml (not for `status`)
    print(validate_config(args.pipeline, args.config))
    return EXIT_DONE


def cmd_review(args: argparse.Namespace) -> int:
    from runner.commands import review_gate  # lazy: sqlmodel, yaml (not for `status`)
    store = open_store(args)
    return review_gate(store, resolve_run(store, args), args.gate)


# ---- parser ----------------------------------------------------------------------------
def build_parser(with_extensions: bool = True) -> argparse.ArgumentParser:
    """The CLI. ``with_extensions=False`` leaves out the commands of runner/extensions.py (brief,
    hooks, supervise, report...), whose modules import the full Store: `runner status` is parsed
    without them so its cold start stays on the stdlib reader."""
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
    sp.add_argument("--workers", type=int, help="run sharded steps in N worker processes, one per GPU (CUDA_VISIBLE_DEVICES); "
                                          "default 1 (in this process); see docs/scale-out.md")

    sp = add("resume", cmd_resume, "Continue the run until it is done, reaches a gate, or a step fails.",
             "runner resume --detach && runner wait --timeout 540")
    sp.add_argument("--detach", action="store_true", help="run in the background with a log file; return at once")
    sp.add_argument("--workers", type=int, help="run sharded steps in N worker processes, one per GPU (CUDA_VISIBLE_DEVICES); "
                                          "default 1 (in this process); see docs/scale-out.md")

    sp = add("worker", cmd_worker, "Internal: one shard worker, started by a runner with --workers N (not by hand).",
             "runner worker --spec artifacts/RUN/STEP/.work-KEY/worker-spec-SET.json --index 0", run_opt=False)
    sp.add_argument("--spec", required=True, help="the worker spec file the coordinating runner wrote")
    sp.add_argument("--index", type=int, required=True, help="this worker's index (0..N-1)")

    sp = add("wait", cmd_wait, "Block until the run stops running (done, gate, failure) or the timeout passes.",
             "runner wait --timeout 540")
    sp.add_argument("--timeout", type=float, default=540.0, help="seconds (default 540)")
    sp.add_argument("--json", action="store_true")

    sp = add("status", cmd_status, "Show steps, gates, errors, costs and the next command (never imports torch).",
             "runner status --json | jq .next_action")
    sp.add_argument("--json", action="store_true", help="machine-readable, with next_action")

    sp = add("approve", cmd_approve, "Approve a waiting gate (no live runner needed). A gate that needs a person "
             "(policy human or review+human, or a review that failed closed) takes it only from a terminal "
             "outside an agent session, confirmed by typing the gate's name.",
             'runner approve qc_pilot --note "QC numbers look right"')
    sp.add_argument("gate")
    sp.add_argument("--note", default=None)
    sp.add_argument("--who", default=None, help="who decides (default: the OS account running the command)")

    sp = add("reject", cmd_reject, "Reject a waiting gate; the run stops there.",
             'runner reject qc_pilot --reason "runaway rate too high"')
    sp.add_argument("gate")
    sp.add_argument("--reason", required=True)
    sp.add_argument("--who", default=None)

    sp = add("regate", cmd_regate, "Adopt the config's edited policy for a waiting gate (its policy is frozen "
             "when requested; a plain resume refuses the edit). A person's act, confirmed at a terminal.",
             "runner regate sft_gate && runner resume --detach")
    sp.add_argument("gate")
    sp.add_argument("--who", default=None, help="who decides (default: the OS account running the command)")

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

    if with_extensions:
        from runner import extensions  # lazy: its modules import sqlmodel; see build_parser's docstring
        extensions.register(sub, add)
    return p


def _command(argv: list[str]) -> str | None:
    """The sub-command word of ``argv`` (skipping the global options and their values)."""
    it = iter(argv)
    for a in it:
        if a in ("--home", "--db-url"):
            next(it, None)
        elif not a.startswith("-"):
            return a
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(with_extensions=_command(argv) != "status")
    args = parser.parse_args(argv)
    if not getattr(args, "fn", None):
        parser.print_help()
        return EXIT_USAGE
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
        if "sqlalchemy.exc" not in sys.modules:  # a sqlalchemy error implies sqlalchemy was imported
            raise
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
