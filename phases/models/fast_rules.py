"""Which scoring/generation path HFBackend takes on CUDA: a fixed rule backed by the benchmark table.

Not runnable; ``HFBackend.next_token_logprobs`` and ``HFBackend.generate`` ask ``critic_route`` and
``generation_route`` (tests: ``.venv/bin/pytest tests/integration/test_fast_paths.py -k rule``).

Why a rule and not a timing: data steps must give the same bytes on every resume, and the
prefix-cached and plain paths agree only to float rounding (1e-4 in fp32, more in bf16), so the
choice may depend only on the model and the prompts, never on a clock.

The rule (docs/performance.md "Which path runs"):
- critic: the prefix-cached path (``phases/models/prefix_cache.py``) only when the model has at
  least ``PREFIX_MIN_PARAMS`` parameters AND the shared prefixes it would skip are at least
  ``PREFIX_MIN_SAVED_FRACTION`` of the call's prompt tokens; else the plain batched forward.
  Measured: 1.08-1.14x (pair prompts) and 1.39-1.63x (instruction prompts) at 1.5B/7B; at 0.5B
  the instruction-critic shape ran at 0.52x (batch 64) / 0.94x (batch 256) of plain in one H200
  run: a 0.5B forward is launch/copy-bound, and the prefixed forward adds per layer a K/V concat
  of the prefix broadcast over the batch, a GQA expand that materialises K/V for all query heads
  (7 per KV head at 0.5B), a hand-written RoPE, and a masked SDPA (bottom-right causal mask,
  which cannot use the flash kernel), while it saves only 33 of 80 tokens of tiny matmuls.
- generation: the static-KV graph path (``backends/fastgen.py``) wherever it is supported:
  3.1-8.2x plain batched ``generate`` at every measured size (0.5B-7B) and batch (64, 256).
The lead's GPU run (``benchmarks/run_all.py``, rows "rule: ...") re-checks both per size and
shape; change the constants here from those numbers, nowhere else.
"""

from __future__ import annotations

from collections.abc import Sequence

PREFIX_MIN_PARAMS = 1.0e9
PREFIX_MIN_SAVED_FRACTION = 0.10
#: prefixes shorter than this are not reused (prefix_cache.score_ids' default min_prefix)
MIN_PREFIX = 8


def model_params(model) -> int:
    """Parameter count; a bitsandbytes 4-bit tensor stores two weights per element."""
    return sum(p.numel() * (2 if getattr(p, "quant_type", None) else 1) for p in model.parameters())


def saved_fraction(rows: Sequence[Sequence[int]]) -> float:
    """Fraction of the rows' tokens the prefix-cached path would not recompute (0 for no rows)."""
    from phases.models.prefix_cache import shared_prefix_groups  # lazy: prefix_cache imports torch; the rule module stays light

    total = sum(len(r) for r in rows)
    if not total:
        return 0.0
    saved = sum((len(idx) - 1) * p for p, idx in shared_prefix_groups(rows) if p >= MIN_PREFIX)
    return saved / total


def critic_route(model, rows: Sequence[Sequence[int]]) -> str:
    """``"prefix"`` or ``"plain"`` for one scoring call (see the module docstring)."""
    if model_params(model) < PREFIX_MIN_PARAMS:
        return "plain"
    return "prefix" if saved_fraction(rows) >= PREFIX_MIN_SAVED_FRACTION else "plain"


def generation_route(model, batch: int) -> str:
    """``"fast"`` (static-KV graph decoding) or ``"plain"``; measured faster at every size and batch."""
    return "fast"
