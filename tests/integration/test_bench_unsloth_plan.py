"""bench_unsloth's batch plan is the sft step's: bench_sft's random rows cut by the fast trainer's
TokenBudgetBatchSampler (<= 16 rows, <= 16,384 padded tokens a step). Needs torch, no model, no
unsloth.

Run: .venv/bin/python -m pytest tests/integration/test_bench_unsloth_plan.py -q
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def test_constants_follow_the_code_they_copy():
    from benchmarks import bench_unsloth as bu
    from benchmarks import common
    from phases.sft_fast_trainer import FAST_MAX_TOKENS_DEFAULT

    assert bu.MAX_TOKENS == FAST_MAX_TOKENS_DEFAULT
    assert set(bu.KNOWN_SIZES) == set(common.SIZES)


@pytest.mark.parametrize("budget", [16384, 6144])
def test_plan_is_bench_sft_data_in_fast_trainer_batches(budget):
    from benchmarks import bench_unsloth as bu
    from benchmarks import common
    from benchmarks.bench_sft import make_data
    from phases.sft_fast_trainer import TokenBudgetBatchSampler

    data, batches = bu.plan("7B", budget, 16)
    assert data == make_data(640, common.SIZES["7B"]["vocab_size"], 64, 768)
    lengths = [len(x) for x in data]
    assert batches == TokenBudgetBatchSampler(lengths, budget, 16, 0).order(0)
    assert sorted(i for b in batches for i in b) == list(range(640))
    assert all(len(b) <= 16 and len(b) * max(lengths[i] for i in b) <= budget for b in batches)
    s = bu.plan_summary(data, batches)
    assert s["steps"] == len(batches) and s["timed_steps"] == len(batches) - 3 and s["real_tokens"] == sum(lengths)
    if budget == 6144:  # the budget binds (16 rows of 768 tokens would be 12,288)
        assert s["most_padded_tokens"] <= 6144 and s["steps"] > 40
    else:  # 16 rows always bind first at these lengths
        assert s["most_rows"] == 16 and s["steps"] == 40


def test_step_loop_counts_the_timed_steps_real_tokens_and_trains():
    """The loop the Unsloth row times, on CPU with a plain tiny model (Unsloth itself needs CUDA)."""
    import torch

    from benchmarks import bench_unsloth as bu
    from benchmarks import common

    data, batches = bu.plan("tiny", 256, 16, n=24, lo=8, hi=40)
    torch.manual_seed(0)
    model = common.build_model("tiny", "cpu").train()
    for name, p in model.named_parameters():  # a LoRA-like split: only the attention projections train
        p.requires_grad_("self_attn" in name)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    before = [p.detach().clone() for p in params]
    r = bu._step_loop(model, opt, params, data, batches, warm=2, steps=0, dev="cpu")
    timed = batches[2:]
    assert r["steps"] == len(timed) and r["tokens"] == sum(len(data[i]) for b in timed for i in b)
    # seconds is rounded to 1 ms in the row, tokens_per_s is not: compare through the seconds
    assert r["tokens"] / r["tokens_per_s"] == pytest.approx(r["seconds"], abs=6e-4)
    assert 0 <= r["padding_frac"] < 1 and 0 < r["step_s_median"] <= r["step_s_max"]
    assert abs(r["loss_first"] - math.log(1024)) < 0.5  # random model, random ids: ~ln(vocab), mean per token
    assert any(not torch.equal(a, p) for a, p in zip(before, params))
    assert len(batches) >= 4
    r1 = bu._step_loop(model, opt, params, data, batches, warm=2, steps=1, dev="cpu")  # --steps caps the timed ones
    assert r1["steps"] == 1 and r1["tokens"] == sum(len(data[i]) for i in batches[2])
    with pytest.raises(ValueError, match="warm-up"):
        bu._step_loop(model, opt, params, data, batches[:2], warm=2, steps=0, dev="cpu")
    # --warm-pass: the whole plan is the warm-up, the timed window a second pass (or its first --steps)
    r2 = bu._step_loop(model, opt, params, data, batches, warm=2, steps=0, dev="cpu", warm_pass=True)
    assert r2["warmup_steps"] == len(batches) and r2["steps"] == len(batches)
    assert r2["tokens"] == sum(len(data[i]) for b in batches for i in b)
    # ... and the warm-up pass is timed after its first `warm` steps (every shape new: a first epoch)
    assert r2["first_pass_steps"] == len(batches) - 2
    assert r2["first_pass_tokens"] == sum(len(data[i]) for b in batches[2:] for i in b)
    # both rounded in the row (1 ms, 0.1 token/s): compare through the seconds
    assert r2["first_pass_tokens"] / r2["first_pass_tokens_per_s"] == pytest.approx(r2["first_pass_seconds"], rel=1e-2,
                                                                                 abs=1e-3)
    with pytest.raises(ValueError, match="warm-up"):  # a plan no longer than the first pass's warm-up
        bu._step_loop(model, opt, params, data, batches[:2], warm=2, steps=0, dev="cpu", warm_pass=True)
    assert "first_pass_tokens_per_s" not in r  # only with --warm-pass
    r3 = bu._step_loop(model, opt, params, data, batches, warm=2, steps=2, dev="cpu", warm_pass=True)
    assert r3["steps"] == 2 and r3["tokens"] == sum(len(data[i]) for b in batches[:2] for i in b)
