"""The `sft` step's fast trainer: transformers' Trainer loop with the benchmarked SFT recipe inside.

Not runnable; ``phases/sft.py:make_trainer`` builds it when ``params.sft.trainer`` resolves to
``fast`` (see ``resolve_trainer``). Tests: ``.venv/bin/pytest -m integration
tests/integration/test_sft_fast_trainer.py`` (loss equality with the plain path in fp32, the exact
loss mask, and a SIGKILL mid-training whose resume ends on the same adapter bytes as an
uninterrupted run).

What it keeps from ``transformers.Trainer``: the optimizer (AdamW), LR schedule, grad clipping,
checkpoints (model, optimizer, scheduler, RNG, trainer state; ``phases/sft.py``
marks them ``.complete``), resume with data skipping, logging, dev evaluation, early stopping.
What it changes (the recipe of ``phases/sft_fast.py``, measured in docs/performance.md):

- **Batches by token budget** (``TokenBudgetBatchSampler``): examples sorted by length are cut into
  batches of at most ``max_rows`` rows and at most ``max_tokens`` padded tokens
  (``rows x longest``); an example longer than the budget gets a batch of its own. The batches are
  formed once (so every epoch has the same number of optimizer steps, which the Trainer's resume
  arithmetic needs) and their ORDER is shuffled per epoch from ``seed`` and the epoch number.
- **Effective batch**: one token-budget batch is one optimizer step (gradient accumulation 1), and
  ``max_rows = per_device_batch_size x grad_accum`` (the method's 16 examples per optimizer step
  with the defaults 2 x 8). A step carries exactly that many examples unless the token budget
  binds (long examples), then fewer. The loss is the mean cross-entropy over the step's labelled
  tokens, as the plain path's (transformers normalises by the tokens of the whole accumulated
  batch).
- **Right padding and no attention mask** for training batches: a real token only attends to
  earlier positions and every pad comes after the row's real tokens, so real tokens' outputs are
  those of the unpadded row; pads carry label -100. Dev batches keep the mask (the plain loss).
- **Fused linear + cross-entropy** (``phases.sft_fast.fused_linear_cross_entropy``) over labelled
  positions only, against the frozen lm_head; with a trainable lm_head the model's own loss is
  used instead. ``compile_loss`` (the step passes its compiled-layers choice) compiles each
  chunk's softmax and gradient (``phases.sft_fast.compiled_ce_chunk``).
- **Precision**: the base weights are bf16 on CUDA (fp32 on CPU) and the LoRA adapters fp32. The
  training loss calls the decoder directly, outside the autocast wrapper accelerate puts on the
  model's ``forward`` (which TRL's path and the dev evaluation go through), so it opens its own:
  for a bf16 LoRA on CUDA (``decoder_autocast_record``: ``AUTOCAST_DECODER`` on, no quantization)
  the decoder runs under bf16 autocast and the adapters' matmuls use bf16 tensor cores, as on
  TRL's path; the fused loss stays outside autocast (fp32 log-softmax). nf4 QLoRA keeps fp32 LoRA
  matmuls until autocast is measured with nf4 and Liger's kernels on a GPU. Without autocast PEFT
  casts each LoRA input to fp32: about 58 ms of a 240 ms step at 1.5B on the H200. Measured side by side (docs/performance.md "Issue 15, sixth run"): 1.17x
  tokens/s at 1.5B and 7B with the same loss curve to about 0.01 (last loss 10.235 vs 10.244 at
  1.5B, 10.712 vs 10.701 at 7B after 30 steps) and 9-12 GiB less peak memory.
- ``state.num_input_tokens_seen`` counts the real (unpadded) tokens trained, prompt included.
- Gradient checkpointing is decided by the caller (``phases/sft.py``: ``auto`` is off for this
  trainer, see ``grad_ckpt_default``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from phases.sft_fast import IGNORE, fused_linear_cross_entropy, token_budget_batches

__all__ = ["TokenBudgetBatchSampler", "collate_train", "make_fast_trainer", "fast_loss", "FAST_MAX_TOKENS_DEFAULT",
           "decoder_autocast_record"]

#: the decoder under bf16 autocast for a bf16 LoRA on CUDA (``decoder_autocast_record``), so the LoRA
#: matmuls use bf16 tensor cores as on TRL's path (see "Precision" above); the fused loss stays
#: outside autocast either way.
#: Measured before it was turned on (1.17x); the old precision stays a benchmark row: ``benchmarks/bench_sft.py`` ``step_compile_fp32lora``
AUTOCAST_DECODER = True


def decoder_autocast_record(device: str, quantization: str | None, trainer: str = "fast") -> dict:
    """Whether the fast trainer runs its decoder under bf16 autocast here, and why: ``applied`` and
    ``reason`` (the ``sft`` step's manifest and start event carry it as ``decoder_autocast``).

    On for CUDA without quantization (the bf16 LoRA that the sixth H200 run measured); off on CPU
    (fp32 training), with nf4 (not measured with autocast and Liger's kernels yet), with
    ``AUTOCAST_DECODER`` off (the benchmark's ``step_compile_fp32lora`` row) and for any ``trainer``
    but ``fast`` (TRL's and transformers' Trainers keep their own mixed precision).
    """
    if trainer != "fast":
        return {"applied": False, "reason": f"trainer {trainer}: the Trainer's own mixed precision"}
    if not str(device).startswith("cuda"):
        return {"applied": False, "reason": "not CUDA: fp32 training"}
    if not AUTOCAST_DECODER:
        return {"applied": False, "reason": "AUTOCAST_DECODER off (a benchmark row): fp32 LoRA matmuls"}
    if quantization not in (None, "none"):
        return {"applied": False, "reason": f"quantization {quantization}: autocast not measured with it yet, "
                                            "fp32 LoRA matmuls"}
    return {"applied": True, "dtype": "bfloat16",
            "reason": "bf16 LoRA on CUDA: 1.17x at 1.5B and 7B on an H200, same loss curve"}

#: batch widths are padded up to a multiple of this: compiled layers guard on ``width % 8`` (an
#: aligned width compiles a second graph, a ~17 s stall at the first aligned batch mid-run on the
#: H200; docs/performance.md "Issue 15, fifth run"), so every batch takes the aligned graph
PAD_MULTIPLE = 8

#: padded tokens per optimizer step; 16k fits a 7B bf16 / 32B nf4 LoRA step without checkpointing
#: on an 80 GB card at the benchmark's lengths (docs/performance.md), and is ~16 x 1024 tokens
FAST_MAX_TOKENS_DEFAULT = 16384


class TokenBudgetBatchSampler:
    """Index batches (see the module docstring); ``set_epoch(e)`` reshuffles their order."""

    def __init__(self, lengths: Sequence[int], max_tokens: int, max_rows: int, seed: int):
        if max_rows < 1:
            raise ValueError(f"TokenBudgetBatchSampler: max_rows must be >= 1, got {max_rows}")
        # megabatch = everything: one global length sort, so the batch set does not depend on the epoch
        self.batches = token_budget_batches(list(lengths), max_tokens, seed=seed, megabatch=max(1, len(lengths)),
                                            max_rows=max_rows)
        self.batches.sort(key=lambda b: b[0])  # order comes only from (seed, epoch) below
        self.seed, self.epoch = int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self, epoch: int) -> list[list[int]]:
        idx = list(range(len(self.batches)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(idx)
        return [self.batches[i] for i in idx]

    def __iter__(self):
        yield from self.order(self.epoch)

    def __len__(self) -> int:
        return len(self.batches)


def collate_train(examples: list[dict], pad_id: int) -> dict:
    """``{"input_ids", "labels"}`` right-padded (pad id / -100), NO attention mask (see module)."""
    import torch

    width = -(-max(len(e["input_ids"]) for e in examples) // PAD_MULTIPLE) * PAD_MULTIPLE
    ids = torch.full((len(examples), width), int(pad_id), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for b, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[b, :n] = torch.tensor(e["input_ids"], dtype=torch.long)
        labels[b, :n] = torch.tensor(e["labels"], dtype=torch.long)
    return {"input_ids": ids, "labels": labels}


def fast_loss(model, input_ids, labels, chunk: int = 4096, compiled: bool = False, autocast_dtype=None):
    """Mean next-token cross-entropy over labelled positions, decoder run without a mask.

    ``model``: a PEFT-wrapped or plain HF causal LM. Falls back to the model's own loss when the
    output layer is trainable (the fused loss assumes a frozen one). ``compiled``: the fused loss's
    chunk math through torch.compile. ``autocast_dtype``: run the decoder (not the loss) under
    ``torch.autocast`` with that dtype (``AUTOCAST_DECODER``); None = no autocast.
    """
    import contextlib

    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    if head.weight.requires_grad:
        return model(input_ids=input_ids, labels=labels, use_cache=False).loss
    ctx = (torch.autocast(input_ids.device.type, dtype=autocast_dtype) if autocast_dtype is not None
           else contextlib.nullcontext())
    with ctx:
        hidden = base.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state
    loss_sum, n = fused_linear_cross_entropy(hidden, head.weight, labels, chunk=chunk, compiled=compiled)
    return loss_sum / max(n, 1)


def make_fast_trainer(model, train_ex: list[dict], dev_ex: list[dict], args, eval_collator, pad_id: int,
                      max_tokens: int, max_rows: int, seed: int, processing_class=None, callbacks=None,
                      compile_loss: bool = False, decoder_autocast: bool = False):
    """A ``transformers.Trainer`` subclass instance training ``train_ex`` by the recipe above.

    ``args``: ``TrainingArguments`` with ``gradient_accumulation_steps == 1`` (the token-budget
    batch IS the optimizer step; raises ``ValueError`` otherwise). ``eval_collator`` batches dev
    examples (with an attention mask, the model's own loss). ``decoder_autocast``: the training
    loss runs the decoder under bf16 autocast when ``args.bf16`` (the caller decides where:
    ``decoder_autocast_record``).
    """
    import torch
    from torch.utils.data import DataLoader
    from transformers import Trainer

    if args.gradient_accumulation_steps != 1:
        raise ValueError(f"fast trainer: gradient_accumulation_steps must be 1 (got {args.gradient_accumulation_steps}); "
                         "the effective batch is max_rows examples per token-budget batch")
    sampler = TokenBudgetBatchSampler([len(e["input_ids"]) for e in train_ex], max_tokens, max_rows, seed)
    autocast_dtype = torch.bfloat16 if decoder_autocast and args.bf16 else None

    class FastSFTTrainer(Trainer):
        token_sampler = sampler

        def get_train_dataloader(self):
            dl = DataLoader(train_ex, batch_sampler=sampler, collate_fn=lambda b: collate_train(b, pad_id),
                            num_workers=0, pin_memory=self.args.dataloader_pin_memory)
            return self.accelerator.prepare(dl)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if return_outputs or not model.training or "attention_mask" in inputs:
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            labels = inputs["labels"]
            # real tokens of the step (a row ends with its labelled eos): trainer_state.json keeps the
            # count across resumes, the manifest and the benchmarks read it
            pos = torch.arange(labels.shape[1], device=labels.device)
            self.state.num_input_tokens_seen += int(((labels != IGNORE) * (pos + 1)).amax(dim=1).sum())
            return fast_loss(self.accelerator.unwrap_model(model), inputs["input_ids"], labels, compiled=compile_loss,
                             autocast_dtype=autocast_dtype)

    return FastSFTTrainer(model=model, args=args, data_collator=eval_collator, train_dataset=train_ex,
                          eval_dataset=dev_ex or None, processing_class=processing_class, callbacks=callbacks)
