"""Reviewer verdicts: the data type, its strict JSON schema, and a robust parser.

Library module (no command). Used by `runner.review.reviewer`; tested by
`.venv/bin/python -m pytest tests/unit/test_review_parse.py`.

Contract of `parse_verdict(text)`:
- Returns a `Verdict` or raises `VerdictParseError` whose message says why (fail closed).
- `<think>...</think>` blocks (reasoning models served by vLLM etc.) are ignored: drafts
  inside them are not the answer.
- Accepted forms, tried in order: the whole text as a JSON object; JSON objects anywhere in
  the text (fenced ```json blocks or bare); then `DECISION: GO` style lines (case-insensitive,
  markdown bold/headers tolerated) with optional `SUMMARY:`, `REASONS:` and
  `REQUESTED CHANGES:` sections of `-`/`*`/`1.` bullets.
- Decision spellings normalised: `go`, `NO GO`, `no_go`, `NOGO` -> GO / NO-GO; `modify`.
- Several verdict objects (or DECISION lines) that disagree -> error, never a guess.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

DECISIONS = ("GO", "NO-GO", "MODIFY")

# Strict schema for OpenAI structured output: every property required, no extras.
VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "decision": {"type": "string", "enum": list(DECISIONS)},
        "summary": {"type": "string"},
        "reasons": {"type": "array", "items": {"type": "string"}},
        "requested_changes": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["decision", "summary", "reasons", "requested_changes"],
    "additionalProperties": False,
}

RESPONSE_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {"name": "gate_verdict", "strict": True, "schema": VERDICT_SCHEMA},
}


class VerdictParseError(ValueError):
    """The reviewer's answer holds no usable verdict (the gate must fail closed)."""


@dataclass
class Verdict:
    """A reviewer's decision at a gate.

    decision: "GO" (proceed), "NO-GO" (stop), "MODIFY" (proceed only after the changes).
    summary: one paragraph. reasons / requested_changes: short strings, may be empty.
    """

    decision: Literal["GO", "NO-GO", "MODIFY"]
    summary: str = ""
    reasons: list[str] = field(default_factory=list)
    requested_changes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        norm = normalize_decision(self.decision) if isinstance(self.decision, str) else None
        if norm is None:
            raise ValueError(
                f"Verdict.decision must be one of {', '.join(DECISIONS)}; got {self.decision!r}"
            )
        self.decision = norm  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "summary": self.summary,
            "reasons": list(self.reasons),
            "requested_changes": list(self.requested_changes),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Verdict":
        """Build from a dict like `to_dict()` output; lenient about list/str shapes."""
        if not isinstance(d, dict) or "decision" not in d:
            raise ValueError(f"not a verdict object (needs a 'decision' key): {str(d)[:200]!r}")
        return cls(
            decision=d["decision"],
            summary=_as_text(d.get("summary", "")),
            reasons=_as_list(d.get("reasons", [])),
            requested_changes=_as_list(d.get("requested_changes", d.get("changes", []))),
        )


_DECISION_RE = re.compile(r"^\s*(no[\s_-]*go|go|modify)\s*[.!]?\s*$", re.IGNORECASE)


def normalize_decision(value: str) -> str | None:
    """Map a spelling of a decision to GO / NO-GO / MODIFY, or None if it is not one."""
    m = _DECISION_RE.match(value.replace("*", "").replace("`", ""))
    if not m:
        return None
    word = re.sub(r"[\s_-]", "", m.group(1)).upper()
    return {"GO": "GO", "NOGO": "NO-GO", "MODIFY": "MODIFY"}[word]


def _as_text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, list):
        return " ".join(str(x) for x in v)
    return str(v)


def _as_list(v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [v] if v.strip() else []
    if isinstance(v, list):
        return [str(x) for x in v if str(x).strip()]
    return [str(v)]


_THINK_RE = re.compile(r"<think>.*?(</think>|\Z)", re.DOTALL | re.IGNORECASE)


def _json_objects(text: str) -> list[Any]:
    """Every JSON object that decodes starting at some '{' in text (outermost first)."""
    dec = json.JSONDecoder()
    found: list[Any] = []
    i = text.find("{")
    while i != -1:
        try:
            obj, end = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            i = text.find("{", i + 1)
            continue
        found.append(obj)
        i = text.find("{", end)  # skip nested objects of a decoded one
    return found


def _verdicts_from_json(text: str) -> list[Verdict]:
    out: list[Verdict] = []
    for obj in _json_objects(text):
        cand = obj
        # Some wrappers nest the verdict, e.g. {"verdict": {...}}.
        if isinstance(cand, dict) and "decision" not in cand:
            inner = [v for v in cand.values() if isinstance(v, dict) and "decision" in v]
            cand = inner[0] if len(inner) == 1 else cand
        if isinstance(cand, dict) and "decision" in cand:
            try:
                out.append(Verdict.from_dict(cand))
            except ValueError:
                continue
    return out


_LINE_KEY_RE = re.compile(
    r"^[\s#>*_`-]*(decision|verdict|summary|reasons?|requested[\s_]+changes|changes)"
    r"[\s*_`]*:[\s*_`]*(.*)$",
    re.IGNORECASE,
)
_BULLET_RE = re.compile(r"^\s*(?:[-*+•]|\d+[.)])\s+(.*\S)\s*$")


def _verdict_from_lines(text: str) -> Verdict | None:
    decisions: list[str] = []
    summary_parts: list[str] = []
    lists: dict[str, list[str]] = {"reasons": [], "requested_changes": []}
    section: str | None = None
    for line in text.splitlines():
        m = _LINE_KEY_RE.match(line)
        if m:
            key = m.group(1).lower()
            rest = m.group(2).strip().rstrip("*_` ").strip()
            if key in ("decision", "verdict"):
                norm = normalize_decision(rest) if rest else None
                if norm is None:
                    raise VerdictParseError(f"DECISION line has no valid decision: {line.strip()[:120]!r}")
                decisions.append(norm)
                section = None
            elif key == "summary":
                section = "summary"
                if rest:
                    summary_parts.append(rest)
            else:
                section = "requested_changes" if "change" in key else "reasons"
                if rest:
                    lists[section].append(rest)
            continue
        if section is None or not line.strip():
            continue
        b = _BULLET_RE.match(line)
        if section == "summary" and not b:
            summary_parts.append(line.strip())
        elif section in lists:
            lists[section].append(b.group(1) if b else line.strip())
    if not decisions:
        return None
    if len(set(decisions)) > 1:
        raise VerdictParseError(f"conflicting DECISION lines: {decisions}")
    return Verdict(decisions[0], " ".join(summary_parts), lists["reasons"], lists["requested_changes"])


def parse_verdict(text: str | None) -> Verdict:
    """Extract one verdict from a reviewer's answer; see the module docstring for the rules."""
    if text is None or not text.strip():
        raise VerdictParseError("empty answer")
    body = _THINK_RE.sub("", text).strip()
    if not body:
        raise VerdictParseError("answer holds only a <think> block, no verdict")
    verdicts = _verdicts_from_json(body)
    if verdicts:
        kinds = sorted({v.decision for v in verdicts})
        if len(kinds) > 1:
            raise VerdictParseError(f"answer holds conflicting verdict objects: {kinds}")
        return verdicts[-1]
    v = _verdict_from_lines(body)
    if v is not None:
        return v
    snippet = body[:160].replace("\n", " ")
    raise VerdictParseError(
        "no verdict found (expected a JSON object with 'decision' or a 'DECISION: GO|NO-GO|MODIFY' "
        f"line); answer starts: {snippet!r}"
    )
