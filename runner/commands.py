"""What the CLI commands do, as plain functions (the CLI parses arguments and calls these)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from runner.approval import human_command, verify
from runner.config import effective_params, load_run_inputs, load_yaml
from runner.engine import Engine
from runner.errors import EXIT_DONE, EXIT_LOCKED, ConfigError, RunnerError
from runner.gate_review import make_review_hook, review_now
from runner.lease import owner_alive
from runner.lineage import parent_view, resolve_from_key
from runner.status import run_state
from state.db import StateError
from state.store import Store


def _pipeline_path(pipeline: Optional[str], config: Optional[str]) -> str:
    if pipeline:
        return pipeline
    if config:
        p = load_yaml(Path(config)).get("pipeline")
        if isinstance(p, str):
            return p
    raise ConfigError("no pipeline given: pass --pipeline module:attr or put 'pipeline: module:attr' in the config")


def stored_parent(store: Store, run_id: str) -> Optional[dict]:
    """The parent's view, recomputed now, for a run created with --from-run (else None)."""
    fr = json.loads(store.get_run(run_id).config_json or "{}").get("from_run")
    return parent_view(store, fr["run_id"]) if isinstance(fr, dict) and fr.get("run_id") else None


def validate_config(pipeline: Optional[str], config: Optional[str]) -> str:
    pipe, cfg = load_run_inputs(_pipeline_path(pipeline, config), config)
    lines = [f"OK: pipeline {pipe.name!r}: {len(pipe.steps)} steps, {len(pipe.gates)} gates; config valid"]
    for name in pipe.steps:
        text = json.dumps(effective_params(pipe, cfg, name), sort_keys=True)
        lines.append(f"  step {name}: {text if len(text) <= 160 else text[:157] + '...'}")
    for name, g in pipe.gates.items():
        lines.append(f"  gate {name}: policy {(cfg['gates'].get(name) or {}).get('policy', g.policy)}")
    return "\n".join(lines)


def init_run(store: Store, pipeline: Optional[str], config: Optional[str], run_id: Optional[str],
             from_run: Optional[str] = None) -> str:
    path = _pipeline_path(pipeline, config)
    parent = None
    from_run = from_run or resolve_from_key(store, config)
    if from_run:
        parent = parent_view(store, from_run)
    pipe, cfg = load_run_inputs(path, config, parent)
    if run_id is None:
        run_id = f"{pipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if run_id in store.run_ids():
        raise RunnerError(f"run {run_id!r} already exists; continue it with `runner resume --run {run_id}`")
    cfg_path = str(Path(config).resolve()) if config else None
    store.create_run(run_id, path, cfg_path, cfg, pipe.plan(), int(cfg.get("seed", 0)),
                     goal=str(cfg.get("goal") or pipe.goal))
    if cfg.get("demo") is True:
        store.event(run_id, "demo_profile", "this run's config declares itself a demo (demo: true): demo-only "
                    "switches are allowed; its results demonstrate the machinery, they are not an experiment")
    return run_id


def find_or_init(store: Store, pipeline: Optional[str], config: Optional[str],
                 run_id: Optional[str], from_run: Optional[str] = None) -> tuple[str, bool]:
    if run_id and run_id in store.run_ids():
        return run_id, False
    if not run_id and config:
        want = str(Path(config).resolve())
        for rid in reversed(store.run_ids()):
            if store.get_run(rid).config_path == want:
                return rid, False
    return init_run(store, pipeline, config, run_id, from_run), True


def resume_run(store: Store, run_id: str, detach: bool, home: Path, db_url: Optional[str]) -> int:
    lease = store.get_lease(run_id)
    if owner_alive(lease, time.time()):
        print(f"run {run_id} is already being run by host {lease.host} pid {lease.pid}; not starting another")
        print("next: runner wait --timeout 540")
        return EXIT_LOCKED
    if detach:
        return _detach(store, run_id, home, db_url)
    run = store.get_run(run_id)
    pipe, cfg = load_run_inputs(run.pipeline, run.config_path, stored_parent(store, run_id))
    engine = Engine(store, run_id, pipe, cfg, review_hook=make_review_hook(store, run_id, cfg))
    outcome = engine.resume()
    print(outcome.message)
    if outcome.next_command:
        print(f"next: {outcome.next_command}")
    return outcome.code


def _detach(store: Store, run_id: str, home: Path, db_url: Optional[str]) -> int:
    logs = store.home / ".runner" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{run_id}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    cmd = [sys.executable, "-m", "runner", "--home", str(store.home)]
    if db_url:
        cmd += ["--db-url", db_url]
    cmd += ["resume", "--run", run_id]
    with open(log, "ab") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    store.event(run_id, "detached", f"pid {proc.pid}, log {log}")
    # Give it a moment to take the lease (or fail fast on a config error) before returning.
    for _ in range(30):
        if proc.poll() is not None:
            break
        lease = store.get_lease(run_id)
        if lease is not None and lease.pid == proc.pid and not lease.released:
            break
        time.sleep(0.1)
    code = proc.poll()
    if code is not None:
        print(f"the background runner exited at once with code {code}; its log ({log}):")
        print(log.read_text(errors="replace")[-3000:])
        return code
    print(f"runner started in the background: pid {proc.pid}, log {log}")
    print("next: runner wait --timeout 540    # returns when the run stops running; safe to repeat")
    return EXIT_DONE


def wait_run(store: Store, run_id: str, timeout: float, as_json: bool) -> int:
    deadline = time.time() + timeout
    st = run_state(store, run_id)
    start_events = st["events"]
    while st["state"] == "running" and time.time() < deadline:
        time.sleep(min(1.0, max(0.05, deadline - time.time())))
        st = run_state(store, run_id)
    if as_json:
        print(json.dumps(st, indent=2, sort_keys=True, default=str))
    else:
        na = st["next_action"]
        print(f"run {run_id}: {st['state']}" + (f" ({st['detail']})" if st["detail"] else "")
              + f"; {st['events'] - start_events} new event(s)")
        if st["state"] == "running":
            print("still running after the timeout")
        if na["command"]:
            print(f"next: {na['command']}    # {na['why']}")
    return st["exit_code"]


def _pending_gate(store: Store, run_id: str, gate: str):
    run = store.get_run(run_id)
    names = [n["name"] for n in json.loads(run.plan_json) if n["kind"] == "gate"]
    if gate not in names:
        raise RunnerError(f"unknown gate {gate!r} in run {run_id} (gates: {', '.join(names) or 'none'})")
    rows = store.gates(run_id, gate)
    if not rows:
        raise RunnerError(f"gate {gate!r} has not been reached yet in run {run_id}; nothing to decide. "
                          "Resume the run until it stops there (`runner status` shows where it is).")
    return run, rows[-1]


def _human_cmd(store: Store, run_id: str, gate: str, action: str) -> str:
    return human_command(f" --home {store.home}", run_id, gate, action)


def decide(store: Store, run_id: str, gate: str, decision: str, note: Optional[str], who: Optional[str]) -> int:
    """`runner approve` / `runner reject`: check and write in one transaction (exactly one
    decision per gate instance under any race); gates that need a person need a person
    (runner/approval.py)."""
    _run, g = _pending_gate(store, run_id, gate)
    want = "approved" if decision == "approve" else "rejected"
    if g.status == want:
        print(f"gate {gate} is already {want} (by {g.decided_by}); nothing to do")
        return EXIT_DONE
    if g.status != "pending":
        raise RunnerError(f"gate {gate!r} was already {g.status} by {g.decided_by}"
                          + (f" ({g.note})" if g.note else "") + "; a decided gate is final for this evidence. "
                          "To revisit it, change the config and `runner rerun` the step that feeds it.")
    prov = verify(gate, run_id, g.policy, g.wait_reason, who, decision, _human_cmd(store, run_id, gate, "approve"))
    try:
        g, applied = store.decide_pending_gate(run_id, gate, g.id, g.policy, decision, prov.who, note,
                                               prov.source, data=prov.as_dict())
    except StateError as e:
        raise RunnerError(str(e)) from e
    if not applied:
        print(f"gate {gate} is already {want} (by {g.decided_by}); nothing to do")
        return EXIT_DONE
    if decision == "approve":
        print(f"gate {gate} approved by {prov.who} ({prov.how})")
        print("next: runner resume --detach    # continues past the gate")
    else:
        print(f"gate {gate} rejected by {prov.who} ({prov.how}): {note}")
        print("next: edit the config as needed, then `runner rerun STEP` for the step that feeds the gate")
    return EXIT_DONE


def regate(store: Store, run_id: str, gate: str, who: Optional[str]) -> int:
    """`runner regate GATE`: adopt the config's current policy for a waiting gate whose policy
    was frozen when it was requested. A person's act (runner/approval.py), recorded as an event."""
    run, g = _pending_gate(store, run_id, gate)
    if g.status != "pending":
        raise RunnerError(f"gate {gate!r} is {g.status}; only a waiting gate's policy can be changed")
    pipe, cfg = load_run_inputs(run.pipeline, run.config_path)
    new = ((cfg.get("gates") or {}).get(gate) or {}).get("policy", pipe.gates[gate].policy)
    if new == g.policy:
        print(f"gate {gate}: the config's policy is {new!r}, the same as the frozen one; nothing to do")
        return EXIT_DONE
    prov = verify(gate, run_id, g.policy, g.wait_reason, who, "regate", _human_cmd(store, run_id, gate, "regate"))
    try:
        store.regate(run_id, gate, g.id, g.policy, new, prov.who, data={**prov.as_dict(), "source": prov.source})
    except StateError as e:
        raise RunnerError(str(e)) from e
    print(f"gate {gate}: policy {g.policy!r} -> {new!r} (by {prov.who}, {prov.how})")
    print("next: runner resume --detach    # the gate is decided under its new policy")
    return EXIT_DONE


def _plan_descendants(plan: list[dict], step: str) -> list[str]:
    hit = {step}
    for n in plan:
        if n["kind"] == "step" and any(i in hit for i in n.get("inputs", [])):
            hit.add(n["name"])
    return [n["name"] for n in plan if n["kind"] == "step" and n["name"] in hit]


def _check_step(run, step: str) -> list[dict]:
    plan = json.loads(run.plan_json)
    names = [n["name"] for n in plan if n["kind"] == "step"]
    if step not in names:
        raise RunnerError(f"unknown step {step!r} in run {run.id} (steps: {', '.join(names)})")
    return plan


def _refuse_if_live(store: Store, run_id: str) -> None:
    lease = store.get_lease(run_id)
    if owner_alive(lease, time.time()):
        raise RunnerError(f"a live runner (host {lease.host} pid {lease.pid}) is working on {run_id}; "
                          "wait for it to stop (`runner wait`) before changing steps")


def retry_step(store: Store, run_id: str, step: str) -> int:
    run = store.get_run(run_id)
    _check_step(run, step)
    _refuse_if_live(store, run_id)
    n = store.invalidate(run_id, [step], ("failed", "interrupted", "dead_lettered"), f"retry {step} requested")
    store.update_run(None, run_id, status="ready", status_detail=f"retry {step}")
    print(f"cleared {n} failed/interrupted attempt(s) of {step}; it will run again on resume")
    print("next: runner resume --detach")
    return EXIT_DONE


def rerun_step(store: Store, run_id: str, step: str) -> int:
    run = store.get_run(run_id)
    plan = _check_step(run, step)
    _refuse_if_live(store, run_id)
    steps = _plan_descendants(plan, step)
    n = store.invalidate(run_id, steps, ("succeeded", "failed", "interrupted", "dead_lettered"),
                         f"rerun {step} requested")
    store.update_run(None, run_id, status="ready", status_detail=f"rerun {step}")
    print(f"invalidated {n} attempt(s) of {', '.join(steps)}; they will run again on resume")
    print("next: runner resume --detach")
    return EXIT_DONE


def review_gate(store: Store, run_id: str, gate: str) -> int:
    return review_now(store, run_id, gate)

