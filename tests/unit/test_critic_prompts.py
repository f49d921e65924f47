"""The A/B critic's pure-Python parts: prompt text, label orders, scoring, combining (no torch)."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

from phases.critic import (
    ANSWER_LINE,
    CANDIDATES,
    build_critic_prompt,
    combine,
    first_paragraph,
    judge,
    score_order,
)


def lp(a, b, sa=None, sb=None):
    return {"A": a, " A": a - 5 if sa is None else sa, "B": b, " B": b - 5 if sb is None else sb}


def test_instruction_prompt_shape_and_ending():
    p = build_critic_prompt("instruction", "Write a haiku about rain.")
    assert p.endswith(f"{ANSWER_LINE}\nLabel:")
    assert "Instruction: Write a haiku about rain." in p
    assert "A = clear, specific, achievable and safe." in p
    assert "B = vague, impossible, unsafe or nonsense." in p
    assert "If unsure, choose B." in p
    assert not p.endswith(" ")


def test_swapped_order_maps_a_and_b_including_the_unsure_rule():
    ab = build_critic_prompt("instruction", "Do X.", "AB")
    ba = build_critic_prompt("instruction", "Do X.", "BA")
    assert "A = vague, impossible, unsafe or nonsense." in ba
    assert "B = clear, specific, achievable and safe." in ba
    assert "If unsure, choose A." in ba
    assert ab != ba


def test_pair_prompt_uses_only_the_first_paragraph():
    item = {"instruction": "Name a colour.", "response": "  Red.\nIt is warm.\n\nInstruction: next question"}
    p = build_critic_prompt("pair", item)
    assert "Response: Red.\nIt is warm.\n" in p
    assert "next question" not in p
    assert "refusal" in p


def test_first_paragraph_edge_cases():
    assert first_paragraph("") == ""
    assert first_paragraph("one\n   \ntwo") == "one"
    assert first_paragraph("\n\nlead blank\n\nrest") == "lead blank"


def test_bad_items_raise_clear_errors():
    with pytest.raises(ValueError, match="response"):
        build_critic_prompt("pair", {"instruction": "x"})
    with pytest.raises(ValueError, match="mapping"):
        build_critic_prompt("pair", "just a string")
    with pytest.raises(KeyError):
        build_critic_prompt("nope", "x")
    with pytest.raises(ValueError, match="order"):
        build_critic_prompt("instruction", "x", "AA")


def test_score_takes_the_better_of_space_and_no_space():
    s = score_order({"A": -5.0, " A": -0.5, "B": -1.0, " B": -7.0}, "AB")
    assert (s.logp_a, s.logp_b) == (-0.5, -1.0)
    assert s.label == "A" and s.is_good
    assert s.margin == pytest.approx(0.5) and not s.confident


def test_score_threshold_and_swapped_meaning():
    s = score_order(lp(-0.1, -3.0), "BA", threshold=1.0)
    assert s.label == "A" and not s.is_good and s.confident  # in BA, A means bad
    tie = score_order(lp(-1.0, -1.0), "AB")
    assert tie.label == "B" and not tie.is_good  # ties go to the bad letter


def test_combine_cancels_a_constant_position_bias():
    # The model prefers letter A by +2 regardless of meaning; the item is mildly good (+0.5).
    ab = score_order(lp(-1.0 + 2 + 0.5, -1.0), "AB")  # good=A
    ba = score_order(lp(-1.0 + 2, -1.0 + 0.5), "BA")  # good=B
    assert ab.is_good and not ba.is_good  # each order alone disagrees
    v = combine(ab, ba)
    assert v.is_good and v.label == "A"
    assert v.margin == pytest.approx(0.5)
    assert not v.confident and not v.keep
    assert v.ab is ab and v.ba is ba


def test_combine_confident_and_keep():
    v = combine(score_order(lp(-0.1, -4.0), "AB"), score_order(lp(-4.0, -0.1), "BA"))
    assert v.is_good and v.confident and v.keep
    assert v.to_dict()["keep"] is True
    with pytest.raises(ValueError):
        combine(v.ba, v.ab)


class _RecordingScorer:
    def __init__(self):
        self.calls = []

    def next_token_logprobs(self, prompts, candidate_tokens):
        self.calls.append((list(prompts), list(candidate_tokens)))
        # Good only when the prompt says "good"; answer via the letter that means good in that order.
        out = []
        for p in prompts:
            good_letter = "A" if "A = clear" in p else "B"
            want_good = "Instruction: good" in p
            win = good_letter if want_good else ("B" if good_letter == "A" else "A")
            out.append({c: (-0.1 if c.strip() == win else -3.0) for c in candidate_tokens})
        return out


def test_judge_batches_both_orders_in_one_call():
    sc = _RecordingScorer()
    vs = judge(sc, "instruction", ["good one", "bad one"])
    assert len(sc.calls) == 1
    prompts, cands = sc.calls[0]
    assert len(prompts) == 4 and tuple(cands) == CANDIDATES
    assert [v.is_good for v in vs] == [True, False]
    assert all(v.confident for v in vs)
    assert judge(sc, "instruction", []) == []


def test_critic_module_imports_without_torch():
    assert "phases.critic" in sys.modules
    import subprocess

    code = "import sys, phases.critic; assert 'torch' not in sys.modules, 'torch imported'"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_request_safety_rubric_prompt():
    from phases.critic import build_critic_prompt

    ab = build_critic_prompt("request_safety", "How do I pick my neighbour's lock?", "AB")
    assert ab.startswith("Judge the request below.\nA = safe to answer")
    assert "B = harmful, dangerous, illegal or deceptive" in ab and "If unsure, choose B." in ab
    assert ab.endswith("Instruction: How do I pick my neighbour's lock?\n\nOutput exactly one letter on the next line: A or B\nLabel:")
    ba = build_critic_prompt("request_safety", "How do I pick my neighbour's lock?", "BA")
    assert "A = harmful" in ba and "If unsure, choose A." in ba
