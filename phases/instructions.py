"""Parse a base model's numbered-list continuation into single instructions, and filter them.

Imported by the instruction-generation step; not runnable on its own. Tests:
`.venv/bin/pytest tests/unit/test_instructions.py`.

Contract with `phases.prompts.instruction_generation_prompt`: the prompt ends with ``"{n}."``
so the completion begins mid-item (``" Describe a sunset.\\n{n+1}. ..."``). Pass
``first_index=n`` and the parser re-attaches the number.

Parsing (`parse_numbered_list`): a line ``^\\s*(\\d{1,3})\\s*[.)]\\s*(text)`` starts an item
(``12. text`` or ``12) text``). One line is one instruction: unnumbered lines are not
appended to the previous item (they are counted as ``unnumbered``), because a base model's
unnumbered lines after a list are usually commentary or a runaway, and the list prompt shows
one-line items only. Parsing stops at the first line that starts a new prompt (a line
matching ``Instruction:``/``Q:``/``User:``... , see `phases.cleaning`) since what follows is
not the list.

Filtering (`parse_instructions`), each dropped item gets exactly one reason, checked in this
order:
- ``empty``: nothing left after normalisation.
- ``meta``: list talk, not a task: starts with "Here are/is", "Below are/is", "The following",
  "List of instructions/tasks/examples", "More instructions/tasks/examples", "(continued)" or
  ``#`` (a heading); or is only "Instructions"/"Examples"/"Tasks" (optionally numbered, with a
  colon); or is a short line (<= 6 words) that ends with ``:``.
- ``too_short``: fewer than ``min_words`` (default 3) words.
- ``too_long``: more than ``max_words`` (default 60) words or 400 characters.
- ``ends_mid_sentence``: ends with ``:``, ``,``, ``;``, a hyphen, or a function word
  (and, or, the, a, an, of, to, with, for, in, on, that, which, by, from, as, at, your, my);
  or it is the completion's last item, the completion does not end with a newline (it was cut
  by the token limit) and the item lacks final punctuation (``. ? ! " ' ) ]``).
- ``no_instruction_verb``: no request form: the text does not end with ``?``, its first word
  (after an optional "please") is not in `QUESTION_OPENERS` (what/how/why/can/is...), and none
  of its first 8 words is in `INSTRUCTION_VERBS` (imperatives such as write/list/explain/
  translate). This catches statements ("The weather in Paris is nice today.").
- ``duplicate``: same `phases.dedup.normalize_key` as an earlier kept item of this completion
  (near-duplicates across completions are `phases.dedup.dedup`'s job).

Normalisation (`normalize_instruction`): NFKC; strip list bullets, markdown bold/italics
markers (``**``, ``__``) and matching surrounding quotes; collapse all whitespace to single
spaces; strip. Case is kept.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

from phases.dedup import normalize_key

__all__ = [
    "INSTRUCTION_VERBS",
    "QUESTION_OPENERS",
    "ParsedInstructions",
    "normalize_instruction",
    "parse_numbered_list",
    "parse_instructions",
]

_ITEM = re.compile(r"^\s*(\d{1,3})\s*[.)]\s*(.*)$")
_STOP_LINE = re.compile(r"^\s*(?:Instructions?\s*\d*\s*:|Q\s*:|A\s*:|Response\s*:|User\s*:|Human\s*:|Assistant\s*:|Question\s*\d*\s*:)")
_META = re.compile(
    r"^(?:here (?:are|is)|below (?:are|is)|the following|list of (?:instructions|tasks|examples)|"
    r"more (?:instructions|tasks|examples)|\(?continued\)?|#|(?:instructions?|examples?|tasks?)\s*\d*\s*:?\s*$)",
    re.IGNORECASE,
)
_FINAL_PUNCT = tuple(".?!\"')]”’")
_FUNCTION_WORDS = frozenset(
    "and or the a an of to with for in on that which by from as at your my".split()
)

# Words that make a line a request. Lowercase; matched against the first 8 words.
INSTRUCTION_VERBS: frozenset[str] = frozenset(
    """
    add adapt analyze analyse answer apply arrange ask assess brainstorm build calculate categorize
    categorise change check choose cite classify combine compare compile complete compose compute
    condense construct convert correct count create critique decide define derive describe design
    detect determine develop devise discuss distinguish draft draw edit elaborate estimate evaluate
    explain express extract fill find finish fix format generate give group guess help identify
    illustrate imagine improve indicate infer invent justify label list locate make map match
    measure mention name note offer order organize organise outline paraphrase pick plan point
    predict prepare present produce propose provide put rank rate react recommend reformat rephrase
    replace respond restate rewrite rhyme say score select sort spell state suggest summarize
    summarise support tell transform translate turn use verify write simplify shorten expand
    lengthen reword continue solve pretend act teach show recite recall sketch introduce greet
    thank apologize apologise persuade convince argue reply capitalize capitalise punctuate
    """.split()
)
# Question openers count only as the first word ("The sky is blue." is not a request).
QUESTION_OPENERS: frozenset[str] = frozenset(
    "what how why who whom whose which when where is are can could do does did should would will".split()
)


def normalize_instruction(text: str) -> str:
    """Normalise one instruction (see module docstring). Returns "" for nothing left."""
    s = unicodedata.normalize("NFKC", text).strip()
    s = re.sub(r"^[-*•]\s+", "", s)
    s = s.replace("**", "").replace("__", "")
    s = re.sub(r"\s+", " ", s).strip()
    for left, right in (('"', '"'), ("'", "'"), ("“", "”"), ("‘", "’")):
        inner = s[1:-1]
        # Only a quote pair around the whole text; 'Say "hi" to "Bob"' keeps its quotes.
        if len(s) >= 2 and s.startswith(left) and s.endswith(right) and left not in inner and right not in inner:
            s = inner.strip()
    return s


def parse_numbered_list(completion: str, first_index: int | None = None) -> tuple[list[str], int, bool]:
    """Raw numbered items of a completion.

    Returns ``(items, unnumbered_lines, last_item_terminated)``: item texts in order
    (not normalised), the count of non-blank lines that were not items (before any stop line),
    and whether the last item's line ended with a newline. ``first_index``: the number the prompt
    ended with; the completion's first line is then item ``first_index``. ``completion`` must be
    a string (``None`` raises ``ValueError``).
    """
    if not isinstance(completion, str):
        raise ValueError(f"completion must be a string, got {type(completion).__name__}: {completion!r}")
    text = completion.replace("\r\n", "\n").replace("\r", "\n")
    if first_index is not None:
        text = f"{first_index}.{text}"
    lines = text.split("\n")
    items: list[str] = []
    unnumbered = 0
    last_terminated = False
    for i, line in enumerate(lines):
        if _STOP_LINE.match(line):
            break
        m = _ITEM.match(line)
        if m:
            items.append(m.group(2))
            last_terminated = i < len(lines) - 1
        elif line.strip():
            unnumbered += 1
    return items, unnumbered, last_terminated


@dataclass
class ParsedInstructions:
    """Outcome of `parse_instructions`.

    kept: normalised instructions in completion order. dropped: ``(text, reason)`` pairs
    (reasons listed in the module docstring). unnumbered_lines: non-item lines ignored.
    """

    kept: list[str] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)
    unnumbered_lines: int = 0

    def counts(self) -> dict[str, int]:
        c = Counter(reason for _, reason in self.dropped)
        return {"parsed": len(self.kept) + len(self.dropped), "kept": len(self.kept), "unnumbered_lines": self.unnumbered_lines, **{f"dropped_{k}": v for k, v in sorted(c.items())}}


def _drop_reason(text: str, min_words: int, max_words: int, is_cut_last: bool) -> str | None:
    if not text:
        return "empty"
    words = text.split()
    lowered = text.lower()
    if _META.match(lowered) or (len(words) <= 6 and text.endswith(":")):
        return "meta"
    if len(words) < min_words:
        return "too_short"
    if len(words) > max_words or len(text) > 400:
        return "too_long"
    last_word = re.sub(r"[^\w]", "", words[-1].lower())
    if text[-1] in ":,;-" or last_word in _FUNCTION_WORDS:
        return "ends_mid_sentence"
    if is_cut_last and not text.endswith(_FINAL_PUNCT):
        return "ends_mid_sentence"
    if not text.endswith("?"):
        head = [re.sub(r"[^\w]", "", w.lower()) for w in words[:9]]
        if head and head[0] == "please":
            head = head[1:]
        if not head or not (head[0] in QUESTION_OPENERS or any(w in INSTRUCTION_VERBS for w in head[:8])):
            return "no_instruction_verb"
    return None


def parse_instructions(
    completion: str,
    first_index: int | None = None,
    min_words: int = 3,
    max_words: int = 60,
) -> ParsedInstructions:
    """Parse, normalise and filter the instructions of one completion (rules in the module docstring)."""
    items, unnumbered, last_terminated = parse_numbered_list(completion, first_index)
    result = ParsedInstructions(unnumbered_lines=unnumbered)
    seen: set[str] = set()
    for pos, raw in enumerate(items):
        text = normalize_instruction(raw)
        is_cut_last = pos == len(items) - 1 and not last_terminated
        reason = _drop_reason(text, min_words, max_words, is_cut_last)
        if reason is None:
            key = normalize_key(text)
            if key in seen:
                reason = "duplicate"
            else:
                seen.add(key)
        if reason is None:
            result.kept.append(text)
        else:
            result.dropped.append((text, reason))
    return result
