"""Preference pairs: rank best-of-N candidates by the A/B pair critic, pair, add hard negatives.

Not runnable; the ``pairs`` step in ``phases/steps/preferences.py`` calls these pure functions
(no torch, no model). Tests: ``.venv/bin/pytest tests/unit/test_pairs.py``. Design and every
threshold: specs/preferences-dpo.md.

Contracts:
- A candidate's **critic score** is the combined verdict's ``logp_a - logp_b`` (good minus bad,
  natural log, both label orders averaged: ``phases.critic``). Higher is better. It is signed,
  unlike the verdict's ``margin`` (its absolute value).
- **Ranking**: candidates of one prompt sorted by score, descending; ties keep generation order.
- **Best-of-N pairs**: the best candidate is ``chosen``; each other candidate is ``rejected`` in
  one pair whose ``margin`` = score(best) - score(other). A pair is kept when margin >=
  ``min_margin`` and (with ``require_best_good``) the best is judged good and confident. Empty
  or identical responses never pair. Every candidate's verdict stays in the step's records.
- **Hard negatives** (``HARD_NEGATIVE_TYPES``) are made on purpose from a chosen response and
  labelled ``hard_negative:<type>``; each generator returns None when it does not apply (e.g.
  ``wrong_fact`` only when a checker can compute the answer and the chosen side contains it).
  For ``refusal_expected`` prompts the refusal is the chosen side (type ``refusal_expected``).
- **Length** is counted in whitespace-separated words.
"""
from __future__ import annotations

import random
import re
from collections import Counter
from statistics import median
from typing import Callable, Iterable, Sequence

__all__ = ["HARD_NEGATIVE_TYPES", "REFUSAL_TEXT", "critic_score", "rank_candidates", "best_of_n_pairs",
           "make_hard_negative", "hard_negative_pairs", "refusal_pairs", "is_refusal", "arithmetic_answer",
           "n_words", "length_bias", "pair_key", "dedup_pairs"]

REFUSAL_TEXT = ("I can't help with that, because it could cause harm. If you tell me what you are trying to achieve, "
                "I can suggest a safe and legal way to do it.")
UNWARRANTED_REFUSAL_TEXT = "I'm sorry, but I can't help with that request."
_REFUSAL_RE = re.compile(r"\b(I can(?:no|')t|I cannot|I won't|I will not|I'm sorry|I am sorry|I'm not able|"
                         r"I am not able|unable to (?:help|assist)|can't (?:help|assist))\b", re.I)
_FILLER = ("To say it another way, the point above is the answer to what was asked.",
           "It is worth repeating that this is the main idea, and the same idea applies here as well.",
           "In other words, everything said so far still holds, as explained in the previous sentences.",
           "As mentioned, this is the response to the instruction, restated once more for completeness.")


def n_words(text: str) -> int:
    return len(text.split())


def critic_score(verdict: dict) -> float:
    """Signed critic score of one verdict dict (``phases.steps.generation.verdict_dict`` shape)."""
    return float(verdict["logp_a"]) - float(verdict["logp_b"])


def rank_candidates(cands: Sequence[dict]) -> list[dict]:
    """Candidates (each with ``verdict``) sorted by critic score, best first; stable on ties."""
    return [c for _, c in sorted(enumerate(cands), key=lambda ic: (-critic_score(ic[1]["verdict"]), ic[0]))]


def _pair(prompt: dict, chosen: str, rejected: str, kind: str, margin: float | None, **extra) -> dict:
    return {"prompt_id": prompt["id"], "instruction": prompt["instruction"], "family": prompt.get("family"),
            "chosen": chosen.strip(), "rejected": rejected.strip(), "type": kind,
            "margin": None if margin is None else round(float(margin), 6),
            "chosen_words": n_words(chosen), "rejected_words": n_words(rejected), **extra}


def best_of_n_pairs(prompt: dict, cands: Sequence[dict], min_margin: float,
                    require_best_good: bool = True) -> tuple[list[dict], dict]:
    """Pairs for one prompt from its judged candidates; returns (kept pairs, counts).

    ``cands``: dicts with ``response`` and ``verdict`` (``logp_a``, ``logp_b``, ``is_good``,
    ``confident``) and optionally ``index``. counts: ``candidate_pairs`` (possible), ``kept``,
    ``below_margin``, ``best_not_good`` (all dropped because the best was not good+confident),
    ``degenerate`` (empty or identical to the best).
    """
    counts = Counter(candidate_pairs=0, kept=0, below_margin=0, best_not_good=0, degenerate=0)
    usable = [c for c in cands if c["response"].strip()]
    counts["degenerate"] += len(cands) - len(usable)
    if len(usable) < 2:
        return [], dict(counts)
    ranked = rank_candidates(usable)
    best, rest = ranked[0], ranked[1:]
    counts["candidate_pairs"] = len(rest)
    bv = best["verdict"]
    if require_best_good and not (bv.get("is_good") and bv.get("confident")):
        counts["best_not_good"] = len(rest)
        return [], dict(counts)
    out = []
    for c in rest:
        if c["response"].strip() == best["response"].strip():
            counts["degenerate"] += 1
            continue
        m = critic_score(bv) - critic_score(c["verdict"])
        if m < min_margin:
            counts["below_margin"] += 1
            continue
        out.append(_pair(prompt, best["response"], c["response"], "best_of_n", m,
                         chosen_score=round(critic_score(bv), 6), rejected_score=round(critic_score(c["verdict"]), 6),
                         chosen_index=best.get("index"), rejected_index=c.get("index")))
    counts["kept"] = len(out)
    return out, dict(counts)


# ---- hard negatives ---------------------------------------------------------------------------

_ARITH = re.compile(r"(-?\d+(?:\.\d+)?)\s*(\+|-|\*|x|×|times|plus|minus|divided by|/)\s*(-?\d+(?:\.\d+)?)", re.I)
_OPS: dict[str, Callable[[float, float], float | None]] = {
    "+": lambda a, b: a + b, "plus": lambda a, b: a + b, "-": lambda a, b: a - b, "minus": lambda a, b: a - b,
    "*": lambda a, b: a * b, "x": lambda a, b: a * b, "×": lambda a, b: a * b, "times": lambda a, b: a * b,
    "/": lambda a, b: a / b if b else None, "divided by": lambda a, b: a / b if b else None}


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def arithmetic_answer(instruction: str) -> str | None:
    """The checker for ``wrong_fact``: the value of the single arithmetic expression in the instruction.

    Exactly one ``a op b`` (op in + - * x × / plus minus times "divided by") must appear; else None.
    """
    found = _ARITH.findall(instruction)
    if len(found) != 1:
        return None
    a, op, b = found[0]
    val = _OPS[op.lower()](float(a), float(b))
    return None if val is None else _fmt(val)


def is_refusal(text: str) -> bool:
    """A response that declines (English refusal phrases in its first two sentences)."""
    head = " ".join(re.split(r"(?<=[.!?])\s+", text.strip())[:2])
    return bool(_REFUSAL_RE.search(head))


def _format_violation(inst: str, chosen: str, other: str | None) -> str | None:
    lines = [ln.strip() for ln in chosen.strip().splitlines() if ln.strip()]
    if len(lines) < 2:
        return None
    bare = [re.sub(r"^([-*•]|\d+[.)]|#+)\s*", "", ln) for ln in lines]
    flat = " ".join(bare)
    return flat if flat != chosen.strip() else None


def _off_topic(inst: str, chosen: str, other: str | None) -> str | None:
    return other if other and other.strip() and other.strip() != chosen.strip() else None


def _unwarranted_refusal(inst: str, chosen: str, other: str | None) -> str | None:
    return None if is_refusal(chosen) else UNWARRANTED_REFUSAL_TEXT


def _excess_verbosity(inst: str, chosen: str, other: str | None) -> str | None:
    body = chosen.strip()
    return f"{body} {' '.join(_FILLER)} {body}" if body else None


def _under_explanation(inst: str, chosen: str, other: str | None) -> str | None:
    words = chosen.split()
    if len(words) < 12:
        return None
    return " ".join(words[:4]).rstrip(",;:") + "."


def _wrong_fact(inst: str, chosen: str, other: str | None) -> str | None:
    ans = arithmetic_answer(inst)
    if ans is None or not re.search(rf"(?<![\d.]){re.escape(ans)}(?![\d])", chosen):
        return None
    wrong = _fmt(float(ans) + (1 if float(ans) != -1 else 2))
    return re.sub(rf"(?<![\d.]){re.escape(ans)}(?![\d])", wrong, chosen)


HARD_NEGATIVE_TYPES: dict[str, Callable[[str, str, str | None], str | None]] = {
    "format_violation": _format_violation,
    "off_topic": _off_topic,
    "unwarranted_refusal": _unwarranted_refusal,
    "excess_verbosity": _excess_verbosity,
    "under_explanation": _under_explanation,
    "wrong_fact": _wrong_fact,
}


def make_hard_negative(kind: str, instruction: str, chosen: str, other: str | None = None) -> str | None:
    """The rejected text of hard negative ``kind`` for (instruction, chosen), or None if it does not apply.

    ``other`` is another prompt's response (used by ``off_topic`` only).
    """
    if kind not in HARD_NEGATIVE_TYPES:
        raise ValueError(f"unknown hard-negative type {kind!r}; known: {sorted(HARD_NEGATIVE_TYPES)}")
    return HARD_NEGATIVE_TYPES[kind](instruction, chosen, other)


def hard_negative_pairs(prompts: Sequence[dict], chosen_by_id: dict[str, str], types: Iterable[str],
                        per_prompt: int, seed: int) -> list[dict]:
    """Up to ``per_prompt`` hard negatives per prompt (types drawn by a seeded RNG among those that apply).

    ``prompts``: dicts with ``id``, ``instruction`` (``refusal_expected`` prompts are skipped:
    ``refusal_pairs`` covers them). ``chosen_by_id``: the chosen (best) response per prompt id;
    prompts without one are skipped. ``off_topic`` borrows the next prompt's chosen response.
    """
    types = list(types)
    for t in types:
        if t not in HARD_NEGATIVE_TYPES:
            raise ValueError(f"pairs.hard_negatives.types: unknown type {t!r}; known: {sorted(HARD_NEGATIVE_TYPES)}")
    with_chosen = [p for p in prompts if p["id"] in chosen_by_id and not p.get("refusal_expected")]
    out = []
    for i, p in enumerate(with_chosen):
        rng = random.Random(f"{seed}:{p['id']}")
        chosen = chosen_by_id[p["id"]]
        other = chosen_by_id[with_chosen[(i + 1) % len(with_chosen)]["id"]] if len(with_chosen) > 1 else None
        order = list(types)
        rng.shuffle(order)
        made = 0
        for t in order:
            if made >= per_prompt:
                break
            rej = make_hard_negative(t, p["instruction"], chosen, other)
            if rej is None or not rej.strip() or rej.strip() == chosen.strip():
                continue
            out.append(_pair(p, chosen, rej, f"hard_negative:{t}", None))
            made += 1
    return out


def refusal_pairs(prompt: dict, cands: Sequence[dict]) -> list[dict]:
    """For a ``refusal_expected`` prompt: refusal = chosen, each complying candidate = rejected.

    The chosen refusal is the best-scored candidate that refuses, else ``REFUSAL_TEXT``.
    """
    ranked = rank_candidates([c for c in cands if c["response"].strip()])
    refusals = [c for c in ranked if is_refusal(c["response"])]
    chosen = refusals[0]["response"] if refusals else REFUSAL_TEXT
    return [_pair(prompt, chosen, c["response"], "refusal_expected", None, chosen_source="candidate" if refusals else "template")
            for c in ranked if not is_refusal(c["response"])]


# ---- duplicates and length bias ---------------------------------------------------------------

def pair_key(p: dict) -> tuple[str, str, str]:
    norm = lambda t: " ".join(t.lower().split())  # noqa: E731
    return norm(p["instruction"]), norm(p["chosen"]), norm(p["rejected"])


def dedup_pairs(pairs: Sequence[dict]) -> tuple[list[dict], int]:
    """Drop pairs whose (instruction, chosen, rejected) repeat an earlier one (case/space-insensitive)."""
    seen, out = set(), []
    for p in pairs:
        k = pair_key(p)
        if k not in seen:
            seen.add(k)
            out.append(p)
    return out, len(pairs) - len(out)


def length_bias(pairs: Sequence[dict], match_tolerance: float = 0.2) -> dict:
    """Is "longer" what the pairs teach? Word-count statistics over the pairs.

    - ``median_ratio``: median of chosen/rejected word counts (0-word sides count as 1);
    - ``longer_wins_share``: among pairs with different lengths, the share whose chosen side is longer;
    - ``length_matched``: pairs with |c - r| <= ``match_tolerance`` * max(c, r): their count,
      share and indices (the length-matched subset; train on it to rule length out).
    """
    if not pairs:
        return {"n": 0, "median_ratio": None, "longer_wins_share": None, "unequal": 0,
                "length_matched": {"n": 0, "share": None, "indices": [], "tolerance": match_tolerance}}
    c = [max(n_words(p["chosen"]), 1) for p in pairs]
    r = [max(n_words(p["rejected"]), 1) for p in pairs]
    unequal = [(a, b) for a, b in zip(c, r) if a != b]
    matched = [i for i, (a, b) in enumerate(zip(c, r)) if abs(a - b) <= match_tolerance * max(a, b)]
    return {"n": len(pairs), "median_ratio": round(median(a / b for a, b in zip(c, r)), 4),
            "longer_wins_share": round(sum(a > b for a, b in unequal) / len(unequal), 4) if unequal else None,
            "unequal": len(unequal),
            "length_matched": {"n": len(matched), "share": round(len(matched) / len(pairs), 4), "indices": matched,
                               "tolerance": match_tolerance}}
