"""IFEval checkers for content, wording, case, language and length instructions
(keywords:*, detectable_content:*, change_case:*, language:*, startend:end_checker,
combination:repeat_prompt, length_constraints:number_words/number_sentences).

Library module (no command). Tested by: .venv/bin/pytest tests/unit/test_ifeval.py -q

Semantics follow the reference (google-research ``instruction_following_eval/instructions.py``,
Apache-2.0; re-implemented here, not copied). One deliberate difference: keywords, the section
splitter and a custom postscript marker are matched as literal text (``re.escape``), where the
reference passes them to ``re`` unescaped. None of the 541 IFEval prompts has a regex
metacharacter in those arguments, so IFEval scores are unchanged; arbitrary arguments (such
as "C++") no longer crash or mis-match.

"less than" means actual < threshold; "at least" means actual >= threshold.
"""

from __future__ import annotations

import re
from collections import Counter

from . import textutil

RELATIONS = ("less than", "at least")


def _compare(actual: int, relation: str, threshold: int) -> bool:
    if relation == "less than":
        return actual < threshold
    if relation == "at least":
        return actual >= threshold
    raise ValueError(f"IFEval: relation must be one of {RELATIONS}, got {relation!r}")


# ------------------------------------------------------------------------------ keywords


def check_keywords_existence(response: str, *, keywords: list[str]) -> bool:
    """keywords:existence: every keyword occurs, case-insensitive, as a substring."""
    return all(re.search(re.escape(k), response, flags=re.IGNORECASE) for k in keywords)


def check_keyword_frequency(response: str, *, keyword: str, frequency: int, relation: str) -> bool:
    """keywords:frequency: case-insensitive non-overlapping substring count of ``keyword``
    (stripped) compared with ``frequency``."""
    count = len(re.findall(re.escape(keyword.strip()), response, flags=re.IGNORECASE))
    return _compare(count, relation, frequency)


def check_forbidden_words(response: str, *, forbidden_words: list[str]) -> bool:
    """keywords:forbidden_words: no forbidden word as a whole word (``\\b...\\b``), any case."""
    return not any(re.search(r"\b" + re.escape(w) + r"\b", response, flags=re.IGNORECASE)
                   for w in forbidden_words)


def check_letter_frequency(response: str, *, letter: str, let_frequency: int,
                           let_relation: str) -> bool:
    """keywords:letter_frequency: count of ``letter`` (one character, compared lowercased, so
    case-insensitive for letters; also used with "!" and "#") compared with ``let_frequency``."""
    if len(letter.strip()) != 1:
        raise ValueError(f"IFEval: letter must be a single character, got {letter!r}")
    return _compare(Counter(response.lower())[letter.strip().lower()], let_relation, let_frequency)


# ------------------------------------------------------------------------------ content


def check_number_placeholders(response: str, *, num_placeholders: int) -> bool:
    """detectable_content:number_placeholders: at least ``num_placeholders`` ``[...]`` spans
    (non-greedy, within one line; ``[]`` counts too)."""
    return len(re.findall(r"\[.*?\]", response)) >= num_placeholders


def check_postscript(response: str, *, postscript_marker: str) -> bool:
    """detectable_content:postscript: the response contains the postscript marker.

    Case-insensitive. "P.S." matches ``p.`` optional-space ``s.``; "P.P.S" matches
    ``p.`` ``p.`` ``s`` with optional single spaces; any other marker is matched literally.
    As in the reference the pattern ``\\s*<marker>.*$`` is *searched* (MULTILINE), so the
    marker may also stand mid-line ("see p.s. below" passes).
    """
    value = response.lower()
    marker = postscript_marker.strip()
    if marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + re.escape(marker.lower()) + r".*$"
    return bool(re.findall(pattern, value, flags=re.MULTILINE))


def check_repeat_prompt(response: str, *, prompt_to_repeat: str) -> bool:
    """combination:repeat_prompt: response (stripped, lowercased) starts with the prompt
    (stripped, lowercased)."""
    return response.strip().lower().startswith(prompt_to_repeat.strip().lower())


def check_end_phrase(response: str, *, end_phrase: str) -> bool:
    """startend:end_checker: response, stripped of whitespace then of ``"`` and lowercased,
    ends with ``end_phrase`` stripped and lowercased."""
    return response.strip().strip('"').lower().endswith(end_phrase.strip().lower())


# ------------------------------------------------------------------------------ case, language


def check_response_language(response: str, *, language: str) -> bool:
    """language:response_language: langdetect (seed 0) says ``language`` (ISO 639-1).
    Undetectable text (no letters) counts as followed, as in the reference."""
    detected = textutil.detect_language(response)
    return True if detected is None else detected == language


def check_english_capital(response: str) -> bool:
    """change_case:english_capital: ``str.isupper()`` and langdetect says "en"
    (undetectable text: only the case test applies)."""
    if not response.isupper():
        return False
    detected = textutil.detect_language(response)
    return detected is None or detected == "en"


def check_english_lowercase(response: str) -> bool:
    """change_case:english_lowercase: ``str.islower()`` and langdetect says "en"
    (undetectable text: only the case test applies)."""
    if not response.islower():
        return False
    detected = textutil.detect_language(response)
    return detected is None or detected == "en"


def check_capital_word_frequency(response: str, *, capital_frequency: int,
                                 capital_relation: str) -> bool:
    """change_case:capital_word_frequency: number of NLTK word tokens that are ``isupper()``
    (e.g. "AI", "U.S.", "HELLO-WORLD" count once each) compared with ``capital_frequency``."""
    count = sum(1 for w in textutil.word_tokenize(response) if w.isupper())
    return _compare(count, capital_relation, capital_frequency)


# ------------------------------------------------------------------------------ length


def check_number_words(response: str, *, num_words: int, relation: str) -> bool:
    """length_constraints:number_words: ``\\w+`` count compared with ``num_words``."""
    return _compare(textutil.count_words(response), relation, num_words)


def check_number_sentences(response: str, *, num_sentences: int, relation: str) -> bool:
    """length_constraints:number_sentences: Punkt (English) sentence count compared with
    ``num_sentences``."""
    return _compare(textutil.count_sentences(response), relation, num_sentences)
