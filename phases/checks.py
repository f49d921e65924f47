"""The check registry: verifiable checks a stage chooses BY NAME, WITH ARGUMENTS, in its YAML.

Library module (no command). Tests: ``.venv/bin/pytest tests/unit/test_checks.py -q``.

A stage's ``checks:`` list names entries of `REGISTRY` (e.g. ``{name: max_words, args:
{choices: [25, 40]}}``); a new stage of an existing kind picks and parameterises checks in YAML
only. A new *kind* of check is added here once, with a test. Two operations per check:

- ``draw(spec, rng)`` -> an **instance**: ``{"check": name, "text": <constraint sentence the
  user sees>, "instruction_id": <IFEval id or None>, "kwargs": {...}}``. Seeded: the same rng
  state gives the same instance.
- ``verify(instance, response)`` -> bool (strict). IFEval-backed checks run the canonical
  checker (`phases.ifeval.follows`, strict result; a blank response follows nothing); the
  memory checks below are plain string tests on the response.

Memory checks (multi-turn, Multi-IF style): ``recall`` (the response contains a fact the user
gave in an earlier turn), ``resolve_reference`` (the response names what "it"/"that one"
refers to), ``avoid`` (a word the user banned, e.g. in a correction, is absent). A *remembered
constraint* is any check drawn in turn k and verified on a later turn (see phases/multiturn.py).
Case-insensitive whole-word matching; whitespace is normalised.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, Callable

from phases.ifeval import follows
from phases.ifeval.registry import validate_kwargs
from runner.errors import ConfigError

__all__ = ["CheckDef", "REGISTRY", "validate_spec", "draw", "verify", "has_word"]


@dataclass(frozen=True)
class CheckDef:
    """One kind of check. ``args``: allowed argument -> python type of its value (all optional
    unless listed in ``required``). ``make(args, rng)`` -> (text, instruction_id|None, kwargs)."""

    name: str
    doc: str
    args: dict[str, type]
    make: Callable[[dict, random.Random], tuple[str, Any, dict]]
    required: tuple[str, ...] = ()


def has_word(text: str, word: str) -> bool:
    """Whole-word (or whole-phrase), case-insensitive; whitespace runs count as one space."""
    norm = lambda s: re.sub(r"\s+", " ", s.strip().lower())  # noqa: E731
    return re.search(r"(?<!\w)" + re.escape(norm(word)) + r"(?!\w)", norm(text)) is not None


def _pick(args: dict, key: str, default: list, rng: random.Random) -> Any:
    return rng.choice(list(args.get(key) or default))


def _lowercase(a, rng):
    return ("Your entire response should be in English, and in all lowercase letters. No capital letters are allowed.",
            "change_case:english_lowercase", {})


def _max_words(a, rng):
    n = _pick(a, "choices", [25, 40, 60], rng)
    return f"Answer with less than {n} words.", "length_constraints:number_words", {"num_words": n, "relation": "less than"}


def _min_words(a, rng):
    n = _pick(a, "choices", [15, 25], rng)
    return f"Answer with at least {n} words.", "length_constraints:number_words", {"num_words": n, "relation": "at least"}


KEYWORD_POOL = ("simple", "example", "important", "clear", "today", "because", "detail", "result")
END_PHRASES = ("Is there anything else I can help with?", "That is all.", "Hope this helps.")


def _keywords(a, rng):
    ks = rng.sample(list(a.get("pool") or KEYWORD_POOL), int(a.get("count", 2)))
    text = "Include the keywords " + " and ".join(ks) + " in the response."
    return text, "keywords:existence", {"keywords": ks}


def _no_comma(a, rng):
    return "In your entire response, refrain from the use of any commas.", "punctuation:no_comma", {}


def _end_phrase(a, rng):
    ph = _pick(a, "phrases", list(END_PHRASES), rng)
    return (f"Finish your response with this exact phrase: {ph} No other words should follow this phrase.",
            "startend:end_checker", {"end_phrase": ph})


def _bullets(a, rng):
    n = _pick(a, "choices", [2, 3, 4], rng)
    return (f"Your answer must contain exactly {n} bullet points. Use markdown bullet points such as: * This is a point.",
            "detectable_format:number_bullet_lists", {"num_bullets": n})


def _ifeval(a, rng):
    kwargs = validate_kwargs(a["instruction_id"], a.get("kwargs") or {}, where="check 'ifeval'")
    return str(a["text"]), a["instruction_id"], kwargs


def _recall(a, rng):
    fact = _pick(a, "facts", [], rng)
    return str(a.get("text", "Mention {fact}.")).format(fact=fact), None, {"words": [fact]}


def _resolve_reference(a, rng):
    ref = str(a["referent"])
    return str(a.get("text", "")), None, {"words": [ref]}


def _avoid(a, rng):
    words = list(a["words"])
    return f"Do not use the word{'s' if len(words) > 1 else ''} " + ", ".join(words) + ".", None, {"forbidden": words}


REGISTRY: dict[str, CheckDef] = {c.name: c for c in (
    CheckDef("lowercase", "all lowercase (IFEval change_case:english_lowercase)", {}, _lowercase),
    CheckDef("max_words", "fewer than N words; N drawn from choices", {"choices": list}, _max_words),
    CheckDef("min_words", "at least N words; N drawn from choices", {"choices": list}, _min_words),
    CheckDef("keywords", "include `count` keywords drawn from `pool`", {"pool": list, "count": int}, _keywords),
    CheckDef("no_comma", "no commas", {}, _no_comma),
    CheckDef("end_phrase", "end with a phrase drawn from `phrases`", {"phrases": list}, _end_phrase),
    CheckDef("bullets", "exactly N markdown bullets; N drawn from choices", {"choices": list}, _bullets),
    CheckDef("ifeval", "any IFEval instruction id with its kwargs and the sentence shown to the user",
             {"instruction_id": str, "kwargs": dict, "text": str}, _ifeval, required=("instruction_id", "text")),
    CheckDef("recall", "the response contains a fact (drawn from `facts`) the user gave earlier",
             {"facts": list, "text": str}, _recall, required=("facts",)),
    CheckDef("resolve_reference", "the response names `referent` (what 'it'/'that one' points to)",
             {"referent": str, "text": str}, _resolve_reference, required=("referent",)),
    CheckDef("avoid", "none of `words` appears (e.g. after a correction)", {"words": list}, _avoid,
             required=("words",)),
)}


def validate_spec(spec: Any, where: str) -> dict:
    """Check one ``{name, args}`` entry of a stage's ``checks:``; returns ``{"name", "args"}``.

    Raises `ConfigError` naming ``where`` (file and key), the value and the allowed names/args.
    """
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ConfigError(f"{where} = {spec!r}: expected a check name or a mapping {{name: ..., args: {{...}}}}")
    extra = sorted(set(spec) - {"name", "args"})
    if extra:
        raise ConfigError(f"{where}: unknown key(s) {extra}; a check entry has 'name' and optional 'args'")
    name, args = spec["name"], spec.get("args") or {}
    if name not in REGISTRY:
        raise ConfigError(f"{where}.name = {name!r}: unknown check; known: {sorted(REGISTRY)} "
                          "(a new kind of check is added to phases/checks.py with a test)")
    if not isinstance(args, dict):
        raise ConfigError(f"{where}.args = {args!r}: expected a mapping of argument -> value")
    d = REGISTRY[name]
    for k, v in args.items():
        if k not in d.args:
            raise ConfigError(f"{where}.args.{k}: check {name!r} has no argument {k!r} (arguments: {sorted(d.args) or 'none'})")
        if not isinstance(v, d.args[k]) or isinstance(v, bool):
            raise ConfigError(f"{where}.args.{k} = {v!r}: expected {d.args[k].__name__}")
        if d.args[k] is list and not v:
            raise ConfigError(f"{where}.args.{k}: the list is empty; give at least one value")
    missing = [k for k in d.required if k not in args]
    if missing:
        raise ConfigError(f"{where}.args: check {name!r} needs argument(s) {missing}")
    try:  # a dry draw catches bad IFEval kwargs or counts larger than a pool at load time
        d.make(dict(args), random.Random(0))
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise ConfigError(f"{where}: check {name!r} with args {args!r} cannot be drawn: {e}") from None
    return {"name": name, "args": dict(args)}


def draw(spec: dict, rng: random.Random) -> dict:
    """One instance of a validated check spec (see the module docstring for its shape)."""
    text, iid, kwargs = REGISTRY[spec["name"]].make(dict(spec.get("args") or {}), rng)
    return {"check": spec["name"], "text": text, "instruction_id": iid, "kwargs": kwargs}


def verify(instance: dict, response: str) -> bool:
    """Strict verdict of one check instance on one response (blank responses fail)."""
    if not response.strip():
        return False
    if instance.get("instruction_id"):
        return bool(follows(instance["instruction_id"], instance["kwargs"], response)[0])
    kw = instance["kwargs"]
    if "words" in kw:
        return all(has_word(response, w) for w in kw["words"])
    if "forbidden" in kw:
        return not any(has_word(response, w) for w in kw["forbidden"])
    raise ValueError(f"check instance {instance!r}: neither an IFEval id nor a memory check; "
                     "was it made by phases.checks.draw?")
