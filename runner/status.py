"""The run's state as data, for `runner status`, `runner wait` and `runner brief`.

Built from the database alone: it never imports the pipeline (which may import torch), so it
is instant. ``state`` is one of: created, running, interrupted, waiting, failed,
dead_lettered, rejected, ready (a gate was approved or a
retry/rerun requested: resume continues), done. ``next_action`` holds the exact command to run next and why.
"""
from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, Optional

from runner.costs import cost_ledger
from runner.errors import EXIT_DONE, EXIT_FAILED, EXIT_GATE, EXIT_INTERRUPTED, EXIT_REJECTED, EXIT_STILL_RUNNING
from runner.lease import owner_alive
from runner.lineage import lineage_line

if TYPE_CHECKING:  # run_state takes a Store or a state.reader.Reader (same read methods)
    from state.store import Store


def loads(text: Optional[str]) -> Any:
    return json.loads(text) if text else None

STATE_EXIT = {"done": EXIT_DONE, "failed": EXIT_FAILED, "dead_lettered": EXIT_FAILED, "waiting": EXIT_GATE,
              "rejected": EXIT_REJECTED, "running": EXIT_STILL_RUNNING, "interrupted": EXIT_INTERRUPTED,
              "created": EXIT_INTERRUPTED, "ready": EXIT_INTERRUPTED}


def _last_line(text: Optional[str]) -> str:
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def _lineage(config_json: Optional[str]) -> Optional[dict]:
    """The chain this run was made from (``runner init --from-run``), or None."""
    cfg = json.loads(config_json or "{}")
    fr = cfg.get("from_run")
    if not isinstance(fr, dict):
        return None
    links = [fr] + list(reversed(fr.get("chain") or []))
    return {"line": lineage_line(cfg),
            "runs": [{"run_id": v.get("run_id"), "stage": (v.get("stage") or {}).get("name") if isinstance(v.get("stage"), dict) else None,
                      "outputs": {k: o.get("hash") for k, o in (v.get("outputs") or {}).items()}} for v in links]}


def run_state(store: Store, run_id: str) -> dict[str, Any]:
    run = store.get_run(run_id)
    t = time.time()
    lease = store.get_lease(run_id)
    live = owner_alive(lease, t)
    state = run.status
    if live:
        state = "running"
    elif state == "running":
        state = "interrupted"
    plan = json.loads(run.plan_json or "[]")
    attempts = store.attempts(run_id)
    progress = store.batch_progress(run_id)
    steps = []
    for node in plan:
        if node["kind"] != "step":
            continue
        mine = [a for a in attempts if a.step == node["name"]]
        current = [a for a in mine if a.invalidated_at is None]
        if node.get("key"):  # the key the last resume resolved: its attempts, not the newest
            current = [a for a in current if a.cache_key == node["key"]]
        last = current[-1] if current else None
        entry = {"name": node["name"], "status": "pending", "attempts": len(mine), "key": None,
                 "output_dir": None, "summary": None, "error": None, "batches_done": 0,
                 "started_at": None, "ended_at": None}
        if last is not None:
            status = last.status
            if status == "running" and not live:
                status = "interrupted"
            entry.update(status=status, key=last.cache_key[:12], output_dir=last.output_dir,
                         summary=loads(last.summary_json), error=_last_line(last.error) or None,
                         batches_done=progress.get((last.step, last.cache_key), 0),
                         started_at=last.started_at, ended_at=last.ended_at)
        steps.append(entry)
    gates = []
    reviews = store.reviews(run_id)
    for node in plan:
        if node["kind"] != "gate":
            continue
        rows = store.gates(run_id, node["name"])
        g = rows[-1] if rows else None
        rv = [r for r in reviews if r.gate == node["name"]]
        gates.append({"name": node["name"], "policy": g.policy if g else node.get("policy"),
                      "status": g.status if g else "not reached", "wait_reason": g.wait_reason if g else "",
                      "decided_by": g.decided_by if g else None, "note": g.note if g else None,
                      "check": loads(g.check_json) if g else None,
                      "review": ({"decision": rv[-1].decision, "ok": rv[-1].ok, "error": rv[-1].error,
                                  "model": rv[-1].model, "summary": (loads(rv[-1].verdict_json) or {}).get("summary")}
                                 if rv else None)})
    errors = [{"step": a.step, "attempt": a.number, "status": a.status, "error": _last_line(a.error)}
              for a in attempts if a.status in ("failed", "interrupted", "dead_lettered")][-10:]
    out = {
        "run": {"id": run.id, "pipeline": run.pipeline, "config_path": run.config_path, "goal": run.goal,
                "seed": run.seed, "created_at": run.created_at, "updated_at": run.updated_at},
        "state": state, "detail": run.status_detail,
        "lease": None if lease is None else {"host": lease.host, "pid": lease.pid, "generation": lease.generation,
                                              "live": live, "released": lease.released,
                                              "heartbeat_age_s": round(t - lease.heartbeat_at, 1),
                                              "expires_in_s": round(lease.expires_at - t, 1)},
        "steps": steps, "gates": gates, "errors": errors,
        "costs": store.cost_totals(run_id), "events": store.event_count(run_id),
        "ledger": cost_ledger(store, run_id, loads(run.config_json) or {}),
    }
    _add_progress(store, run_id, steps)
    out["lineage"] = _lineage(run.config_json)
    out["next_action"] = next_action(out)
    out["exit_code"] = STATE_EXIT.get(state, EXIT_FAILED)
    return out


def _add_progress(store: Store, run_id: str, steps: list[dict]) -> None:
    """The running step's progress from its batch ledger: the newest ``ledger_started`` event of
    its attempt gives the batch count; committed batch rows give what is done."""
    running = [s for s in steps if s["status"] == "running"]
    if not running:
        return
    ev = store.events(run_id, limit=1, kinds=["ledger_started"])
    if not ev or ev[-1].step != running[0]["name"]:
        return
    d = loads(ev[-1].data_json) or {}
    a = [x for x in store.attempts(run_id, running[0]["name"]) if x.id == ev[-1].attempt_id]
    if not a:
        return
    done = len(store.batches(run_id, a[0].step, a[0].cache_key, d.get("ledger", "main")))
    n = int(d.get("n_batches") or 0)
    running[0]["progress"] = {"ledger": d.get("ledger"), "batches_done": done, "n_batches": n,
                              "items": d.get("items"), "fraction": round(done / n, 4) if n else None,
                              "since": ev[-1].ts}


def next_action(st: dict) -> dict[str, str]:
    """The one command to run next, and why."""
    state, detail = st["state"], st.get("detail") or ""
    if state == "done":
        return {"command": "", "why": "the run is done; nothing to do"}
    if state == "running":
        who = st["lease"] or {}
        return {"command": "runner wait --timeout 540",
                "why": f"a live runner (host {who.get('host')} pid {who.get('pid')}) is working on "
                       f"{detail or 'the run'}; wait for it, do not start another"}
    if state in ("created", "interrupted", "ready"):
        return {"command": "runner resume --detach",
                "why": "no runner is alive; resume continues exactly where the run stopped"}
    if state == "waiting":
        g = next((g for g in st["gates"] if g["name"] == detail), None)
        reason = g["wait_reason"] if g else ""
        return {"command": f"runner show {detail}",
                "why": f"gate {detail} waits for a decision ({reason}); read the evidence, then "
                       f"`runner approve {detail} --note \"...\"` or `runner reject {detail} --reason \"...\"`"}
    if state == "failed":
        err = next((e["error"] for e in reversed(st["errors"]) if e["step"] == detail), "")
        return {"command": "runner resume --detach",
                "why": f"step {detail} failed: {err}. Fix the cause (config or environment), then resume "
                       "retries it (attempts count toward max_attempts)"}
    if state == "dead_lettered":
        return {"command": f"runner retry {detail}",
                "why": f"step {detail} kept failing and was dead-lettered; read `runner log --errors`, fix the "
                       "cause, then retry it and resume"}
    if state == "rejected":
        return {"command": "runner log --kind gate_rejected",
                "why": f"gate {detail} was rejected; change the config as the note says, then "
                       "`runner rerun STEP` for the step that feeds the gate and `runner resume --detach`"}
    return {"command": "runner status", "why": f"unexpected state {state}"}
