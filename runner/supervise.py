"""`runner supervise`: the foreground loop for a pod's start command (or a systemd unit).

    runner --home /workspace/runs supervise --config /workspace/stage1-pod.yaml   # create-or-continue, then supervise
    runner --home /workspace/runs supervise --run pilot-20260101-120000 --max-restarts 10 --backoff-max 300

Contract:
- One supervised ``python -m runner resume`` child at a time; no daemon, no fork-and-forget.
  The child shares the supervisor's process group and inherits its stdout/stderr.
- Before each child: if the run is done (exit 0), waiting at a gate (3; with ``--wait-gates`` it
  polls until the gate is decided instead), rejected (5) or dead-lettered (1), it exits with
  that code. If the lease is held by a live owner on this host, it exits 4 at once, naming it.
  A lease held from another host name (e.g. this pod before a restart: the hostname changed) is
  watched until it expires; if its heartbeat moves meanwhile the owner is alive and it exits 4.
  A lease whose owner is provably gone (same host, pid gone or reused) is taken over at once.
  A live owner on this host whose lease expired (a stalled heartbeat) is named and it exits 4:
  `resume` would refuse it anyway until the lease is 3 ttl past expiry.
- After a crash (child killed by a signal, or a non-zero exit other than a stop code) or a
  failed step (resume retries it; the engine dead-letters after ``max_attempts``), it records a
  ``supervisor_restart`` event and starts a new child after a capped exponential backoff
  (1 s, 2 s, 4 s, ... up to ``--backoff-max``). After ``--max-restarts`` consecutive restarts
  without progress (no new finished step, committed batch or ``ctx.progress`` marker such as a
  trainer checkpoint; a child refused the lease, exit 4, counts too) it records
  ``supervisor_gave_up``
  and exits 1. Exit 2 from the child (usage/config error) is returned at once: restarting
  cannot fix it.
- SIGTERM/SIGINT are forwarded to the child (which marks its attempt interrupted and releases
  the lease); the supervisor then exits with the child's code (7 after an interruption).
- Events ``supervisor_started``/``supervisor_stopped`` (with host, pid and pid start time) let
  ``runner brief`` tell an agent that a supervisor is already looking after the run.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from runner.commands import _pipeline_path, find_or_init
from runner.config import load_run_inputs
from runner.errors import (EXIT_DONE, EXIT_FAILED, EXIT_GATE, EXIT_INTERRUPTED, EXIT_LOCKED,
                           EXIT_REJECTED, EXIT_USAGE)
from runner.home import home_dir as _home, open_store, resolve_run
from runner.lease import dead_reason, hostname, owner_alive, process_start_time
from runner.status import run_state

FINAL = {"done": EXIT_DONE, "waiting": EXIT_GATE, "rejected": EXIT_REJECTED, "dead_lettered": EXIT_FAILED}
STOP_GRACE_S = 60.0
GATE_POLL_S = 10.0


def say(msg: str) -> None:
    print(f"supervise: {msg}", flush=True)


class Supervisor:
    def __init__(self, store, run_id: str, home: Path, db_url: Optional[str], max_restarts: int = 10,
                 backoff_base: float = 1.0, backoff_max: float = 60.0, wait_gates: bool = False):
        self.store, self.run_id, self.home, self.db_url = store, run_id, home, db_url
        self.max_restarts, self.backoff_base, self.backoff_max = max_restarts, backoff_base, backoff_max
        self.wait_gates = wait_gates
        self.child: Optional[subprocess.Popen] = None
        self.stopping: Optional[int] = None

    # ---- signals -----------------------------------------------------------------------------
    def _on_signal(self, signum, _frame) -> None:  # noqa: ANN001
        self.stopping = signum
        if self.child is not None and self.child.poll() is None:
            try:
                self.child.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _sleep(self, seconds: float) -> None:
        end = time.time() + seconds
        while self.stopping is None and time.time() < end:
            time.sleep(min(0.2, max(0.0, end - time.time())))

    # ---- the lease ---------------------------------------------------------------------------
    def check_owner(self) -> Optional[str]:
        """None when a resume may start now; else why another live owner holds the run.

        Waits (up to the lease's expiry) for a lease held from another host name.
        """
        announced = False
        while self.stopping is None:
            lease = self.store.get_lease(self.run_id)
            t = time.time()
            if lease is None or lease.released:
                return None
            if lease.expires_at < t and lease.host == hostname() and owner_alive(lease, t):
                # A stalled heartbeat of a live process here: `resume` refuses it (exit 4) until the
                # lease has been expired for 3 ttl, so spawning children now would only storm it.
                return (f"run {self.run_id} is owned by a live runner on this host: pid {lease.pid}, whose lease "
                        f"expired {t - lease.expires_at:.0f}s ago (a stalled heartbeat?); not starting a second one. "
                        f"Look at it (`ps -o pid,stat,etime,cmd -p {lease.pid}`); stop it if it is stuck "
                        f"(`kill {lease.pid}`), then run this supervisor again")
            if lease.expires_at < t:
                say(f"the lease of host {lease.host} pid {lease.pid} expired {t - lease.expires_at:.0f}s ago; "
                    "taking over")
                return None
            if lease.host == hostname():
                why = dead_reason(lease)
                if why:
                    say(f"the previous owner is provably gone ({why}); taking over at once")
                    return None
                return (f"run {self.run_id} is owned by a live runner on this host: pid {lease.pid} "
                        f"(lease generation {lease.generation}); not starting a second one. "
                        "Watch it with `runner wait --timeout 540`; stop it first if you want this supervisor")
            # Another host name: only expiry or a moving heartbeat tells us anything.
            if not announced:
                say(f"run {self.run_id} is leased by host {lease.host} pid {lease.pid} (another host, or this "
                    f"pod before a restart); waiting up to {lease.expires_at - t:.0f}s for the lease to expire. "
                    "If its heartbeat moves, that owner is alive and this supervisor exits 4.")
                announced = True
            seen = (lease.owner_id, lease.heartbeat_at)
            while self.stopping is None and time.time() <= lease.expires_at + 0.2:
                self._sleep(0.5)
                now_lease = self.store.get_lease(self.run_id)
                if now_lease is None or now_lease.released or now_lease.owner_id != seen[0]:
                    break  # the lease changed hands or was released: look again
                if now_lease.heartbeat_at != seen[1]:
                    return (f"run {self.run_id} is owned by a live runner on host {lease.host} pid {lease.pid}: "
                            "its heartbeat moved while we watched; not starting a second one. "
                            "Watch it with `runner wait --timeout 540`")
        return None

    # ---- the loop ----------------------------------------------------------------------------
    def _progress(self) -> int:
        done = sum(1 for a in self.store.attempts(self.run_id) if a.status == "succeeded")
        return (done + sum(self.store.batch_progress(self.run_id).values())
                + self.store.progress_markers(self.run_id))

    def _child_cmd(self) -> list[str]:
        cmd = [sys.executable, "-m", "runner", "--home", str(self.home)]
        if self.db_url:
            cmd += ["--db-url", self.db_url]
        return cmd + ["resume", "--run", self.run_id]

    def _event(self, kind: str, message: str, **data) -> None:  # noqa: ANN003
        try:
            self.store.event(self.run_id, kind, message, data=data)
        except Exception as e:  # noqa: BLE001 - a busy DB must not kill the supervisor
            say(f"could not record {kind} ({e})")

    def run(self) -> int:
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        me = {"host": hostname(), "pid": os.getpid(), "pid_start_time": process_start_time(os.getpid()) or 0.0}
        self._event("supervisor_started", f"{me['host']} pid {me['pid']}", **me)
        code = EXIT_FAILED
        try:
            code = self._loop(run_state)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            self._event("supervisor_stopped", f"exit {code}", exit_code=code, **me)
        return code

    def _loop(self, run_state) -> int:  # noqa: ANN001
        restarts = consecutive = 0
        delay = self.backoff_base
        while True:
            if self.stopping is not None:
                return EXIT_INTERRUPTED
            st = run_state(self.store, self.run_id)
            state = st["state"]
            if state == "waiting" and self.wait_gates:
                self._sleep(GATE_POLL_S)
                continue
            if state in FINAL:
                say(f"run {self.run_id} is {state}" + (f" ({st['detail']})" if st["detail"] else "")
                    + f"; exit {FINAL[state]}. next: {st['next_action']['command'] or 'nothing'}")
                return FINAL[state]
            why = self.check_owner()
            if self.stopping is not None:
                return EXIT_INTERRUPTED
            if why:
                say(why)
                return EXIT_LOCKED
            before, started = self._progress(), time.time()
            say(f"starting: {' '.join(self._child_cmd())}")
            self.child = subprocess.Popen(self._child_cmd(), env={**os.environ, "PYTHONUNBUFFERED": "1"})
            code = self._wait_child()
            self.child = None
            if self.stopping is not None:
                say(f"stopped by signal {self.stopping}; the child exited {code}")
                return code if code >= 0 else EXIT_INTERRUPTED
            st = run_state(self.store, self.run_id)
            if st["state"] in FINAL and code in (EXIT_DONE, EXIT_GATE, EXIT_REJECTED, EXIT_FAILED):
                continue  # the top of the loop reports it and exits
            if code == EXIT_USAGE:
                say("the resume exited 2 (usage or config error): restarting cannot fix that; see its message")
                return EXIT_USAGE
            progressed = self._progress() > before
            if code == EXIT_LOCKED and progressed:
                continue  # someone else took the lease and works: check_owner names them
            # A refused child (exit 4) without progress is a restart like a crash: it backs off and
            # counts toward --max-restarts, so a lease no child can take never becomes a spawn loop.
            consecutive = 0 if progressed else consecutive
            restarts += 1
            consecutive += 1
            what = f"killed by signal {-code}" if code < 0 else f"exited {code} (state {st['state']})"
            if consecutive > self.max_restarts:
                msg = (f"the resume {what}; {consecutive - 1} restarts in a row without progress "
                       f"(--max-restarts {self.max_restarts}); giving up")
                self._event("supervisor_gave_up", msg, restarts=restarts, child_exit=code)
                say(msg + ". next: runner log --errors --limit 20")
                return EXIT_FAILED
            if progressed:
                delay = self.backoff_base
            say(f"the resume {what} after {time.time() - started:.1f}s; restart {restarts} in {delay:.0f}s")
            self._event("supervisor_restart", f"restart {restarts}: resume {what}; backoff {delay:.1f}s",
                        restart=restarts, consecutive=consecutive, child_exit=code, backoff_s=delay,
                        progressed=progressed)
            self._sleep(delay)
            delay = min(delay * 2, self.backoff_max)

    def _wait_child(self) -> int:
        assert self.child is not None
        while True:
            try:
                if self.stopping is not None:
                    return self.child.wait(timeout=STOP_GRACE_S)
                return self.child.wait()
            except subprocess.TimeoutExpired:
                say(f"the child did not stop within {STOP_GRACE_S:.0f}s of SIGTERM; killing it")
                self.child.kill()
            except InterruptedError:
                continue


def cmd_supervise(args) -> int:  # noqa: ANN001
    home = _home(args).resolve()
    if args.max_restarts < 0 or args.backoff_max <= 0:
        print("error: --max-restarts must be >= 0 and --backoff-max > 0", file=sys.stderr)
        return EXIT_USAGE
    if args.config or args.pipeline or args.run_id:
        if args.config or args.pipeline:
            # Validate before open_store creates .runner/: a bad config leaves the home untouched.
            load_run_inputs(_pipeline_path(args.pipeline, args.config), args.config)
        store = open_store(args, create=True)
        run_id, created = find_or_init(store, args.pipeline, args.config, args.run_id or args.run)
        say(f"{'created' if created else 'continuing'} run {run_id}")
    else:
        store = open_store(args)
        run_id = resolve_run(store, args)
    sup = Supervisor(store, run_id, home, args.db_url or os.environ.get("RUNNER_DB_URL"),
                     max_restarts=args.max_restarts, backoff_max=args.backoff_max,
                     backoff_base=min(1.0, args.backoff_max), wait_gates=args.wait_gates)
    return sup.run()


def register(sub, add) -> None:  # noqa: ANN001
    sp = add("supervise", cmd_supervise, "Foreground loop for a pod's start command: resume the run, restart it "
             "after crashes with capped backoff, stop at done/gate/rejection/dead letter; never fights a live owner.",
             "runner --home /workspace/runs supervise --config runner/examples/toy.yaml")
    sp.add_argument("--config", help="create the run from this config if needed (same file = same run)")
    sp.add_argument("--pipeline", help="module:attr (default: the config's 'pipeline' key)")
    sp.add_argument("--run-id", help="name for a run created here")
    sp.add_argument("--max-restarts", type=int, default=10,
                    help="consecutive restarts without progress before giving up with exit 1 (default 10)")
    sp.add_argument("--backoff-max", type=float, default=60.0,
                    help="cap of the exponential backoff between restarts, seconds (default 60)")
    sp.add_argument("--wait-gates", action="store_true",
                    help="at a gate, poll every 10 s until it is decided instead of exiting 3")
