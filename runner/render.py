"""Human-readable output for status, the event log and gates (rich tables)."""
from __future__ import annotations

import json
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from runner.errors import EXIT_DONE, RunnerError
from state.store import loads

console = Console(highlight=False, soft_wrap=True)
ICON = {"succeeded": "✓", "running": "▶", "failed": "✗", "interrupted": "⚡", "dead_lettered": "☠",
        "pending": "·", "approved": "✓", "rejected": "✗", "not reached": "·"}


def _ago(ts: float | None) -> str:
    if not ts:
        return ""
    d = time.time() - ts
    return f"{d:.0f}s ago" if d < 120 else f"{d / 60:.0f}m ago" if d < 7200 else f"{d / 3600:.1f}h ago"


def _short(obj: Any, n: int = 70) -> str:
    if obj is None:
        return ""
    text = obj if isinstance(obj, str) else json.dumps(obj, sort_keys=True, default=str)
    return text if len(text) <= n else text[: n - 1] + "…"


def _summary_text(summary: Any, n: int = 90) -> str:
    """A step's summary in one line: its ``headline`` if it has one, else its scalar fields."""
    if isinstance(summary, dict):
        if summary.get("headline"):
            return _short(summary["headline"], n)
        scalars = [f"{k}={v}" for k, v in summary.items() if isinstance(v, (int, float, str, bool)) and v is not None]
        if scalars:
            return _short(", ".join(scalars), n)
    return _short(summary, n)


def print_status(st: dict) -> None:
    run = st["run"]
    console.print(f"[bold]run {run['id']}[/bold]  pipeline {run['pipeline']}  state [bold]{st['state']}[/bold]"
                  + (f" ({st['detail']})" if st["detail"] else ""))
    if run.get("goal"):
        console.print(f"goal: {run['goal']}")
    if st.get("lineage"):
        console.print(f"lineage: {st['lineage']['line']}")
    lease = st.get("lease")
    if lease:
        console.print(f"lease: host {lease['host']} pid {lease['pid']} gen {lease['generation']} "
                      f"{'LIVE' if lease['live'] else 'not live'}; heartbeat {lease['heartbeat_age_s']}s ago")
    t = Table(show_header=True, header_style="bold")
    for col in ("", "step", "status", "attempts", "batches", "summary / error"):
        t.add_column(col)
    for s in st["steps"]:
        pr = s.get("progress")
        batches = (f"{pr['batches_done']}/{pr['n_batches']}" if pr else str(s["batches_done"] or ""))
        t.add_row(ICON.get(s["status"], "?"), s["name"], s["status"], str(s["attempts"]), batches, _short(s["error"]) if s["error"] else _summary_text(s["summary"]))
    console.print(t)
    if st["gates"]:
        g = Table(show_header=True, header_style="bold")
        for col in ("", "gate", "policy", "status", "reason / decision", "reviewer"):
            g.add_column(col)
        for x in st["gates"]:
            rv = x.get("review")
            rv_txt = "" if not rv else (rv["decision"] or f"failed: {_short(rv['error'], 40)}")
            why = x["wait_reason"] if x["status"] == "pending" else (x["decided_by"] or "")
            g.add_row(ICON.get(x["status"], "?"), x["name"], x["policy"] or "", x["status"], _short(why, 60), rv_txt)
        console.print(g)
    costs = st.get("costs") or {}
    if costs:
        total = sum(v.get("wall_s", 0) for v in costs.values())
        extra = {k: sum(v.get(k, 0) for v in costs.values()) for k in ("gpu_s", "llm_tokens_in", "llm_tokens_out", "usd")}
        console.print("cost: wall %.1fs" % total + "".join(f", {k} {v:g}" for k, v in extra.items() if v))
    led = st.get("ledger")
    if led:
        spent = f"spent ${led['spent_usd']:.2f}"
        spent += (f" of ${led['budget_usd']:.2f} budget (${led['remaining_usd']:.2f} left)"
                  if led["budget_usd"] is not None else " (no budget set)")
        console.print(f"{spent}; GPU {led['gpu_hours']:.3f} h at ${led['prices']['gpu_usd_per_hour']:g}/h; "
                      f"reviews {led['reviews']['n']} ({led['reviews']['tokens_in']}+{led['reviews']['tokens_out']} "
                      f"tokens, ${led['reviews']['usd']:.4f})")
    na = st["next_action"]
    if na["command"]:
        console.print(f"[bold]next:[/bold] {na['command']}    # {na['why']}")
    else:
        console.print(f"next: nothing — {na['why']}")


def print_events(events: list, as_json: bool = False) -> None:
    if as_json:
        print(json.dumps([{"id": e.id, "ts": e.ts, "kind": e.kind, "step": e.step, "gate": e.gate,
                           "message": e.message, "data": loads(e.data_json)} for e in events], indent=2))
        return
    for e in events:
        where = e.step or (f"gate {e.gate}" if e.gate else "")
        stamp = time.strftime("%H:%M:%S", time.localtime(e.ts))
        console.print(f"{e.id:>6} {stamp} {e.kind:<22} {where:<18} {e.message}", markup=False)


def print_gate(store, run_id: str, name: str, as_json: bool) -> int:  # noqa: ANN001
    run = store.get_run(run_id)
    names = [n["name"] for n in json.loads(run.plan_json) if n["kind"] == "gate"]
    if name not in names:
        raise RunnerError(f"unknown gate {name!r} in run {run_id} (gates: {', '.join(names) or 'none'})")
    node = next(n for n in json.loads(run.plan_json) if n["name"] == name)
    rows = store.gates(run_id, name)
    data = {"gate": name, "policy": node.get("policy"), "criteria": node.get("criteria"), "instances": []}
    for g in rows:
        data["instances"].append({
            "gate_key": g.gate_key[:12], "status": g.status, "policy": g.policy, "wait_reason": g.wait_reason,
            "requested_at": g.requested_at, "decided_by": g.decided_by, "note": g.note,
            "check": loads(g.check_json),
            "decisions": [{"source": d.source, "decision": d.decision, "who": d.who, "note": d.note, "at": d.created_at}
                          for d in store.gate_decisions(g.id)],
            "reviews": [{"model": r.model, "backend": r.backend, "ok": r.ok, "decision": r.decision,
                         "verdict": loads(r.verdict_json), "error": r.error, "tokens_in": r.tokens_in,
                         "tokens_out": r.tokens_out, "cost_usd": r.cost_usd, "request": r.request_path,
                         "response": r.response_path}
                        for r in store.reviews(run_id, name) if r.gate_key == g.gate_key]})
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
        return EXIT_DONE
    console.print(f"[bold]gate {name}[/bold]  policy {data['policy']}")
    for c in data["criteria"] or []:
        console.print(f"  criterion: {c}")
    if not rows:
        console.print("not reached yet")
        return EXIT_DONE
    inst = data["instances"][-1]
    console.print(f"status: [bold]{inst['status']}[/bold]  {inst['wait_reason']}")
    if inst["check"]:
        console.print(f"check passed: {inst['check']['passed']}")
        for r in inst["check"].get("reasons") or []:
            console.print(f"  - {r}")
        console.print_json(json.dumps(inst["check"].get("summary") or {}, default=str))
    for r in inst["reviews"]:
        v = r["verdict"] or {}
        console.print(f"reviewer {r['model']} ({r['backend']}): {r['decision'] or 'FAILED: ' + str(r['error'])}")
        if v.get("summary"):
            console.print(f"  {v['summary']}")
        for x in v.get("reasons") or []:
            console.print(f"  reason: {x}")
        for x in v.get("requested_changes") or []:
            console.print(f"  change: {x}")
        console.print(f"  audit: {r['request']} {r['response']}")
    for d in inst["decisions"]:
        console.print(f"decision: {d['source']} {d['decision']} by {d['who']}" + (f": {d['note']}" if d["note"] else ""))
    if inst["status"] == "pending":
        console.print(f"next: runner approve {name} --note \"...\"   or   runner reject {name} --reason \"...\"")
    return EXIT_DONE
