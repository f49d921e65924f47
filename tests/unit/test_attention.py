"""phases/models/attention.py: cuDNN's attention is out of SDPA's candidates during training on
CUDA, restored afterwards; a no-op elsewhere. (The GPU side, which kernel the compiled training
graphs really call, is in benchmarks/results/h200-2026-12-01e: the profiles' attention ops.)"""
from __future__ import annotations

import pytest
import torch

from phases.models import attention
from phases.models.attention import attention_record, variable_shape_attention


def _flags() -> tuple[bool, bool, bool, bool]:
    b = torch.backends.cuda
    return b.cudnn_sdp_enabled(), b.flash_sdp_enabled(), b.mem_efficient_sdp_enabled(), b.math_sdp_enabled()


def test_cuda_training_leaves_cudnn_out_and_restores_it():
    before = _flags()
    assert before[0], "the test expects PyTorch's default: cuDNN attention enabled"
    with variable_shape_attention("cuda:0") as rec:
        assert _flags() == (False, True, True, True)
        assert rec["sdpa"] == "flash > efficient > math" and "cuDNN" in rec["reason"]
    assert _flags() == before


def test_flags_are_restored_after_an_exception():
    before = _flags()
    with pytest.raises(RuntimeError, match="boom"):
        with variable_shape_attention("cuda"):
            raise RuntimeError("boom")
    assert _flags() == before


def test_cpu_and_the_benchmark_switch_change_nothing(monkeypatch):
    before = _flags()
    with variable_shape_attention("cpu") as rec:
        assert _flags() == before and rec == attention_record("cpu") and rec["sdpa"] == "default"
    monkeypatch.setattr(attention, "AVOID_CUDNN", False)
    with variable_shape_attention("cuda") as rec:
        assert _flags() == before and rec["sdpa"] == "default" and "AVOID_CUDNN off" in rec["reason"]
