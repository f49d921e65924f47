"""DPO core: pre-tokenized preference examples, the SFT-merged policy, stored reference log-probs, TRL.

Not runnable; the ``dpo`` step in ``phases/steps/preferences.py`` calls ``load_policy``,
``build_pair_examples``, ``sequence_logps`` (through its batch ledger, so the reference pass is
stored and resumable) and ``train_dpo``. Tests:
``.venv/bin/pytest -m integration tests/integration/test_dpo.py`` and
``.venv/bin/pytest -m crash tests/crash/test_dpo_resume.py``. Design: specs/preferences-dpo.md.

Contracts:
- **No chat template.** Prompt = ``phases.prompts.response_prompt(instruction)`` (the SFT
  format); completion = ``" " + text.strip()`` + the profile's eos id. Prompt and completions
  are encoded separately with the guarded ``LoadedModel.encode`` (``add_special_tokens=False``,
  control-token check). TRL's own tokenization is bypassed (``_prepare_dataset`` is overridden),
  so the tokenizer's template can never be applied. A pair longer than ``max_seq_len`` tokens
  (prompt + the longer side) is dropped, never truncated; the count is in the manifest.
- **Policy and reference.** The SFT adapter is merged into the base weights in memory (the
  reference = the SFT model) and a fresh LoRA (``lora_r``, ``lora_alpha``) is trained on top; at
  step 0 the policy equals the reference. On CUDA the base is 4-bit nf4 (QLoRA): the merge
  dequantizes, adds the SFT delta and re-quantizes, so the reference is the SFT model up to nf4
  rounding (said in the manifest).
- **Reference log-probs**: ``sequence_logps`` = per pair, the sum of the reference's natural-log
  probabilities of the chosen and of the rejected completion tokens (eos included), computed
  with the new adapter disabled, no grad, right padding, in batches. The result does not depend
  on the batch size beyond float rounding (tested equal in fp32). They are handed to TRL's
  ``DPOTrainer`` as the ``ref_chosen_logps``/``ref_rejected_logps`` columns with
  ``precompute_ref_log_probs=True`` (TRL's precompute pass is overridden to use them), so the
  reference model is never run during training.
- **Resume**: checkpoints under ``<work_dir>/trainer/checkpoint-N`` every ``save_steps`` with the
  ``.complete`` marker of ``phases/sft.py``; a new attempt resumes from the newest complete one.
  Same seed, same data -> the same final adapter as an uninterrupted run (tested on CPU).
- ``algorithm``: ``dpo`` (TRL ``DPOTrainer``, ``loss_type`` from params: ``sigmoid`` = DPO,
  ``ipo``, ``robust``...). Reference-free options are TRL's own losses, selectable by config:
  ``algorithm: simpo`` = TRL's ``CPOTrainer`` with ``loss_type="simpo"`` (``cpo_alpha=0``) and
  ``algorithm: orpo`` = TRL's ``ORPOTrainer`` (both in ``trl.experimental``); they skip the
  reference pass. See ``_reference_free_trainer``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from phases.evaluate import attach_adapter
from phases.models.attention import variable_shape_attention
from phases.models.loader import load_model
from phases.prompts import response_prompt
from phases.sft import COMPLETE, _callbacks, _lora_config, last_complete_checkpoint, needs_checkpointing
from runner.errors import ConfigError, DataError

__all__ = ["DPO_DEFAULTS", "ALGORITHMS", "encode_pair", "build_pair_examples", "load_policy", "sequence_logps",
           "train_dpo", "save_adapter"]

DPO_DEFAULTS: dict[str, Any] = {
    "algorithm": "dpo",          # dpo | simpo | orpo (the last two reference-free, TRL's trainers)
    "loss_type": "sigmoid",      # DPOTrainer loss (sigmoid = the DPO paper)
    "beta": 0.1,                 # METHOD.md 0.1-0.3
    "simpo_gamma": 0.5,          # SimPO target margin (gamma/beta ratio as in TRL's CPOConfig)
    "device": "auto",
    "quantization": "auto",      # auto (nf4 on CUDA = QLoRA, none on CPU) | none | nf4
    "lora_r": 32,                # METHOD.md 32-64
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "target_modules": "all-linear",
    "learning_rate": 5e-5,       # METHOD.md 5e-5-1e-4 (lower for full precision)
    "weight_decay": 0.0,
    "warmup_ratio": 0.1,
    "lr_scheduler": "cosine",
    "per_device_batch_size": 2,
    "grad_accum": 8,
    "epochs": 1.0,
    "max_steps": -1,
    "max_seq_len": 1024,
    "ref_batch_size": 8,         # batch size of the stored reference pass
    "save_steps": 50,
    "save_total_limit": 3,
    "logging_steps": 10,
    "gradient_checkpointing": "auto",
    "max_pairs": 0,              # 0 = all
    "length_matched_only": False,  # train on the length-matched subset only (pair QC's)
    "require_qc_pass": True,     # false only in demo profiles
}
ALGORITHMS = ("dpo", "simpo", "orpo")


# -- examples --------------------------------------------------------------------------------


def encode_pair(loaded, instruction: str, chosen: str, rejected: str) -> dict:
    """``{"prompt_ids", "chosen_ids", "rejected_ids"}`` (see the module contract)."""
    eos = int(loaded.eos_token_id)
    c, r = chosen.strip(), rejected.strip()
    if not c or not r:
        raise ValueError("empty chosen or rejected text")
    return {"prompt_ids": loaded.encode(response_prompt(instruction)),
            "chosen_ids": loaded.encode(" " + c) + [eos], "rejected_ids": loaded.encode(" " + r) + [eos]}


def build_pair_examples(loaded, pairs: list[dict], max_seq_len: int, source: str = "pairs.jsonl") -> tuple[list[dict], dict]:
    """Encode every pair; returns (examples, counts) with dropped counts by reason. Raises if none is usable."""
    out, counts = [], {"pairs": len(pairs), "kept": 0, "dropped_too_long": 0, "dropped_empty": 0}
    for i, p in enumerate(pairs):
        if not all(isinstance(p.get(k), str) for k in ("instruction", "chosen", "rejected")):
            raise DataError(f"{source}: pair {i} needs string fields instruction, chosen, rejected; has {sorted(p)}")
        if not p["chosen"].strip() or not p["rejected"].strip():
            counts["dropped_empty"] += 1
            continue
        ex = encode_pair(loaded, p["instruction"], p["chosen"], p["rejected"])
        if len(ex["prompt_ids"]) + max(len(ex["chosen_ids"]), len(ex["rejected_ids"])) > max_seq_len:
            counts["dropped_too_long"] += 1
            continue
        for k in ("prompt_ids", "chosen_ids", "rejected_ids"):
            loaded.check_ids(ex[k])
        out.append(ex)
    counts["kept"] = len(out)
    if not out:
        raise DataError(f"{source}: no usable preference pair ({counts}); raise max_seq_len or fix the pairs")
    return out, counts


# -- the model -------------------------------------------------------------------------------


def _resolve(params: dict) -> tuple[str, str | None, bool | None]:
    import torch

    dev = params["device"]
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    q = params["quantization"]
    if q not in ("auto", "none", "nf4"):
        raise ConfigError(f"params.dpo.quantization = {q!r}; allowed: auto, none, nf4")
    quant = ("nf4" if dev.startswith("cuda") else None) if q == "auto" else (None if q == "none" else "nf4")
    gc = params["gradient_checkpointing"]
    if gc not in ("auto", "on", "off"):
        raise ConfigError(f"params.dpo.gradient_checkpointing = {gc!r}; allowed: auto, on, off")
    if params["algorithm"] not in ALGORITHMS:
        raise ConfigError(f"params.dpo.algorithm = {params['algorithm']!r}; allowed: {', '.join(ALGORITHMS)}")
    # auto: decided on the loaded model in load_policy (phases.sft.needs_checkpointing); None until then
    return dev, quant, (None if gc == "auto" else gc == "on")


def merged_sft_model(ref: str, sft_adapter: Path | None, device: str, quant: str | None):
    """The guarded base model with the SFT adapter merged in (the reference), as a ``LoadedModel``."""
    loaded = load_model(ref, device=device, dtype=None if device.startswith("cuda") else "float32",
                        quantization=quant, backend="hf", run_sentinels=False)
    if sft_adapter is not None:
        attach_adapter(loaded, Path(sft_adapter))  # checks base id and shapes first
        merged = loaded.model.merge_and_unload()
        loaded.model = merged
        loaded.backend.model = merged
    return loaded


def load_policy(ref: str, sft_adapter: Path | None, params: dict, seed: int):
    """(loaded, peft_model, device, quantization, gradient_checkpointing): SFT merged + a fresh DPO LoRA."""
    import torch
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import set_seed

    params = {**DPO_DEFAULTS, **params}
    dev, quant, grad_ckpt = _resolve(params)
    set_seed(seed)
    loaded = merged_sft_model(ref, sft_adapter, dev, quant)
    model = loaded.model
    if grad_ckpt is None:  # auto: off on the CPU; on CUDA the SFT rule (on above 10 B parameters), measured in
        # benchmarks/bench_dpo.py: no checkpointing + the stored reference pass = 2.2x TRL defaults at 7B
        grad_ckpt = dev.startswith("cuda") and needs_checkpointing(model)
    if quant == "nf4":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=grad_ckpt)
    elif grad_ckpt:
        model.enable_input_require_grads()
    torch.manual_seed(seed)
    model = get_peft_model(model, _lora_config(params))
    return loaded, model, dev, quant, grad_ckpt


def sequence_logps(model, examples: list[dict], pad_id: int, batch_size: int) -> list[dict]:
    """Reference log-probs ``[{"ref_chosen_logps", "ref_rejected_logps"}]`` per example (see the module contract).

    ``model``: a causal LM or a PEFT model (its adapter is disabled for the pass). Runs in eval
    mode under ``torch.no_grad``; restores the previous train/eval mode.
    """
    import contextlib

    import torch

    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    ctx = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
    out: list[dict] = []
    try:
        with torch.no_grad(), ctx:
            for s in range(0, len(examples), batch_size):
                batch = examples[s:s + batch_size]
                seqs = [e["prompt_ids"] + e["chosen_ids"] for e in batch] + [e["prompt_ids"] + e["rejected_ids"] for e in batch]
                starts = [len(e["prompt_ids"]) for e in batch] * 2
                width = max(map(len, seqs))
                ids = torch.full((len(seqs), width), int(pad_id), dtype=torch.long)
                mask = torch.zeros((len(seqs), width), dtype=torch.long)
                for i, sq in enumerate(seqs):
                    ids[i, :len(sq)] = torch.tensor(sq)
                    mask[i, :len(sq)] = 1
                logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=False).logits.float()
                logp = torch.log_softmax(logits[:, :-1], dim=-1)
                tok = torch.gather(logp, 2, ids[:, 1:].to(dev).unsqueeze(-1)).squeeze(-1)
                sums = []
                for i, sq in enumerate(seqs):
                    sums.append(float(tok[i, starts[i] - 1:len(sq) - 1].sum()))
                n = len(batch)
                out += [{"ref_chosen_logps": sums[i], "ref_rejected_logps": sums[n + i]} for i in range(n)]
    finally:
        model.train(was_training)
    return out


# -- training --------------------------------------------------------------------------------


def _training_kwargs(params: dict, out_dir: Path, seed: int, device: str, grad_ckpt: bool) -> dict:
    cuda = device.startswith("cuda")
    return dict(
        output_dir=str(out_dir), seed=seed, data_seed=seed,
        learning_rate=params["learning_rate"], weight_decay=params["weight_decay"],
        warmup_steps=float(params["warmup_ratio"]), lr_scheduler_type=params["lr_scheduler"],
        per_device_train_batch_size=params["per_device_batch_size"],
        gradient_accumulation_steps=params["grad_accum"], num_train_epochs=params["epochs"],
        max_steps=params["max_steps"], logging_steps=params["logging_steps"], logging_first_step=True,
        save_strategy="steps", save_steps=params["save_steps"], save_total_limit=params["save_total_limit"],
        eval_strategy="no", bf16=cuda, fp16=False, use_cpu=not cuda, gradient_checkpointing=grad_ckpt,
        report_to="none", dataloader_num_workers=0, disable_tqdm=True, save_only_model=False,
        optim="adamw_torch", remove_unused_columns=False, beta=params["beta"],
        max_length=params["max_seq_len"])


def make_dpo_trainer(loaded, model, examples: list[dict], params: dict, out_dir: Path, seed: int, device: str,
                     grad_ckpt: bool, callbacks: list):
    """TRL's ``DPOTrainer`` over pre-tokenized examples that carry stored reference log-probs."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    missing = [i for i, e in enumerate(examples) if "ref_chosen_logps" not in e]
    if missing:
        raise DataError(f"{len(missing)} DPO examples lack stored reference log-probs (first: {missing[0]}); "
                        "run sequence_logps first")

    class PretokenizedDPOTrainer(DPOTrainer):
        """TRL's DPOTrainer minus its own tokenization and reference pass (ours are guarded and stored)."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

        def _precompute_ref_logps(self, dataset, name, batch_size):
            return dataset

    args = DPOConfig(**_training_kwargs(params, out_dir, seed, device, grad_ckpt), loss_type=[params["loss_type"]],
                     precompute_ref_log_probs=True, disable_dropout=True)
    cols = ("prompt_ids", "chosen_ids", "rejected_ids", "ref_chosen_logps", "ref_rejected_logps")
    ds = Dataset.from_list([{k: e[k] for k in cols} for e in examples])
    # pad with the profile's eos, never the tokenizer's pad (SmolLM2's is the chat token <|im_end|>)
    collator = DataCollatorForPreference(pad_token_id=int(loaded.eos_token_id), max_length=params["max_seq_len"])
    return PretokenizedDPOTrainer(model=model, args=args, data_collator=collator, train_dataset=ds,
                                  processing_class=loaded.tokenizer, callbacks=callbacks)


def _reference_free_trainer(loaded, model, pairs_text: list[dict], params: dict, out_dir: Path, seed: int,
                            device: str, grad_ckpt: bool, callbacks: list):
    """SimPO (TRL CPOTrainer, loss simpo, cpo_alpha 0) or ORPO (TRL ORPOTrainer) over text pairs.

    These trainers tokenize for themselves (``add_special_tokens=False``, no template for plain
    strings; the loader removed the tokenizer's template). Two guards stay ours: the tokenizer's
    pad token is set to the profile's eos (never a chat token such as SmolLM2's ``<|im_end|>``),
    and every tokenized row passes the control-token check (``loaded.check_ids``), which also
    catches a BOS that TRL would prepend if it were a chat token.
    """
    from datasets import Dataset

    kw = _training_kwargs(params, out_dir, seed, device, grad_ckpt)
    kw.pop("beta")
    tok = loaded.tokenizer
    eos_id = int(loaded.eos_token_id)
    tok.pad_token = tok.convert_ids_to_tokens(eos_id)
    eos = tok.convert_ids_to_tokens(eos_id)
    rows = [{"prompt": response_prompt(p["instruction"]), "chosen": " " + p["chosen"].strip() + eos,
             "rejected": " " + p["rejected"].strip() + eos} for p in pairs_text]
    if params["algorithm"] == "simpo":
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        args = CPOConfig(**kw, beta=params["beta"], loss_type="simpo", cpo_alpha=0.0, simpo_gamma=params["simpo_gamma"])
        base = CPOTrainer
    else:
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        args = ORPOConfig(**kw, beta=params["beta"], padding_value=eos_id)
        base = ORPOTrainer

    class Guarded(base):
        def tokenize_row(self, feature, model=None):
            out = super().tokenize_row(feature, model)
            for k, v in out.items():
                if k.endswith("input_ids"):
                    loaded.check_ids([i for i in v if i != eos_id])
            return out

    return Guarded(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                   callbacks=callbacks)


def save_adapter(model, loaded, adapter_dir: Path, quant: str | None, sft_adapter: Path | None) -> None:
    """Save the DPO adapter with sorted target_modules and a ``cai_adapter.json`` naming its base and SFT."""
    model.save_pretrained(str(adapter_dir))
    acfg_path = adapter_dir / "adapter_config.json"
    acfg = json.loads(acfg_path.read_text(encoding="utf-8"))
    if isinstance(acfg.get("target_modules"), list):
        acfg["target_modules"] = sorted(acfg["target_modules"])
    acfg_path.write_text(json.dumps(acfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    cfg = loaded.model.config
    (adapter_dir / "cai_adapter.json").write_text(json.dumps({
        "base_model_id": loaded.model_id, "base_model_revision": loaded.provenance.get("model_revision"),
        "base_model_path": str(loaded.path), "model_type": getattr(cfg, "model_type", None),
        "hidden_size": getattr(cfg, "hidden_size", None), "num_hidden_layers": getattr(cfg, "num_hidden_layers", None),
        "vocab_size": getattr(cfg, "vocab_size", None), "quantization": quant,
        "stacked_on": "the SFT adapter merged into the base" if sft_adapter else None,
        "sft_adapter_path": str(sft_adapter) if sft_adapter else None,
    }, sort_keys=True, indent=2) + "\n")


def train_dpo(loaded, model, examples: list[dict], pairs_text: list[dict], params: dict, work_dir: Path,
              out_dir: Path, seed: int, device: str, quant: str | None, grad_ckpt: bool,
              sft_adapter: Path | None, log: Callable[..., None]) -> dict:
    """Train (resuming from the newest complete checkpoint), save ``out_dir/adapter``; return manifest facts.

    ``examples``: encoded pairs with stored ``ref_*_logps`` (``dpo``); ``pairs_text``: the same
    pairs as text (``simpo``/``orpo``). ``log(message, kind=..., **data)`` records events
    (``dpo_resumed`` with ``from_step``, or ``dpo_started``).
    """
    import gc

    import torch

    params = {**DPO_DEFAULTS, **params}
    trainer_dir = Path(work_dir) / "trainer"
    trainer_dir.mkdir(parents=True, exist_ok=True)
    cbs = _callbacks(0, False)
    if params["algorithm"] == "dpo":
        trainer = make_dpo_trainer(loaded, model, examples, params, trainer_dir, seed, device, grad_ckpt, cbs)
        name = "trl.DPOTrainer"
    else:
        trainer = _reference_free_trainer(loaded, model, pairs_text, params, trainer_dir, seed, device, grad_ckpt, cbs)
        name = f"trl.experimental {'CPOTrainer(simpo)' if params['algorithm'] == 'simpo' else 'ORPOTrainer'}"
    ckpt, step = last_complete_checkpoint(trainer_dir)
    if ckpt is not None:
        log(f"resuming DPO from checkpoint {ckpt.name} (global step {step}), not from step 0",
            kind="dpo_resumed", from_step=step, checkpoint=ckpt.name)
    else:
        log(f"DPO ({params['algorithm']}) from step 0 on {len(examples) or len(pairs_text)} pairs, device {device}, "
            f"quantization {quant}, trainer {name}", kind="dpo_started")
    t0 = time.time()
    with variable_shape_attention(device) as attention:  # as the sft step: phases/models/attention.py
        result = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    seconds = time.time() - t0
    save_adapter(trainer.model, loaded, Path(out_dir) / "adapter", quant, sft_adapter)
    state = trainer.state
    hist = [h for h in state.log_history if "loss" in h]
    keys = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins")
    curve = [{"step": h["step"], **{k: h[k] for k in keys if k in h}} for h in hist]
    n_tokens = sum(len(e["prompt_ids"]) * 2 + len(e["chosen_ids"]) + len(e["rejected_ids"]) for e in examples)
    out = {"device": device, "quantization": quant, "trainer": name, "gradient_checkpointing": grad_ckpt,
           "attention": attention,
           "resumed_from": {"checkpoint": ckpt.name, "step": step} if ckpt else None,
           "checkpoints": sorted((p.name for p in trainer_dir.glob("checkpoint-*") if (p / COMPLETE).is_file()),
                                 key=lambda n: int(n.split("-")[-1])),
           "metrics": {"global_step": state.global_step, "epochs_done": state.epoch, "train_loss": result.training_loss,
                       "train_seconds": round(seconds, 2), "final": curve[-1] if curve else None},
           "curve": curve, "tokens_per_epoch": n_tokens,
           "gpu_seconds": round(seconds, 2) if device.startswith("cuda") else 0.0}
    try:
        trainer.accelerator.free_memory()
    except Exception:  # older accelerate
        pass
    trainer.model = trainer.model_wrapped = trainer.optimizer = trainer.lr_scheduler = None
    del trainer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out
