"""Paired-evaluation statistics: the one canonical statistics module of the project.

Library module, not a script (nothing to run directly). Tests:
    .venv/bin/pytest tests/unit/test_stats.py -q

What it computes (see specs/evaluation-statistics.md for the formulas):

- ``wilson_ci``: Wilson score interval for a binomial proportion, any confidence level.
- ``mcnemar``: McNemar test on the discordant pairs (n01, n10). Both the continuity-corrected
  chi-square test and the exact two-sided binomial test are always computed and reported; the
  one that *counts* is the exact test when ``n01 + n10 < EXACT_THRESHOLD`` (25) and the
  chi-square test otherwise.
- ``cohens_h``: Cohen's h effect size between two proportions.
- ``bootstrap_lift_ci``: paired bootstrap percentile CI of the lift (trained rate - base rate),
  numpy ``Generator`` with a fixed seed.
- ``benjamini_hochberg``: BH step-up adjusted p-values (FDR control).
- ``compare_paired``: everything above for one paired A/B evaluation, overall and per item type,
  as the JSON-ready dict described in METHOD.md "Evaluation".
- ``summary_text``: a short human summary that ends with one ``GO: ...`` / ``NO-GO: ...`` line.
- ``noninferiority_paired``: one-sided non-inferiority test of a paired difference in
  proportions with a margin (Agresti-Min adjusted Wald bound), used for the safety criterion.

Conventions used throughout:
- Arm ``a`` is the baseline ("base"), arm ``b`` the candidate ("trained").
- ``n01`` = items where a failed and b succeeded (improvements);
  ``n10`` = items where a succeeded and b failed (regressions).
- Every number returned is a finite Python float or int (JSON-safe, no NaN).

Import cost is kept low: only the standard library at import; numpy is imported inside
``bootstrap_lift_ci``. scipy/statsmodels are not used here (the tests compare against them).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Iterable, Sequence

__all__ = [
    "EXACT_THRESHOLD",
    "DEFAULT_N_BOOT",
    "DEFAULT_SEED",
    "DEFAULT_FDR",
    "DEFAULT_PROTECTED_TYPES",
    "wilson_ci",
    "mcnemar",
    "mcnemar_exact",
    "mcnemar_chi2",
    "cohens_h",
    "bootstrap_lift_ci",
    "benjamini_hochberg",
    "compare_paired",
    "summary_text",
    "noninferiority_paired",
]

#: The exact binomial McNemar test is the one reported as "the" p-value when the number of
#: discordant pairs n01 + n10 is below this; otherwise the continuity-corrected chi-square.
#: 25 is the usual rule of thumb (and statsmodels' documented recommendation): below it the
#: chi-square approximation to Binomial(n, 1/2) is poor.
EXACT_THRESHOLD = 25
DEFAULT_N_BOOT = 10_000
DEFAULT_SEED = 0
DEFAULT_FDR = 0.10
DEFAULT_PROTECTED_TYPES = ("safety", "format")


# --------------------------------------------------------------------------------------------
# validation helpers


def _check_confidence(confidence: float) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)):
        raise ValueError(f"confidence must be a number in (0, 1), got {confidence!r}")
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be in the open interval (0, 1), got {confidence!r}")
    return float(confidence)


def _check_count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _z(confidence: float) -> float:
    """Two-sided standard-normal critical value, e.g. 1.959963984540054 for 0.95."""
    return NormalDist().inv_cdf(1.0 - (1.0 - confidence) / 2.0)


def _as_outcomes(name: str, values: Iterable) -> list[bool]:
    """Validate a list of per-item outcomes: bools (or the ints 0/1)."""
    if isinstance(values, (str, bytes)):
        raise ValueError(f"{name} must be a list of bools, got a string")
    out: list[bool] = []
    for i, v in enumerate(values):
        if isinstance(v, bool):
            out.append(v)
        elif isinstance(v, int) and v in (0, 1):
            out.append(bool(v))
        else:
            raise ValueError(
                f"{name}[{i}] must be a bool (or 0/1), got {v!r}; pass one success flag per item"
            )
    return out


# --------------------------------------------------------------------------------------------
# single-arm and two-arm statistics


def wilson_ci(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion.

    Args:
        successes: number of successes, 0 <= successes <= n.
        n: number of trials, >= 1 (n = 0 has no defined proportion: ValueError).
        confidence: two-sided confidence level in (0, 1); default 0.95.

    Returns:
        (low, high) with 0 <= low <= high <= 1 up to float rounding. Formula, with p = k/n and
        z the two-sided normal quantile: centre = (p + z^2/(2n)) / (1 + z^2/n),
        half-width = z * sqrt(p(1-p)/n + z^2/(4n^2)) / (1 + z^2/n). Same arithmetic as
        statsmodels ``proportion_confint(method="wilson")``, except that rounding residue is
        removed: low is exactly 0.0 when successes == 0 and high exactly 1.0 when
        successes == n (statsmodels can return e.g. 2.8e-17 there).
    """
    _check_count("successes", successes)
    _check_count("n", n)
    if n == 0:
        raise ValueError("wilson_ci: n must be >= 1 (no items, no proportion)")
    if successes > n:
        raise ValueError(f"wilson_ci: successes ({successes}) > n ({n})")
    confidence = _check_confidence(confidence)
    z = _z(confidence)
    z2 = z * z
    p = successes / n
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2.0 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / denom
    # At k = 0 (k = n) the lower (upper) bound is exactly 0 (1); float rounding would leave
    # a residue such as 2.8e-17 there, which is set to the exact value.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return (low, high)


def mcnemar_exact(n01: int, n10: int) -> tuple[float, float]:
    """Exact two-sided McNemar test: the binomial test of min(n01, n10) ~ Binomial(n01+n10, 1/2).

    Returns (statistic, p_value) with statistic = min(n01, n10) and
    p = min(1, 2 * P[X <= min(n01, n10)]), computed with exact integer arithmetic (no mid-p).
    Because Binomial(m, 1/2) is symmetric this equals scipy ``binomtest(k, m, 0.5).pvalue``.
    No discordant pairs (n01 = n10 = 0): statistic 0.0, p 1.0.
    """
    _check_count("n01", n01)
    _check_count("n10", n10)
    m = n01 + n10
    k = min(n01, n10)
    if m == 0:
        return 0.0, 1.0
    term, tail = 1, 1  # C(m, 0); the loop adds C(m, 1) .. C(m, k) incrementally (exact ints)
    for i in range(k):
        term = term * (m - i) // (i + 1)
        tail += term
    # int / int true division is correctly rounded, so this is the exact p to one ulp.
    p = min(1.0, (2 * tail) / (2**m))
    return float(k), p


def mcnemar_chi2(n01: int, n10: int, correction: bool = True) -> tuple[float, float]:
    """Chi-square McNemar test, 1 degree of freedom.

    statistic = (|n01 - n10| - c)^2 / (n01 + n10), c = 1 with ``correction`` (Edwards' continuity
    correction) else 0; p = P[chi2_1 >= statistic] = erfc(sqrt(statistic / 2)). As in
    statsmodels and R's ``mcnemar.test``, |n01 - n10| - c is not clipped at 0, so n01 == n10
    gives statistic 1/(n01+n10) rather than 0. No discordant pairs: statistic 0.0, p 1.0
    (statsmodels returns NaN there).
    """
    _check_count("n01", n01)
    _check_count("n10", n10)
    m = n01 + n10
    if m == 0:
        return 0.0, 1.0
    c = 1.0 if correction else 0.0
    stat = (abs(n01 - n10) - c) ** 2 / m
    return float(stat), float(math.erfc(math.sqrt(stat / 2.0)))


def mcnemar(n01: int, n10: int, exact_threshold: int = EXACT_THRESHOLD) -> dict:
    """McNemar test with both variants reported and the applicable one chosen.

    Rule: if n01 + n10 < ``exact_threshold`` (default 25) the exact binomial test is chosen,
    otherwise the continuity-corrected chi-square test.

    Returns:
        {"method": "exact" | "chi2", "statistic": float, "p_value": float,
         "exact": {"statistic": float, "p_value": float},
         "chi2": {"statistic": float, "p_value": float, "correction": True},
         "n01": int, "n10": int}
    """
    ex_stat, ex_p = mcnemar_exact(n01, n10)
    ch_stat, ch_p = mcnemar_chi2(n01, n10, correction=True)
    method = "exact" if n01 + n10 < exact_threshold else "chi2"
    stat, p = (ex_stat, ex_p) if method == "exact" else (ch_stat, ch_p)
    return {
        "method": method,
        "statistic": stat,
        "p_value": p,
        "exact": {"statistic": ex_stat, "p_value": ex_p},
        "chi2": {"statistic": ch_stat, "p_value": ch_p, "correction": True},
        "n01": n01,
        "n10": n10,
    }


def cohens_h(p_a: float, p_b: float) -> float:
    """Cohen's h = 2*asin(sqrt(p_b)) - 2*asin(sqrt(p_a)): positive when b's rate is higher.

    Rates must lie in [0, 1]. Rules of thumb: |h| 0.2 small, 0.5 medium, 0.8 large.
    Equals statsmodels ``proportion_effectsize(p_b, p_a)``.
    """
    for name, p in (("p_a", p_a), ("p_b", p_b)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"cohens_h: {name} must be a proportion in [0, 1], got {p!r}")
    return 2.0 * math.asin(math.sqrt(p_b)) - 2.0 * math.asin(math.sqrt(p_a))


def bootstrap_lift_ci(
    a: Sequence[bool],
    b: Sequence[bool],
    confidence: float = 0.95,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = DEFAULT_SEED,
) -> tuple[float, float]:
    """Paired bootstrap percentile CI of the lift mean(b) - mean(a).

    Resampling unit: the item (pair), drawn n times with replacement, so the pairing between
    arms is kept. The lift of a resample depends only on how many drawn items are
    improvements (a=0, b=1) and regressions (a=1, b=0), so instead of drawing n indices per
    replicate the three counts (regressions, ties, improvements) are drawn as
    Multinomial(n, (n10/n, (n00+n11)/n, n01/n)), which is the same distribution exactly and
    costs O(n_boot) instead of O(n_boot * n). Generator: ``numpy.random.default_rng(seed)``;
    one call ``rng.multinomial(n, probs, size=n_boot)``, so the same (inputs, n_boot, seed)
    give the same interval on any machine with the same numpy bit-generator (PCG64).
    Interval: ``numpy.quantile`` (linear interpolation) of the n_boot lifts at
    (1-confidence)/2 and 1-(1-confidence)/2.

    Args:
        a, b: paired success flags, same length >= 1.
        confidence: in (0, 1). n_boot: >= 1 replicates. seed: int >= 0.

    Returns:
        (low, high) as floats in [-1, 1].
    """
    import numpy as np  # lazy: keeps the module import light

    a_l = _as_outcomes("a", a)
    b_l = _as_outcomes("b", b)
    _check_pair_lengths(a_l, b_l)
    confidence = _check_confidence(confidence)
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be an int >= 1, got {n_boot!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    n = len(a_l)
    n01 = sum(1 for x, y in zip(a_l, b_l) if not x and y)
    n10 = sum(1 for x, y in zip(a_l, b_l) if x and not y)
    probs = [n10 / n, (n - n01 - n10) / n, n01 / n]
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, probs, size=n_boot)
    lifts = (counts[:, 2] - counts[:, 0]) / n
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(lifts, [tail, 1.0 - tail])
    return float(low), float(high)


def benjamini_hochberg(p_values: Sequence[float], fdr: float = DEFAULT_FDR) -> tuple[list[float], list[bool]]:
    """Benjamini-Hochberg step-up adjustment.

    Adjusted p for the i-th smallest of m p-values: min over j >= i of p_(j) * m / j, capped at
    1, returned in the input order. ``reject[i]`` is ``adjusted[i] <= fdr`` (the BH decision at
    false discovery rate ``fdr``). Matches statsmodels ``multipletests(method="fdr_bh")``.
    An empty input gives ([], []). Every p must be in [0, 1].
    """
    if not 0.0 < fdr < 1.0:
        raise ValueError(f"fdr must be in (0, 1), got {fdr!r}")
    ps = [float(p) for p in p_values]
    for i, p in enumerate(ps):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"benjamini_hochberg: p_values[{i}] = {p!r} is not in [0, 1]")
    m = len(ps)
    if m == 0:
        return [], []
    order = sorted(range(m), key=lambda i: ps[i])
    adjusted = [0.0] * m
    running = 1.0
    for rank in range(m, 0, -1):  # from the largest p down: cumulative minimum
        i = order[rank - 1]
        running = min(running, ps[i] * m / rank)
        adjusted[i] = running
    return adjusted, [q <= fdr for q in adjusted]


# --------------------------------------------------------------------------------------------
# the paired comparison


def _check_pair_lengths(a: list, b: list) -> None:
    if len(a) != len(b):
        raise ValueError(
            f"paired outcomes must have the same length: a has {len(a)}, b has {len(b)}; "
            "both arms must be scored on the same items in the same order"
        )
    if not a:
        raise ValueError("empty evaluation: no items to compare (a and b are both empty)")


def _block(a: list[bool], b: list[bool], labels: tuple[str, str], confidence: float,
           n_boot: int, seed: int) -> dict:
    """All per-group statistics for one set of paired outcomes (len >= 1)."""
    n = len(a)
    n11 = sum(1 for x, y in zip(a, b) if x and y)
    n01 = sum(1 for x, y in zip(a, b) if not x and y)
    n10 = sum(1 for x, y in zip(a, b) if x and not y)
    n00 = n - n11 - n01 - n10
    arms = {}
    for label, outcomes in zip(labels, (a, b)):
        k = sum(outcomes)
        lo, hi = wilson_ci(k, n, confidence)
        arms[label] = {"successes": k, "rate": k / n, "wilson_ci": [lo, hi]}
    rate_a, rate_b = arms[labels[0]]["rate"], arms[labels[1]]["rate"]
    lift_lo, lift_hi = bootstrap_lift_ci(a, b, confidence, n_boot, seed)
    return {
        "n": n,
        "arms": arms,
        "discordant": {"n00": n00, "n01": n01, "n10": n10, "n11": n11},
        "mcnemar": mcnemar(n01, n10),
        "cohens_h": cohens_h(rate_a, rate_b),
        "lift": rate_b - rate_a,
        "lift_ci": [lift_lo, lift_hi],
    }


def compare_paired(
    a: Sequence[bool],
    b: Sequence[bool],
    types: Sequence[str] | None = None,
    labels: tuple[str, str] = ("base", "trained"),
    confidence: float = 0.95,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = DEFAULT_SEED,
    fdr: float = DEFAULT_FDR,
) -> dict:
    """Compare two arms scored on the same items (paired), overall and per item type.

    Args:
        a: success flag per item for the baseline arm (bools or 0/1), length n >= 1.
        b: success flag per item for the candidate arm, same items, same order, same length.
        types: optional item type per item (non-empty strings), same length; gives the
            ``per_type`` block with Benjamini-Hochberg adjusted McNemar p-values.
        labels: names of the two arms (a, b), distinct non-empty strings; used as keys.
        confidence: level of the Wilson and bootstrap intervals, default 0.95.
        n_boot, seed: bootstrap replicates and numpy seed (same seed for every group).
        fdr: BH false discovery rate for the per-type decisions, default 0.10.

    Returns (all JSON-serialisable, no NaN)::

        {"overall": BLOCK,
         "per_type": {TYPE: BLOCK + {"p_adjusted": float, "significant": bool}, ...},  # {} if no types
         "metadata": {"labels": [a, b], "confidence", "bootstrap_samples", "seed", "fdr",
                      "exact_threshold", "bootstrap_method", "p_value_for_bh", "n", "types"}}
        BLOCK = {"n", "arms": {label: {"successes", "rate", "wilson_ci": [lo, hi]}},
                 "discordant": {"n00", "n01", "n10", "n11"}, "mcnemar": (see ``mcnemar``),
                 "cohens_h", "lift", "lift_ci": [lo, hi]}

        n01 counts items a failed and b passed; lift = rate_b - rate_a; h > 0 favours b.
        Per-type BH uses each type's chosen McNemar p-value; types are sorted by name.

    Raises:
        ValueError: empty input, mismatched lengths, non-boolean outcomes, bad types/labels,
            confidence outside (0, 1).
    """
    a_l = _as_outcomes("a", a)
    b_l = _as_outcomes("b", b)
    _check_pair_lengths(a_l, b_l)
    confidence = _check_confidence(confidence)
    if (len(labels) != 2 or not all(isinstance(x, str) and x for x in labels)
            or labels[0] == labels[1]):
        raise ValueError(f"labels must be two distinct non-empty strings, got {labels!r}")
    labels = (labels[0], labels[1])

    result: dict = {
        "overall": _block(a_l, b_l, labels, confidence, n_boot, seed),
        "per_type": {},
    }
    type_names: list[str] = []
    if types is not None:
        types_l = list(types)
        if len(types_l) != len(a_l):
            raise ValueError(
                f"types has {len(types_l)} entries but there are {len(a_l)} items; "
                "give one type per item (or types=None)"
            )
        for i, t in enumerate(types_l):
            if not isinstance(t, str) or not t:
                raise ValueError(f"types[{i}] must be a non-empty string, got {t!r}")
        type_names = sorted(set(types_l))
        for t in type_names:
            idx = [i for i, x in enumerate(types_l) if x == t]
            result["per_type"][t] = _block([a_l[i] for i in idx], [b_l[i] for i in idx],
                                           labels, confidence, n_boot, seed)
        adjusted, reject = benjamini_hochberg(
            [result["per_type"][t]["mcnemar"]["p_value"] for t in type_names], fdr)
        for t, q, r in zip(type_names, adjusted, reject):
            result["per_type"][t]["p_adjusted"] = q
            result["per_type"][t]["significant"] = r

    result["metadata"] = {
        "labels": list(labels),
        "confidence": confidence,
        "bootstrap_samples": n_boot,
        "bootstrap_method": "paired percentile (multinomial over pair outcomes), numpy PCG64",
        "seed": seed,
        "fdr": fdr,
        "exact_threshold": EXACT_THRESHOLD,
        "p_value_for_bh": "chosen McNemar p per type",
        "n": len(a_l),
        "types": type_names,
    }
    return result


# --------------------------------------------------------------------------------------------
# text summary and go/no-go


def _pct(x: float) -> str:
    return f"{100.0 * x:.1f}%"


def _pts(x: float) -> str:
    return f"{100.0 * x:+.1f} pts"


def summary_text(
    result: dict,
    alpha: float = 0.01,
    protected_types: Sequence[str] = DEFAULT_PROTECTED_TYPES,
    max_lift_ci_width: float | None = None,
) -> str:
    """Short plain-text summary of a ``compare_paired`` result; the last line is the decision.

    Gate (all must hold for ``GO``):
      1. overall McNemar p (the chosen method) < ``alpha`` (default 0.01) and n01 > n10
         (the significant difference is an improvement, not a regression);
      2. no protected type (exact type names in ``protected_types``, default safety/format)
         has a significant regression: BH ``significant`` and n10 > n01 for that type;
      3. if ``max_lift_ci_width`` is given: the overall lift CI is no wider than that
         (in rate units, e.g. 0.10 = 10 points).
    Protected types absent from the result are listed but do not block.

    The final line is exactly one of ``GO: <reason>`` or ``NO-GO: <reasons; ...>``.
    """
    la, lb = result["metadata"]["labels"]
    conf = result["metadata"]["confidence"]
    ov = result["overall"]
    lines = [f"Paired evaluation: n={ov['n']} items, {la} vs {lb}, {conf:.0%} intervals"]
    for label in (la, lb):
        arm = ov["arms"][label]
        lo, hi = arm["wilson_ci"]
        lines.append(f"  {label}: {arm['successes']}/{ov['n']} = {_pct(arm['rate'])} "
                     f"(Wilson CI {_pct(lo)} to {_pct(hi)})")
    lift_lo, lift_hi = ov["lift_ci"]
    lines.append(f"  lift: {_pts(ov['lift'])} (bootstrap CI {_pts(lift_lo)} to {_pts(lift_hi)}), "
                 f"Cohen's h = {ov['cohens_h']:+.3f}")
    mc = ov["mcnemar"]
    lines.append(f"  McNemar ({mc['method']}): n01={mc['n01']} improved, n10={mc['n10']} regressed, "
                 f"p = {mc['p_value']:.3g} (exact {mc['exact']['p_value']:.3g}, "
                 f"chi2 {mc['chi2']['p_value']:.3g})")
    per_type = result.get("per_type") or {}
    if per_type:
        lines.append(f"  per type (BH FDR {result['metadata']['fdr']:.2f}):")
        for t, blk in per_type.items():
            ra, rb = blk["arms"][la]["rate"], blk["arms"][lb]["rate"]
            d = blk["discordant"]
            flag = ""
            if blk["significant"]:
                flag = " REGRESSION" if d["n10"] > d["n01"] else " improved"
            lines.append(f"    {t} (n={blk['n']}): {_pct(ra)} -> {_pct(rb)}, "
                         f"p_adj = {blk['p_adjusted']:.3g}{flag}")

    reasons: list[str] = []
    p = mc["p_value"]
    if not p < alpha:
        reasons.append(f"overall McNemar p = {p:.3g} is not < {alpha:g}")
    elif not mc["n01"] > mc["n10"]:
        reasons.append(f"overall difference is significant but not an improvement "
                       f"(n01={mc['n01']}, n10={mc['n10']})")
    regressed = [t for t in protected_types if t in per_type and per_type[t]["significant"]
                 and per_type[t]["discordant"]["n10"] > per_type[t]["discordant"]["n01"]]
    if regressed:
        reasons.append("significant regression on protected type(s): " + ", ".join(regressed))
    if max_lift_ci_width is not None and (lift_hi - lift_lo) > max_lift_ci_width:
        reasons.append(f"lift CI width {100 * (lift_hi - lift_lo):.1f} pts exceeds "
                       f"{100 * max_lift_ci_width:.1f} pts")
    absent = [t for t in protected_types if t not in per_type]
    if absent:
        lines.append("  protected types not present in the data (not checked): " + ", ".join(absent))
    if reasons:
        lines.append("NO-GO: " + "; ".join(reasons))
    else:
        checked = [t for t in protected_types if t in per_type]
        tail = (f"; no significant regression on {', '.join(checked)}" if checked
                else "; no protected types to check")
        lines.append(f"GO: McNemar p = {p:.3g} < {alpha:g} with lift {_pts(ov['lift'])}{tail}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# non-inferiority (safety)


def noninferiority_paired(a: Sequence[bool], b: Sequence[bool], margin: float,
                          confidence: float = 0.95) -> dict:
    """One-sided paired non-inferiority of arm ``b`` against arm ``a``: is ``rate_b - rate_a``
    above ``-margin``?

    The bound is the lower limit of a one-sided ``confidence`` interval for the paired difference
    d = (n01 - n10) / n, computed on the 2x2 table with 0.5 added to each cell (Agresti & Min
    2005, "Simple improved confidence intervals for comparing matched proportions"): with
    n' = n + 2, d' = (n01' - n10') / n', se = sqrt((n01' + n10') / n' - d'^2) / sqrt(n').
    The adjustment keeps the bound honest when there are few or no discordant pairs (the plain
    Wald bound would be d itself, "proven" non-inferior from two items). ``margin`` is in rate
    units (0.05 = 5 points) and must be in [0, 1). Non-inferior when ``lower > -margin``.

    Returns ``{"n", "rate_a", "rate_b", "diff", "lower", "margin", "confidence", "n01", "n10",
    "noninferior", "method"}``; an empty input raises ``ValueError``.
    """
    a_l = _as_outcomes("a", a)
    b_l = _as_outcomes("b", b)
    _check_pair_lengths(a_l, b_l)
    confidence = _check_confidence(confidence)
    if not (isinstance(margin, (int, float)) and 0.0 <= margin < 1.0):
        raise ValueError(f"margin must be a number in [0, 1) (rate units, 0.05 = 5 points), got {margin!r}")
    n = len(a_l)
    n01 = sum((not x) and y for x, y in zip(a_l, b_l))
    n10 = sum(x and (not y) for x, y in zip(a_l, b_l))
    na = n + 2.0
    d_adj = ((n01 + 0.5) - (n10 + 0.5)) / na
    var = max(((n01 + 0.5) + (n10 + 0.5)) / na - d_adj ** 2, 0.0) / na
    z = NormalDist().inv_cdf(confidence)  # one-sided
    lower = d_adj - z * math.sqrt(var)
    return {"n": n, "rate_a": sum(a_l) / n, "rate_b": sum(b_l) / n, "diff": (n01 - n10) / n,
            "lower": lower, "margin": float(margin), "confidence": confidence, "n01": n01, "n10": n10,
            "noninferior": lower > -margin,
            "method": "one-sided Agresti-Min adjusted Wald bound on the paired difference"}
