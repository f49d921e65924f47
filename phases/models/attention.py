"""Which scaled-dot-product-attention kernels the project's CUDA training and critic scoring run.

PyTorch picks an SDPA kernel per call from the enabled backends in priority order; on the H200
(torch 2.11) that pick is cuDNN's attention for the training step's unmasked causal batches. cuDNN
builds and caches an execution graph per new input shape, on the CPU, while the GPU waits: the
fifth H200 run (docs/performance.md "Issue 15, fifth run") profiled it at about 144 ms of CPU
per training step at 1.5B (``aten::_cudnn_attention_forward``/``_backward``, 433 ms over three
profiled steps; 402 ms a step wall time for the same GPU work), against 4 ms (231 ms a step) on a
second pass over the same batch shapes. Token-budget batches give nearly every step a shape not seen before, so a real run pays
it on almost every step: the "first-row effect" of the fourth run.

Inference pays it too (the sixth run, ``benchmarks/check_attention.py``): on shapes not seen
before, PyTorch's pick took 1.48x its repeated-shape time for a plain critic call at 1.5B (1.08x at
7B); with cuDNN out, new and repeated shapes cost the same and repeated ones at most 2% more. So
the HF backend's ``next_token_logprobs`` (critic scoring) runs inside it too. Generation does not:
fastgen (the CUDA route) replays a captured decode graph per batch shape, so its decode shapes
repeat, and on repeated shapes cuDNN's kernel was 3-5% faster (its new-shape cost, 1.18x, came
with a new batch size, so a new decode graph, on every call of the check; the pipeline's buckets
keep one batch size; the prefill's new widths remain, not measured apart).

``variable_shape_attention(device)`` takes cuDNN out of the candidate list for the duration of a
call (FlashAttention, then memory-efficient, then math: the pick PyTorch makes when cuDNN is off),
so compiled graphs traced inside it call those kernels too. It is used around ``trainer.train``
by the ``sft`` and ``dpo`` steps and around ``HFBackend.next_token_logprobs``. ``AVOID_CUDNN`` is
a module switch for the benchmarks' side-by-side rows (``benchmarks/bench_sft.py``
``step_compile_cudnn``, ``check_attention.py``), not a user setting.
"""

from __future__ import annotations

from contextlib import contextmanager

__all__ = ["AVOID_CUDNN", "variable_shape_attention", "attention_record"]

#: leave cuDNN's attention out of SDPA's candidates during training and HF scoring on CUDA (see the module)
AVOID_CUDNN = True

_BACKENDS = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH")
_REASON = ("cuDNN attention left out: it builds a graph per new batch shape on the CPU "
           "(about 144 ms a training step at 1.5B on the H200), and batches change shape every step")


def attention_record(device: str) -> dict:
    """What ``variable_shape_attention(device)`` does, for a manifest / start event."""
    if not str(device).startswith("cuda"):
        return {"sdpa": "default", "reason": "not CUDA: PyTorch's CPU kernels"}
    if not AVOID_CUDNN:
        return {"sdpa": "default", "reason": "AVOID_CUDNN off (a benchmark row): PyTorch's own pick, cuDNN included"}
    return {"sdpa": " > ".join(b.lower().replace("_attention", "") for b in _BACKENDS), "reason": _REASON}


@contextmanager
def variable_shape_attention(device: str):
    """Within the block, SDPA on CUDA picks from flash, memory-efficient and math kernels only
    (restored on exit, also on an exception); elsewhere, or with ``AVOID_CUDNN`` off, a no-op.
    Yields ``attention_record(device)``."""
    record = attention_record(device)
    if record["sdpa"] == "default":
        yield record
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([getattr(SDPBackend, b) for b in _BACKENDS], set_priority=True):
        yield record
