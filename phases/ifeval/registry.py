"""The 25 IFEval instruction ids, their checkers and their argument contracts.

Library module (no command). Tested by: .venv/bin/pytest tests/unit/test_ifeval.py -q

``check_instruction(instruction_id, response, kwargs)`` validates the arguments (names and
types, relation values) and runs the checker. Arguments whose value is ``None`` are dropped
first, because some copies of the data set (e.g. the Hugging Face one) list every argument
name for every instruction with ``None`` for the unused ones.
"""

from __future__ import annotations

from typing import Any, Callable

from . import checkers_content as c
from . import checkers_format as f

_STR, _INT, _STRLIST = "str", "int", "list[str]"

#: instruction id -> (checker, {argument: type})
INSTRUCTIONS: dict[str, tuple[Callable[..., bool], dict[str, str]]] = {
    "change_case:capital_word_frequency": (
        c.check_capital_word_frequency, {"capital_frequency": _INT, "capital_relation": _STR}),
    "change_case:english_capital": (c.check_english_capital, {}),
    "change_case:english_lowercase": (c.check_english_lowercase, {}),
    "combination:repeat_prompt": (c.check_repeat_prompt, {"prompt_to_repeat": _STR}),
    "combination:two_responses": (f.check_two_responses, {}),
    "detectable_content:number_placeholders": (
        c.check_number_placeholders, {"num_placeholders": _INT}),
    "detectable_content:postscript": (c.check_postscript, {"postscript_marker": _STR}),
    "detectable_format:constrained_response": (f.check_constrained_response, {}),
    "detectable_format:json_format": (f.check_json_format, {}),
    "detectable_format:multiple_sections": (
        f.check_multiple_sections, {"section_spliter": _STR, "num_sections": _INT}),
    "detectable_format:number_bullet_lists": (f.check_number_bullet_lists, {"num_bullets": _INT}),
    "detectable_format:number_highlighted_sections": (
        f.check_number_highlighted_sections, {"num_highlights": _INT}),
    "detectable_format:title": (f.check_title, {}),
    "keywords:existence": (c.check_keywords_existence, {"keywords": _STRLIST}),
    "keywords:forbidden_words": (c.check_forbidden_words, {"forbidden_words": _STRLIST}),
    "keywords:frequency": (
        c.check_keyword_frequency, {"keyword": _STR, "frequency": _INT, "relation": _STR}),
    "keywords:letter_frequency": (
        c.check_letter_frequency, {"letter": _STR, "let_frequency": _INT, "let_relation": _STR}),
    "language:response_language": (c.check_response_language, {"language": _STR}),
    "length_constraints:nth_paragraph_first_word": (
        f.check_nth_paragraph_first_word,
        {"num_paragraphs": _INT, "nth_paragraph": _INT, "first_word": _STR}),
    "length_constraints:number_paragraphs": (f.check_number_paragraphs, {"num_paragraphs": _INT}),
    "length_constraints:number_sentences": (
        c.check_number_sentences, {"num_sentences": _INT, "relation": _STR}),
    "length_constraints:number_words": (c.check_number_words, {"num_words": _INT, "relation": _STR}),
    "punctuation:no_comma": (f.check_no_comma, {}),
    "startend:end_checker": (c.check_end_phrase, {"end_phrase": _STR}),
    "startend:quotation": (f.check_quotation, {}),
}

INSTRUCTION_IDS: tuple[str, ...] = tuple(sorted(INSTRUCTIONS))

_RELATION_ARGS = ("relation", "let_relation", "capital_relation")


def _type_ok(value: Any, kind: str) -> bool:
    if kind == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == _STR:
        return isinstance(value, str)
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def validate_kwargs(instruction_id: str, kwargs: dict | None, where: str = "") -> dict:
    """Checked copy of one instruction's arguments (None values dropped).

    Raises ValueError naming ``where`` (e.g. "prompt key 1000") for an unknown instruction id,
    a missing/unknown argument, a wrong type or a relation other than "less than"/"at least".
    """
    at = f" ({where})" if where else ""
    if instruction_id not in INSTRUCTIONS:
        raise ValueError(f"IFEval: unknown instruction id {instruction_id!r}{at}; "
                         f"known ids: {', '.join(INSTRUCTION_IDS)}")
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict):
        raise ValueError(f"IFEval: kwargs for {instruction_id}{at} must be a dict, got {kwargs!r}")
    spec = INSTRUCTIONS[instruction_id][1]
    args = {k: v for k, v in kwargs.items() if v is not None}
    unknown = sorted(set(args) - set(spec))
    missing = sorted(set(spec) - set(args))
    if unknown or missing:
        raise ValueError(f"IFEval: {instruction_id}{at} expects arguments {sorted(spec)}; "
                         f"missing {missing}, unexpected {unknown}")
    for name, kind in spec.items():
        if not _type_ok(args[name], kind):
            raise ValueError(f"IFEval: {instruction_id}{at} argument {name}={args[name]!r} "
                             f"must be {kind}")
        if name in _RELATION_ARGS and args[name] not in c.RELATIONS:
            raise ValueError(f"IFEval: {instruction_id}{at} argument {name}={args[name]!r} "
                             f"must be one of {c.RELATIONS}")
    if instruction_id == "length_constraints:nth_paragraph_first_word" and args["nth_paragraph"] < 1:
        raise ValueError(f"IFEval: {instruction_id}{at} nth_paragraph must be >= 1 (1-based)")
    return args


def check_instruction(instruction_id: str, response: str, kwargs: dict | None = None) -> bool:
    """Run one checker on one (already non-blank) response, after validating its arguments.

    This is the raw checker: it does not apply the scorer's rule that a blank response
    follows nothing, nor the loose variants; see ``scorer.follows``.
    """
    args = validate_kwargs(instruction_id, kwargs)
    return bool(INSTRUCTIONS[instruction_id][0](response, **args))
