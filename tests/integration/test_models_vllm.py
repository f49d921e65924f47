"""vLLM backend: construction on a CUDA machine with vllm (skips cleanly otherwise); clear errors."""
from __future__ import annotations

import pytest

from helpers_models import tiny_dir
from phases.models.backends import vllm as vllm_backend

pytestmark = pytest.mark.integration


def test_vllm_missing_is_a_clear_error():
    if vllm_backend.vllm_available():
        pytest.skip("vllm is installed")
    with pytest.raises(ImportError, match="pip install vllm"):
        vllm_backend.VLLMBackend("x", lambda t: [], lambda i: "", stop_token_ids=[0])


@pytest.mark.gpu
def test_vllm_backend_constructs_and_runs_on_cuda():
    pytest.importorskip("vllm")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from phases.models.backends.base import GenerationParams
    from phases.models.loader import load_model

    m = load_model(tiny_dir(), device="cuda", backend="vllm")
    assert m.provenance["backend"] == "vllm" and m.model is None
    out = m.generate(["Water freezes at"], GenerationParams.greedy(4))
    assert out[0].n_tokens <= 4
    assert set(m.next_token_logprobs(["Label:"], ["A", " B"])[0]) == {"A", " B"}
