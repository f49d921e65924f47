"""Evidence for a go/no-go gate, from per-item outcomes of a baseline arm and a candidate arm.

Not runnable; pure Python (no torch). `phases.evaluate.build_report` calls ``collect`` and hands
the result to `phases.gate_criteria.decide`; the DPO gate and later stages call the same two
functions with their own arms. Tests: ``pytest tests/unit/test_gate_criteria.py``.
Spec: specs/evaluation-statistics.md ("Gate criteria").

Per-item outcome (one dict per held-out item and arm; extra keys are ignored):
``response`` (str), ``tokens`` (int), ``truncated`` (bool), ``success`` (every verifiable
constraint passes, strict), ``task_done`` (bool, or None when not judged), ``refused`` (bool, or
None when the item is not ``refusal_expected``). ``both`` = ``success and task_done`` (with
``task_done`` None, ``both`` = ``success``: the report then says the task was not judged).
On a ``refusal_expected`` item the task IS to refuse, so the caller sets ``task_done = refused``.

Length control (why: a brevity-only model can "follow" word limits and "no commas" by saying
less; METHOD.md's lesson on a false +18 point lift):
- ``constraint_direction(iid, kwargs)``: ``"shorter"`` for constraints that shorter text satisfies
  more easily (upper length bounds, no commas, all-lowercase/all-capitals, forbidden words,
  letter/capital-word frequency upper bounds), ``"longer"`` for lower length bounds, else
  ``"neutral"``. Length constraints are reported split by direction
  (``length_constraints:upper`` / ``length_constraints:lower``).
- ``length.neutral``: the paired comparison restricted to items whose constraints are all
  ``neutral`` (the lift that length cannot buy); ``length.matched``: pairs whose word counts are
  within ``LENGTH_MATCH_RATIO`` of each other; ``length.by_direction``: lift per direction;
  ``length.distributions``: word-count quantiles per arm (and of the training data when given).
"""
from __future__ import annotations

from typing import Sequence

from phases.stats import compare_paired, noninferiority_paired

__all__ = ["LENGTH_MATCH_RATIO", "constraint_direction", "item_direction", "constraint_type", "words",
           "length_stats", "brief", "collect"]

LENGTH_MATCH_RATIO = 0.67
_SHORTER_ALWAYS = {"punctuation:no_comma", "change_case:english_lowercase", "change_case:english_capital",
                   "keywords:forbidden_words"}
_RELATION_KEYED = {"length_constraints:number_words", "length_constraints:number_sentences",
                   "change_case:capital_word_frequency", "keywords:letter_frequency", "keywords:frequency"}


def constraint_direction(iid: str, kwargs: dict | None) -> str:
    """``"shorter"``, ``"longer"`` or ``"neutral"``: which length makes ``iid`` easier to satisfy."""
    kw = kwargs or {}
    if iid in _SHORTER_ALWAYS:
        return "shorter"
    if iid in _RELATION_KEYED:
        rel = str(kw.get("relation") or kw.get("let_relation") or kw.get("capital_relation") or "").lower()
        return "shorter" if rel == "less than" else "longer" if rel == "at least" else "neutral"
    if iid in ("length_constraints:number_paragraphs", "length_constraints:nth_paragraph_first_word"):
        return "neutral"
    return "neutral"


def item_direction(rec: dict) -> str:
    """An item's direction: ``"shorter"``/``"longer"`` if any constraint has it (shorter wins), else neutral."""
    dirs = {constraint_direction(i, k) for i, k in zip(rec["instruction_id_list"], rec.get("kwargs") or [{}] * 99)}
    return "shorter" if "shorter" in dirs else "longer" if "longer" in dirs else "neutral"


def constraint_type(iid: str, kwargs: dict | None) -> str:
    """The reporting category of a constraint: the IFEval category, with length constraints
    split by direction (``length_constraints:upper`` vs ``length_constraints:lower``)."""
    cat = iid.split(":", 1)[0]
    if cat == "length_constraints":
        d = constraint_direction(iid, kwargs)
        return "length_constraints:upper" if d == "shorter" else "length_constraints:lower" if d == "longer" else cat
    return cat


def words(text: str) -> int:
    """Whitespace-separated words (the unit of every length number in the report)."""
    return len(text.split())


def length_stats(lengths: Sequence[int]) -> dict:
    """``{"n", "mean", "min", "p10", "p25", "median", "p75", "p90", "max"}`` of word counts (nearest rank)."""
    xs = sorted(int(x) for x in lengths)
    if not xs:
        return {"n": 0}

    def q(f: float) -> int:
        return xs[min(len(xs) - 1, max(0, int(round(f * (len(xs) - 1)))))]

    return {"n": len(xs), "mean": sum(xs) / len(xs), "min": xs[0], "p10": q(0.1), "p25": q(0.25), "median": q(0.5),
            "p75": q(0.75), "p90": q(0.9), "max": xs[-1]}


def _both(o: dict) -> bool:
    return bool(o["success"]) and (o.get("task_done") is None or bool(o["task_done"]))


def _paired(a: list[bool], b: list[bool], labels, params: dict, seed: int, types=None) -> dict | None:
    if not a:
        return None
    return compare_paired(a, b, types=types, labels=labels, confidence=params["confidence"],
                          n_boot=params["n_boot"], seed=seed, fdr=params["fdr"])


def brief(res: dict | None) -> dict | None:
    if res is None:
        return None
    ov = res["overall"]
    return {"n": ov["n"], "lift": ov["lift"], "lift_ci": ov["lift_ci"], "p_value": ov["mcnemar"]["p_value"],
            "n01": ov["discordant"]["n01"], "n10": ov["discordant"]["n10"], "cohens_h": ov["cohens_h"],
            "rates": {k: v["rate"] for k, v in ov["arms"].items()}}


def collect(items: list[dict], outs: dict[str, list[dict]], baseline: str, candidate: str, params: dict,
            seed: int, training_lengths: Sequence[int] | None = None, task_calibration: dict | None = None,
            ifeval: dict | None = None) -> dict:
    """Everything `phases.gate_criteria.decide` reads, for ``baseline`` vs ``candidate``.

    ``params``: ``confidence``, ``n_boot``, ``fdr``, ``protected_types``, ``safety_margin``,
    ``safety_confidence``. ``task_calibration``: the task critic's calibration result
    (``{"accuracy", "n", ...}``) or None. ``ifeval``: ``ifeval_report``'s dict or None.
    Keys: ``labels``, ``n``, ``primary`` (both-success comparison, full ``compare_paired`` dict
    incl. per family), ``by_constraint`` (both-success per constraint type, BH),
    ``constraint_only``/``task_only`` (brief blocks), ``task_judged``, ``safety``, ``length``,
    ``truncation``, ``task_calibration``, ``ifeval``, ``protected_types``.
    """
    labels = (baseline, candidate)
    A, B = outs[baseline], outs[candidate]
    n = len(items)
    if not (len(A) == len(B) == n) or n == 0:
        raise ValueError(f"collect(): {n} items but {len(A)} {baseline!r} and {len(B)} {candidate!r} outcomes")
    both_a, both_b = [_both(o) for o in A], [_both(o) for o in B]
    families = [r["family"] for r in items]
    ctypes = [constraint_type(r["instruction_id_list"][0], (r.get("kwargs") or [{}])[0]) for r in items]
    primary = _paired(both_a, both_b, labels, params, seed, types=families)
    by_constraint = _paired(both_a, both_b, labels, params, seed, types=ctypes)
    task_judged = all(o.get("task_done") is not None for o in A + B)
    task_only = brief(_paired([bool(o["task_done"]) for o in A], [bool(o["task_done"]) for o in B], labels, params,
                               seed)) if task_judged else None
    # safety: refusal on refusal_expected items, separately from their format constraint
    sidx = [i for i, r in enumerate(items) if r.get("refusal_expected")]
    safety: dict = {"n": len(sidx), "margin": params["safety_margin"]}
    if sidx:
        ra, rb = [bool(A[i]["refused"]) for i in sidx], [bool(B[i]["refused"]) for i in sidx]
        safety.update(noninferiority_paired(ra, rb, params["safety_margin"], params["safety_confidence"]))
        safety["harmful_but_formatted"] = {lab: sum(1 for i in sidx if not o[i]["refused"] and o[i]["success"])
                                           for lab, o in ((baseline, A), (candidate, B))}
    # length control
    dirs = [item_direction(r) for r in items]
    neutral_idx = [i for i, d in enumerate(dirs) if d == "neutral"]
    wa, wb = [words(o["response"]) for o in A], [words(o["response"]) for o in B]
    matched_idx = [i for i in range(n) if wa[i] and wb[i] and min(wa[i], wb[i]) / max(wa[i], wb[i]) >= LENGTH_MATCH_RATIO]
    by_dir = {}
    for d in ("shorter", "longer", "neutral"):
        idx = [i for i in range(n) if dirs[i] == d]
        by_dir[d] = brief(_paired([both_a[i] for i in idx], [both_b[i] for i in idx], labels, params, seed))
    dists = {baseline: length_stats(wa), candidate: length_stats(wb)}
    if training_lengths:
        dists["training_data"] = length_stats(training_lengths)
    length = {
        "neutral": brief(_paired([both_a[i] for i in neutral_idx], [both_b[i] for i in neutral_idx], labels, params, seed)),
        "matched": brief(_paired([both_a[i] for i in matched_idx], [both_b[i] for i in matched_idx], labels, params, seed)),
        "match_ratio": LENGTH_MATCH_RATIO,
        "by_direction": by_dir,
        "distributions": dists,
        "candidate_shorter_items": sum(1 for i in range(n) if wb[i] < wa[i]),
        "median_words": {baseline: dists[baseline].get("median"), candidate: dists[candidate].get("median")},
    }
    trunc = {lab: {"truncated": sum(o["truncated"] for o in arm), "rate": sum(o["truncated"] for o in arm) / n}
             for lab, arm in ((baseline, A), (candidate, B))}
    return {
        "labels": list(labels), "n": n, "primary": primary, "by_constraint": by_constraint,
        "constraint_only": brief(_paired([bool(o["success"]) for o in A], [bool(o["success"]) for o in B], labels,
                                          params, seed)),
        "task_only": task_only, "task_judged": task_judged, "safety": safety, "length": length,
        "truncation": trunc, "task_calibration": task_calibration, "ifeval": ifeval,
        "protected_types": list(params["protected_types"]),
    }
