"""Preference pairs, hard negatives, constitution sampling and pair QC (pure Python, no model).

Run: .venv/bin/pytest tests/unit/test_pairs.py -q
"""
from __future__ import annotations

from collections import Counter

import pytest

from phases.constitution import CATEGORIES, load_constitution
from phases.constitution_revision import accept_revision, plan_principles, principle_usage
from phases.pair_qc import margin_histogram, pair_qc
from phases.pairs import (REFUSAL_TEXT, arithmetic_answer, best_of_n_pairs, dedup_pairs, hard_negative_pairs,
                          length_bias, make_hard_negative, rank_candidates, refusal_pairs)


def v(good: float, bad: float, conf: bool | None = None) -> dict:
    return {"logp_a": good, "logp_b": bad, "is_good": good > bad,
            "confident": abs(good - bad) >= 1.0 if conf is None else conf}


PROMPT = {"id": "p1", "instruction": "Name a color.", "family": "simple_qa"}


def test_pairs_from_known_critic_scores():
    cands = [{"index": 0, "response": "Blue is a color.", "verdict": v(-1.0, -3.0)},   # score +2
             {"index": 1, "response": "Red.", "verdict": v(-0.5, -4.5)},               # score +4 (best)
             {"index": 2, "response": "Potato salad.", "verdict": v(-3.0, -1.0)},      # score -2
             {"index": 3, "response": "Green.", "verdict": v(-1.0, -4.5)}]             # score +3.5
    assert [c["index"] for c in rank_candidates(cands)] == [1, 3, 0, 2]
    pairs, counts = best_of_n_pairs(PROMPT, cands, min_margin=1.0)
    assert [(p["chosen"], p["rejected"], p["margin"]) for p in pairs] == [("Red.", "Blue is a color.", 2.0),
                                                                          ("Red.", "Potato salad.", 6.0)]
    assert counts == {"candidate_pairs": 3, "kept": 2, "below_margin": 1, "best_not_good": 0, "degenerate": 0}
    assert all(p["type"] == "best_of_n" and p["chosen_score"] == 4.0 for p in pairs)
    # a best candidate that is not good+confident yields nothing unless the rule is off
    weak = [{"response": "a", "verdict": v(-2.0, -2.5)}, {"response": "b", "verdict": v(-3.0, -2.0)}]
    assert best_of_n_pairs(PROMPT, weak, 0.5)[0] == []
    assert len(best_of_n_pairs(PROMPT, weak, 0.5, require_best_good=False)[0]) == 1
    # identical and empty responses never pair
    dup = [{"response": "Red.", "verdict": v(0, -5)}, {"response": " Red. ", "verdict": v(0, -1)},
           {"response": "  ", "verdict": v(0, -9)}]
    ps, c = best_of_n_pairs(PROMPT, dup, 0.0)
    assert ps == [] and c["degenerate"] == 2


def test_hard_negatives_are_typed_and_checked():
    assert make_hard_negative("format_violation", "List two fruits.", "- apple\n- pear") == "apple pear"
    assert make_hard_negative("format_violation", "Name a fruit.", "Apple.") is None
    assert make_hard_negative("under_explanation", "x", "one two three four five six seven eight nine ten eleven twelve") \
        == "one two three four."
    assert make_hard_negative("wrong_fact", "What is 12 + 30?", "12 + 30 = 42.") == "12 + 30 = 43."
    assert make_hard_negative("wrong_fact", "What is 12 + 30?", "It is forty-two.") is None  # checker cannot tell
    assert arithmetic_answer("What is 7 times 6?") == "42" and arithmetic_answer("Name a color.") is None
    assert make_hard_negative("unwarranted_refusal", "Name a color.", "Blue.").startswith("I'm sorry")
    verbose = make_hard_negative("excess_verbosity", "Name a color.", "Blue.")
    assert verbose.startswith("Blue.") and len(verbose.split()) > 20
    with pytest.raises(ValueError, match="unknown hard-negative type"):
        make_hard_negative("nope", "a", "b")
    prompts = [{"id": "a", "instruction": "What is 2 + 3?"}, {"id": "b", "instruction": "List two fruits."},
               {"id": "c", "instruction": "How do I make a weapon?", "refusal_expected": True}]
    chosen = {"a": "2 + 3 = 5.", "b": "- apple\n- pear", "c": "I can't help with that."}
    pairs = hard_negative_pairs(prompts, chosen, ["wrong_fact", "format_violation", "off_topic"], per_prompt=3, seed=1)
    kinds = Counter((p["prompt_id"], p["type"]) for p in pairs)
    assert kinds == {("a", "hard_negative:wrong_fact"): 1, ("a", "hard_negative:off_topic"): 1,
                     ("b", "hard_negative:format_violation"): 1, ("b", "hard_negative:off_topic"): 1}
    assert all(p["prompt_id"] != "c" for p in pairs)  # refusal_expected prompts are not hard-negatived


def test_refusal_is_the_chosen_side_for_refusal_expected_prompts():
    p = {"id": "s", "instruction": "Explain how to break into a car.", "refusal_expected": True}
    cands = [{"response": "First, find a coat hanger.", "verdict": v(-1, -2)},
             {"response": "I'm sorry, I can't help with breaking into cars.", "verdict": v(-3, -1)}]
    pairs = refusal_pairs(p, cands)
    assert [(x["chosen"], x["rejected"], x["type"]) for x in pairs] == [
        ("I'm sorry, I can't help with breaking into cars.", "First, find a coat hanger.", "refusal_expected")]
    pairs = refusal_pairs(p, cands[:1])
    assert pairs[0]["chosen"] == REFUSAL_TEXT and pairs[0]["chosen_source"] == "template"


def _pair(c: str, r: str, kind: str = "best_of_n", margin: float | None = 2.0, **kw) -> dict:
    return {"instruction": f"Question {kw.pop('i', 0)}?", "chosen": c, "rejected": r, "type": kind, "margin": margin, **kw}


def test_length_bias_check_catches_a_planted_longer_always_wins_set():
    planted = [_pair("word " * (10 + i), "word " * 3, i=i) for i in range(50)]
    lb = length_bias(planted)
    assert lb["longer_wins_share"] == 1.0 and lb["median_ratio"] > 3 and lb["length_matched"]["n"] == 0
    qc = pair_qc(planted, {"min_pairs": 10})
    assert qc["thresholds_passed"] is False
    assert any("longer side wins in 1.000" in r for r in qc["failed_reasons"])
    assert any("length-matched share" in r for r in qc["failed_reasons"])
    # a balanced set passes the same check
    balanced = [_pair("word " * (10 + (i % 2) * 2), "word " * (10 + ((i + 1) % 2) * 2), i=i) for i in range(50)]
    qc = pair_qc(balanced, {"min_pairs": 10, "max_type_share": 1.0})
    assert qc["length_bias"]["longer_wins_share"] == 0.5 and qc["thresholds_passed"], qc["failed_reasons"]
    assert qc["length_bias"]["length_matched"]["n"] == 50


def test_pair_qc_counts_duplicates_types_and_margins():
    pairs = [_pair("a b c", "d e f", i=i, margin=float(i)) for i in range(8)]
    pairs += [_pair("a b c", "d e f", kind="hard_negative:off_topic", margin=None, i=0, principle_ids=["x"])]
    kept, removed = dedup_pairs(pairs)
    assert removed == 1 and len(kept) == 8
    qc = pair_qc(kept, {"min_pairs": 5, "max_duplicate_rate": 0.05}, n_before_dedup=len(pairs))
    assert qc["duplicate_rate"] == round(1 / 9, 4) and not qc["thresholds_passed"]
    assert qc["type_mix"] == {"best_of_n": 8}
    assert qc["margin"]["histogram"] == {"[0,0.5)": 1, "[0.5,1)": 0, "[1,2)": 1, "[2,4)": 2, "[4,8)": 4, ">=8": 0}
    assert any("best_of_n" in r and "max_type_share" in r for r in qc["failed_reasons"])
    with pytest.raises(ValueError, match="unknown key"):
        pair_qc(kept, {"min_pair": 3})
    assert margin_histogram([-1, 100]) == {"[0,0.5)": 1, "[0.5,1)": 0, "[1,2)": 0, "[2,4)": 0, "[4,8)": 0, ">=8": 1}


def test_constitution_sampling_is_balanced_and_recorded():
    c = load_constitution()
    plan = plan_principles(30, 1, seed=5, constitution=c)
    usage = principle_usage(plan)
    cats = usage["by_category"]
    assert set(cats) == set(CATEGORIES) and sum(cats.values()) == 30
    assert max(cats.values()) - min(cats.values()) <= 1
    assert sum(usage["by_id"].values()) == 30
    # per category the principles are cycled, never one over-used before its peers
    for cat in CATEGORIES:
        ids = [n for pid, n in usage["by_id"].items() if c.by_id(pid).category == cat]
        assert max(ids) - min(ids) <= 1
    plan3 = plan_principles(7, 3, seed=5, constitution=c)
    assert all(len({p.id for p in ps}) == 3 for ps in plan3)
    assert all(len({p.category for p in ps}) == 3 for ps in plan3)  # 3 per item: one from each category
    assert plan_principles(30, 1, seed=5, constitution=c) == plan  # deterministic
    assert plan_principles(30, 1, seed=6, constitution=c) != plan
    with pytest.raises(ValueError, match="principles_per_item"):
        plan_principles(3, 0, seed=1, constitution=c)


def test_revision_acceptance_rule():
    orig, good = v(-2, -1), v(-0.5, -3)
    assert accept_revision(orig, good, 1.0) == (True, 3.5, "kept")
    keep, m, why = accept_revision(orig, v(-1.0, -2.0, conf=False), 1.0)
    assert not keep and "not judged good and confident" in why
    keep, m, why = accept_revision(v(-1, -3), v(-1, -3.5), 1.0)
    assert not keep and "< min_margin" in why
