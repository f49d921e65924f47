"""The LLM reviewer at gates: building the request, memoizing the verdict, recording it.

A review is memoized by ``memo_key`` (inputs hash + prompt hash + backend + model + effort):
a resume finds the recorded verdict and never calls the reviewer again, so it can neither
re-bill nor flip a decision. ``runner review GATE`` asks again on purpose (a new memo key
salted with the ask number). Failures (no key, network, garbage) are recorded too and fail
closed: the gate waits for a human, with the reason in `status`. A failure is *not* memoized
(it decided nothing): its row is stored under a key of its own (``failed:<n>:<memo>``), so the
next plain resume asks the reviewer again.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

from runner.config import load_run_inputs
from runner.context import GateContext
from runner.gate_policy import reviewer_passes
from runner.review import ReviewerConfig, ReviewRequest, memo_key, review
from runner.errors import EXIT_DONE, EXIT_GATE, RunnerError
from state.files import sha256_text
from state.schema import Review
from state.store import Fence, Store, loads


def reviewer_config(cfg: dict, gate: str):  # noqa: ANN201
    merged = dict(cfg.get("reviewer") or {})
    merged.update(((cfg.get("gates") or {}).get(gate) or {}).get("reviewer") or {})
    return ReviewerConfig.from_mapping(merged)


def experiment_text(cfg: dict, pipeline: Any) -> str:  # noqa: ANN401
    """What the run is for, as its config (``goal:``) or its pipeline (`Pipeline.goal`) says."""
    return str(cfg.get("goal") or getattr(pipeline, "goal", "") or "")


def build_request(run_id: str, spec: Any, gctx: GateContext, cfg: dict, check: Optional[dict],  # noqa: ANN401
                  experiment: str = ""):
    gcfg = (cfg.get("gates") or {}).get(spec.name) or {}
    criteria = gcfg.get("criteria") or list(spec.criteria) or ["Is it sound to proceed past this gate?"]
    evidence: dict = {"automatic_check": check, "step_summaries": gctx.summaries}
    samples: list = []
    if spec.evidence is not None:
        extra = spec.evidence(gctx) or {}
        samples = list(extra.pop("samples", []) or [])
        evidence.update(extra)
    return ReviewRequest(gate=spec.name, run_id=run_id, criteria=criteria, evidence=evidence, samples=samples,
                         experiment=experiment)


def _record(store: Store, run_id: str, gate: str, gate_key: str, outcome: Any, memo: str,
            fence: Optional[Fence]) -> Review:
    home = store.home
    rel = lambda p: str(Path(p).resolve().relative_to(home)) if p else None  # noqa: E731
    v = outcome.verdict
    row = Review(run_id=run_id, gate=gate, gate_key=gate_key, memo_key=memo, backend=outcome.backend,
                 model=outcome.model, prompt_hash=outcome.prompt_hash, input_hash=outcome.input_hash,
                 ok=bool(outcome.ok), decision=v.decision if (outcome.ok and v) else None,
                 verdict_json=json.dumps(outcome.to_dict().get("verdict"), sort_keys=True) if v else None,
                 error=outcome.error, tokens_in=int(outcome.tokens_in or 0), tokens_out=int(outcome.tokens_out or 0),
                 cost_usd=outcome.cost_usd, request_path=rel(outcome.request_path),
                 response_path=rel(outcome.response_path), created_at=time.time())
    return store.add_review(row, fence=fence)


def ask(store: Store, run_id: str, spec: Any, gate_key: str, gctx: GateContext, cfg: dict,
        check: Optional[dict], fence: Optional[Fence], salt: str = "", experiment: str = "") -> Review:
    """Return the memoized review for these inputs, or ask the reviewer once and record it."""
    rcfg = reviewer_config(cfg, spec.name)
    request = build_request(run_id, spec, gctx, cfg, check, experiment)
    memo = memo_key(request, rcfg)
    if salt:
        memo = sha256_text(memo + salt)
    old = store.review_by_memo(run_id, memo)
    if old is not None:  # only verdicts hold the memo key (see the module docstring)
        return old
    audit = store.home / "artifacts" / run_id / "reviews"
    audit.mkdir(parents=True, exist_ok=True)
    outcome = review(request, rcfg, audit, reuse_audit=not salt)
    if not outcome.ok:  # recorded for the audit, but never served again as the memo
        memo = f"failed:{len(store.reviews(run_id))}:{memo}"
    return _record(store, run_id, spec.name, gate_key, outcome, memo, fence)


def make_review_hook(store: Store, run_id: str, cfg: dict):  # noqa: ANN201
    def hook(engine, spec, gate_row, check, gctx, policy):  # noqa: ANN001
        try:
            r = ask(store, run_id, spec, gate_row.gate_key, gctx, cfg, check, engine.fence,
                    experiment=experiment_text(cfg, engine.pipeline))
        except (ValueError, ImportError) as e:  # bad reviewer config or missing package: fail closed
            return None, f"reviewer not usable: {e}"
        if not r.ok:
            return None, r.error or "the reviewer gave no verdict"
        summary = (loads(r.verdict_json) or {}).get("summary") or ""
        return r.decision, summary
    return hook


def review_now(store: Store, run_id: str, gate: str) -> int:
    """`runner review GATE`: ask again explicitly for a gate that waits; apply its policy."""
    run = store.get_run(run_id)
    pipe, cfg = load_run_inputs(run.pipeline, run.config_path)
    if gate not in pipe.gates:
        raise RunnerError(f"unknown gate {gate!r} (gates: {', '.join(pipe.gates) or 'none'})")
    rows = store.gates(run_id, gate)
    if not rows or rows[-1].status != "pending":
        state = rows[-1].status if rows else "not reached"
        raise RunnerError(f"gate {gate!r} is {state}; only a waiting gate can be reviewed")
    g = rows[-1]
    outputs, summaries = {}, {}
    for node in pipe.nodes:
        if node.name == gate:
            break
        if node.name in pipe.steps:
            done = [a for a in store.attempts(run_id, node.name)
                    if a.status == "succeeded" and a.invalidated_at is None]
            if done:
                outputs[node.name] = store.home / done[-1].output_dir
                summaries[node.name] = loads(done[-1].summary_json)
    gctx = GateContext(run_id, gate, outputs, summaries, cfg, run.seed)
    n_before = len(store.reviews(run_id, gate))
    r = ask(store, run_id, pipe.gates[gate], g.gate_key, gctx, cfg, loads(g.check_json), None,
            salt=f"reask-{n_before}", experiment=experiment_text(cfg, pipe))
    policy = g.policy  # frozen when the gate was requested (an edit needs `runner regate`)
    check_ok = not g.check_json or (loads(g.check_json) or {}).get("passed", True)
    if not r.ok:
        print(f"review failed closed: {r.error}")
        print(f"next: fix the reviewer (key/server), then `runner review {gate}`; or decide yourself: "
              f"runner approve {gate} --note \"...\"")
        return EXIT_GATE
    print(f"reviewer {r.model}: {r.decision}: {(loads(r.verdict_json) or {}).get('summary', '')}")
    if reviewer_passes(policy, r.decision, check_ok):
        store.decide_pending_gate(run_id, gate, g.id, g.policy, "approve", "reviewer", "GO (re-asked)", "reviewer")
        print("next: runner resume --detach")
        return EXIT_DONE
    print(f"next: runner show {gate}    # then approve or reject it")
    return EXIT_GATE
