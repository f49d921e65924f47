"""QC summary, each gate threshold failing alone, and the retry rules.

Run: .venv/bin/pytest tests/unit/test_qc.py
"""

import pytest

from phases.qc import QCThresholds, adjust_params, compute_qc, hit_token_limit, is_kept, plan_retry

GOOD = {"label": "A", "is_good": True, "margin": 2.5, "confident": True, "logp_a": -0.1, "logp_b": -2.6}
BAD = {"label": "B", "is_good": False, "margin": 1.7, "confident": True, "logp_a": -2.0, "logp_b": -0.3}
UNSURE = {"label": "A", "is_good": True, "margin": 0.4, "confident": False, "logp_a": -0.5, "logp_b": -0.9}


def rec(i, **over):
    r = {
        "instruction": f"Name a fruit number {i}.",
        "raw_completion": " Apple.\n###END###",
        "response": "Apple.",
        "raw_tokens": 6,
        "cleaned_tokens": 12,
        "hit_token_limit": False,
        "marker_found": True,
        "heuristic_cut": None,
        "instruction_verdict": GOOD,
        "pair_verdict": GOOD,
    }
    r.update(over)
    return r


def passing(n=40):
    return [rec(i) for i in range(n)]


def failed_names(qc):
    return [c["name"] for c in qc["checks"] if not c["passed"]]


def test_baseline_passes_and_shape():
    qc = compute_qc(passing(), sentinels_passed=True, extra_counts={"parsed_instructions": 70})
    assert qc["thresholds_passed"], qc["failed_reasons"]
    assert qc["counts"]["generated"] == 40 and qc["counts"]["kept"] == 40 and qc["counts"]["parsed_instructions"] == 70
    assert qc["tokens"]["cleaned"]["median"] == 12 and qc["tokens"]["raw"]["p95"] == 6
    assert qc["acceptance"]["pair"]["margin_histogram"]["counts"][5] == 40  # 2.5 in [2,3)
    assert set(qc) >= {"counts", "acceptance", "tokens", "thresholds_passed", "failed_reasons", "checks"}


def test_runaway_alone_fails():
    rs = passing()
    for i in range(2):  # 2/40 = 5% -> not < 5%
        rs[i]["response"] = "Apple. Instruction: Name a vegetable. Response: Carrot."
    qc = compute_qc(rs, sentinels_passed=True)
    assert failed_names(qc) == ["runaway_rate"] and qc["runaway_by_pattern"] == {"inline_prompt_label": 2}
    rs[1] = rec(1)
    assert compute_qc(rs, sentinels_passed=True)["thresholds_passed"]  # 1/40 = 2.5%


def test_token_limit_alone_fails():
    rs = passing()
    for i in range(4):
        rs[i]["hit_token_limit"] = True
    assert failed_names(compute_qc(rs, sentinels_passed=True)) == ["token_limit_rate"]


def test_marker_leak_in_kept_alone_fails():
    rs = passing()
    rs[0]["response"] = "Apple.\n###END"  # a truncated marker that cleaning was not run on
    qc = compute_qc(rs, sentinels_passed=True)
    assert is_kept(rs[0]) and qc["counts"]["marker_leaks_kept"] == 1
    assert failed_names(qc) == ["marker_leaks_kept"]
    assert compute_qc(rs, sentinels_passed=True, thresholds=QCThresholds(max_marker_leaks_kept=1))["thresholds_passed"]


def test_median_alone_fails():
    rs = passing()
    for r in rs[:21]:
        r["cleaned_tokens"] = 40
    assert failed_names(compute_qc(rs, sentinels_passed=True)) == ["median_cleaned_tokens_kept"]


def test_instruction_acceptance_alone_fails():
    rs = passing()
    for r in rs[:20]:  # rejected instructions get no response
        r.update(instruction_verdict=BAD, response=None, pair_verdict=None, raw_completion=None)
    rs[20]["instruction_verdict"] = UNSURE
    rs[20].update(response=None, pair_verdict=None)
    qc = compute_qc(rs, sentinels_passed=True)
    assert failed_names(qc) == ["instruction_acceptance"]
    acc = qc["acceptance"]["instruction"]
    assert (acc["good"], acc["bad"], acc["low_confidence"], acc["rate"]) == (19, 20, 1, 0.475)


def test_pair_acceptance_alone_fails():
    rs = passing()
    for r in rs[:21]:
        r["pair_verdict"] = BAD if r["instruction"].endswith("1.") else UNSURE
    qc = compute_qc(rs, sentinels_passed=True)
    assert failed_names(qc) == ["pair_acceptance"]
    assert qc["counts"]["kept"] == 19


def test_sentinels_alone_fail_or_missing():
    assert failed_names(compute_qc(passing(), sentinels_passed=False)) == ["sentinels_passed"]
    qc = compute_qc(passing())
    assert failed_names(qc) == ["sentinels_passed"] and "missing" in qc["failed_reasons"][0]
    assert compute_qc(passing(), thresholds=QCThresholds(require_sentinels=False))["thresholds_passed"]


def test_empty_records_fail_clearly():
    qc = compute_qc([], sentinels_passed=True)
    assert not qc["thresholds_passed"] and any("not measurable" in r for r in qc["failed_reasons"])


def test_bad_verdict_raises():
    with pytest.raises(ValueError, match="confident"):
        compute_qc([rec(0, pair_verdict={"margin": 1.0})], sentinels_passed=True)


def test_hit_token_limit():
    assert hit_token_limit(80, 80) and not hit_token_limit(79, 80) and hit_token_limit(78, 80, slack=2)


GEN = {
    "batch_size": 8,
    "instructions": {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 200, "stop": []},
    "responses": {"temperature": 0.4, "top_p": 0.9, "max_new_tokens": 80, "stop": ["###END###"]},
}


def qc_failing(*names):
    return {"checks": [{"name": n, "passed": False} for n in names] + [{"name": "ok", "passed": True}]}


def test_retry_rules():
    p = adjust_params(GEN, qc_failing("runaway_rate"), 1)
    assert p["responses"]["temperature"] == 0.3 and "\nInstruction:" in p["responses"]["stop"]
    assert p["responses"]["stop"].count("###END###") == 1 and GEN["responses"]["stop"] == ["###END###"]
    p = adjust_params(GEN, qc_failing("token_limit_rate"), 1)
    assert p["responses"]["max_new_tokens"] == 120 and p["responses"]["temperature"] == 0.4
    p = adjust_params(GEN, qc_failing("median_cleaned_tokens_kept"), 1)
    assert p["responses"]["max_new_tokens"] == 60 and p["responses"]["temperature"] == 0.3
    p = adjust_params(GEN, qc_failing("instruction_acceptance"), 2)
    assert p["instructions"]["temperature"] == 0.6 and p["responses"] == GEN["responses"]
    p = adjust_params(GEN, qc_failing("pair_acceptance", "runaway_rate"), 1)
    assert p["responses"]["temperature"] == 0.3  # lowered once, not twice


def test_retry_stops():
    for qc, attempt, msg in [
        (qc_failing("sentinels_passed", "runaway_rate"), 1, "sentinels"),
        (qc_failing("runaway_rate"), 3, "stop for review"),
        ({"checks": [{"name": "x", "passed": True}]}, 1, "nothing failed"),
    ]:
        assert not plan_retry(GEN, qc, attempt).retryable
        with pytest.raises(ValueError, match=msg):
            adjust_params(GEN, qc, attempt)
    floor = {"responses": {"temperature": 0.2}, "instructions": {}}
    assert not plan_retry(floor, qc_failing("pair_acceptance"), 1).retryable
    with pytest.raises(ValueError, match=">= 1"):
        plan_retry(GEN, qc_failing("runaway_rate"), 0)
