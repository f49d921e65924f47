"""The review request: a gate's criteria, evidence and spot-check samples, rendered for a reviewer.

Library module (no command); tested by `.venv/bin/python -m pytest tests/unit/test_review_request.py`.

Contracts:
- `ReviewRequest.input_hash()` = sha256 hex of the canonical JSON (sorted keys, compact
  separators, UTF-8, non-JSON leaves via `str()`) of {gate, criteria, evidence, samples} after
  pattern-based secret scrubbing. `run_id` is deliberately excluded: it names the run, it is
  not evidence, and the state DB already scopes verdicts per run.
- `ReviewRequest.render(max_chars)` is deterministic (same request and bound -> same text),
  scrubbed of credential-shaped strings, and never longer than `max_chars` characters.
  Criteria and the answer instructions are kept whole when they fit; when the text is too
  long, in order: long strings and lists in evidence/samples are shortened (with visible
  markers), then samples are dropped from the end, then the evidence text is cut with a marker.
- `sample_items(items, k, seed)`: k items chosen with `random.Random(seed)`, returned in their
  original order; k >= len(items) returns a copy of all; k <= 0 returns [].
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

from state.files import canonical_json
from state.files import sha256_text as sha256_hex

from .secrets import scrub_obj, scrub_text

RENDER_VERSION = "review-request/1"
MIN_RENDER_CHARS = 1000
# (max chars per string, max items per list) tried in turn when the full text is too long.
_SHRINK_STEPS = ((4000, 200), (1000, 50), (300, 20), (100, 8))


def sample_items(items: list, k: int, seed: int) -> list:
    """Fixed-seed random sample of k items, kept in original order (see module docstring)."""
    items = list(items)
    if k <= 0:
        return []
    if k >= len(items):
        return items
    idx = sorted(random.Random(seed).sample(range(len(items)), k))
    return [items[i] for i in idx]


def _shrink(obj: Any, max_str: int, max_list: int) -> Any:
    if isinstance(obj, str):
        if len(obj) > max_str:
            return obj[:max_str] + f"…[+{len(obj) - max_str} chars]"
        return obj
    if isinstance(obj, dict):
        keys = list(obj.keys())
        out = {k: _shrink(obj[k], max_str, max_list) for k in keys[:max_list]}
        if len(keys) > max_list:
            out["…"] = f"[+{len(keys) - max_list} more keys]"
        return out
    if isinstance(obj, (list, tuple)):
        out_l = [_shrink(v, max_str, max_list) for v in list(obj)[:max_list]]
        if len(obj) > max_list:
            out_l.append(f"…[+{len(obj) - max_list} more items]")
        return out_l
    return obj


def _pretty(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False, default=str)


ANSWER_INSTRUCTIONS = (
    "## Your answer\n"
    "Reply with exactly one JSON object with the keys `decision` (one of the three words "
    "GO, NO-GO, MODIFY), `summary` (one paragraph), `reasons` (list of strings) and "
    "`requested_changes` (list of strings; empty unless the decision is MODIFY or NO-GO).\n"
)


@dataclass
class ReviewRequest:
    """Everything a reviewer sees at one gate.

    gate: gate name (e.g. "pilot_gate"). run_id: the run's id (shown, not hashed).
    criteria: the gate's criteria from the stage config, a list of strings or one string.
    evidence: JSON-like dict, e.g. {"qc_summary": {...}, "eval": {...}, "manifests": {...}}.
    samples: items for spot checks, ideally from `sample_items(..., seed)`.
    experiment: what the run is for, from the pipeline (`Pipeline.goal` or the config's ``goal``);
    rendered before the criteria and hashed when non-empty.
    """

    gate: str
    run_id: str
    criteria: list[str] | str
    evidence: dict = field(default_factory=dict)
    samples: list[dict] = field(default_factory=list)
    experiment: str = ""

    def _payload(self) -> dict[str, Any]:
        payload = {"gate": self.gate, "criteria": self.criteria, "evidence": self.evidence, "samples": self.samples}
        if self.experiment:  # absent when empty, so requests without one keep their old hash
            payload["experiment"] = self.experiment
        return scrub_obj(payload)

    def input_hash(self) -> str:
        """sha256 of canonical JSON of gate/criteria/evidence/samples (run_id excluded)."""
        return sha256_hex(canonical_json(self._payload()))

    def _criteria_text(self, crit: Any) -> str:
        if isinstance(crit, str):
            return crit.strip() + "\n"
        return "".join(f"- {scrub_text(str(c))}\n" for c in crit) or "(none given)\n"

    def _compose(self, crit: str, evidence: Any, samples: list, dropped: int, cut_note: str) -> str:
        head = (
            f"# Gate review request: {self.gate}\n"
            f"Run: {scrub_text(str(self.run_id))}\n"
            f"Format: {RENDER_VERSION}\n\n"
            + (f"## The experiment\n{scrub_text(self.experiment.strip())}\n\n" if self.experiment.strip() else "")
            + f"## Gate criteria\n{crit}\n"
        )
        body = "## Evidence\n"
        if isinstance(evidence, dict) and evidence:
            for name in sorted(evidence, key=str):
                body += f"### {name}\n```json\n{_pretty(evidence[name])}\n```\n\n"
        elif evidence:
            body += f"```json\n{_pretty(evidence)}\n```\n\n"
        else:
            body += "(no evidence given)\n\n"
        if samples or dropped:
            body += f"## Spot-check samples ({len(samples)} shown"
            body += f", {dropped} more omitted for size)\n" if dropped else ")\n"
            for i, s in enumerate(samples, 1):
                body += f"### Sample {i}\n```json\n{_pretty(s)}\n```\n\n"
        return head + body + cut_note + ANSWER_INSTRUCTIONS

    def render(self, max_chars: int) -> str:
        """Bounded, deterministic, scrubbed markdown text of this request (see module docstring)."""
        if max_chars < MIN_RENDER_CHARS:
            raise ValueError(
                f"max_request_chars must be >= {MIN_RENDER_CHARS}; got {max_chars}"
            )
        p = self._payload()
        crit = self._criteria_text(p["criteria"])
        ev, samples = p["evidence"], list(p["samples"])
        text = self._compose(crit, ev, samples, 0, "")
        if len(text) <= max_chars:
            return text
        for max_str, max_list in _SHRINK_STEPS:
            ev_s = _shrink(ev, max_str, max_list)
            sm_s = [_shrink(s, max_str, max_list) for s in samples]
            text = self._compose(crit, ev_s, sm_s, 0, "")
            if len(text) <= max_chars:
                return text
        # Drop samples from the end until it fits (or none are left).
        for keep in range(len(sm_s) - 1, -1, -1):
            text = self._compose(crit, ev_s, sm_s[:keep], len(sm_s) - keep, "")
            if len(text) <= max_chars:
                return text
        # Last resort: cut the middle (evidence) and say so; keep head and instructions.
        note = "\n[… request cut to fit max_request_chars; evidence above is incomplete …]\n\n"
        tail = note + ANSWER_INSTRUCTIONS
        room = max_chars - len(tail)
        if room < 200:  # criteria alone are too long: cut everything before the instructions
            return text[: max(0, room)] + tail
        return text[: room] + tail
