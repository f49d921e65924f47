"""Response cleaning and runaway detection for base-model completions (METHOD.md rules).

Imported by the response-generation and QC steps; not runnable on its own. Tests:
`.venv/bin/pytest tests/unit/test_cleaning.py` (realistic completions in
`tests/unit/data/raw_completions.jsonl`).

Cleaning (`clean_response`), in this order:
1. ``\\r\\n``/``\\r`` become ``\\n``; leading whitespace (spaces and newlines) is dropped, since
   the model usually starts its answer with a space after ``Response:``.
2. End marker present → keep the text before its first occurrence (``marker_found=True``).
   Then only the *prompt-line* cut (rule 4) still applies: a line starting with
   ``Instruction:`` before the marker is a runaway the marker did not stop (deviation from
   METHOD.md, which applies no further cut; see specs/stage1-data.md).
3. No marker → if the text ends with a proper prefix of the marker of >= 3 characters (a
   marker cut by the token limit, e.g. ``###EN``), that prefix is removed first.
4. Cut at the earliest of (only without a marker, except the prompt-line cut):
   - ``blank_line``: the first blank line (a line that is empty after stripping). Blank lines
     inside an open triple-backtick fence do not count, so code answers survive (deviation).
   - ``prompt_line``: a line (any line, including the first) whose start matches a new-prompt
     label: ``Instruction``/``Instructions`` (followed by ``:``, a number, or end of line),
     ``Q:``, ``A:``, ``Response:``, ``User:``, ``Question:``/``Question 2:``, ``Human:``,
     ``Assistant:``, ``Query:``, ``### Instruction``, ``# Query``. Case-sensitive on purpose:
     ``a: 1`` inside an answer is not a label.
   - ``new_question``: a "new question" opener on a line after the first: a line that starts with
     ``Next question``/``Another question``/``New question``/``Now answer``/``Now write``, or an
     interrogative line (starts with What/How/Why/Who/Which/When/Where/Is/Are/Can/Could/Do/Does/
     Should/Would/Will, ends with ``?``) whose previous line ends with ``.``, ``!`` or a word
     character (an answer that ended), not ``:`` or ``?`` (a list of questions the user asked for).
5. Strip. The result may be empty (e.g. the model began with a new ``Instruction:``); callers
   drop empty responses and count them.

Runaway (`runaway_reason`/`is_runaway`) is decided on the *cleaned* text by patterns, never by
length (a length heuristic flagged 46% of good answers in the original experiment). See
`RUNAWAY_PATTERNS`. Token counting is the caller's job (it owns the tokenizer).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from phases.prompts import END_MARKER

__all__ = [
    "CleanResult",
    "clean_response",
    "first_paragraph",
    "RUNAWAY_PATTERNS",
    "runaway_reason",
    "is_runaway",
    "marker_leaked",
]

_PROMPT_LINE = re.compile(
    r"^(?:"
    r"Instructions?(?:\s*\d+)?\s*(?::|$)"
    r"|Q\s*:|A\s*:|Response\s*:|User\s*:|Human\s*:|Assistant\s*:|Query\s*:"
    r"|Question(?:\s*\d+)?\s*:"
    r"|#{1,4}\s*(?:Instruction|Query|Question|Response)\b"
    r")"
)
_QUESTION_OPENER = re.compile(
    r"^(?:Next question|Another question|New question|Now answer|Now write|Now,? (?:answer|write|try))\b",
    re.IGNORECASE,
)
_INTERROGATIVE = re.compile(
    r"^(?:What|How|Why|Who|Whom|Whose|Which|When|Where|Is|Are|Can|Could|Do|Does|Did|Should|Would|Will)\b.*\?$"
)
_FENCE = "```"
_MIN_PARTIAL_MARKER = 3


@dataclass(frozen=True)
class CleanResult:
    """Outcome of `clean_response`.

    text: the cleaned response (stripped; may be empty).
    marker_found: the end marker occurred in the raw completion.
    heuristic_cut: which cut rule fired (``"blank_line"``, ``"prompt_line"``, ``"new_question"``)
        or None when the text was kept whole (after the marker split, if any).
    cut_line: the line that triggered the cut (stripped), for audit; None for no cut and for
        ``blank_line``.
    partial_marker_stripped: a truncated end marker was removed from the end (rule 3).
    """

    text: str
    marker_found: bool
    heuristic_cut: str | None = None
    cut_line: str | None = None
    partial_marker_stripped: bool = False

    @property
    def empty(self) -> bool:
        return not self.text


def _strip_partial_marker(text: str, marker: str) -> tuple[str, bool]:
    stripped = text.rstrip()
    for size in range(len(marker) - 1, _MIN_PARTIAL_MARKER - 1, -1):
        if stripped.endswith(marker[:size]):
            return stripped[: -size], True
    return text, False


def _find_cut(lines: list[str], use_blank: bool, use_question: bool) -> tuple[int, str, str | None] | None:
    """Index of the first line to drop, the rule and the triggering line; None if no cut."""
    in_fence = False
    for i, line in enumerate(lines):
        s = line.strip()
        if s.startswith(_FENCE):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        if use_blank and not s:
            return i, "blank_line", None
        if _PROMPT_LINE.match(s):
            return i, "prompt_line", s
        if use_question and i > 0:
            if _QUESTION_OPENER.match(s):
                return i, "new_question", s
            prev = lines[i - 1].rstrip()
            if _INTERROGATIVE.match(s) and prev and (prev[-1] in ".!" or prev[-1].isalnum()):
                return i, "new_question", s
    return None


def clean_response(raw: str, end_marker: str | None = END_MARKER) -> CleanResult:
    """Clean one raw completion by the rules in the module docstring.

    ``end_marker=None`` (or empty) disables marker handling (rules 2-3). ``raw`` must be a
    string (``None`` raises ``ValueError``: a generation that returned nothing must be caught
    upstream, not cleaned into an empty answer silently).
    """
    if not isinstance(raw, str):
        raise ValueError(f"raw completion must be a string, got {type(raw).__name__}: {raw!r}")
    text = raw.replace("\r\n", "\n").replace("\r", "\n").lstrip()
    marker_found = bool(end_marker) and end_marker in text
    partial = False
    if marker_found:
        text = text.split(end_marker, 1)[0]
    elif end_marker:
        text, partial = _strip_partial_marker(text, end_marker)
    # Trailing whitespace is not content: a final "\n\n" must not count as a blank-line cut.
    lines = text.rstrip().split("\n")
    cut = _find_cut(lines, use_blank=not marker_found, use_question=not marker_found)
    rule = cut_line = None
    if cut is not None:
        index, rule, cut_line = cut
        lines = lines[:index]
    return CleanResult(
        text="\n".join(lines).strip(),
        marker_found=marker_found,
        heuristic_cut=rule,
        cut_line=cut_line,
        partial_marker_stripped=partial,
    )


def first_paragraph(text: str) -> str:
    """Text up to the first blank line outside a code fence, stripped (the pair critic's view).

    Leading blank lines are skipped; ``""`` stays ``""``.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").strip().split("\n")
    in_fence = False
    for i, line in enumerate(lines):
        s = line.strip()
        if s.startswith(_FENCE):
            in_fence = not in_fence
        elif not in_fence and not s:
            return "\n".join(lines[:i]).strip()
    return "\n".join(lines).strip()


# (name, compiled pattern). Checked on cleaned text. Each names a way a completion runs on into
# a new prompt that cleaning did not remove. Deliberately no pattern on length, list items or
# "Answer:" (a good math answer may end with "Answer: 42").
RUNAWAY_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("blank_then_instruction", re.compile(r"\n\s*\n\s*Instructions?\b")),
    ("line_prompt_label", re.compile(r"(?m)^\s*(?:Instruction|Response|Q|User|Human|Assistant|Query|Question)\s*\d*\s*:")),
    ("markdown_prompt_heading", re.compile(r"(?m)^\s*#{1,4}\s*(?:Instruction|Query|Question|Response)\b")),
    ("inline_prompt_label", re.compile(r"[.!?)\]\"']\s+(?:Instruction|Response|Question|User|Human|Q)\s*\d*:\s")),
    ("chat_control_token", re.compile(r"<\|(?:im_start|im_end|endoftext|user|assistant|system)\|>")),
)


def runaway_reason(cleaned: str) -> str | None:
    """Name of the first `RUNAWAY_PATTERNS` entry found in ``cleaned``, or None if clean."""
    for name, pattern in RUNAWAY_PATTERNS:
        if pattern.search(cleaned):
            return name
    return None


def is_runaway(cleaned: str) -> bool:
    """True when the cleaned response still contains a new prompt/question (pattern-based)."""
    return runaway_reason(cleaned) is not None


def marker_leaked(text: str, end_marker: str = END_MARKER) -> bool:
    """True when ``text`` contains the full end marker, or ends with a >= 3-char prefix of it.

    A partial marker in the middle of text (e.g. a markdown ``### Step``) is not leakage.
    """
    if not end_marker:
        return False
    if end_marker in text:
        return True
    return _strip_partial_marker(text, end_marker)[1]
