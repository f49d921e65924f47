"""`runner brief`: a short briefing for an agent that remembers nothing (after a compaction,
a new session or a pod restart).

    runner brief              # Markdown, a few KB at most
    runner brief --json       # the same facts as data
    runner --home /workspace/runs brief --run toy-20260101-120000

Contract:
- Built from the state database alone (``runner.status.run_state`` plus a few bounded queries);
  never imports the pipeline, torch or transformers, so it takes well under a second.
- Bounded: every list is capped (steps 25, gates 10, failures 3, recent events 8, other runs 5)
  and every string is cut to 240 characters; the Markdown is cut at ``MAX_CHARS`` characters.
  The event log is never read whole, whatever its size.
- No secrets: values of environment variables whose names contain KEY, TOKEN, SECRET or
  PASSWORD (8 characters or longer) and credential-shaped strings (``sk-...``, ``hf_...``,
  bearer tokens, URL passwords) are replaced by ``[REDACTED]`` everywhere in the output.
- A home with no state database or no run gives a briefing that says so and names the
  command that starts one; it creates nothing.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional

from runner.home import home_dir as _home
from runner.lease import hostname, process_start_time
from runner.review.secrets import SECRET_ENV_NAME_RE, scrub_obj, scrub_text, secret_env_values
from runner.status import run_state
from state.schema import Batch
from state.store import DB_NAME, STATE_DIR, Store

MAX_CHARS = 6000
MAX_STR = 240
MAX_STEPS = 25
MAX_GATES = 10
MAX_FAILURES = 3
MAX_EVENTS = 8
MAX_RUNS = 5


DO_NOT = [
    "Do not re-run finished steps by hand (no direct `python phases/...` calls): the runner skips what is "
    "done and `runner rerun STEP` is the only way to redo a step.",
    "Do not start a second `runner resume` while one is alive: exit code 4 means another live runner "
    "owns the run; watch it with `runner wait` instead.",
    "Use `runner wait --timeout 540` (repeat while it exits 6) rather than sleep loops.",
    "Do not approve or reject a human gate on your own unless the operator authorised it in writing; "
    "otherwise report the evidence (`runner show GATE`) and stop. `runner approve` of a human gate is "
    "refused from an agent session: never try to get around that (no scrubbed environment, no fake "
    "terminal, no `runner regate`, no editing the gate's policy); ask a person to run the command it names.",
    "Do not delete or edit `.runner/` (the state database) or files under `artifacts/`.",
]


# ---- scrubbing and bounding ------------------------------------------------------------------
# The one scrubber lives in runner/review/secrets.py; these names are kept for callers.
SECRET_NAME_RE = SECRET_ENV_NAME_RE


def scrub(text: str, extra: Optional[list[str]] = None) -> str:
    """``text`` with credentials redacted (env secrets unless ``extra`` is given)."""
    return scrub_text(text, secret_env_values() if extra is None else extra)


def scrub_data(obj: Any, extra: list[str]) -> Any:
    """JSON-like data with credentials redacted, secret-named keys' values included."""
    return scrub_obj(obj, extra)


def cut(obj: Any, n: int = MAX_STR) -> str:
    """One line, at most n characters (JSON for non-strings)."""
    if obj is None:
        return ""
    text = obj if isinstance(obj, str) else json.dumps(obj, sort_keys=True, default=str)
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _ago(ts: Optional[float], now: float) -> str:
    if not ts:
        return "?"
    d = max(0.0, now - ts)
    return f"{d:.0f}s ago" if d < 120 else f"{d / 60:.0f}m ago" if d < 7200 else f"{d / 3600:.1f}h ago"


def _stamp(ts: Optional[float]) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "?"


# ---- the facts -------------------------------------------------------------------------------
def _cli_prefix(home: Path) -> str:
    """`runner` plus `--home H` unless the home is where the commands will run anyway."""
    env_home = os.environ.get("RUNNER_HOME")
    same = Path(env_home).resolve() == home if env_home else Path.cwd().resolve() == home
    return "runner" if same else f"runner --home {home}"


def _cmd(prefix: str, command: str) -> str:
    return prefix + command[len("runner"):] if command.startswith("runner") else command


def _batch_progress(store, run_id: str, step: str, cache_key: str) -> Optional[dict]:
    from sqlalchemy import func
    from sqlmodel import select
    with store.db.read() as s:
        n, items, last = s.exec(select(func.count(), func.sum(Batch.n_items), func.max(Batch.created_at))
                                .where(Batch.run_id == run_id, Batch.step == step,
                                       Batch.cache_key == cache_key)).one()
    if not n:
        return None
    return {"batches": int(n), "items": int(items or 0), "last_batch_at": last}


def _supervisor(store, run_id: str) -> Optional[dict]:
    """The newest supervisor of this run that is still alive on this host, else None."""
    stopped = set()
    for ev in reversed(store.events(run_id, limit=20, kinds=["supervisor_started", "supervisor_stopped"])):
        data = json.loads(ev.data_json or "{}")
        who = (data.get("host"), data.get("pid"))
        if ev.kind == "supervisor_stopped":
            stopped.add(who)
            continue
        if who in stopped or data.get("host") != hostname():
            continue
        started = process_start_time(int(data.get("pid", 0) or 0))
        if started is not None and abs(started - float(data.get("pid_start_time") or 0)) <= 1.0:
            return {"host": data["host"], "pid": data["pid"], "since": ev.ts}
    return None


def _no_run(home: Path, why: str) -> dict:
    prefix = _cli_prefix(home)
    return {"home": str(home), "run": None, "state": "no_run", "why": why,
            "next_commands": [
                _cmd(prefix, "runner run --config CONFIG.yaml --detach") + "    # creates the run and starts it "
                "in the background (try runner/examples/toy.yaml)",
                _cmd(prefix, "runner wait --timeout 540")],
            "do_not": DO_NOT}


def build_brief(home: Path, db_url: Optional[str] = None, run_id: Optional[str] = None) -> dict:
    """The briefing as data (scrubbed, bounded). Never creates a database."""
    home = Path(home).resolve()
    if not db_url:
        if not (home / STATE_DIR / DB_NAME).exists():
            return scrub_data(_no_run(home, f"no state database in {home} (no .runner/runner.db)"),
                              secret_env_values())
    store = Store.open(home, db_url=db_url, create=False)
    try:
        return scrub_data(_brief_for_store(store, home, run_id), secret_env_values())
    finally:
        store.close()


def _brief_for_store(store, home: Path, run_id: Optional[str]) -> dict:
    runs = store.run_ids()
    if run_id is None:
        run_id = os.environ.get("RUNNER_RUN") or (runs[-1] if runs else None)
    if run_id is None:
        return _no_run(home, f"the state database in {home} holds no run")
    st = run_state(store, run_id)
    now = time.time()
    prefix = _cli_prefix(home)
    plan = json.loads(store.get_run(run_id).plan_json or "[]")

    def cmd(c: str) -> str:
        # --run is a sub-command option, so it goes last; only needed for a run other than the newest.
        c = _cmd(prefix, c)
        if runs and run_id != runs[-1] and c.startswith("runner") and " --run " not in c:
            c += f" --run {run_id}"
        return c

    steps_by_name = {s["name"]: s for s in st["steps"]}
    gates_by_name = {g["name"]: g for g in st["gates"]}
    pipeline = []
    for node in plan[:MAX_STEPS + MAX_GATES]:
        if node["kind"] == "step":
            pipeline.append(f"{node['name']} ({steps_by_name.get(node['name'], {}).get('status', '?')})")
        else:
            pipeline.append(f"gate {node['name']} ({gates_by_name.get(node['name'], {}).get('status', '?')})")
    finished = [{"step": s["name"], "summary": cut(s["summary"]), "ended": _stamp(s["ended_at"])}
                for s in st["steps"] if s["status"] == "succeeded"][:MAX_STEPS]

    running = None
    lease = store.get_lease(run_id)
    current = next((s for s in st["steps"] if s["status"] in ("running", "interrupted")), None)
    progress = None
    if current is not None:
        att = [a for a in store.attempts(run_id, current["name"]) if a.invalidated_at is None]
        if att:
            progress = _batch_progress(store, run_id, current["name"], att[-1].cache_key)
            if progress:
                progress["last_batch"] = _ago(progress.pop("last_batch_at"), now)
    if st["state"] == "running" and lease is not None:
        running = {"host": lease.host, "pid": lease.pid, "since": _stamp(lease.acquired_at),
                   "heartbeat": _ago(lease.heartbeat_at, now), "step": st["detail"] or None,
                   "batches": progress}
    interrupted = None
    if st["state"] == "interrupted" and current is not None:
        interrupted = {"step": current["name"], "batches": progress,
                       "error": cut(current["error"])}

    waiting = []
    for g in st["gates"][:MAX_GATES]:
        if g["status"] != "pending":
            continue
        rv = g.get("review")
        check = g.get("check") or {}
        waiting.append({"gate": g["name"], "policy": g["policy"], "reason": cut(g["wait_reason"]),
                        "check": None if not check else cut({"passed": check.get("passed"),
                                                             "reasons": check.get("reasons"),
                                                             "summary": check.get("summary")}),
                        "reviewer": None if not rv else cut(
                            f"{rv.get('decision') or 'FAILED'} ({rv.get('model')}): "
                            f"{rv.get('summary') or rv.get('error') or ''}")})
    decided = [f"{g['name']}: {g['status']} by {g['decided_by']}" + (f" ({cut(g['note'], 80)})" if g["note"] else "")
               for g in st["gates"][:MAX_GATES] if g["status"] in ("approved", "rejected")]
    failures = [{"step": e["step"], "attempt": e["attempt"], "status": e["status"], "error": cut(e["error"])}
                for e in st["errors"][-MAX_FAILURES:]]
    events = [{"id": e.id, "at": _stamp(e.ts), "kind": e.kind,
               "where": e.step or (f"gate {e.gate}" if e.gate else ""), "message": cut(e.message, 160)}
              for e in store.events(run_id, limit=MAX_EVENTS)]
    supervisor = _supervisor(store, run_id)

    na = st["next_action"]
    state = st["state"]
    nexts: list[str] = []
    if supervisor and state in ("interrupted", "failed", "created", "ready", "running"):
        nexts = [cmd("runner wait --timeout 540") + f"    # supervisor pid {supervisor['pid']} resumes the run "
                 "by itself; do not start `runner resume`"]
    elif state == "running":
        nexts = [cmd("runner wait --timeout 540") + "    # repeat while it exits 6 (still running)",
                 cmd("runner brief") + "    # after it returns"]
    elif state in ("created", "interrupted", "ready"):
        nexts = [cmd("runner resume --detach"), cmd("runner wait --timeout 540")]
    elif state == "waiting":
        g = st["detail"]
        nexts = [cmd(f"runner show {g}") + "    # read the evidence",
                 cmd(f"runner approve {g} --note \"...\"") + "    # ONLY if the operator authorised it in writing; "
                 "a human gate takes it only from a person at their own terminal (refused from an agent "
                 "session): otherwise report and stop",
                 cmd("runner resume --detach") + "    # after an approval"]
    elif state == "failed":
        nexts = [cmd("runner log --errors --limit 20") + "    # read the error",
                 cmd("runner resume --detach") + "    # after fixing the cause: retries the step",
                 cmd("runner wait --timeout 540")]
    elif state == "dead_lettered":
        nexts = [cmd("runner log --errors --limit 20"), cmd(f"runner retry {st['detail']}") + "    # after fixing "
                 "the cause", cmd("runner resume --detach")]
    elif state == "rejected":
        nexts = [cmd(na["command"]), "edit the config as the rejection note says, then "
                 + cmd("runner rerun STEP") + " and " + cmd("runner resume --detach")]
    elif na["command"]:
        nexts = [cmd(na["command"])]

    other_runs = [r for r in runs if r != run_id][-MAX_RUNS:]
    fs = getattr(store.db, "fs", None)
    state_fs = None if fs is None else {"fstype": fs.fstype, "mount": fs.mount_point, "network": fs.network,
                                        "journal_mode": store.db.journal_mode}
    return {
        "home": str(home), "run": run_id, "pipeline": st["run"]["pipeline"], "goal": cut(st["run"]["goal"]),
        "state": state, "detail": st["detail"], "exit_code": st["exit_code"],
        "plan": pipeline, "finished": finished, "running": running, "interrupted": interrupted,
        "waiting": waiting, "decided_gates": decided, "failures": failures, "recent_events": events,
        "events_total": st["events"], "supervisor": supervisor,
        "next_action": {"command": cmd(na["command"]) if na["command"] else "", "why": cut(na["why"], 400)},
        "next_commands": nexts, "do_not": DO_NOT, "other_runs": other_runs,
        "cli": _cli_hint(), "state_fs": state_fs,
    }


def _cli_hint() -> str:
    """Where `runner` lives, for an agent whose PATH lacks it."""
    exe = Path(sys.executable).with_name("runner")
    found = shutil.which("runner")
    if found and (not exe.exists() or Path(found).resolve() == exe.resolve()):
        return ""
    return f"`runner` is {exe}" if exe.exists() else f"`runner` is `{sys.executable} -m runner`"


# ---- Markdown ----------------------------------------------------------------------------------
def render_markdown(b: dict) -> str:
    out: list[str] = []
    if b.get("run") is None:
        out += ["# Runner briefing", "", f"No run yet: {b['why']}.", "", "## Next"]
        out += [f"- `{c.split('    #')[0]}`" + (f" — {c.split('    # ', 1)[1]}" if "    # " in c else "")
                for c in b["next_commands"]]
        return _bounded("\n".join(out) + "\n")
    out.append(f"# Runner briefing: run `{b['run']}` is **{b['state']}**"
               + (f" ({b['detail']})" if b["detail"] else ""))
    out.append("")
    out.append(f"- home: `{b['home']}`; pipeline `{b['pipeline']}`; {b['events_total']} events logged")
    if b["goal"]:
        out.append(f"- goal: {b['goal']}")
    out.append(f"- pipeline: {' → '.join(b['plan'])}")
    if b.get("cli"):
        out.append(f"- {b['cli']}")
    fs = b.get("state_fs")
    if fs and fs["network"]:
        out.append(f"- state DB is on a network file system ({fs['fstype']} at {fs['mount']}): journal mode "
                   f"{fs['journal_mode']}; see runbooks/pod-setup.md")
    if b["other_runs"]:
        out.append(f"- other runs in this home: {', '.join(b['other_runs'])}")
    if b["finished"]:
        out += ["", "## Finished"]
        out += [f"- {f['step']}: {f['summary'] or 'done'}" for f in b["finished"]]
    if b["running"]:
        r = b["running"]
        out += ["", "## Running now",
                f"- owner host {r['host']} pid {r['pid']}, since {r['since']}, heartbeat {r['heartbeat']}"
                + (f"; step {r['step']}" if r["step"] else "")]
        if r["batches"]:
            p = r["batches"]
            out.append(f"- batch ledger: {p['batches']} batches ({p['items']} items) committed, last {p['last_batch']}")
    if b["interrupted"]:
        i = b["interrupted"]
        out += ["", "## Interrupted",
                f"- step {i['step']} was stopped (no live runner)"
                + (f"; {i['batches']['batches']} batches already committed, resume continues after them"
                   if i["batches"] else "")]
    if b["supervisor"]:
        s = b["supervisor"]
        out.append(f"- supervisor: `runner supervise` pid {s['pid']} on {s['host']} watches this run "
                   "(restarts crashed resumes itself)")
    if b["waiting"] or b["decided_gates"]:
        out += ["", "## Gates"]
        for w in b["waiting"]:
            out.append(f"- **{w['gate']}** ({w['policy']}) WAITS: {w['reason']}")
            if w["check"]:
                out.append(f"  - check: {w['check']}")
            if w["reviewer"]:
                out.append(f"  - reviewer: {w['reviewer']}")
        out += [f"- {d}" for d in b["decided_gates"]]
    if b["failures"]:
        out += ["", "## Last failures"]
        out += [f"- {f['step']} attempt {f['attempt']} {f['status']}: {f['error']}" for f in b["failures"]]
    out += ["", "## Next"]
    for c in b["next_commands"] or ["nothing: the run is done"]:
        cmd_, _, why = c.partition("    # ")
        out.append(f"- `{cmd_}`" + (f" — {why}" if why else "") if cmd_.startswith("runner") else f"- {c}")
    if b["next_action"]["why"]:
        out.append(f"- why: {b['next_action']['why']}")
    out += ["", "## Do not"] + [f"- {d}" for d in b["do_not"]]
    if b["recent_events"]:
        out += ["", f"## Recent events (last {len(b['recent_events'])} of {b['events_total']})"]
        out += [f"- {e['at']} {e['kind']}" + (f" [{e['where']}]" if e["where"] else "") + f": {e['message']}"
                for e in b["recent_events"]]
    return _bounded("\n".join(out) + "\n")


def _bounded(text: str) -> str:
    if len(text) <= MAX_CHARS:
        return text
    return text[: MAX_CHARS - 60].rsplit("\n", 1)[0] + "\n… (cut; `runner status` shows the rest)\n"


def briefing_text(home: Path, db_url: Optional[str] = None, run_id: Optional[str] = None) -> str:
    return scrub(render_markdown(build_brief(home, db_url, run_id)))


# ---- CLI ---------------------------------------------------------------------------------------
def cmd_brief(args) -> int:  # noqa: ANN001
    b = build_brief(_home(args), args.db_url or os.environ.get("RUNNER_DB_URL"), args.run)
    if args.json:
        print(scrub(json.dumps(b, indent=1, sort_keys=True, default=str)))
    else:
        print(scrub(render_markdown(b)), end="")
    return 0


def register(sub, add) -> None:  # noqa: ANN001
    sp = add("brief", cmd_brief, "A short briefing for an agent that remembers nothing: state, progress, "
             "gates, failures, the next command and what not to do.", "runner brief   (or: runner brief --json)")
    sp.add_argument("--json", action="store_true", help="the briefing as data")
