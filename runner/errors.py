"""Errors the runner reports to users, and the documented exit codes.

Exit codes are part of the interface (agents branch on them):
  0 done · 1 a step failed or was dead-lettered · 2 usage or config error · 3 waiting at a gate
  4 another live runner owns the run · 5 a gate was rejected · 6 `wait` timed out while the run
  is still running · 7 the run was interrupted (no live runner; `runner resume` continues it)
"""
from __future__ import annotations

EXIT_DONE = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_GATE = 3
EXIT_LOCKED = 4
EXIT_REJECTED = 5
EXIT_STILL_RUNNING = 6
EXIT_INTERRUPTED = 7

EXIT_CODES = {
    EXIT_DONE: "done: every step finished",
    EXIT_FAILED: "a step failed or was dead-lettered (see `runner status`)",
    EXIT_USAGE: "usage or config error (the message names the file/field)",
    EXIT_GATE: "waiting at a gate for a decision (`runner show GATE`, `runner approve GATE`)",
    EXIT_LOCKED: "another live runner owns the run (it is named in the message)",
    EXIT_REJECTED: "a gate was rejected; change the config and `runner rerun STEP`",
    EXIT_STILL_RUNNING: "`runner wait` timed out while the run is still running",
    EXIT_INTERRUPTED: "the run was interrupted (no live runner); `runner resume` continues it",
}


class RunnerError(Exception):
    """A user-facing error with an exit code; the message says what to do."""

    exit_code = EXIT_USAGE


class ConfigError(RunnerError):
    """A config file, pipeline path or CLI argument is wrong."""


class DataError(RunnerError):
    """An input file is missing, empty or malformed."""

    exit_code = EXIT_FAILED
