"""Transformers backend on the real test model: batched == single, seeds, edge cases."""
from __future__ import annotations

import pytest

from helpers_models import smollm2, tiny
from phases.models.backends.base import GenerationParams, PromptTooLongError

pytestmark = pytest.mark.integration

# Different lengths on purpose: left padding must not change any row's result.
PROMPTS = [
    "Water freezes at",
    "Instruction: Name three colours.\nResponse:",
    "The capital of France is",
    "List three prime numbers: 2, 3,",
]
CANDS = ["A", " A", "B", " B", " Paris"]


def test_batched_greedy_and_logprobs_equal_one_at_a_time(monkeypatch):
    m = smollm2()
    greedy = GenerationParams.greedy(10)
    single = [m.generate([p], greedy)[0] for p in PROMPTS]
    single_lp = [m.next_token_logprobs([p], CANDS)[0] for p in PROMPTS]
    for bs in (8, 3):  # one bucket, and buckets that mix lengths
        monkeypatch.setattr(m.backend, "batch_size", bs)
        batched = m.generate(PROMPTS, greedy)
        assert [g.text for g in batched] == [g.text for g in single]
        assert [g.token_ids for g in batched] == [g.token_ids for g in single]
        lp = m.next_token_logprobs(PROMPTS, CANDS)
        for a, b in zip(lp, single_lp):
            assert a.keys() == b.keys()
            assert max(abs(a[k] - b[k]) for k in a) < 1e-4
    assert single_lp[2][" Paris"] > single_lp[2][" A"]  # scores are real next-token log-probs


def test_sampling_is_deterministic_given_seeds():
    m = smollm2()
    params = GenerationParams(max_new_tokens=10, temperature=0.9)
    a = m.generate(PROMPTS, params, seeds=[1, 2, 3, 4])
    b = m.generate(PROMPTS, params, seeds=[1, 2, 3, 4])
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    c = m.generate(PROMPTS, params, seeds=[101, 102, 103, 104])
    assert [g.token_ids for g in a] != [g.token_ids for g in c]  # seeds matter


def test_sampling_does_not_depend_on_batch_composition():
    m = smollm2()
    params = GenerationParams(max_new_tokens=10, temperature=0.9)
    target = PROMPTS[1]
    alone = m.generate([target], params, seeds=[7])[0]
    first = m.generate([target, PROMPTS[0], PROMPTS[3]], params, seeds=[7, 1, 2])[0]
    last = m.generate([PROMPTS[2], PROMPTS[3], target], params, seeds=[9, 9, 7])[2]
    assert alone.token_ids == first.token_ids == last.token_ids


def test_generation_fields_and_stop_strings():
    m = smollm2()
    g = m.generate(["Instruction: Name three colours.\nResponse:"], GenerationParams.greedy(16, stop=("\n",)))[0]
    if g.finish_reason == "stop":
        assert "\n" not in g.text
    assert g.n_tokens == len(g.token_ids) <= 16
    assert g.hit_token_limit == (g.finish_reason == "length")
    g2 = m.generate(["Water freezes at"], GenerationParams.greedy(5))[0]
    assert g2.finish_reason == "length" and g2.hit_token_limit and g2.n_tokens == 5
    assert g2.prompt_tokens == len(m.encode("Water freezes at"))


def test_empty_inputs_have_defined_behaviour():
    m = smollm2()
    assert m.generate([], GenerationParams.greedy(4)) == []
    assert m.next_token_logprobs([], ["A"]) == []
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        m.generate(["ok", ""], GenerationParams.greedy(4))
    with pytest.raises(TypeError, match="single str"):
        m.generate("not a list", GenerationParams.greedy(4))
    with pytest.raises(ValueError, match="one seed per prompt"):
        m.generate(["a", "b"], GenerationParams.greedy(4), seeds=[1])
    with pytest.raises(ValueError, match="single tokens"):
        m.next_token_logprobs(["x"], ["Paris is"])


def test_over_long_prompt_raises_or_truncates_left_when_asked():
    m = tiny()  # context of 256 tokens
    long = "The quick brown fox jumps over the lazy dog. " * 40
    n = len(m.encode(long))
    assert n > m.max_context
    with pytest.raises(PromptTooLongError, match=rf"prompt 1 has {n} tokens.*context of {m.max_context}"):
        m.generate(["short", long], GenerationParams.greedy(8))
    with pytest.raises(PromptTooLongError, match="prompt 0"):
        m.next_token_logprobs([long], ["A"])
    g = m.generate([long], GenerationParams.greedy(8, truncation="left"))[0]
    assert g.prompt_tokens == m.max_context - 8 and g.n_tokens == 8
    # Left truncation keeps the last max_context tokens: a different head must not matter.
    lp = m.next_token_logprobs([long, "Completely different start. " * 30 + long], ["A", " B"], truncation="left")
    assert lp[0] == pytest.approx(lp[1], abs=1e-5)


def test_scoring_runs_inside_the_attention_setting_and_generation_does_not(monkeypatch):
    """Scoring runs inside ``variable_shape_attention`` for the model's device (on CUDA it takes
    cuDNN's attention out of SDPA's picks: phases/models/attention.py), and the flags are back
    afterwards; generation keeps PyTorch's pick (docs/performance.md "Issue 15, sixth run"). CPU
    stands in: the setting is entered with a CUDA device name here, so the SDPA flags really change."""
    import contextlib

    import torch

    from phases.models import attention
    from phases.models.backends import hf

    m = tiny()
    seen = []
    orig_forward = m.backend.model.forward

    def forward(*a, **k):
        seen.append(("forward", torch.backends.cuda.cudnn_sdp_enabled()))
        return orig_forward(*a, **k)

    @contextlib.contextmanager
    def recording(device):
        seen.append(("enter", device))
        with attention.variable_shape_attention("cuda") as rec:
            yield rec

    monkeypatch.setattr(m.backend.model, "forward", forward)
    monkeypatch.setattr(hf, "variable_shape_attention", recording)
    m.next_token_logprobs(PROMPTS[:2], ["A", "B"])
    scoring = list(seen)
    assert scoring[0] == ("enter", "cpu") and len(scoring) >= 2
    assert all(flag is False for kind, flag in scoring[1:])  # cuDNN out during every scoring forward
    assert torch.backends.cuda.cudnn_sdp_enabled()  # restored
    seen.clear()
    m.generate(PROMPTS[:2], GenerationParams.greedy(2))
    assert seen and all(s == ("forward", True) for s in seen)  # generation: no setting, PyTorch's pick
