"""Preference-pair QC: margin histogram, pair-type mix, duplicates, length bias, pass/fail.

Not runnable; the ``pairs`` step writes ``pair_qc.json`` with ``pair_qc(pairs, thresholds)`` and
the ``qc_pairs`` gate reads its ``thresholds_passed``. Tests: ``.venv/bin/pytest tests/unit/test_pairs.py``.
Thresholds come from the stage YAML (``params.pairs.qc``); defaults and reasons:
specs/preferences-dpo.md.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

from phases.pairs import length_bias, pair_key

__all__ = ["PAIR_QC_DEFAULTS", "pair_qc", "margin_histogram"]

PAIR_QC_DEFAULTS: dict[str, Any] = {
    "min_pairs": 200,                 # fewer pairs than this is not a DPO dataset
    "max_duplicate_rate": 0.05,       # duplicates among pairs before dedup
    "max_longer_wins_share": 0.65,    # chosen longer than rejected in more than this share: length is the signal
    "min_median_length_ratio": 0.67,  # median chosen/rejected word ratio must lie in [min, max]
    "max_median_length_ratio": 1.5,
    "min_length_matched_share": 0.2,  # at least this share of pairs within 20% length of each other
    "max_type_share": 0.7,            # no single pair type above this share of all pairs
    "length_match_tolerance": 0.2,
}


def margin_histogram(margins: Sequence[float], edges: Sequence[float] = (0, 0.5, 1, 2, 4, 8)) -> dict:
    """Counts of margins per bin ``[edges[i], edges[i+1])``, the last bin open (``>= edges[-1]``)."""
    bins = [f"[{a:g},{b:g})" for a, b in zip(edges, edges[1:])] + [f">={edges[-1]:g}"]
    counts = Counter()
    for m in margins:
        k = sum(m >= e for e in edges) - 1
        counts[bins[max(k, 0)]] += 1
    return {b: counts.get(b, 0) for b in bins}


def pair_qc(pairs: Sequence[dict], thresholds: dict | None = None, n_before_dedup: int | None = None) -> dict:
    """The QC summary of the final pair set (see the module docstring).

    ``n_before_dedup``: the count before ``dedup_pairs`` (duplicate rate = removed / before);
    when None the rate is measured on ``pairs`` themselves. Unknown threshold keys raise ValueError.
    """
    t = {**PAIR_QC_DEFAULTS, **(thresholds or {})}
    unknown = sorted(set(t) - set(PAIR_QC_DEFAULTS))
    if unknown:
        raise ValueError(f"params.pairs.qc: unknown key(s) {unknown}; known: {sorted(PAIR_QC_DEFAULTS)}")
    n = len(pairs)
    dup_in_set = n - len({pair_key(p) for p in pairs})
    before = n if n_before_dedup is None else n_before_dedup
    dup_rate = ((before - n + dup_in_set) / before) if before else 0.0
    types = Counter(p["type"] for p in pairs)
    principles = Counter(pid for p in pairs for pid in p.get("principle_ids") or [])
    margins = [p["margin"] for p in pairs if p.get("margin") is not None]
    lb = length_bias(pairs, t["length_match_tolerance"])
    fails = []
    if n < t["min_pairs"]:
        fails.append(f"pairs {n} < min_pairs {t['min_pairs']}")
    if dup_rate > t["max_duplicate_rate"]:
        fails.append(f"duplicate rate {dup_rate:.3f} > {t['max_duplicate_rate']}")
    if lb["longer_wins_share"] is not None and lb["longer_wins_share"] > t["max_longer_wins_share"]:
        fails.append(f"longer side wins in {lb['longer_wins_share']:.3f} of pairs > {t['max_longer_wins_share']} "
                     "(length would be what DPO learns)")
    if lb["median_ratio"] is not None and not t["min_median_length_ratio"] <= lb["median_ratio"] <= t["max_median_length_ratio"]:
        fails.append(f"median chosen/rejected length ratio {lb['median_ratio']} outside "
                     f"[{t['min_median_length_ratio']}, {t['max_median_length_ratio']}]")
    if n and lb["length_matched"]["share"] < t["min_length_matched_share"]:
        fails.append(f"length-matched share {lb['length_matched']['share']:.3f} < {t['min_length_matched_share']}")
    top = types.most_common(1)
    if n and top and top[0][1] / n > t["max_type_share"]:
        fails.append(f"pair type {top[0][0]!r} is {top[0][1] / n:.3f} of pairs > max_type_share {t['max_type_share']}")
    return {
        "schema": "pair_qc/v1", "n_pairs": n, "n_before_dedup": before, "duplicate_rate": round(dup_rate, 4),
        "type_mix": dict(sorted(types.items())),
        "type_share": {k: round(v / n, 4) for k, v in sorted(types.items())} if n else {},
        "principle_usage": dict(sorted(principles.items())),
        "margin": {"n": len(margins), "histogram": margin_histogram(margins),
                   "min": round(min(margins), 4) if margins else None,
                   "median": round(sorted(margins)[len(margins) // 2], 4) if margins else None},
        "length_bias": {k: v for k, v in lb.items() if k != "length_matched"}
                       | {"length_matched": {k: v for k, v in lb["length_matched"].items() if k != "indices"}},
        "thresholds": t, "thresholds_passed": not fails, "failed_reasons": fails,
    }
