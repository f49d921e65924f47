"""The engine: walk a run's pipeline, skip what is done, run what is not, stop at gates.

One `resume` = take the lease, mark attempts orphaned by a dead owner as interrupted, then walk
the nodes in order. For each step: compute its cache key (version + effective params + input
content hashes); if a succeeded attempt with that key exists and its files still hash to what
was recorded, reuse it; otherwise run a new attempt (the attempt row is written before the step
runs). A step whose failed or interrupted attempts reach ``max_attempts`` is dead-lettered. At
a gate, its policy decides: pass, or record a durable request and exit with code 3.
"""
from __future__ import annotations

import os
import shutil
import signal
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from runner.config import effective_params
from runner.context import GateContext, StepContext
from runner.costs import BUDGET_GATE, budget_plan_node, check_budget, record_gpu_time, step_units
from runner.errors import EXIT_DONE, EXIT_FAILED, EXIT_GATE, EXIT_INTERRUPTED, EXIT_LOCKED, EXIT_REJECTED, EXIT_USAGE
from runner.gate_policy import effective_policy, reviewer_passes
from runner.lease import DEFAULT_TTL_S, Heartbeat, dead_reason, this_owner
from runner.pipeline import GateCheck, GateSpec, Pipeline, StepSpec, cache_key
from state.files import canonical_json, fsync_tree, hash_tree, replace_dir, sha256_text, tree_digest
from state.schema import Attempt
from state.store import Fence, LeaseLost, Store, loads

DEFAULT_MAX_ATTEMPTS = 3


class Interrupted(BaseException):
    """SIGTERM/SIGINT reached the runner: stop, mark the attempt interrupted, release the lease."""


@dataclass
class Outcome:
    code: int
    message: str
    next_command: Optional[str] = None


# A review hook decides review-policy gates: (engine, gate spec, gate row, check, gctx, policy)
# -> (decision "GO"/"NO-GO"/"MODIFY" or None when it failed closed, reason text).
ReviewHook = Callable[..., tuple[Optional[str], str]]


def _fault(point: str, step: str) -> None:
    """Fault injection for crash tests: ``RUNNER_FAULT=point:step`` kills the process there."""
    if os.environ.get("RUNNER_FAULT") == f"{point}:{step}":
        os._exit(137)


class Engine:
    def __init__(self, store: Store, run_id: str, pipeline: Pipeline, config: dict,
                 review_hook: ReviewHook | None = None, echo: Callable[[str], None] = print):
        self.store, self.run_id, self.pipeline, self.config = store, run_id, pipeline, config
        self.review_hook, self.echo = review_hook, echo
        self.run = store.get_run(run_id)
        self.fence: Optional[Fence] = None
        self._attempt: Optional[Attempt] = None
        self._signalled = ""  # set by resume()'s signal handler (see there)
        self._plan = self.pipeline.plan()  # stored in the run, with each step's resolved key
        if budget_plan_node(config) is not None:
            self._plan.append(budget_plan_node(config))

    # ---- lifecycle -----------------------------------------------------------------------
    def resume(self) -> Outcome:
        ttl = float(self.config.get("lease_ttl_s") or os.environ.get("RUNNER_LEASE_TTL") or DEFAULT_TTL_S)
        owner = this_owner()
        fence, holder, reason = self.store.acquire_lease(self.run_id, owner, ttl, dead_reason)
        if fence is None:
            return Outcome(EXIT_LOCKED, f"run {self.run_id} is owned by a live runner: host {holder.host} "
                           f"pid {holder.pid} (lease generation {holder.generation}); not starting a second one. "
                           "Watch it with `runner wait` or `runner status`.", "runner wait --timeout 540")
        self.fence = fence
        self.echo(f"runner: took the lease on {self.run_id} ({reason}); generation {fence.generation}")
        hb = Heartbeat(self.store, fence, ttl).start()
        old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

        self._signalled = ""

        def _on_signal(signum, _frame):  # noqa: ANN001
            # Remembered as well as raised: raised inside a finalizer (e.g. vLLM shutting its engine
            # down when a step's model is collected) the exception is printed and swallowed, so the
            # walk checks the flag before every node (seen on the H200 with vLLM, 2026-12-01).
            self._signalled = f"signal {signum}"
            raise Interrupted(self._signalled)

        for s in old:
            signal.signal(s, _on_signal)
        try:
            orphans = self.store.mark_orphans_interrupted(fence)
            for a in orphans:
                self.echo(f"runner: attempt {a.number} of {a.step} was interrupted (its owner died); retrying")
            self.store.update_run(fence, self.run_id, status="running", status_detail="",
                                  config_json=canonical_json(self.config),
                                  plan_json=canonical_json(self._plan))
            outcome = self._walk()
        except LeaseLost as e:
            return Outcome(EXIT_LOCKED, str(e), "runner status")
        except (Interrupted, KeyboardInterrupt) as e:
            if self._attempt is not None:
                try:
                    self.store.fail_attempt(fence, self._attempt, f"interrupted by {e or 'SIGINT'}", "interrupted")
                except LeaseLost:
                    pass
            self._set_status("interrupted", f"stopped by {e or 'SIGINT'}")
            outcome = Outcome(EXIT_INTERRUPTED, f"run {self.run_id} stopped ({e or 'SIGINT'}); nothing is lost",
                              "runner resume --detach")
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            hb.stop()
            if hb.lost:
                self.echo(f"runner: {hb.lost}")
        self.store.release_lease(fence)
        return outcome

    def _set_status(self, status: str, detail: str = "") -> None:
        try:
            self.store.update_run(self.fence, self.run_id, status=status, status_detail=detail)
        except LeaseLost:
            pass

    # ---- the walk ------------------------------------------------------------------------
    def _walk(self) -> Outcome:
        outputs: dict[str, tuple[Path, str]] = {}
        summaries: dict[str, Any] = {}
        for node in self.pipeline.nodes:
            if self._signalled:
                raise Interrupted(self._signalled)  # a stop signal whose exception was swallowed
            if isinstance(node, StepSpec):
                out = self._do_step(node, outputs, summaries)
            else:
                out = self._do_gate(node, outputs, summaries)
            if out is not None:
                return out
        self._set_status("done", "")
        return Outcome(EXIT_DONE, f"run {self.run_id} is done: every step finished")

    def _do_step(self, spec: StepSpec, outputs: dict, summaries: dict) -> Optional[Outcome]:
        params = effective_params(self.pipeline, self.config, spec.name)
        input_hashes = {i: outputs[i][1] for i in spec.inputs}
        key = cache_key(spec, params, input_hashes)
        self._note_key(spec.name, key)
        done = self.store.succeeded_attempt(self.run_id, spec.name, key)
        if done is not None:
            problem = self._verify(done)
            if problem is None:
                # A kill between the success commit and the cleanup leaves scratch behind: drop it now.
                step_dir = self.store.home / "artifacts" / self.run_id / spec.name
                for leftover in (step_dir / f".work-{key[:12]}", step_dir / f".staging-{key[:12]}"):
                    if leftover.exists():
                        shutil.rmtree(leftover, ignore_errors=True)
                outputs[spec.name] = (self.store.home / done.output_dir, done.output_hash)
                summaries[spec.name] = loads(done.summary_json)
                self.echo(f"  = {spec.name}: done earlier (attempt {done.number}, key {key[:12]})")
                return None
            self.echo(f"  ! {spec.name}: {problem}; re-running it")
            self.store.invalidate(self.run_id, [spec.name], ("succeeded",), f"{spec.name}: {problem}", fence=self.fence)
            self.store.event(self.run_id, "artifact_mismatch", problem, fence=self.fence, step=spec.name)
        failures = self.store.counting_failures(self.run_id, spec.name, key)
        limit = spec.max_attempts or int(self.config.get("max_attempts") or DEFAULT_MAX_ATTEMPTS)
        if failures and failures[-1].status == "dead_lettered" or len(failures) >= limit:
            if failures[-1].status != "dead_lettered":
                reason = (f"{spec.name} failed or was interrupted {len(failures)} times (limit {limit}); "
                          f"last error: {(failures[-1].error or '').strip().splitlines()[-1:] or ['?']}")
                self.store.dead_letter(self.fence, self.run_id, spec.name, key, reason)
            self._set_status("dead_lettered", spec.name)
            return Outcome(EXIT_FAILED, f"step {spec.name} is dead-lettered after {len(failures)} failed or "
                           "interrupted attempts; fix the cause, then retry it",
                           f"runner retry {spec.name}")
        stop = self._budget_check(spec, key, params, outputs)
        if stop is not None:
            return stop
        return self._run_attempt(spec, key, params, input_hashes, outputs, summaries)

    def _budget_check(self, spec: StepSpec, key: str, params: dict, outputs: dict) -> Optional[Outcome]:
        """Before a GPU step: stop at the ``budget`` gate if spent + projected > budget (runner/costs.py)."""
        res = check_budget(self, spec, key, params, {i: outputs[i][0] for i in spec.inputs})
        if res is None:
            return None
        verdict, message, _numbers = res
        if verdict == "approved":
            self.echo(f"  = gate {BUDGET_GATE}: {message}")
            return None
        if verdict == "rejected":
            self._set_status("rejected", BUDGET_GATE)
            return Outcome(EXIT_REJECTED, message, "runner status")
        self._set_status("waiting", BUDGET_GATE)
        self.echo(f"  ? gate {BUDGET_GATE}: waiting ({message})")
        return Outcome(EXIT_GATE, f"waiting at gate {BUDGET_GATE} (human): {message}",
                       f"runner show {BUDGET_GATE}   # then: runner approve {BUDGET_GATE} --note \"...\"  "
                       "or raise 'budget' in the config and `runner resume`")

    def _record_gpu(self, spec: StepSpec, attempt: Attempt, ctx: StepContext) -> None:
        record_gpu_time(self.store, self.fence, attempt, spec, step_units(spec, ctx.inputs, ctx.params))

    def _note_key(self, step: str, key: str) -> None:
        """Record the key the current config resolves ``step`` to, so `status` shows that
        attempt (after a param edit and revert, the newest attempt is not the current one)."""
        node = next(n for n in self._plan if n["name"] == step)
        if node.get("key") != key:
            node["key"] = key
            self.store.update_run(self.fence, self.run_id, plan_json=canonical_json(self._plan))

    def _verify(self, attempt: Attempt) -> Optional[str]:
        """None if the step's recorded files are intact, else what is wrong."""
        root = self.store.home / (attempt.output_dir or "")
        if not root.is_dir():
            return f"output directory {attempt.output_dir} is missing"
        recorded = {a.path[len(attempt.output_dir) + 1:]: a.sha256 for a in self.store.artifacts(attempt.id)}
        actual = {rel: digest for rel, _size, digest in hash_tree(root)}
        if recorded != actual:
            changed = sorted(set(recorded.items()) ^ set(actual.items()))
            names = sorted({rel for rel, _ in changed})
            return f"output files changed since they were recorded: {', '.join(names[:5])}"
        return None

    def _run_attempt(self, spec: StepSpec, key: str, params: dict, input_hashes: dict,
                     outputs: dict, summaries: dict) -> Optional[Outcome]:
        attempt = self.store.start_attempt(self.fence, spec.name, spec.version, key, params, input_hashes)
        self._attempt = attempt
        self.store.update_run(self.fence, self.run_id, status="running", status_detail=spec.name)
        self.echo(f"  > {spec.name}: attempt {attempt.number} (key {key[:12]})")
        step_dir = self.store.home / "artifacts" / self.run_id / spec.name
        final_dir = step_dir / key[:12]
        staging = step_dir / f".staging-{key[:12]}"
        work_dir = step_dir / f".work-{key[:12]}"
        try:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            work_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            return self._fs_failure(spec, attempt, e)
        ctx = StepContext(self.store, self.fence, self.run_id, self.run.seed, spec.name, key, params,
                          {i: outputs[i][0] for i in spec.inputs}, staging, work_dir, attempt, self.config)
        try:
            summary = spec.fn(ctx)
            missing = [o for o in spec.outputs if not (staging / o).exists()]
            if missing:
                raise RuntimeError(f"step {spec.name} did not write its declared output(s): {', '.join(missing)}")
            canonical_json(summary)  # fail here, not later, if the summary is not JSON-able
        except (Interrupted, KeyboardInterrupt, LeaseLost):
            raise
        except Exception as e:  # the step failed: record it, stop with exit 1
            tb = traceback.format_exc()
            self._record_gpu(spec, attempt, ctx)
            self.store.fail_attempt(self.fence, attempt, tb)
            self._attempt = None
            self._set_status("failed", spec.name)
            self.echo(f"  x {spec.name}: {type(e).__name__}: {e}")
            return Outcome(EXIT_FAILED, f"step {spec.name} failed (attempt {attempt.number}): "
                           f"{type(e).__name__}: {e}", "runner resume")
        try:
            fsync_tree(staging)
            entries = hash_tree(staging)
            digest = tree_digest(entries)
            replace_dir(staging, final_dir)
        except OSError as e:
            return self._fs_failure(spec, attempt, e)
        _fault("after_rename", spec.name)
        rel = final_dir.relative_to(self.store.home).as_posix()
        self._record_gpu(spec, attempt, ctx)
        self.store.succeed_attempt(self.fence, attempt, rel, digest, entries, summary)
        self._attempt = None
        _fault("before_cleanup", spec.name)
        shutil.rmtree(work_dir, ignore_errors=True)
        outputs[spec.name] = (final_dir, digest)
        summaries[spec.name] = summary
        self.echo(f"  ✓ {spec.name}: {len(entries)} file(s) in {rel}")
        return None

    def _fs_failure(self, spec: StepSpec, attempt: Attempt, e: OSError) -> Outcome:
        """The artifacts tree cannot be written (read-only, full, ...): record the attempt
        failed with a message that says what to fix; the lease is released by ``resume``."""
        where = e.filename or (self.store.home / "artifacts")
        msg = (f"cannot write step {spec.name}'s files under {where}: {e.strerror or e}. Make the artifacts "
               f"directory {self.store.home / 'artifacts'} writable by this user (and check free space), "
               "then `runner resume`")
        self.store.fail_attempt(self.fence, attempt, msg)
        self._attempt = None
        self._set_status("failed", spec.name)
        self.echo(f"  x {spec.name}: {msg}")
        return Outcome(EXIT_FAILED, f"step {spec.name} failed (attempt {attempt.number}): {msg}", "runner resume")

    # ---- gates ---------------------------------------------------------------------------
    def _rejected_meanwhile(self, gate: str) -> Outcome:
        """A person rejected the gate while this runner was deciding it: their decision stands."""
        self._set_status("rejected", gate)
        return Outcome(EXIT_REJECTED, f"gate {gate} was rejected while the runner was deciding it; "
                       "the rejection stands", "runner status")

    def _refuse_policy_edit(self, gate: str, frozen: str, edited: str) -> Outcome:
        """A waiting gate's policy is frozen when it is requested: an edit in the YAML does not
        decide it (else editing `human` to `auto` would pass it with no decision). Recorded."""
        msg = (f"gate {gate} waits under policy {frozen!r}, frozen when it was requested; the config now "
               f"says {edited!r}. An edited policy does not decide a waiting gate: put the config back, or "
               f"have a person adopt the edit with `runner regate {gate}` (then resume)")
        self.store.event(self.run_id, "gate_policy_edit_refused", msg, fence=self.fence, gate=gate,
                         data={"frozen_policy": frozen, "config_policy": edited})
        self._set_status("waiting", gate)
        self.echo(f"  ! gate {gate}: {msg}")
        return Outcome(EXIT_USAGE, msg, f"runner regate {gate}   # a person, at a terminal")

    def _do_gate(self, spec: GateSpec, outputs: dict, summaries: dict) -> Optional[Outcome]:
        gate_key = sha256_text(canonical_json({"gate": spec.name,
                                               "evidence": {s: h for s, (_p, h) in outputs.items()}}))
        row = self.store.gate(self.run_id, spec.name, gate_key)
        if row is not None and row.status == "approved":
            self.echo(f"  = gate {spec.name}: approved by {row.decided_by}")
            return None
        if row is not None and row.status == "rejected":
            self._set_status("rejected", spec.name)
            return Outcome(EXIT_REJECTED, f"gate {spec.name} was rejected by {row.decided_by}"
                           + (f": {row.note}" if row.note else "") + ". Change the config, then rerun "
                           "the step that feeds it.", "runner status")
        policy = effective_policy(spec, self.config)
        if row is not None and row.status == "pending" and row.policy != policy:
            return self._refuse_policy_edit(spec.name, row.policy, policy)
        gctx = GateContext(self.run_id, spec.name, {s: p for s, (p, _h) in outputs.items()}, dict(summaries),
                           self.config, self.run.seed)
        check = None
        if spec.check is not None:
            res = spec.check(gctx)
            check = res if isinstance(res, GateCheck) else GateCheck(bool(res))
        check_d = None if check is None else {"passed": check.passed, "summary": check.summary,
                                               "reasons": list(check.reasons)}
        check_ok = check is None or check.passed
        check_txt = "" if check_ok else "automatic check failed: " + "; ".join(map(str, check.reasons))

        def wait(reason: str) -> Outcome:
            self.store.request_gate(self.fence, spec.name, gate_key, policy, check_d, reason)
            self._set_status("waiting", spec.name)
            self.echo(f"  ? gate {spec.name}: waiting ({reason})")
            return Outcome(EXIT_GATE, f"waiting at gate {spec.name} ({policy}): {reason}",
                           f"runner show {spec.name}   # then: runner approve {spec.name} --note \"...\"  "
                           f"or  runner reject {spec.name} --reason \"...\"")

        if policy == "approve":  # demo profiles: no decision is taken, and the run says so
            g = self.store.request_gate(self.fence, spec.name, gate_key, policy, check_d, "policy 'approve'")
            note = "approved automatically by policy 'approve' (demo profile; no decision was taken)" + (
                "" if check_ok else f" although the {check_txt}")
            decided = self.store.decide_gate(g.id, "approve", "policy:approve", note, "auto", fence=self.fence)
            if decided.status == "rejected":
                return self._rejected_meanwhile(spec.name)
            self.echo(f"  ! gate {spec.name}: {note}")
            return None
        if policy == "auto":
            if not check_ok:
                return wait(check_txt + " (a human decides)")
            g = self.store.request_gate(self.fence, spec.name, gate_key, policy, check_d, "automatic check passed")
            decided = self.store.decide_gate(g.id, "approve", "auto-check", "automatic check passed", "auto",
                                             fence=self.fence)
            if decided.status == "rejected":
                return self._rejected_meanwhile(spec.name)
            self.echo(f"  ✓ gate {spec.name}: automatic check passed")
            return None
        if policy == "human":
            return wait((check_txt + "; " if check_txt else "") + "policy 'human': a person decides")
        # review or review+human
        g = self.store.request_gate(self.fence, spec.name, gate_key, policy, check_d, "asking the reviewer")
        if self.review_hook is None:
            decision, why = None, "no reviewer is available in this runner"
        else:
            decision, why = self.review_hook(self, spec, g, check_d, gctx, policy)
        if decision is None:
            return wait(f"review failed closed: {why}; a human decides")
        if reviewer_passes(policy, decision, check_ok):
            decided = self.store.decide_gate(g.id, "approve", "reviewer", f"GO: {why}", "reviewer", fence=self.fence)
            if decided.status == "rejected":
                return self._rejected_meanwhile(spec.name)
            self.echo(f"  ✓ gate {spec.name}: reviewer said GO")
            return None
        if not check_ok:
            return wait(f"{check_txt}; reviewer said {decision}")
        if policy == "review":
            return wait(f"reviewer said {decision}: {why}; a human decides")
        return wait(f"reviewer said {decision}: {why}; policy 'review+human': a person decides")
