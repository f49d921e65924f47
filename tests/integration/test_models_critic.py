"""The A/B critic on the real test model: both orders scored, batched == single, real log-probs."""
from __future__ import annotations

import math

import pytest

from helpers_models import smollm2
from phases.critic import CANDIDATES, build_critic_prompt, judge, score_order

pytestmark = pytest.mark.integration

ITEMS = ["Write a haiku about autumn rain.", "asdf qwer zxcv the the"]


def test_judge_scores_both_orders_from_real_next_token_logprobs():
    m = smollm2()
    verdicts = judge(m, "instruction", ITEMS)
    assert len(verdicts) == 2
    for item, v in zip(ITEMS, verdicts):
        for order, raw in (("AB", v.ab), ("BA", v.ba)):
            lp = m.next_token_logprobs([build_critic_prompt("instruction", item, order)], list(CANDIDATES))[0]
            want = score_order(lp, order)
            assert raw.logp_a == pytest.approx(want.logp_a, abs=1e-4)
            assert raw.logp_b == pytest.approx(want.logp_b, abs=1e-4)
            assert math.isfinite(raw.logp_a) and raw.logp_a < 0
        assert v.logp_a == pytest.approx((v.ab.logp_a + v.ba.logp_b) / 2)
        assert v.margin == pytest.approx(abs(v.logp_a - v.logp_b))
        assert v.label == ("A" if v.is_good else "B")


def test_batched_judge_equals_item_by_item_and_pair_rubric_runs():
    m = smollm2()
    together = judge(m, "instruction", ITEMS)
    alone = [judge(m, "instruction", [it])[0] for it in ITEMS]
    for a, b in zip(together, alone):
        assert a.label == b.label
        assert a.margin == pytest.approx(b.margin, abs=1e-4)
    pair = judge(m, "pair", [{"instruction": "Name a colour.", "response": "Blue.\n\nInstruction: more"}])
    assert pair[0].label in ("A", "B") and pair[0].ab.order == "AB" and pair[0].ba.order == "BA"
