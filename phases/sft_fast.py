"""Throughput helpers for a LoRA SFT training step (the recipe benchmarks/bench_sft.py measures).

Not runnable; a training step (phases/sft.py) can adopt these pieces:

    from phases.sft_fast import add_lora, token_budget_batches, collate_right_padded, FastSFTStep
    model = add_lora(model)                                  # LoRA r=16, alpha 32, all linear layers
    batches = token_budget_batches([len(x) for x in examples], max_tokens=16384, seed=epoch_seed)
    step = FastSFTStep(model, torch.optim.AdamW(trainable, lr=2e-4, fused=True))
    for idx in batches:
        stats = step(collate_right_padded([examples[i] for i in idx], pad_id, [loss_masks[i] for i in idx]))

What makes it fast, and why each piece keeps the result the same as a plain padded batch:
- Token-budget batches of length-sorted examples (``token_budget_batches``): rows of similar
  length share a batch, so padding is a few percent, and every step carries about the same
  number of tokens (``max_tokens`` padded tokens), which fills the GPU where a fixed 8 rows of
  64-768 tokens does not. Order: shuffled into megabatches, sorted inside each, batches shuffled.
- Right padding and NO attention mask (``collate_right_padded``): under causal attention a real
  token only sees earlier positions, and pads come after every real token of their row, so the
  real tokens' outputs are exactly those of the unpadded row; pad positions get label -100. With
  no mask, SDPA runs its flash kernel (``is_causal``) instead of a masked kernel.
- No activation checkpointing: for examples under ~1k tokens the activations of a token budget
  fit in memory, and recomputing the forward costs ~1/3 more FLOPs.
- Fused linear + cross-entropy (``fused_linear_cross_entropy``) for a FROZEN output layer (LoRA
  does not train lm_head): logits are computed in chunks of ``chunk`` tokens, only at labelled
  positions, and the loss gradient w.r.t. the hidden states is formed in the forward pass, so the
  (tokens x vocab) fp32 logits never exist at once (for a 152k vocabulary that is 600 KB per
  token) and the lm_head matmul is not recomputed.
- bf16 autocast with fp32 LoRA weights (PEFT's default) and fused AdamW, as TRL does.
Loss: mean cross-entropy over labelled tokens of the batch (sum / count), like transformers'.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F

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


class _FusedLinearCE(torch.autograd.Function):
    """Sum of cross-entropies of ``h @ W.T`` vs ``y``; W frozen. Gradient w.r.t. h made in forward."""

    @staticmethod
    def forward(ctx, h, W, y, chunk: int):
        grad_h = torch.empty_like(h)
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for i in range(0, h.shape[0], chunk):
            logits = (h[i : i + chunk] @ W.t()).float()
            yi = y[i : i + chunk]
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, yi[:, None]).squeeze(1)).sum()
            p = torch.exp(logits - lse[:, None])
            p[torch.arange(yi.shape[0], device=p.device), yi] -= 1.0
            grad_h[i : i + chunk] = p.to(W.dtype) @ W
        ctx.save_for_backward(grad_h)
        return total

    @staticmethod
    def backward(ctx, g):
        (grad_h,) = ctx.saved_tensors
        return grad_h * g.to(grad_h.dtype), None, None, None


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *, chunk: int = 4096) -> tuple[torch.Tensor, int]:
    """Causal-LM loss SUM over labelled positions and their count (next-token shift applied here).

    ``hidden`` ``(n, t, d)``, ``labels`` ``(n, t)`` with -100 = ignore; ``weight`` (vocab, d) must
    not require grad (else use the model's own loss).
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
    return _FusedLinearCE.apply(h, weight, y, chunk), n


def add_lora(model, *, r: int = 16, alpha: int = 32, dropout: float = 0.0, target_modules="all-linear"):
    """Wrap ``model`` with PEFT LoRA (frozen base, fp32 adapters) on every linear layer but lm_head."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


class FastSFTStep:
    """One optimizer step per call on a collated batch; returns ``{"loss": 0-d tensor (no host sync),
    "tokens": the batch's real tokens}``.

    ``model``: a PEFT-wrapped causal LM (``add_lora``) or any HF causal LM whose lm_head is frozen.
    Runs the decoder without an attention mask (right padding, see the module docstring), the
    fused loss, backward, and ``optimizer.step()``. ``autocast``: bf16 on CUDA by default.
    """

    def __init__(self, model, optimizer, *, chunk: int = 4096, autocast_dtype=None, max_grad_norm: float | None = 1.0):
        self.model, self.opt, self.chunk = model, optimizer, chunk
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.decoder = base.get_decoder()
        self.lm_head = base.get_output_embeddings()
        self.device = next(model.parameters()).device
        self.autocast_dtype = autocast_dtype if autocast_dtype is not None else (torch.bfloat16 if self.device.type == "cuda" else None)
        self.max_grad_norm = max_grad_norm
        self.trainable = [p for p in model.parameters() if p.requires_grad]

    def __call__(self, batch: dict) -> dict:
        ids = batch["input_ids"].to(self.device, non_blocking=True)
        labels = batch["labels"].to(self.device, non_blocking=True)
        self.model.train()
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            hidden = self.decoder(input_ids=ids, use_cache=False).last_hidden_state
            loss_sum, n = fused_linear_cross_entropy(hidden, self.lm_head.weight, labels, chunk=self.chunk)
        loss = loss_sum / max(n, 1)
        loss.backward()
        if self.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.max_grad_norm)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return {"loss": loss.detach(), "tokens": batch.get("n_tokens")}


def reference_loss(model, batch: dict) -> torch.Tensor:
    """The plain transformers loss of the same batch with an explicit attention mask (for tests)."""
    ids, labels = batch["input_ids"], batch["labels"]
    mask = torch.zeros_like(ids)
    for b in range(ids.shape[0]):
        real = (labels[b] != IGNORE).nonzero()
        mask[b, : int(real.max()) + 1 if real.numel() else 0] = 1
    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE)
