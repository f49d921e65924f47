"""phases/stats.py checked against scipy/statsmodels on random tables and edge cases.

Run: .venv/bin/pytest tests/unit/test_stats.py -q
"""

from __future__ import annotations

import json
import math
import random
import warnings

import numpy as np
import pytest
from scipy.stats import binomtest
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint, proportion_effectsize

from phases import stats

TOL = 1e-9


def _random_tables(n_tables: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    out = [(0, 0), (0, 1), (1, 0), (1, 1), (12, 12), (0, 24), (24, 0), (12, 13), (0, 25), (30, 30)]
    for _ in range(n_tables):
        scale = rng.choice([5, 20, 40, 200, 2000])
        out.append((rng.randint(0, scale), rng.randint(0, scale)))
    return out


# ---------------------------------------------------------------------------- Wilson


@pytest.mark.parametrize("confidence", [0.5, 0.8, 0.9, 0.95, 0.99, 0.999])
def test_wilson_matches_statsmodels(confidence):
    rng = random.Random(int(confidence * 1000))
    cases = [(0, 1), (1, 1), (0, 5), (5, 5), (3, 7)]
    cases += [(k, n) for n in (rng.randint(1, 3000) for _ in range(200)) for k in [rng.randint(0, n)]]
    for k, n in cases:
        lo, hi = stats.wilson_ci(k, n, confidence)
        slo, shi = proportion_confint(k, n, alpha=1 - confidence, method="wilson")
        assert abs(lo - max(0.0, slo)) < TOL, (k, n, confidence)
        assert abs(hi - min(1.0, shi)) < TOL, (k, n, confidence)
        assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_wilson_bad_input():
    with pytest.raises(ValueError, match="n must be >= 1"):
        stats.wilson_ci(0, 0)
    with pytest.raises(ValueError, match="successes"):
        stats.wilson_ci(4, 3)
    with pytest.raises(ValueError, match="confidence"):
        stats.wilson_ci(1, 3, 1.0)
    with pytest.raises(ValueError, match="non-negative int"):
        stats.wilson_ci(1.5, 3)


# ---------------------------------------------------------------------------- McNemar


def test_mcnemar_exact_matches_statsmodels_and_scipy():
    for n01, n10 in _random_tables(300, seed=1):
        stat, p = stats.mcnemar_exact(n01, n10)
        ref = sm_mcnemar([[7, n01], [n10, 3]], exact=True)
        assert stat == ref.statistic == min(n01, n10)
        assert abs(p - ref.pvalue) < TOL, (n01, n10)
        if n01 + n10 > 0:
            assert abs(p - binomtest(min(n01, n10), n01 + n10, 0.5).pvalue) < TOL, (n01, n10)


def test_mcnemar_chi2_matches_statsmodels():
    for n01, n10 in _random_tables(300, seed=2):
        if n01 + n10 == 0:
            continue  # statsmodels divides by zero there; our defined value is tested below
        for correction in (True, False):
            stat, p = stats.mcnemar_chi2(n01, n10, correction=correction)
            ref = sm_mcnemar([[5, n01], [n10, 9]], exact=False, correction=correction)
            assert abs(stat - ref.statistic) < TOL * max(1.0, ref.statistic), (n01, n10)
            assert abs(p - ref.pvalue) < TOL, (n01, n10, correction)


def test_mcnemar_rule_chooses_exact_below_25_and_reports_both():
    small = stats.mcnemar(10, 14)  # 24 discordant
    assert small["method"] == "exact" and small["p_value"] == small["exact"]["p_value"]
    large = stats.mcnemar(10, 15)  # 25 discordant
    assert large["method"] == "chi2" and large["p_value"] == large["chi2"]["p_value"]
    for res in (small, large):
        assert set(res) >= {"exact", "chi2", "statistic", "p_value", "n01", "n10"}
        assert res["chi2"]["correction"] is True


def test_mcnemar_no_discordant_pairs_is_p_one():
    assert stats.mcnemar_exact(0, 0) == (0.0, 1.0)
    assert stats.mcnemar_chi2(0, 0) == (0.0, 1.0)
    res = stats.mcnemar(0, 0)
    assert res["method"] == "exact" and res["p_value"] == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert sm_mcnemar([[4, 0], [0, 6]], exact=True).pvalue == 1.0


def test_mcnemar_exact_large_counts_are_finite():
    stat, p = stats.mcnemar_exact(5000, 5200)
    assert abs(p - binomtest(5000, 10200, 0.5).pvalue) < TOL


# ---------------------------------------------------------------------------- Cohen's h, BH


def test_cohens_h_matches_statsmodels():
    rng = random.Random(3)
    for _ in range(300):
        pa, pb = rng.random(), rng.random()
        assert abs(stats.cohens_h(pa, pb) - proportion_effectsize(pb, pa)) < TOL
    assert stats.cohens_h(0.0, 1.0) == pytest.approx(math.pi)
    assert stats.cohens_h(0.3, 0.3) == 0.0
    with pytest.raises(ValueError, match="proportion"):
        stats.cohens_h(-0.1, 0.5)


def test_bh_matches_statsmodels():
    rng = np.random.default_rng(4)
    for m in list(range(1, 30)) + [100, 500]:
        for _ in range(5):
            p = rng.uniform(0, 1, m) ** rng.uniform(0.5, 6)
            p[rng.integers(0, m)] = p[0]  # ties
            adj, rej = stats.benjamini_hochberg(p.tolist(), fdr=0.10)
            ref_rej, ref_adj, _, _ = multipletests(p, alpha=0.10, method="fdr_bh")
            assert np.max(np.abs(np.array(adj) - ref_adj)) < TOL
            assert rej == ref_rej.tolist()


def test_bh_edge_cases():
    assert stats.benjamini_hochberg([]) == ([], [])
    assert stats.benjamini_hochberg([1.0]) == ([1.0], [False])
    assert stats.benjamini_hochberg([0.05]) == ([0.05], [True])
    with pytest.raises(ValueError, match=r"p_values\[1\]"):
        stats.benjamini_hochberg([0.1, 1.5])


# ---------------------------------------------------------------------------- bootstrap


def test_bootstrap_is_deterministic_and_seed_dependent():
    rng = random.Random(5)
    a = [rng.random() < 0.5 for _ in range(400)]
    b = [rng.random() < 0.6 for _ in range(400)]
    ci1 = stats.bootstrap_lift_ci(a, b, n_boot=2000, seed=7)
    assert ci1 == stats.bootstrap_lift_ci(a, b, n_boot=2000, seed=7)
    assert ci1 != stats.bootstrap_lift_ci(a, b, n_boot=2000, seed=8)
    lift = sum(b) / 400 - sum(a) / 400
    assert ci1[0] < lift < ci1[1]


def test_bootstrap_agrees_with_index_resampling():
    """The multinomial shortcut has the distribution of the classic index bootstrap."""
    rng = random.Random(6)
    a = np.array([rng.random() < 0.55 for _ in range(300)])
    b = np.array([rng.random() < 0.65 for _ in range(300)])
    lo, hi = stats.bootstrap_lift_ci(a.tolist(), b.tolist(), n_boot=20000, seed=1)
    g = np.random.default_rng(99)
    idx = g.integers(0, 300, size=(20000, 300))
    lifts = b[idx].mean(axis=1) - a[idx].mean(axis=1)
    rlo, rhi = np.quantile(lifts, [0.025, 0.975])
    assert abs(lo - rlo) < 0.01 and abs(hi - rhi) < 0.01


def test_bootstrap_degenerate_cases():
    assert stats.bootstrap_lift_ci([True] * 5, [True] * 5) == (0.0, 0.0)
    assert stats.bootstrap_lift_ci([False], [True]) == (1.0, 1.0)


# ---------------------------------------------------------------------------- compare_paired


def _assert_finite_json(obj):
    text = json.dumps(obj, allow_nan=False, sort_keys=True)
    assert json.loads(text) == obj


def test_compare_paired_shape_and_values():
    rng = random.Random(9)
    n = 500
    a = [rng.random() < 0.5 for _ in range(n)]
    b = [x or rng.random() < 0.3 for x in a]
    types = [rng.choice(["safety", "format", "qa", "code"]) for _ in range(n)]
    res = stats.compare_paired(a, b, types, n_boot=1000, seed=3)
    _assert_finite_json(res)
    ov = res["overall"]
    assert ov["n"] == n
    assert ov["arms"]["base"]["successes"] == sum(a)
    assert ov["arms"]["trained"]["rate"] == sum(b) / n
    d = ov["discordant"]
    assert d["n01"] == sum(1 for x, y in zip(a, b) if not x and y) and d["n10"] == 0
    assert d["n00"] + d["n01"] + d["n10"] + d["n11"] == n
    assert ov["mcnemar"]["method"] == "chi2"
    ref = sm_mcnemar([[d["n00"], d["n01"]], [d["n10"], d["n11"]]], exact=False, correction=True)
    assert abs(ov["mcnemar"]["p_value"] - ref.pvalue) < TOL
    assert ov["cohens_h"] > 0 and ov["lift_ci"][0] > 0
    assert sorted(res["per_type"]) == ["code", "format", "qa", "safety"]
    ps = [res["per_type"][t]["mcnemar"]["p_value"] for t in sorted(res["per_type"])]
    _, ref_adj, _, _ = multipletests(ps, alpha=0.10, method="fdr_bh")
    for t, q in zip(sorted(res["per_type"]), ref_adj):
        assert abs(res["per_type"][t]["p_adjusted"] - q) < TOL
    md = res["metadata"]
    assert md["labels"] == ["base", "trained"] and md["confidence"] == 0.95
    assert md["bootstrap_samples"] == 1000 and md["seed"] == 3 and md["fdr"] == 0.10
    assert res == stats.compare_paired(a, b, types, n_boot=1000, seed=3)  # reproducible
    text = stats.summary_text(res)
    assert text.splitlines()[-1].startswith("GO: ")


def test_compare_paired_edge_cases():
    one = stats.compare_paired([True], [False], n_boot=100)
    assert one["overall"]["mcnemar"]["p_value"] == 1.0  # exact: 2 * P[X <= 0], X ~ Bin(1, .5)
    assert one["overall"]["lift"] == -1.0
    _assert_finite_json(one)
    allsucc = stats.compare_paired([True] * 30, [True] * 30, ["x"] * 30, n_boot=100)
    ov = allsucc["overall"]
    assert ov["mcnemar"]["p_value"] == 1.0 and ov["cohens_h"] == 0.0
    assert ov["arms"]["base"]["wilson_ci"][1] == 1.0
    assert allsucc["per_type"]["x"]["p_adjusted"] == 1.0
    _assert_finite_json(allsucc)
    assert stats.summary_text(allsucc).splitlines()[-1].startswith("NO-GO: ")
    assert stats.compare_paired([1, 0], [1, 1], n_boot=10)["overall"]["discordant"]["n01"] == 1


def test_compare_paired_bad_input():
    with pytest.raises(ValueError, match="empty evaluation"):
        stats.compare_paired([], [])
    with pytest.raises(ValueError, match="same length: a has 2, b has 3"):
        stats.compare_paired([True, False], [True, True, False])
    with pytest.raises(ValueError, match=r"types has 1 entries"):
        stats.compare_paired([True, False], [True, True], ["a"])
    with pytest.raises(ValueError, match=r"types\[1\]"):
        stats.compare_paired([True, False], [True, True], ["a", ""])
    with pytest.raises(ValueError, match=r"b\[0\] must be a bool"):
        stats.compare_paired([True], ["yes"])
    with pytest.raises(ValueError, match="labels"):
        stats.compare_paired([True], [True], labels=("x", "x"))
    with pytest.raises(ValueError, match="confidence"):
        stats.compare_paired([True], [True], confidence=95)


# ---------------------------------------------------------------------------- go / no-go


def _paired(n_both, n01, n10, n_none):
    a = [True] * n_both + [False] * n01 + [True] * n10 + [False] * n_none
    b = [True] * n_both + [True] * n01 + [False] * n10 + [False] * n_none
    return a, b


def test_gate_go_and_no_go_reasons():
    a, b = _paired(200, 60, 10, 130)
    types = ["qa"] * 400
    res = stats.compare_paired(a, b, types, n_boot=500)
    last = stats.summary_text(res).splitlines()[-1]
    assert last.startswith("GO: ") and "not present" not in last
    # the same lift is not enough at alpha 1e-12
    assert stats.summary_text(res, alpha=1e-12).splitlines()[-1].startswith("NO-GO: overall McNemar")
    # a significant overall *regression* is never GO
    res_bad = stats.compare_paired(b, a, types, n_boot=500)
    assert "not an improvement" in stats.summary_text(res_bad).splitlines()[-1]
    # lift CI width gate
    assert "CI width" in stats.summary_text(res, max_lift_ci_width=0.01).splitlines()[-1]


def test_gate_blocks_protected_regression():
    a1, b1 = _paired(200, 80, 5, 115)  # qa: big improvement
    a2, b2 = _paired(50, 0, 20, 30)  # safety: clear regression
    res = stats.compare_paired(a1 + a2, b1 + b2, ["qa"] * 400 + ["safety"] * 100, n_boot=500)
    assert res["overall"]["mcnemar"]["p_value"] < 0.01
    assert res["per_type"]["safety"]["significant"] is True
    last = stats.summary_text(res).splitlines()[-1]
    assert last.startswith("NO-GO: ") and "safety" in last
    # not protected -> the same data passes
    assert stats.summary_text(res, protected_types=("format",)).splitlines()[-1].startswith("GO: ")
