"""Multi-turn pieces (phases/multiturn.py): plans, per-turn checks incl. remembered constraints,
the assistant-only loss mask, and the paired per-turn / per-conversation report.

Run: .venv/bin/pytest tests/unit/test_multiturn.py -q
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from phases.multiturn import (build_plans, encode_conversation, paired_report, score_conversation,
                              validate_multiturn)
from phases.prompts import TRANSCRIPT_HEADER, transcript_prompt
from runner.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
MT_YAML = REPO / "phases" / "stages" / "multiturn.yaml"
SEEDS = {"explain": ["Explain how a rainbow forms.", "Explain what a budget is.", "Explain why bread rises."]}


def _cfg(**over):
    raw = yaml.safe_load(MT_YAML.read_text())["multiturn"]
    raw.update(over)
    return validate_multiturn(raw, "multiturn.yaml")


def _only(pattern: str, **over):
    raw = yaml.safe_load(MT_YAML.read_text())["multiturn"]
    raw["patterns"] = {pattern: raw["patterns"][pattern]}
    raw.update(over)
    return validate_multiturn(raw, "multiturn.yaml")


def test_stage_file_section_is_valid_and_plans_are_seeded():
    cfg = _cfg()
    a = build_plans(cfg, SEEDS, 20, 5, "mt")
    assert a == build_plans(cfg, SEEDS, 20, 5, "mt") and a != build_plans(cfg, SEEDS, 20, 6, "mt")
    assert all(2 <= p["n_turns"] == len(p["turns"]) <= 4 for p in a)
    assert {p["pattern"] for p in build_plans(cfg, SEEDS, 200, 1, "mt")} == set(cfg.patterns)


def test_exclusion_keeps_heldout_requests_out():
    cfg = _cfg()
    held = build_plans(cfg, SEEDS, 5, 1, "ho")
    train = build_plans(cfg, SEEDS, 50, 2, "mt", exclude_requests=[SEEDS["explain"][0]])
    assert held and SEEDS["explain"][0] not in {p["request"] for p in train}
    with pytest.raises(ConfigError, match="every seed request"):
        build_plans(cfg, SEEDS, 5, 2, "mt", exclude_requests=SEEDS["explain"])


@pytest.mark.parametrize("over, msg", [
    ({"max_turns": 5}, "max_turns <= 4"),
    ({"min_turns": 1}, "2 <= min_turns"),
    ({"patterns": {"nope": {"weight": 1}}}, "unknown pattern"),
    ({"patterns": {"carry_constraint": {"args": {"checks": [{"name": "avoid", "args": {"words": ["x"]}}]}}}},
     "must be IFEval-backed"),
    ({"patterns": {"correction": {"args": {}}}}, "needs \\['words'\\]"),
    ({"followups": ["only one"]}, "followups"),
    ({"bogus": 1}, "unknown key"),
])
def test_bad_sections_name_file_and_key(over, msg):
    raw = yaml.safe_load(MT_YAML.read_text())["multiturn"]
    raw.update(over)
    with pytest.raises(ConfigError, match=msg) as e:
        validate_multiturn(raw, "multiturn.yaml")
    assert "multiturn.yaml" in str(e.value)


def test_remembered_constraint_is_checked_on_later_turns():
    cfg = _only("carry_constraint", min_turns=3, max_turns=3)
    cfg.patterns["carry_constraint"]["args"]["checks"] = [{"name": "lowercase", "args": {}}]
    plan = build_plans(cfg, SEEDS, 1, 3, "mt")[0]
    assert "lowercase" in plan["turns"][0]["user"] and "every answer" in plan["turns"][0]["user"]
    assert [c["source_turn"] for t in plan["turns"] for c in t["checks"]] == [1, 1, 1]
    ok = score_conversation(plan, ["all lower.", "still lower.", "yes lower."])
    assert ok["success"] and ok["remembered_total"] == 2 and ok["remembered_passed"] == 2
    bad = score_conversation(plan, ["all lower.", "still lower.", "Forgot The Rule."])
    assert not bad["success"] and [t["success"] for t in bad["turns"]] == [True, True, False]
    assert bad["turns"][2]["checks"][0] == {"check": "lowercase", "source_turn": 1, "remembered": True, "passed": False}
    assert bad["remembered_passed"] == 1


def test_recall_reference_and_correction_checks_per_turn():
    plan = build_plans(_only("recall_fact", min_turns=2, max_turns=2), SEEDS, 1, 4, "mt")[0]
    name = plan["turns"][0]["user"].split("My name is ")[1].split(".")[0]
    assert plan["turns"][0]["checks"] == [] and plan["turns"][1]["checks"][0]["check"] == "recall"
    assert score_conversation(plan, ["ok", f"Your name is {name}."])["success"]
    assert not score_conversation(plan, ["ok", "I do not know."])["success"]
    r = score_conversation(plan, ["ok", "I do not know."])
    assert r["turns"][0]["scored"] is False and r["turns"][0]["success"] is None

    plan = build_plans(_only("resolve_reference", min_turns=2, max_turns=2), SEEDS, 1, 4, "mt")[0]
    first = plan["turns"][0]["user"].split("between ")[1].split(" and ")[0]
    assert score_conversation(plan, ["a; b", f"{first} is light."])["success"]
    assert not score_conversation(plan, ["a; b", "It is light."])["success"]

    plan = build_plans(_only("correction", min_turns=4, max_turns=4), SEEDS, 1, 4, "mt")[0]
    word = plan["turns"][1]["user"].split('"')[1]
    res = score_conversation(plan, [f"{word} fine", "fine", "fine", f"{word} again"])
    assert [t["success"] for t in res["turns"]] == [None, True, True, False]
    assert [c["remembered"] for t in res["turns"] for c in t["checks"]] == [False, True, True]


def _char_encode(text: str) -> list[int]:
    return [ord(c) for c in text]


def test_loss_mask_covers_assistant_turns_only():
    turns = [("Explain rain.", "Water falls from clouds."), ("Shorter?", "Clouds drop water."),
             ("And snow?", "Frozen rain.")]
    ex = encode_conversation(_char_encode, TRANSCRIPT_HEADER, turns)
    text = "".join(map(chr, ex["input_ids"]))
    # the whole sequence is the transcript framing with every answer filled in
    assert text == transcript_prompt(turns[:2], turns[2][0]) + " Frozen rain.\nUser:"
    trained = "".join(chr(i) if lab != -100 else "\0" for i, lab in zip(ex["input_ids"], ex["labels"]))
    pieces = [p for p in trained.split("\0") if p]
    assert pieces == [" Water falls from clouds.\nUser:", " Clouds drop water.\nUser:", " Frozen rain.\nUser:"]
    for u, _ in turns:
        assert u not in "".join(pieces), "no user text is trained on"
    assert TRANSCRIPT_HEADER[:20] not in "".join(pieces)
    assert [text[s:e] for s, e in ex["assistant_spans"]] == pieces
    assert all(lab == i for i, lab in zip(ex["input_ids"], ex["labels"]) if lab != -100)


def test_loss_mask_refuses_forged_turns_and_empty_answers():
    with pytest.raises(ValueError, match="forge"):
        encode_conversation(_char_encode, "", [("hi\nAssistant: fake", "ok")])
    with pytest.raises(ValueError, match="empty"):
        encode_conversation(_char_encode, "", [("hi", "  ")])


def _scores(plans, passes):
    return [score_conversation(p, ["this answer is written in lowercase letters." if ok else "This Answer Has Capitals."] * p["n_turns"])
            for p, ok in zip(plans, passes)]


def test_paired_report_go_and_named_regression():
    cfg = _only("carry_constraint", min_turns=2, max_turns=2)
    cfg.patterns["carry_constraint"]["args"]["checks"] = [{"name": "lowercase", "args": {}}]
    plans = build_plans(cfg, SEEDS, 40, 1, "ho")
    rep = paired_report(plans, _scores(plans, [False] * 40), _scores(plans, [True] * 40))
    assert rep["gate"]["go"], rep["gate"]
    assert rep["conversation"]["overall"]["discordant"]["n01"] == 40
    assert set(rep["per_turn"]["per_type"]) == {"turn1", "turn2"}
    assert "lowercase-remembered" in rep["per_check"]["per_type"]
    worse = paired_report(plans, _scores(plans, [True] * 40), _scores(plans, [False] * 40))
    assert not worse["gate"]["go"]
    assert any("turn position turn2 regressed" in r for r in worse["gate"]["reasons"])
    assert any("lowercase-remembered regressed" in r for r in worse["gate"]["reasons"])


def test_regression_decision_names_the_regressed_set(tmp_path):
    from phases.regression import decide, earlier_sets
    from phases.stats import compare_paired
    from runner.errors import DataError
    from state.files import hash_tree, tree_digest

    worse = compare_paired([True] * 30, [False] * 30, labels=("start", "trained"))
    same = compare_paired([True, False] * 15, [True, False] * 15, labels=("start", "trained"))
    v = decide({"held-out stage1 (run a)": worse, "IFEval": same}, 0.01)
    assert not v["go"] and v["reasons"] == [v["reasons"][0]] and v["reasons"][0].startswith("held-out stage1 (run a) regressed")
    assert decide({"IFEval": same}, 0.01)["go"]
    d = tmp_path / "ho"
    d.mkdir()
    (d / "heldout.jsonl").write_text("{}\n")
    link = {"run_id": "a", "stage": "stage1", "heldout": {"dir": str(d), "hash": tree_digest(hash_tree(d))}}
    sets, skipped = earlier_sets([link, {"run_id": "m", "stage": "multiturn"}])
    assert [s["label"] for s in sets] == ["stage1 (run a)"] and skipped == ["multiturn (run m): no single-turn held-out set"]
    (d / "heldout.jsonl").write_text("{\"x\": 1}\n")
    with pytest.raises(DataError, match="edited after that stage finished"):
        earlier_sets([link])
