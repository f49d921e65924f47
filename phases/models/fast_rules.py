"""Which scoring/generation path HFBackend takes on CUDA: a fixed rule backed by the benchmark table.

Not runnable; ``HFBackend.critic_route`` (used by ``HFBackend.next_token_logprobs``) and
``HFBackend.generate`` ask ``critic_route`` and ``generation_route`` (tests:
``.venv/bin/pytest tests/unit/test_fast_rules_rule.py tests/integration/test_fast_rules.py``).

Why a rule and not a timing: data steps must give the same bytes on every resume, and the
prefix-cached and plain paths agree only to float rounding (1e-4 in fp32, more in bf16: up to
0.17 nats at 7B in bf16 on the H200). A choice made by timing both paths at run time would depend
on the clock, the GPU's load and its warm-up, so a resumed batch could take the other path and
write different critic scores (and different kept/dropped verdicts near the threshold) than the
first attempt. The choice therefore depends only on the model and the call's token ids and the
backend's settings: ``critic_route_for`` is a pure function of (parameter count, shared-prefix
fraction, rows per forward), and the ledger's batches are fixed, so each batch takes the same path
on every attempt.

The rule (docs/performance.md "Which path runs"):
- critic: the prefix-cached path (``phases/models/prefix_cache.py``) only when the shared prefixes
  it would skip are at least ``PREFIX_MIN_SAVED_FRACTION`` of the call's prompt tokens, AND either
  the model has at least ``PREFIX_MIN_PARAMS`` parameters, or it runs at least
  ``PREFIX_SMALL_MIN_ROWS`` rows per prefixed forward (mean over the call's forwards, as
  ``prefix_cache.plan_forwards`` cuts them: one group per rubric/label order, at most
  ``max(backend.batch_size, 64)`` rows and 32,768 padded suffix tokens a forward). Else the plain
  batched forward. A critic call of B items has 2B prompts (two label orders, two prefix groups of
  B), so with ``generation.batch_size`` B >= 64 a full ledger batch runs B rows per forward.
  Measured (H200, torch 2.11, transformers 5.17; ``benchmarks/results/h200-2026-12-01/
  critic_table.md`` and ``critic_results.json``, 256 prompts = 128 items x 2 orders a call;
  "x plain" = scorings/s over plain batched at bs64, i.e. 4 forwards of 64 rows):
  - 1.5B: prefix 1.14x (pair256) / 1.40x (instr80) at 64 rows per forward, 1.15x / 1.52x at 128;
    7B: 1.15x / 1.60x at 64, 1.17x / 1.65x at 128. So >= 1 B: prefix at every measured batch.
  - 0.5B: prefix 1.08x (pair256) but 0.92x (instr80) at 64 rows per forward; 1.15x / 1.49x at
    128 in that run, which set a batch term (prefix from 128 rows per forward). The third H200 run
    (``benchmarks/results/h200-2026-12-01c/critic/``, same command, plain also timed at the same
    batch) overturned it: at 128 rows per forward the prefix path ran 1.11x plain-at-the-same-batch
    on pair256 but **0.58x** on instr80 (the route with the term: 0.81x), and 0.94x on instr80 at
    64. So below 1 B the prefix path is not reliably faster at any measured batch, and
    ``PREFIX_SMALL_MIN_ROWS`` is infinite: plain batched at every batch below 1 B (the machinery
    stays, tested with a patched constant, for a future kernel that changes the picture).
  Why small models lose: a 0.5B forward is launch/copy-bound, and the prefixed forward adds per
  layer a K/V concat of the prefix broadcast over the batch, a GQA expand that materialises K/V
  for all query heads (7 per KV head at 0.5B), a hand-written RoPE and a masked SDPA
  (bottom-right causal mask, no flash kernel); those fixed costs exceed the 33 of 80 tokens of
  tiny matmuls saved. At >= 1.5B the third run confirms the prefix path at both shapes and both
  batches: 1.09-1.10x (pair256) and 1.38-1.45x (instr80) at 1.5B, 1.15-1.16x / 1.58-1.59x at 7B
  (the route's rows against plain at the same batch).
- generation: the static-KV graph path (``backends/fastgen.py``) wherever it is supported:
  3.1-8.2x plain batched ``generate`` at every measured size (0.5B-7B) and batch (64, 256).
The lead's GPU run (``benchmarks/run_all.py --only critic``, rows "rule: ...") re-checks both per
size, shape and batch; change the constants here from those numbers, nowhere else.
"""

from __future__ import annotations

from collections.abc import Sequence

PREFIX_MIN_PARAMS = 1.0e9
PREFIX_MIN_SAVED_FRACTION = 0.10
#: below PREFIX_MIN_PARAMS, the prefix path needs at least this many rows per prefixed forward;
#: infinite since the third H200 run (0.5B instr80 at 128 rows: 0.58x plain), i.e. plain below 1 B
PREFIX_SMALL_MIN_ROWS = float("inf")
#: prefixes shorter than this are not reused (prefix_cache.score_ids' default min_prefix)
MIN_PREFIX = 8
#: the prefix path's padded-suffix-token cap per forward (prefix_cache.score_ids' default max_tokens)
PREFIX_MAX_TOKENS = 32768


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


def rows_per_forward(rows: Sequence[Sequence[int]], max_batch: int, max_tokens: int = PREFIX_MAX_TOKENS) -> float:
    """Mean rows per suffix forward the prefix path would run for ``rows`` (0.0 for no rows)."""
    from phases.models.prefix_cache import plan_forwards  # lazy: see saved_fraction

    plan = plan_forwards(rows, max_batch=max_batch, max_tokens=max_tokens, min_prefix=MIN_PREFIX)
    return len(rows) / len(plan) if plan else 0.0


def critic_route_for(n_params: int | float, shared_fraction: float, forward_rows: float) -> str:
    """The rule itself, pure: ``"prefix"`` or ``"plain"`` (see the module docstring).

    ``n_params``: the model's parameter count; ``shared_fraction``: ``saved_fraction`` of the call
    (0..1); ``forward_rows``: ``rows_per_forward`` of the call. Boundaries are inclusive:
    exactly PREFIX_MIN_PARAMS parameters, PREFIX_MIN_SAVED_FRACTION and PREFIX_SMALL_MIN_ROWS
    rows take the prefix path.
    """
    if shared_fraction < PREFIX_MIN_SAVED_FRACTION:
        return "plain"
    if n_params >= PREFIX_MIN_PARAMS:
        return "prefix"
    return "prefix" if forward_rows >= PREFIX_SMALL_MIN_ROWS else "plain"


def critic_route(model, rows: Sequence[Sequence[int]], *, max_batch: int = 64, max_tokens: int = PREFIX_MAX_TOKENS) -> str:
    """``"prefix"`` or ``"plain"`` for one scoring call of token-id ``rows`` on ``model``, the
    prefix path cutting forwards at ``max_batch`` rows (HFBackend passes ``max(batch_size, 64)``)."""
    n = model_params(model)
    frac = saved_fraction(rows)
    # rows per forward matters only below PREFIX_MIN_PARAMS with a finite batch term; skip planning otherwise
    small_term = n < PREFIX_MIN_PARAMS and frac >= PREFIX_MIN_SAVED_FRACTION and PREFIX_SMALL_MIN_ROWS != float("inf")
    fr = rows_per_forward(rows, max_batch, max_tokens) if small_term else 0.0
    return critic_route_for(n, frac, fr)


def generation_route(model, batch: int) -> str:
    """``"fast"`` (static-KV graph decoding) or ``"plain"``; measured faster at every size and batch."""
    return "fast"
