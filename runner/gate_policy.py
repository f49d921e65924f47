"""The gate-policy rule, once: which policy a gate runs under, and when a review passes it.

Not runnable; `runner/engine.py` (a gate reached during `runner resume`) and
`runner/gate_review.py` (`runner review GATE`, asking again) both decide through these two
functions, so the rule cannot drift between them. Policies: docs/architecture.md.

- `effective_policy`: the config's ``gates.<name>.policy`` when set, else the gate's own.
- `reviewer_passes`: only policy ``review``, only a ``GO``, and only when the gate's automatic
  check passed (or there is none). ``review+human`` never passes on the reviewer alone;
  ``human``/``auto``/``approve`` do not consult the reviewer.
"""
from __future__ import annotations

from typing import Any, Optional


def effective_policy(spec: Any, cfg: dict) -> str:
    """The policy gate ``spec`` (a `GateSpec`) runs under with run config ``cfg``."""
    return ((cfg.get("gates") or {}).get(spec.name) or {}).get("policy", spec.policy)


def reviewer_passes(policy: str, decision: Optional[str], check_ok: bool) -> bool:
    """True when the reviewer's ``decision`` approves the gate by itself (see the module docstring)."""
    return policy == "review" and decision == "GO" and check_ok
