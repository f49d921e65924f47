"""Held-out family coverage: quotas, the family plan, family-targeted rounds, shortfall, the
refusal family's keep rule. No model: a fake generator writes numbered lists per family.

Run: .venv/bin/python -m pytest tests/unit/test_heldout_families.py
"""
from __future__ import annotations

import random
import re
from types import SimpleNamespace

import pytest

from tests.unit.test_stage1_steps import DEMO, _Ctx, _expand

WORDS = ("apples", "rivers", "clocks", "violins", "glaciers", "lanterns", "meadows", "comets", "bridges", "ferns",
         "tigers", "harbors", "pencils", "deserts", "castles", "orchids", "rockets", "marbles", "islands", "kettles",
         "walnuts", "ravens", "ladders", "puzzles", "canyons", "mittens", "beacons", "tunnels", "garnets", "parrots")
VERBS = ("Describe", "List", "Compare", "Explain", "Summarize", "Name", "Classify", "Rewrite")


class _ListModel:
    """Writes 3 parseable instructions per prompt (seeded random words, so rarely near-duplicates);
    ``silent`` topics (family descriptions) get an empty completion, like a model that will not
    write such requests."""

    def __init__(self, silent=()):
        self.silent, self.calls = set(silent), []

    def generate(self, prompts, params, seeds):
        out = []
        for prompt, seed in zip(prompts, seeds):
            topic = re.search(r"Topic: (.*)", prompt)
            topic = topic.group(1) if topic else ""
            self.calls.append(topic)
            k = int(re.findall(r"(\d+)\.\s*$", prompt)[0])
            if any(s in topic for s in self.silent):
                text = ""
            else:
                rng = random.Random(seed)
                text = "".join(f"{' ' if i == 0 else f'{k + i}. '}{rng.choice(VERBS)} the "
                               f"{' '.join(rng.sample(WORDS, 5))}.\n" for i in range(3))
            out.append(SimpleNamespace(text=text, n_tokens=30, finish_reason="eos", token_ids=(), hit_token_limit=False))
        return out


def _params():
    return _expand(DEMO)["params"]["heldout"]


def test_quotas_cover_families_by_weight_and_min_one_covers_every_family():
    from phases.steps.generation import weighted_quotas
    from phases.steps.heldout import quotas

    fams = {f: {"weight": 1.0} for f in "abcdefghijk"}
    q = quotas(fams, 16)
    assert sum(q.values()) == 16 and set(q) == set(fams) and min(q.values()) == 1
    # a heavier refusal family gets its share; weight 0 is left out
    q = quotas({**fams, "safety": {"weight": 3.0, "refusal_expected": True}, "off": {"weight": 0.0}}, 16)
    assert q["safety"] == 4 and "off" not in q and sum(q.values()) == 16
    # fewer places than families: plain split leaves some at 0, min_one only when n allows
    assert weighted_quotas({"a": 10.0, "b": 1.0, "c": 1.0}, 3) == {"a": 3, "b": 0, "c": 0}
    assert weighted_quotas({"a": 10.0, "b": 1.0, "c": 1.0}, 3, min_one=True) == {"a": 1, "b": 1, "c": 1}
    assert weighted_quotas({"a": 10.0, "b": 1.0, "c": 1.0}, 2, min_one=True) == {"a": 2, "b": 0, "c": 0}


def test_family_plan_is_seeded_and_asks_every_family():
    from phases.steps.generation import family_plan

    need = {f: 1 for f in "abcdefghijk"} | {"big": 5}
    plan = family_plan(need, 16, seed=7)
    assert len(plan) == 16 and set(plan) == set(need)
    assert plan == family_plan(need, 16, seed=7) and plan != family_plan(need, 16, seed=8)
    assert plan.count("big") == 5  # n covers the need: each family gets its need
    assert family_plan(need, 32, seed=7).count("big") == 10  # and the 16 spare places go by need
    short = family_plan(need, 13, seed=7)  # fewer places than needed: one each, the rest by need
    assert set(short) == set(need) and short.count("big") == 2


def test_select_balanced_takes_quota_then_fills_and_reports_the_shortfall():
    from phases.steps.heldout import family_shortfall, select_balanced

    cands = ([{"id": f"a{i}", "family": "a"} for i in range(5)] + [{"id": "s0", "family": "safety"}]
             + [{"id": f"b{i}", "family": "b"} for i in range(3)])
    q = {"a": 2, "b": 2, "safety": 3}
    got = select_balanced(cands, q, 7)
    assert [c["id"] for c in got] == ["a0", "a1", "a2", "a3", "s0", "b0", "b1"]  # candidate order kept
    assert family_shortfall(q, got) == {"safety": 2}
    q2 = {"a": 2, "b": 2}
    assert family_shortfall(q2, select_balanced(cands, q2, 4)) == {}


def test_refusal_family_keep_rule_is_flipped():
    from phases.steps.heldout import heldout_verdict

    def v(is_good, confident, a, b):
        return {"is_good": is_good, "confident": confident, "keep": is_good and confident, "logp_a": a, "logp_b": b}

    # request_safety: B (should be declined) is what a refusal item needs
    assert heldout_verdict(v(False, True, -3.0, -1.0), True) == {"reject": False, "keep": True, "score": 2.0}
    assert heldout_verdict(v(True, True, -1.0, -3.0), True)["reject"]          # confidently safe: tests no refusal
    assert heldout_verdict(v(False, True, -3.0, -1.0), False)["reject"]        # ordinary family: bad instruction
    assert not heldout_verdict(v(True, False, -1.0, -1.5), False)["reject"]
    # the keep-all test hook keeps refusal candidates too (its override says "good" = safe to answer)
    assert heldout_verdict({**v(True, True, -1.0, -3.0), "test_override": True}, True)["keep"]


def _collect(model, p, targets, usable_from_round=None, max_rounds=3):
    from phases.steps.generation import collect_by_family

    def assess(new, key):
        r = int(key[1:].split("-")[0])
        return [{**c, "usable": usable_from_round is None or c["family"] not in usable_from_round
                 or r >= usable_from_round[c["family"]]} for c in new]

    return collect_by_family(_Ctx(), model, p, p["instructions"], seed_base=11, targets=targets, tag="t",
                             id_prefix="ho", assess=assess, max_rounds=max_rounds)


def test_round_zero_asks_every_family_and_stops_when_targets_are_met():
    p = _params()
    targets = {f: 2 for f in p["families"]}
    got = _collect(_ListModel(), p, targets)
    assert len(got["rounds"]) == 1 and set(got["rounds"][0]["by_family"]) == set(targets)
    assert got["rounds"][0]["prompts"] % p["batch_size"] == 0
    # only what a family misses is judged; the rest is surplus, recorded as such
    assert all(got["usable_by_family"][f] == 2 for f in targets) and len(got["candidates"]) == 2 * len(targets)
    surplus = [d for d in got["dropped"] if d["drop_reason"] == "surplus_unjudged"]
    assert surplus and len(surplus) == got["counts"]["candidates_surplus"]


def test_a_short_family_gets_targeted_rounds_up_to_the_cap_and_stays_short():
    p = _params()
    targets = {f: 2 for f in p["families"]}
    desc = p["families"]["safety_refusals"]["description"]
    model = _ListModel(silent=[desc])
    got = _collect(model, p, targets, max_rounds=3)
    assert [r["round"] for r in got["rounds"]] == [0, 1, 2]
    assert all(set(r["by_family"]) == {"safety_refusals"} for r in got["rounds"][1:])
    assert got["usable_by_family"]["safety_refusals"] == 0
    assert all(got["usable_by_family"][f] >= 2 for f in targets if f != "safety_refusals")
    # rounds continue the prompt indices: ids never repeat
    ids = [c["id"] for c in got["candidates"]]
    assert len(ids) == len(set(ids))


def test_a_family_usable_only_later_is_filled_by_its_own_round_and_the_result_is_deterministic():
    p = _params()
    targets = {f: 2 for f in p["families"]}
    a = _collect(_ListModel(), p, targets, usable_from_round={"safety_refusals": 1})
    assert len(a["rounds"]) == 2 and set(a["rounds"][1]["by_family"]) == {"safety_refusals"}
    assert a["usable_by_family"]["safety_refusals"] >= 2
    b = _collect(_ListModel(), p, targets, usable_from_round={"safety_refusals": 1})
    assert [c["id"] for c in a["candidates"]] == [c["id"] for c in b["candidates"]]
    assert [c["instruction"] for c in a["candidates"]] == [c["instruction"] for c in b["candidates"]]


def test_nothing_generated_is_a_clear_error():
    from runner.errors import DataError

    p = _params()
    with pytest.raises(DataError, match="instruction generation returned nothing"):
        _collect(_ListModel(silent=[""]), p, {f: 1 for f in p["families"]}, max_rounds=1)


def test_targeted_rounds_are_spent_only_on_families_short_of_what_they_require():
    from phases.steps.generation import collect_by_family

    p = _params()

    def run(required):
        seen = {"n": 0}

        def assess(new, key):  # only the first rewriting candidate is usable
            out = []
            for c in new:
                ok = c["family"] != "rewriting" or seen["n"] == 0
                seen["n"] += c["family"] == "rewriting"
                out.append({**c, "usable": ok})
            return out

        return collect_by_family(_Ctx(), _ListModel(), p, p["instructions"], seed_base=11,
                                 targets={f: 2 for f in p["families"]}, required=required, tag="t", id_prefix="ho",
                                 assess=assess, max_rounds=3)

    lax = run({f: 1 for f in p["families"]})  # 1 usable rewriting candidate fills its place: no extra round
    assert len(lax["rounds"]) == 1 and lax["usable_by_family"]["rewriting"] == 1
    strict = run(None)  # required = targets: rewriting gets rounds of its own, up to the cap
    assert len(strict["rounds"]) == 3 and all(set(r["by_family"]) == {"rewriting"} for r in strict["rounds"][1:])
