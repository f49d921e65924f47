"""IFEval checkers for layout and format instructions (detectable_format:*, combination:*,
punctuation:*, startend:quotation).

Library module (no command). Tested by: .venv/bin/pytest tests/unit/test_ifeval.py -q

Each checker is ``check_x(response: str, **kwargs) -> bool`` with the semantics of the reference
implementation (google-research ``instruction_following_eval/instructions.py``, Apache-2.0;
re-implemented here, not copied). Checkers never see an empty response: the scorer counts a
whitespace-only response as not following any instruction before calling them.
"""

from __future__ import annotations

import json
import re

CONSTRAINED_RESPONSE_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")

_STAR_BULLET = re.compile(r"^\s*\*[^\*].*$", flags=re.MULTILINE)
_DASH_BULLET = re.compile(r"^\s*-.*$", flags=re.MULTILINE)
_HIGHLIGHT = re.compile(r"\*[^\n\*]*\*")
_DOUBLE_HIGHLIGHT = re.compile(r"\*\*[^\n\*]*\*\*")
_TITLE = re.compile(r"<<[^\n]+>>")
_PARAGRAPH_DIVIDER = re.compile(r"\s?\*\*\*\s?")


def check_number_bullet_lists(response: str, *, num_bullets: int) -> bool:
    """detectable_format:number_bullet_lists: exactly ``num_bullets`` markdown bullet lines.

    A bullet line starts (after optional whitespace) with ``*`` followed by a non-``*``
    character, or with ``-``. Note a ``---`` rule or a line starting with a negative number
    also counts as a ``-`` bullet, as in the reference.
    """
    return len(_STAR_BULLET.findall(response)) + len(_DASH_BULLET.findall(response)) == num_bullets


def check_constrained_response(response: str) -> bool:
    """detectable_format:constrained_response: contains one of "My answer is yes./no./maybe."
    (case-sensitive substring, anywhere)."""
    value = response.strip()
    return any(option in value for option in CONSTRAINED_RESPONSE_OPTIONS)


def check_number_highlighted_sections(response: str, *, num_highlights: int) -> bool:
    """detectable_format:number_highlighted_sections: at least ``num_highlights`` highlights.

    Counted: ``*text*`` spans plus ``**text**`` spans, each within one line and with
    non-blank text. A ``**bold**`` span counts once: the single-star pattern only matches its
    empty ``**`` edges, which are not counted.
    """
    count = sum(1 for h in _HIGHLIGHT.findall(response) if h.strip("*").strip())
    count += sum(1 for h in _DOUBLE_HIGHLIGHT.findall(response)
                 if h.removeprefix("**").removesuffix("**").strip())
    return count >= num_highlights


def check_multiple_sections(response: str, *, section_spliter: str, num_sections: int) -> bool:
    """detectable_format:multiple_sections: at least ``num_sections`` section markers.

    A marker is the (case-sensitive) splitter word followed by optional whitespace and a
    number, e.g. "SECTION 1" or "Section2"; the count is the number of markers found
    (``len(re.split(...)) - 1`` in the reference). The splitter is matched literally.
    """
    pattern = r"\s?" + re.escape(section_spliter.strip()) + r"\s?\d+\s?"
    return len(re.split(pattern, response)) - 1 >= num_sections


def check_json_format(response: str) -> bool:
    """detectable_format:json_format: whole response parses as JSON (Python ``json.loads``).

    Outer whitespace and one markdown fence (```json / ```Json / ```JSON / ``` ... ```)
    are removed first.
    """
    value = (response.strip()
             .removeprefix("```json").removeprefix("```Json").removeprefix("```JSON")
             .removeprefix("```").removesuffix("```").strip())
    try:
        json.loads(value)
    except ValueError:
        return False
    return True


def check_title(response: str) -> bool:
    """detectable_format:title: a ``<<title>>`` on one line with a non-blank title."""
    return any(t.lstrip("<").rstrip(">").strip() for t in _TITLE.findall(response))


def check_two_responses(response: str) -> bool:
    """combination:two_responses: exactly two different non-blank parts separated by ``******``.

    Blank parts are allowed only at the very start or end; the two parts must differ after
    stripping whitespace.
    """
    parts = response.split("******")
    valid = []
    for index, part in enumerate(parts):
        if not part.strip():
            if index not in (0, len(parts) - 1):
                return False
        else:
            valid.append(part)
    return len(valid) == 2 and valid[0].strip() != valid[1].strip()


def check_no_comma(response: str) -> bool:
    """punctuation:no_comma: no ASCII comma anywhere."""
    return "," not in response


def check_quotation(response: str) -> bool:
    """startend:quotation: after stripping whitespace, starts and ends with ``"`` (len > 1)."""
    value = response.strip()
    return len(value) > 1 and value[0] == '"' and value[-1] == '"'


def check_number_paragraphs(response: str, *, num_paragraphs: int) -> bool:
    """length_constraints:number_paragraphs: exactly ``num_paragraphs`` ``***``-separated parts.

    Splits on ``***`` with at most one whitespace character either side. An empty part at the
    start or end is dropped; an empty part in the middle (e.g. two dividers in a row) fails.
    """
    parts = _PARAGRAPH_DIVIDER.split(response)
    count = len(parts)
    for index, part in enumerate(parts):
        if not part.strip():
            if index in (0, len(parts) - 1):
                count -= 1
            else:
                return False
    return count == num_paragraphs


def check_nth_paragraph_first_word(response: str, *, num_paragraphs: int, nth_paragraph: int,
                                   first_word: str) -> bool:
    """length_constraints:nth_paragraph_first_word: paragraphs split on ``"\\n\\n"``.

    Follows iff the number of non-blank paragraphs equals ``num_paragraphs`` and paragraph
    ``nth_paragraph`` (1-based, indexed among *all* parts, blank ones included, as in the
    reference) is non-blank and its first word, lowercased, with leading ``'``/``"`` removed
    and cut at the first of ``. , ? ! ' "``, equals ``first_word`` lowercased.
    """
    parts = response.split("\n\n")
    count = sum(1 for p in parts if p.strip())
    if nth_paragraph > count or nth_paragraph < 1:
        return False
    paragraph = parts[nth_paragraph - 1].strip()
    if not paragraph:
        return False
    word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
    first = ""
    for ch in word:
        if ch in {".", ",", "?", "!", "'", '"'}:
            break
        first += ch.lower()
    return count == num_paragraphs and first == first_word.lower()
