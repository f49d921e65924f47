"""The fast SFT recipe's pieces: token-budget batches and the fused linear + CE of the `sft` step's fast trainer.

Not runnable. Tests: ``.venv/bin/pytest -m integration tests/integration/test_fast_paths.py``
(fused loss and gradients vs the masked model loss across chunks, batch coverage) and
``tests/integration/test_sft_fast_trainer.py`` (the trainer built on them).

- ``token_budget_batches``: batches of length-sorted examples whose padded size
  (``rows x longest``) stays within ``max_tokens``: rows of similar length share a batch, so
  padding is a few percent, and every step carries about the same number of tokens, which fills
  the GPU where a fixed 8 rows of 64-768 tokens does not. Order: shuffled into megabatches,
  sorted inside each, batches shuffled.
- ``fused_linear_cross_entropy`` for a FROZEN output layer (LoRA does not train lm_head): logits
  are computed in chunks of ``chunk`` tokens, only at labelled positions, and the loss gradient
  w.r.t. the hidden states is formed in the forward pass, so the (tokens x vocab) fp32 logits
  never exist at once (for a 152k vocabulary that is 600 KB per token) and the lm_head matmul is
  not recomputed. Loss = sum of cross-entropies over labelled tokens and their count. With
  ``compiled=True`` (the step's compiled layers) each chunk's softmax and gradient run as
  Inductor kernels (``compiled_ce_chunk``) that never hold the chunk's logits in fp32.
- ``collate_right_padded``: token-id lists (and optional loss masks) to right-padded
  ``input_ids``/``labels`` without an attention mask, for benchmarks that feed raw ids
  (``benchmarks/bench_unsloth.py``); the step collates its examples with
  ``phases.sft_fast_trainer.collate_train``.

The trainer adds right padding without an attention mask (a real token only sees earlier
positions and pads come after every real token of its row, so real tokens' outputs are those of
the unpadded row; with no mask SDPA runs its causal flash kernel) and no activation checkpointing
up to 10 B parameters. The side-script training step that the benchmark once timed beside the
`sft` step (``FastSFTStep``) is gone: ``benchmarks/bench_sft.py`` times the step itself.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

IGNORE = -100


def token_budget_batches(lengths: Sequence[int], max_tokens: int, *, seed: int = 0, megabatch: int = 256,
                         max_rows: int | None = None) -> list[list[int]]:
    """Index batches whose padded size ``rows x longest`` stays <= ``max_tokens``.

    An example longer than ``max_tokens`` gets a batch of its own (never dropped). Deterministic
    given ``seed``; every index appears exactly once.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches: list[list[int]] = []
    for m in range(0, len(order), megabatch):
        mega = sorted(order[m : m + megabatch], key=lambda i: (-lengths[i], i))
        cur: list[int] = []
        for i in mega:
            width = lengths[cur[0]] if cur else lengths[i]  # sorted longest first
            if cur and ((len(cur) + 1) * width > max_tokens or (max_rows and len(cur) >= max_rows)):
                batches.append(cur)
                cur = []
            cur.append(i)
        if cur:
            batches.append(cur)
    rng.shuffle(batches)
    return batches


def collate_right_padded(examples: Sequence[Sequence[int]], pad_id: int, loss_masks: Sequence[Sequence[int]] | None = None) -> dict:
    """``{"input_ids", "labels"}`` (long, ``(n, longest)``), right-padded, plus ``n_tokens`` (real
    tokens, an int); see the module docstring.

    ``loss_masks[i][j]`` = 0 excludes token j of example i from the loss (e.g. prompt tokens);
    default: every token is trained on. No attention mask is returned on purpose.
    """
    if not examples:
        raise ValueError("collate_right_padded: empty batch")
    width = max(len(x) for x in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for b, x in enumerate(examples):
        if not x:
            raise ValueError(f"collate_right_padded: example {b} is empty")
        t = torch.as_tensor(list(x), dtype=torch.long)
        ids[b, : len(x)] = t
        lab = t.clone()
        if loss_masks is not None:
            m = torch.as_tensor(list(loss_masks[b]), dtype=torch.bool)
            if m.numel() != len(x):
                raise ValueError(f"collate_right_padded: loss mask {b} has {m.numel()} entries for {len(x)} tokens")
            lab[~m] = IGNORE
        labels[b, : len(x)] = lab
    return {"input_ids": ids, "labels": labels, "n_tokens": sum(len(x) for x in examples)}


def _ce_chunk_grad(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of cross-entropies, d loss / d logits in ``logits``' dtype) of one chunk, fp32 math.

    Written for ``torch.compile`` (``compiled_ce_chunk``): Inductor fuses the upcast, logsumexp,
    softmax and one-hot subtraction into a reduction and a pointwise kernel that read the bf16
    logits and write the bf16 gradient, where the eager ``_ce_chunk_grad_eager`` materialises fp32
    (tokens x vocab) tensors several times. Same values (tests/integration/test_fast_paths.py)."""
    x = logits.float()
    lse = torch.logsumexp(x, dim=-1)
    loss = (lse - x.gather(1, y[:, None]).squeeze(1)).sum()
    hit = torch.arange(x.shape[1], device=x.device)[None, :] == y[:, None]
    return loss, (torch.exp(x - lse[:, None]) - hit.to(x.dtype)).to(logits.dtype)


def _ce_chunk_grad_eager(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``_ce_chunk_grad`` for eager mode: in-place one-hot subtraction instead of a (tokens x
    vocab) comparison mask."""
    x = logits.float()
    lse = torch.logsumexp(x, dim=-1)
    loss = (lse - x.gather(1, y[:, None]).squeeze(1)).sum()
    p = torch.exp(x - lse[:, None])
    p[torch.arange(y.shape[0], device=p.device), y] -= 1.0
    return loss, p.to(logits.dtype)


_COMPILED_CE = None


def compiled_ce_chunk():
    """``_ce_chunk_grad`` through ``torch.compile`` (Inductor, dynamic rows: the last chunk of a
    batch and every batch's labelled-token count differ), built once per process."""
    global _COMPILED_CE
    if _COMPILED_CE is None:
        _COMPILED_CE = torch.compile(_ce_chunk_grad, dynamic=True)
    return _COMPILED_CE


class _FusedLinearCE(torch.autograd.Function):
    """Sum of cross-entropies of ``h @ W.T`` vs ``y``; W frozen. Gradient w.r.t. h made in forward."""

    @staticmethod
    def forward(ctx, h, W, y, chunk: int, compiled: bool):
        ce = compiled_ce_chunk() if compiled else _ce_chunk_grad_eager
        grad_h = torch.empty_like(h)
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for i in range(0, h.shape[0], chunk):
            loss, g = ce(h[i : i + chunk] @ W.t(), y[i : i + chunk])
            total += loss
            grad_h[i : i + chunk] = g @ W
        ctx.save_for_backward(grad_h)
        return total

    @staticmethod
    def backward(ctx, g):
        (grad_h,) = ctx.saved_tensors
        return grad_h * g.to(grad_h.dtype), None, None, None, None


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *, chunk: int = 4096,
                               compiled: bool = False) -> tuple[torch.Tensor, int]:
    """Causal-LM loss SUM over labelled positions and their count (next-token shift applied here).

    ``hidden`` ``(n, t, d)``, ``labels`` ``(n, t)`` with -100 = ignore; ``weight`` (vocab, d) must
    not require grad (else use the model's own loss). ``compiled``: each chunk's softmax and
    gradient through ``torch.compile`` (``compiled_ce_chunk``; needs a C compiler, as compiled
    layers do), else eager.
    """
    if weight.requires_grad:
        raise ValueError("fused_linear_cross_entropy needs a frozen output layer (weight.requires_grad is True)")
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    y = labels[:, 1:].reshape(-1)
    sel = y != IGNORE
    h, y = h[sel].to(weight.dtype), y[sel]
    n = int(y.numel())
    if n == 0:
        return hidden.sum() * 0.0, 0
    return _FusedLinearCE.apply(h, weight, y, chunk, compiled), n
