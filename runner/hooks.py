"""`runner hooks`: agent session hooks that re-brief an agent after a compaction or restart.

    runner --home /workspace/runs hooks install --project .          # Claude Code (.claude/settings.json)
    runner --home /workspace/runs hooks install --agent codex --project .   # Codex (.codex/hooks.json)
    runner hooks uninstall --project .
    runner hooks note "switched the reviewer model"                  # a note event in the run

Contract:
- ``install`` merges into ``DIR/.claude/settings.json`` (Claude Code) or ``DIR/.codex/hooks.json``
  (Codex): a ``SessionStart`` hook per source (startup, resume, clear, compact) whose command
  prints the briefing as ``{"hookSpecificOutput": {"hookEventName": "SessionStart",
  "additionalContext": BRIEFING}}``, and (Claude Code) a ``PreCompact`` hook (manual, auto) that
  records an ``agent_note`` event in the run. Every other key and hook is kept; the file is
  rewritten atomically with 2-space indentation. Installing twice gives the same file.
- Our hook commands end with the marker ``# cai-bootstrap-runner-hook``; ``uninstall`` removes
  exactly the handlers carrying it, then any matcher group or event list left empty by that
  and an emptied ``hooks`` object. Nothing else is touched.
- The command uses absolute paths (this Python, ``-m runner``, ``--home`` baked in: the
  ``--home`` given to install, else ``$RUNNER_HOME``, else the project directory).
- The hook commands fail OPEN: any error prints one line on stderr, appends the reason to
  ``HOME/.runner/hooks.log`` (if that directory exists) and exits 0; the shell command ends in
  ``|| true`` so even a missing interpreter cannot block the session.
"""
from __future__ import annotations

import functools
import json
import os
import shlex
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Optional

from runner.brief import briefing_text, scrub
from runner.home import home_dir as _home
from state.files import atomic_write_text
from state.store import DB_NAME, STATE_DIR, Store

MARKER = "# cai-bootstrap-runner-hook"
SESSION_SOURCES = ("startup", "resume", "clear", "compact")
COMPACT_TRIGGERS = ("manual", "auto")
HOOK_TIMEOUT_S = 30
MAX_STDIN = 1 << 20


# ---- the command the agent runs ----------------------------------------------------------------
def _repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@functools.lru_cache(maxsize=8)
def _importable_anywhere(python: str) -> bool:
    """Whether `python -m runner` works from an unrelated directory (installed, e.g. editable)."""
    try:
        r = subprocess.run([python, "-c", "import runner.cli"], cwd="/", capture_output=True, timeout=30)
        return r.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def hook_command(home: Path, event: str, agent: str, python: Optional[str] = None) -> str:
    """The shell command for one hook event ("session-start" or "pre-compact")."""
    python = python or sys.executable
    env = "" if _importable_anywhere(python) else f"PYTHONPATH={shlex.quote(str(_repo_root()))} "
    return (f"{env}{shlex.quote(python)} -m runner --home {shlex.quote(str(home))} hooks {event} "
            f"--agent {agent} || true  {MARKER}")


# ---- merging settings ----------------------------------------------------------------------------
def _is_ours(handler: Any) -> bool:
    return isinstance(handler, dict) and MARKER in str(handler.get("command", ""))


def _load(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {e.start}); fix or move it aside, then run "
                         "`runner hooks install` again (nothing was changed)") from None
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); fix or move it aside, then run "
                         "`runner hooks install` again (nothing was changed)") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, found {type(data).__name__}; nothing was changed")
    hooks = data.get("hooks")
    if hooks is not None and not isinstance(hooks, dict):
        raise ValueError(f"{path}: 'hooks' must be an object, found {type(hooks).__name__}; fix or move it "
                         "aside (nothing was changed)")
    for event, groups in (hooks or {}).items():
        if not isinstance(groups, list):
            raise ValueError(f"{path}: hooks.{event} must be a list of matcher groups, found "
                             f"{type(groups).__name__}; fix or move it aside (nothing was changed)")
    return data


def _write(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def remove_ours(data: dict) -> int:
    """Drop our handlers from a settings object in place; return how many were removed."""
    hooks = data.get("hooks")
    if not isinstance(hooks, dict):
        return 0
    removed = 0
    for event in list(hooks):
        groups = hooks[event]
        if not isinstance(groups, list):
            continue
        kept_groups = []
        for g in groups:
            if not isinstance(g, dict) or not isinstance(g.get("hooks"), list):
                kept_groups.append(g)
                continue
            kept = [h for h in g["hooks"] if not _is_ours(h)]
            removed += len(g["hooks"]) - len(kept)
            if kept or not g["hooks"]:
                kept_groups.append({**g, "hooks": kept})
            # else: a group that held only our handler goes away
        if kept_groups:
            hooks[event] = kept_groups
        else:
            del hooks[event]
    if not hooks:
        del data["hooks"]
    return removed


def add_ours(data: dict, home: Path, agent: str, python: Optional[str] = None) -> None:
    hooks = data.setdefault("hooks", {})
    if not isinstance(hooks, dict):
        raise ValueError(f"'hooks' must be an object, found {type(hooks).__name__}; nothing was changed")

    def handler(event: str) -> dict:
        return {"type": "command", "command": hook_command(home, event, agent, python), "timeout": HOOK_TIMEOUT_S}

    start = handler("session-start")
    if agent == "codex":
        # Codex treats the SessionStart matcher as a pattern over the source.
        hooks.setdefault("SessionStart", []).append({"matcher": "|".join(SESSION_SOURCES), "hooks": [start]})
        return
    for src in SESSION_SOURCES:
        hooks.setdefault("SessionStart", []).append({"matcher": src, "hooks": [dict(start)]})
    pre = handler("pre-compact")
    for trig in COMPACT_TRIGGERS:
        hooks.setdefault("PreCompact", []).append({"matcher": trig, "hooks": [dict(pre)]})


def settings_path(project: Path, agent: str) -> Path:
    return project / (".codex/hooks.json" if agent == "codex" else ".claude/settings.json")


def install(project: Path, home: Path, agent: str = "claude-code", python: Optional[str] = None) -> Path:
    path = settings_path(project, agent)
    data = _load(path)
    remove_ours(data)
    add_ours(data, home, agent, python)
    _write(path, data)
    return path


def uninstall(project: Path, agent: str = "claude-code") -> tuple[Path, int]:
    path = settings_path(project, agent)
    if not path.exists():
        return path, 0
    data = _load(path)
    n = remove_ours(data)
    if n:
        _write(path, data)
    return path, n


# ---- what the hooks run (fail open) ----------------------------------------------------------------
def _read_stdin() -> dict:
    try:
        if sys.stdin is None or sys.stdin.isatty():
            return {}
        text = sys.stdin.read(MAX_STDIN)
        data = json.loads(text) if text.strip() else {}
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _log(home: Path, line: str) -> None:
    try:
        d = home / ".runner"
        if d.is_dir():
            with open(d / "hooks.log", "a", encoding="utf-8") as f:
                f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} pid {os.getpid()} {line}\n")
    except OSError:
        pass


def _fail_open(home: Path, what: str, exc: BaseException) -> None:
    reason = f"{type(exc).__name__}: {exc}"
    print(f"runner hook {what}: skipped ({reason[:200]}); run `runner brief` by hand", file=sys.stderr)
    _log(home, f"{what} failed: {reason}\n{traceback.format_exc()[-2000:]}")


def session_start(home: Path, db_url: Optional[str], run_id: Optional[str]) -> int:
    """Print the SessionStart hook JSON with the briefing; never fails (exit 0)."""
    info = _read_stdin()
    try:
        text = briefing_text(home, db_url, run_id)
        src = info.get("source")
        if src:
            text = f"(cai-bootstrap runner briefing, injected at session {src})\n\n" + text
    except BaseException as e:  # noqa: BLE001 - fail open, whatever happened
        _fail_open(home, "session-start", e)
        text = (f"cai-bootstrap runner: the briefing could not be built ({type(e).__name__}: {str(e)[:200]}). "
                f"Run `runner --home {home} brief` by hand.")
    try:
        print(json.dumps({"hookSpecificOutput": {"hookEventName": "SessionStart", "additionalContext": text}}))
    except BaseException as e:  # noqa: BLE001 - e.g. a closed stdout
        _fail_open(home, "session-start", e)
    return 0


def record_note(home: Path, db_url: Optional[str], run_id: Optional[str], message: str,
                data: Optional[dict] = None) -> Optional[str]:
    """Record an ``agent_note`` event in the run; returns the run id, or None when there is no run."""
    if not db_url and not (Path(home) / STATE_DIR / DB_NAME).exists():
        return None
    store = Store.open(Path(home), db_url=db_url, create=False)
    try:
        run_id = run_id or os.environ.get("RUNNER_RUN") or store.latest_run_id()
        if run_id is None:
            return None
        store.event(run_id, "agent_note", scrub(message)[:500], data=data)
        return run_id
    finally:
        store.close()


def pre_compact(home: Path, db_url: Optional[str], run_id: Optional[str]) -> int:
    info = _read_stdin()
    try:
        trigger = str(info.get("trigger") or "unknown")
        session = str(info.get("session_id") or "")[:40]
        record_note(home, db_url, run_id,
                    f"agent context compaction ({trigger}) in session {session or '?'}; "
                    "the SessionStart hook re-injects the briefing",
                    data={"trigger": trigger, "session_id": session, "hook": "PreCompact"})
    except BaseException as e:  # noqa: BLE001 - fail open
        _fail_open(home, "pre-compact", e)
    return 0


# ---- CLI ---------------------------------------------------------------------------------------------
def cmd_hooks(args) -> int:  # noqa: ANN001
    home = _home(args).resolve()
    db_url = args.db_url or os.environ.get("RUNNER_DB_URL")
    action = args.hooks_action
    if action == "session-start":
        return session_start(home, db_url, args.run)
    if action == "pre-compact":
        return pre_compact(home, db_url, args.run)
    if action == "note":
        rid = record_note(home, db_url, args.run, " ".join(args.text), data={"source": "runner hooks note"})
        if rid is None:
            print(f"no run in {home}; nothing recorded", file=sys.stderr)
            return 2
        print(f"note recorded in run {rid}")
        return 0
    project = Path(args.project).resolve()
    if action == "install":
        if not project.is_dir():
            print(f"error: project directory {project} does not exist (pass --project DIR)", file=sys.stderr)
            return 2
        explicit = args.home or os.environ.get("RUNNER_HOME")
        hook_home = Path(explicit).resolve() if explicit else project
        try:
            path = install(project, hook_home, args.agent)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"installed the runner's {args.agent} hooks in {path} (home {hook_home})")
        if args.agent == "codex":
            print("note: Codex loads project hooks only for a trusted project, and older versions need "
                  "`[features] codex_hooks = true` in ~/.codex/config.toml (see docs/agents.md)")
        print(f"check: {shlex.quote(sys.executable)} -m runner --home {hook_home} hooks session-start "
              f"--agent {args.agent} </dev/null")
        return 0
    if action == "uninstall":
        try:
            path, n = uninstall(project, args.agent)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"removed {n} runner hook handler(s) from {path}")
        return 0
    print("usage: runner hooks {install,uninstall,session-start,pre-compact,note}", file=sys.stderr)
    return 2


def register(sub, add) -> None:  # noqa: ANN001
    sp = add("hooks", cmd_hooks, "Install/uninstall agent session hooks that inject `runner brief` at session "
             "start and after a compaction (Claude Code, Codex); the hook entry points themselves.",
             "runner --home /workspace/runs hooks install --project .")
    hs = sp.add_subparsers(dest="hooks_action", metavar="ACTION")
    for name, help_ in (("install", "merge the hooks into the project's agent settings (idempotent)"),
                        ("uninstall", "remove exactly the hooks that install added")):
        p = hs.add_parser(name, help=help_, description=help_)
        p.add_argument("--agent", choices=["claude-code", "codex"], default="claude-code")
        p.add_argument("--project", default=".", help="the agent's project directory (default: .)")
    for name, help_ in (("session-start", "print the SessionStart hook JSON with the briefing (fails open)"),
                        ("pre-compact", "record a note event before a compaction (fails open)")):
        p = hs.add_parser(name, help=help_, description=help_)
        p.add_argument("--agent", choices=["claude-code", "codex"], default="claude-code")
    p = hs.add_parser("note", help="record a note event in the run", description="record a note event in the run")
    p.add_argument("text", nargs="+")
