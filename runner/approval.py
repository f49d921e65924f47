"""Who may pass a gate that waits for a person, and the record of who did, how and from where.

Used by `runner approve`, `runner reject` and `runner regate` (runner/commands.py).

Contract:
- A gate *needs a human* when its frozen policy is ``human`` or ``review+human``, or it is a
  ``review`` gate whose review failed closed (``wait_reason`` starts with "review failed
  closed"). Only those gates are guarded; other waiting gates (an automatic check that failed,
  a reviewer's NO-GO/MODIFY) take a plain approval, recorded with its provenance.
- An approval (or a `regate`) of a gate that needs a human is accepted only when
  1. the environment carries no agent-session marker (``AGENT_MARKERS`` below: Claude Code
     sets ``CLAUDECODE=1`` and ``CLAUDE_CODE_ENTRYPOINT`` in its tools' environment; Codex
     sets ``CODEX_SANDBOX`` (e.g. ``seatbelt``) and ``CODEX_SANDBOX_NETWORK_DISABLED=1`` in the
     commands it runs; ``RUNNER_AGENT`` is ours, for any other agent harness to set), and
  2. it is confirmed interactively: standard input is a terminal and the person types the
     gate's name at the prompt.
  Otherwise ``ApprovalRefused`` (exit 2) names the exact command a human runs in their own
  terminal; nothing is written and the gate stays pending.
- Rejections are never refused (stopping a run is always safe) but carry the same provenance.
- Provenance recorded with every decision: ``who`` (``--who`` if given, else the OS account of
  the process's uid, never ``$USER`` alone), ``how`` (``tty-confirmed``, ``cli`` or ``agent``),
  ``host``, ``tty``, ``ssh_from`` (from ``SSH_CONNECTION``), ``os_user``, ``pid`` and the agent
  markers seen.

Threat model: this stops an agent that follows its tools' ordinary path (the finding in issue
18: Claude Code's Bash tool ran `runner approve` and the run said "approved by human"). A
process that scrubs its environment and fakes a terminal as the same OS user is not stopped:
for that, run the agent as another OS user or on another host than the person who approves.
"""
from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, TextIO

from runner.errors import RunnerError

# Environment variables whose presence marks an agent session (see the module docstring).
AGENT_MARKERS = ("CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT", "CODEX_SANDBOX", "CODEX_SANDBOX_NETWORK_DISABLED",
                 "RUNNER_AGENT")
HUMAN_POLICIES = ("human", "review+human")
FAILED_REVIEW_PREFIX = "review failed closed"


class ApprovalRefused(RunnerError):
    """The approval lacks a person behind it; the message names what a human runs."""


@dataclass
class Provenance:
    who: str
    how: str  # tty-confirmed | cli | agent
    os_user: str
    host: str
    tty: Optional[str]
    ssh_from: Optional[str]
    pid: int
    agent_markers: list[str] = field(default_factory=list)

    @property
    def source(self) -> str:
        """The GateDecision.source value: human (verified at a terminal), cli (unverified) or agent."""
        return {"tty-confirmed": "human", "cli": "cli", "agent": "agent"}[self.how]

    def as_dict(self) -> dict:
        return {"who": self.who, "how": self.how, "os_user": self.os_user, "host": self.host, "tty": self.tty,
                "ssh_from": self.ssh_from, "pid": self.pid, "agent_markers": self.agent_markers}


def needs_human(policy: str, wait_reason: str = "") -> bool:
    """Does a pending gate with this (frozen) policy and wait reason need a person's approval?"""
    return policy in HUMAN_POLICIES or (policy == "review" and (wait_reason or "").startswith(FAILED_REVIEW_PREFIX))


def agent_markers(env: Mapping[str, str] | None = None) -> list[str]:
    env = os.environ if env is None else env
    return [k for k in AGENT_MARKERS if env.get(k)]


def _os_user() -> str:
    try:
        import pwd
        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):  # no passwd entry (some containers): the uid says enough
        return f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown"


def _tty(stream: TextIO) -> Optional[str]:
    try:
        return os.ttyname(stream.fileno()) if stream.isatty() else None
    except (OSError, ValueError, AttributeError):
        return None


def provenance(who: Optional[str], how: str, env: Mapping[str, str] | None = None,
               stdin: TextIO | None = None) -> Provenance:
    env = os.environ if env is None else env
    ssh = (env.get("SSH_CONNECTION") or "").split()
    os_user = _os_user()
    return Provenance(who=who or os_user, how=how, os_user=os_user, host=socket.gethostname(),
                      tty=_tty(stdin or sys.stdin), ssh_from=ssh[0] if ssh else None, pid=os.getpid(),
                      agent_markers=agent_markers(env))


def human_command(home_arg: str, run_id: str, gate: str, action: str = "approve") -> str:
    verb = {"approve": f'approve {gate} --note "..."', "regate": f"regate {gate}"}[action]
    return f"runner{home_arg} --run {run_id} {verb}"


def is_terminal(stdin: TextIO) -> bool:
    try:
        return bool(stdin.isatty())
    except (AttributeError, ValueError):
        return False


def confirm_at_terminal(gate: str, run_id: str, action: str, stdin: TextIO, out: TextIO) -> bool:
    """Ask the person at the terminal to type the gate's name; True if they did."""
    out.write(f"{action} gate {gate!r} of run {run_id!r} as a person: type the gate's name to confirm: ")
    out.flush()
    line = stdin.readline()
    return line.strip() == gate


def verify(gate: str, run_id: str, policy: str, wait_reason: str, who: Optional[str], action: str,
           human_cmd: str, env: Mapping[str, str] | None = None, stdin: TextIO | None = None,
           out: TextIO | None = None,
           confirm: Callable[[str, str, str, TextIO, TextIO], bool] | None = None) -> Provenance:
    """The provenance of an ``action`` (approve | regate | reject) on a pending gate, or refuse it.

    Raises ``ApprovalRefused`` for an approve/regate of a gate that needs a human when the caller
    is an agent session or cannot confirm at a terminal (see the module docstring).
    """
    env = os.environ if env is None else env
    stdin, out = stdin or sys.stdin, out or sys.stdout
    markers = agent_markers(env)
    guarded = action != "reject" and (action == "regate" or needs_human(policy, wait_reason))
    if not guarded:
        return provenance(who, "agent" if markers else "cli", env, stdin)
    why = (f"policy {policy!r}" if policy in HUMAN_POLICIES else "its review failed closed") \
        if action != "regate" else "changing a waiting gate's policy is a person's decision"
    if markers:
        raise ApprovalRefused(
            f"refused: gate {gate!r} of run {run_id!r} needs a person ({why}), and this command runs in an "
            f"agent session ({', '.join(f'{m} is set' for m in markers)}). The gate stays pending. "
            f"Ask a human to run, in their own terminal: {human_cmd}")
    if not is_terminal(stdin):
        raise ApprovalRefused(
            f"refused: gate {gate!r} of run {run_id!r} needs a person ({why}), who confirms at an interactive "
            f"terminal; standard input here is not one. The gate stays pending. A human runs, in a terminal: "
            f"{human_cmd}")
    if not (confirm or confirm_at_terminal)(gate, run_id, action, stdin, out):
        raise ApprovalRefused(f"refused: the typed name did not match gate {gate!r}; nothing was recorded. "
                              f"To try again: {human_cmd}")
    return provenance(who, "tty-confirmed", env, stdin)
