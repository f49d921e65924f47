"""IFEval leakage: a training instruction copied from (or close to) an IFEval prompt is caught
and dropped by the same check that guards the held-out set (used by pilot, scale and merge), and
the manifest summary carries the counts.

Run: ``.venv/bin/pytest tests/unit/test_ifeval_leakage.py -q``
"""
from __future__ import annotations

from phases.ifeval import load_prompts
from phases.steps.generation import leakage_check
from phases.steps.generation import leak_summary

CFG = {"min_tokens": 13, "min_fraction": 0.6, "rouge_threshold": 0.7}


def test_planted_ifeval_prompt_is_detected_and_dropped():
    ifeval = load_prompts()
    planted = ifeval[3].prompt
    reworded = "Please " + ifeval[10].prompt[0].lower() + ifeval[10].prompt[1:]
    cands = [{"id": "c1", "instruction": "Name three primary colors."},
             {"id": "c2", "instruction": planted},
             {"id": "c3", "instruction": reworded},
             {"id": "c4", "instruction": "Write a haiku about the sea."}]
    heldout = [{"id": "ho-0001", "base_instruction": "Summarize the plot of a famous novel in two sentences."}]
    clean, dropped, rep = leakage_check(cands, heldout, CFG)
    assert [c["id"] for c in clean] == ["c1", "c4"]
    assert {d["id"]: d["drop_reason"] for d in dropped} == {"c2": "ifeval_leak", "c3": "ifeval_leak"}
    assert rep["ifeval"]["dropped_ids"] == ["c2", "c3"] and rep["ifeval"]["passed"] is False
    assert rep["ifeval"]["counts"]["exact"] >= 1
    summary = leak_summary(rep)
    assert summary["ifeval"]["n_ifeval"] == len(ifeval) == 541
    assert summary["ifeval"]["dropped_ids"] == ["c2", "c3"]


def test_heldout_leak_wins_over_ifeval_and_clean_data_passes():
    cands = [{"id": "c1", "instruction": "Name three primary colors."}]
    heldout = [{"id": "ho-0001", "base_instruction": "Name three primary colors."}]
    clean, dropped, rep = leakage_check(cands, heldout, CFG)
    assert not clean and dropped[0]["drop_reason"] == "heldout_leak"
    clean, dropped, rep = leakage_check(cands, [{"id": "h", "base_instruction": "Write a limerick."}], CFG)
    assert clean == cands and rep["ifeval"]["passed"] is True and rep["ifeval"]["dropped_ids"] == []
