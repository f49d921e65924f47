"""SFT core: completion-mode examples with a response-only loss mask, and a resumable TRL + PEFT run.

Not runnable; the `sft` step in `phases/steps/train_eval.py` calls ``check_merge_inputs`` and
``run_sft``. Tests: `.venv/bin/pytest -m integration tests/integration/test_sft_eval.py` and
`.venv/bin/pytest -m crash tests/crash/test_sft_resume.py`. Design: specs/sft-evaluation.md.

Contracts:
- Example text is ``Instruction: {instruction}\\nResponse: {response}<eos>``: the prompt comes from
  the canonical builder ``phases.prompts.response_prompt(instruction)`` (no few-shot, no chat
  template), the completion is ``" " + response.strip()`` then the profile's eos id
  (``<|endoftext|>`` for Qwen2.5 and SmolLM2). Prompt and completion are encoded separately with the
  guarded ``LoadedModel.encode`` (``add_special_tokens=False``, control-token check) and
  concatenated, so the label boundary is exact.
- Labels: -100 on every prompt token, the token id on every completion token including the final
  eos. Padding (right side, by TRL's collator) is -100 too.
- An example longer than ``max_seq_len`` tokens is dropped (never truncated: a cut example would
  lose its eos and teach the model not to stop); the count is in the manifest.
- Checkpoints go to ``<work_dir>/trainer/checkpoint-N`` every ``save_steps`` optimizer steps; a
  callback writes ``.complete`` into a checkpoint once the Trainer has saved all of it, and only
  complete checkpoints are resumed from (a kill during a save leaves a torn one, which is deleted).
  Each complete checkpoint is then reported as the step's durable progress (an event of kind
  ``step_progress``), so attempts killed after a checkpoint never count toward ``max_attempts``.
- Device: CUDA -> 4-bit nf4 base with bf16 compute (QLoRA, bitsandbytes); CPU -> fp32 base, plain
  LoRA.
- Trainer (``params.trainer``): ``fast`` = ``phases/sft_fast_trainer.py`` (transformers' Trainer
  loop with token-budget batches of at most ``per_device_batch_size x grad_accum`` rows and
  ``fast_max_tokens`` padded tokens, no attention mask, fused linear+CE); ``trl`` = TRL's
  SFTTrainer with fixed-size batches. ``auto`` = ``fast`` on CUDA, ``trl`` on CPU: the step through
  ``runner`` measured 7.41x TRL SFTTrainer defaults at 1.5B in one process on an H200
  (benchmarks/bench_sft.py variant ``runner``; docs/performance.md "Where things stand").
  Unsloth is not a trainer of the step: ``trainer: unsloth`` is a ``ConfigError``
  (``UNSLOTH_NOT_A_TRAINER``, with the measured reason); it is measured by
  ``benchmarks/bench_unsloth.py`` only.
- Kernels (``params.kernels``, ``phases/sft_speed.py``): ``auto`` = Liger's fused RoPE, RMSNorm
  and SwiGLU patched into the loaded model before PEFT wraps it, on CUDA when ``liger_kernel``
  imports and the architecture is qwen2/llama, else none (reason logged); ``liger`` = the same or a
  ``ConfigError``; ``none``. Restored when ``run_sft`` ends; the loss stays the project's fused CE.
  ``sft_started``/``sft_resumed`` and the manifest's ``kernels`` say what ran.
- Compiled layers (``params.compile``, ``phases/sft_speed.py``): ``layers`` = ``torch.compile``
  of every decoder layer after PEFT wraps it (not with nf4, checkpointing or ``kernels: liger``);
  ``auto`` = that on CUDA where it applies (``AUTO_COMPILE``), and then ``kernels: auto`` is none
  (Inductor fuses what Liger would); ``off``. The manifest's ``compile`` and the start/resume
  events say what ran.
- Gradient checkpointing ``auto``: on for ``trl`` on CUDA; for ``fast`` off when the model has
  at most ``FAST_NO_CKPT_MAX_PARAMS`` parameters (activations of a 16k-token step fit an 80 GB
  card), on above (32B).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from phases import sft_speed
from phases.models.attention import attention_record, variable_shape_attention
from phases.models.devices import DeviceError, resolve_placement
from phases.models.loader import load_model
from phases.models.registry import PROFILES
from phases.prompts import response_prompt
from phases.sft_speed import apply_liger, compile_layers, resolve_compile, resolve_kernels, throughput_callback
from runner.context import PROGRESS_EVENT
from runner.errors import ConfigError, DataError
from runner.progress import Progress
from state.files import read_json

__all__ = ["SFT_DEFAULTS", "TRAINERS", "UNSLOTH_NOT_A_TRAINER", "trainer_error", "REQUIRED_MANIFEST_FIELDS",
           "check_merge_inputs", "model_ref", "encode_example",
           "build_examples", "split_dev", "ResponseOnlyCollator", "make_trainer", "run_sft", "last_complete_checkpoint"]

SFT_DEFAULTS: dict[str, Any] = {
    "device": "auto",            # auto | cpu | cuda
    "quantization": "auto",      # auto (nf4 on CUDA, none on CPU) | none | nf4
    "trainer": "auto",           # auto (fast on CUDA, trl on CPU) | fast | trl
    "fast_max_tokens": 16384,    # fast trainer: padded tokens per optimizer step (memory bound)
    "kernels": "auto",           # auto (Liger rope+rms_norm+swiglu on CUDA when importable and the layers are not compiled) | liger | none
    "compile": "auto",           # auto (compiled layers on CUDA without nf4/checkpointing: AUTO_COMPILE) | layers | off
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "target_modules": "all-linear",  # or a comma-separated list, e.g. "q_proj,v_proj"
    "learning_rate": 2e-4,
    "weight_decay": 0.01,
    "warmup_ratio": 0.03,
    "lr_scheduler": "cosine",
    "per_device_batch_size": 2,
    "grad_accum": 8,
    "epochs": 3.0,
    "max_steps": -1,             # > 0 overrides epochs (demo/tests)
    "max_seq_len": 1024,
    "dev_fraction": 0.05,        # 0 disables the dev split and early stopping
    "early_stopping_patience": 3,
    "save_steps": 50,            # checkpoint (and dev eval) interval in optimizer steps
    "save_total_limit": 3,
    "logging_steps": 10,
    "gradient_checkpointing": "auto",  # auto (on with CUDA) | on | off
    "max_examples": 0,           # 0 = all
    "require_qc_pass": True,     # false only in demo profiles: train despite a failed QC, saying so
}

#: fields the merge step's manifest.json must carry (the training precondition)
REQUIRED_MANIFEST_FIELDS = ("created_at", "git_sha", "model", "counts", "files")
_ALIASES = {"created_at": ("created", "time", "start"), "git_sha": ("git_commit", "git", "loader_version"),
                       "model": ("model_id", "model_profile", "provenance"), "counts": ("count", "records", "n_records", "kept"),
                       "files": ("outputs", "artifacts", "dataset", "sha256")}
#: fast trainer without gradient checkpointing up to this many parameters (gradient_checkpointing auto)
FAST_NO_CKPT_MAX_PARAMS = 10e9
STEP_DELAY_ENV = "CAI_SFT_STEP_DELAY_S"  # test knob: seconds slept after each optimizer step


def _read_json(path: Path, what: str) -> dict:
    return read_json(path, what, DataError, "re-run the step that writes it (the merge step for its outputs)")


def check_merge_inputs(merge_dir: Path, require_qc_pass: bool = True) -> dict:
    """The training precondition: a passed QC summary and a complete manifest for ``sft.jsonl``.

    Returns ``{"dataset": Path, "qc_summary": Path, "manifest": Path, "qc": dict, "manifest_data": dict}``.
    Raises ``DataError`` naming the file and field when ``qc_summary.json`` lacks
    ``thresholds_passed: true`` (its ``failed_reasons`` are quoted), when ``manifest.json`` lacks one of
    ``REQUIRED_MANIFEST_FIELDS`` (an accepted alias counts, see ``_ALIASES``), or when
    ``sft.jsonl`` is missing or empty. ``require_qc_pass=False`` (param ``require_qc_pass``, demo
    profiles only) lets a failed QC through; the caller must say so loudly and record it.
    """
    merge_dir = Path(merge_dir)
    qc_path, man_path, data_path = merge_dir / "qc_summary.json", merge_dir / "manifest.json", merge_dir / "sft.jsonl"
    qc = _read_json(qc_path, "the QC summary")
    if qc.get("thresholds_passed") is not True and require_qc_pass:
        raise DataError(
            f"{qc_path}: thresholds_passed = {qc.get('thresholds_passed')!r}; training refuses to start without a "
            f"passed QC (failed_reasons: {qc.get('failed_reasons')!r}). Fix the data generation and re-run merge.")
    man = _read_json(man_path, "the dataset manifest")
    missing = [f for f in REQUIRED_MANIFEST_FIELDS if f not in man and not any(a in man for a in _ALIASES[f])]
    if missing:
        raise DataError(f"{man_path}: the dataset manifest lacks required field(s) {missing} (has {sorted(man)}); "
                        "training refuses to start without a complete manifest. Re-run merge.")
    if not data_path.is_file() or data_path.stat().st_size == 0:
        raise DataError(f"{data_path}: the SFT dataset is missing or empty; re-run merge")
    return {"dataset": data_path, "qc_summary": qc_path, "manifest": man_path, "qc": qc, "manifest_data": man}


def model_ref(model_json: Path) -> str:
    """The model to load from ``prepare_model``'s ``model.json``: a profile id or a model folder.

    Looks (top level, then under ``request``, ``provenance``, ``model``) for ``profile``,
    ``model_profile``, ``model`` or ``model_id`` naming a known profile, then for an existing
    ``model_path``/``path`` folder (the data steps write ``{"request": {"model": ...}, "provenance": ...}``).
    """
    data = _read_json(Path(model_json), "the model record (model.json)")
    req = data.get("request")
    if isinstance(req, dict) and isinstance(req.get("model"), str) and (Path(req["model"]) / "config.json").is_file():
        # A folder the data steps loaded (e.g. a parent stage's merged model, phases/chain.py) wins
        # over the profile id its marker reports, which names the profile it descends from.
        return req["model"]
    scopes = [data] + [data[k] for k in ("request", "provenance", "model") if isinstance(data.get(k), dict)]
    for scope in scopes:
        for key in ("profile", "model_profile", "model", "model_id"):
            v = scope.get(key)
            if isinstance(v, str) and v in PROFILES:
                return v
    for scope in scopes:
        for key in ("model_path", "path"):
            v = scope.get(key)
            if isinstance(v, str) and (Path(v) / "config.json").is_file():
                return v
    raise DataError(f"{model_json}: names no known model profile (profile/model_id) nor an existing model folder "
                    f"(model_path); keys: {sorted(data)}. Re-run prepare_model.")


# -- examples --------------------------------------------------------------------------------


def encode_example(loaded, instruction: str, response: str) -> dict:
    """``{"input_ids", "labels", "prompt_len"}`` for one pair (see the module contract)."""
    prompt_ids = loaded.encode(response_prompt(instruction))
    body = response.strip()
    if not body:
        raise ValueError("empty response")
    completion_ids = loaded.encode(" " + body) + [int(loaded.eos_token_id)]
    return {"input_ids": prompt_ids + completion_ids,
            "labels": [-100] * len(prompt_ids) + completion_ids,
            "prompt_len": len(prompt_ids)}


def build_examples(loaded, records: list[dict], max_seq_len: int, source: str = "sft.jsonl") -> tuple[list[dict], dict]:
    """Encode every record; returns (examples, counts) with dropped-example counts by reason."""
    out, counts = [], {"records": len(records), "kept": 0, "dropped_too_long": 0, "dropped_empty": 0}
    for i, r in enumerate(records):
        inst, resp = r.get("instruction"), r.get("response")
        if not isinstance(inst, str) or not isinstance(resp, str):
            raise DataError(f"{source}: record {i} needs string fields 'instruction' and 'response', got {sorted(r)}")
        if not inst.strip() or not resp.strip():
            counts["dropped_empty"] += 1
            continue
        ex = encode_example(loaded, inst, resp)
        if len(ex["input_ids"]) > max_seq_len:
            counts["dropped_too_long"] += 1
            continue
        out.append({"input_ids": ex["input_ids"], "labels": ex["labels"]})
    counts["kept"] = len(out)
    if not out:
        raise DataError(f"{source}: no usable training example ({counts}); raise max_seq_len or fix the data")
    return out, counts


def split_dev(examples: list[dict], dev_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Seeded shuffle, then the first ``round(n * dev_fraction)`` (at least 1 when > 0, leaving >= 1 train)."""
    if dev_fraction <= 0 or len(examples) < 2:
        return list(examples), []
    idx = list(range(len(examples)))
    random.Random(seed).shuffle(idx)
    k = min(max(1, round(len(examples) * dev_fraction)), len(examples) - 1)
    return [examples[i] for i in sorted(idx[k:])], [examples[i] for i in sorted(idx[:k])]


# -- checkpoints -----------------------------------------------------------------------------

COMPLETE = ".complete"


def needs_checkpointing(model) -> bool:
    """The ``auto`` rule for gradient checkpointing on CUDA (SFT's fast trainer and DPO): on only
    above ``FAST_NO_CKPT_MAX_PARAMS`` parameters, where activations would not fit an 80 GB card."""
    n_params = sum(p.numel() * (2 if getattr(p, "quant_type", None) else 1) for p in model.parameters())
    return n_params > FAST_NO_CKPT_MAX_PARAMS  # nf4 packs two weights per stored byte


def last_complete_checkpoint(trainer_dir: Path) -> tuple[Path | None, int]:
    """The newest checkpoint with a ``.complete`` marker and its global step; torn ones are deleted."""
    best, best_step = None, -1
    if not trainer_dir.is_dir():
        return None, 0
    for d in trainer_dir.glob("checkpoint-*"):
        try:
            step = int(d.name.split("-")[-1])
        except ValueError:
            continue
        if not (d / COMPLETE).is_file():
            shutil.rmtree(d, ignore_errors=True)  # a kill during its save: never resume from it
            continue
        if step > best_step:
            best, best_step = d, step
    return best, max(best_step, 0)


def _callbacks(early_stop: int, has_dev: bool, on_checkpoint: Callable[[str, int], None] | None = None):
    from transformers import EarlyStoppingCallback, TrainerCallback

    class MarkComplete(TrainerCallback):
        """Written after the Trainer saved model, optimizer, scheduler, RNG and state; then the
        checkpoint is reported as the step's durable progress (``on_checkpoint(name, step)``)."""

        def on_save(self, args, state, control, **kw):
            d = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if d.is_dir():
                (d / COMPLETE).write_text(json.dumps({"step": state.global_step, "time": time.time()}))
                if on_checkpoint is not None:
                    on_checkpoint(d.name, state.global_step)

    class Throttle(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            delay = float(os.environ.get(STEP_DELAY_ENV, "0") or 0)
            if delay > 0:
                time.sleep(delay)

    class ShowProgress(TrainerCallback):
        """Optimizer steps as a rich bar on a terminal, plain periodic lines in a log (runner/progress.py);
        the trainer's own tqdm stays off (disable_tqdm) so a detached log gets lines, not bar redraws."""

        bar = None

        def on_train_begin(self, args, state, control, **kw):
            self.bar = Progress("sft/optimizer-steps", state.max_steps, done=state.global_step)

        def on_step_end(self, args, state, control, **kw):
            if self.bar is not None:
                self.bar.advance(state.global_step - self.bar.done)

        def on_train_end(self, args, state, control, **kw):
            if self.bar is not None:
                self.bar.close()

    cbs = [MarkComplete(), Throttle(), ShowProgress()]
    if has_dev and early_stop > 0:
        cbs.append(EarlyStoppingCallback(early_stopping_patience=early_stop))
    return cbs


# -- the run ---------------------------------------------------------------------------------


TRAINERS = ("auto", "fast", "trl")
# Unsloth was measured beside the step on an H200 (issue 15, seventh run; docs/decisions.md): its
# first pass (every batch shape new) ran 0.29x the step's tokens/s at 1.5B and 0.72x at 7B, its
# steady state after that pass 0.79x / 1.13x; over the step's default 3 epochs (one batch set,
# reshuffled) 0.51x / 0.95x. So it is not a trainer; the refusal says where it lives.
UNSLOTH_NOT_A_TRAINER = ("Unsloth is not a trainer of the sft step; it is measured only by "
                         "benchmarks/bench_unsloth.py (see docs/performance.md: on an H200, over the step's "
                         "default 3 epochs, it ran 0.51x the fast trainer at 1.5B and 0.95x at 7B); "
                         "use trainer: auto or fast")


def trainer_error(value: Any) -> str:
    """Why ``params.sft.trainer = value`` is refused (without the ``file:line``/key prefix)."""
    allowed = ", ".join(TRAINERS)
    if value == "unsloth":
        return f"{UNSLOTH_NOT_A_TRAINER}; allowed: {allowed}"
    return f"allowed: {allowed}"


def _resolve(params: dict) -> tuple[str, str | None, bool, str]:
    try:
        dev, quant = resolve_placement(params["device"], params["quantization"], "params.sft.")
    except DeviceError as e:
        raise ConfigError(str(e)) from e
    gc = params["gradient_checkpointing"]
    if gc not in ("auto", "on", "off"):
        raise ConfigError(f"params.sft.gradient_checkpointing = {gc!r}; allowed: auto, on, off")
    grad_ckpt = dev.startswith("cuda") if gc == "auto" else gc == "on"
    tr = params["trainer"]
    if tr not in TRAINERS:
        raise ConfigError(f"params.sft.trainer = {tr!r}; {trainer_error(tr)}")
    if tr == "auto":
        tr = "fast" if dev.startswith("cuda") else "trl"
    if tr == "fast" and int(params.get("fast_max_tokens", 1)) < 1:
        raise ConfigError(f"params.sft.fast_max_tokens = {params['fast_max_tokens']!r}; must be >= 1 (padded tokens per step)")
    resolve_kernels(params.get("kernels", "auto"), dev)  # a bad value, or liger where it cannot run, fails before the model loads
    # the same for compile; with the fast trainer, checkpointing "auto" is decided from the loaded model
    resolve_compile(params.get("compile", "auto"), dev, quant,
                    grad_ckpt and not (tr == "fast" and gc == "auto"), params.get("kernels", "auto"))
    return dev, quant, grad_ckpt, tr


def _lora_config(params: dict):
    from peft import LoraConfig

    tm = params["target_modules"]
    targets = tm if tm == "all-linear" else [t.strip() for t in tm.split(",") if t.strip()]
    return LoraConfig(r=params["lora_r"], lora_alpha=params["lora_alpha"], lora_dropout=params["lora_dropout"],
                      target_modules=targets, bias="none", task_type="CAUSAL_LM")


def load_for_training(ref: str, params: dict, seed: int, log: Callable[..., None]):
    """(loaded, peft_model, device, quantization, trainer_name, grad_ckpt, kernels) through the canonical loader.

    ``kernels``: ``(KernelChoice, LigerPatch | None, CompileChoice)``; the caller must call the
    patch's ``restore()`` once training is over (``run_sft`` does; on an error here it is restored
    already). The decoder layers are compiled (``params.compile``) after PEFT has wrapped them.
    """
    from transformers import set_seed

    dev, quant, grad_ckpt, tr = _resolve(params)
    set_seed(seed)
    loaded = load_model(ref, device=dev, dtype=None if dev.startswith("cuda") else "float32",
                        quantization=quant, backend="hf", run_sentinels=False)
    model = loaded.model
    if tr == "fast" and params["gradient_checkpointing"] == "auto":
        grad_ckpt = needs_checkpointing(model)
    comp = resolve_compile(params.get("compile", "auto"), dev, quant, grad_ckpt, params["kernels"])
    choice = resolve_kernels(params["kernels"], dev, getattr(model.config, "model_type", None), compiled=comp.applied)
    # Liger patches the plain HF modules, before PEFT (LoRA / Linear4bit) wraps the linears they call
    patch = apply_liger(model, model.config.model_type) if choice.applied else None
    try:
        model = _wrap_for_training(model, params, quant, grad_ckpt, seed)
        compile_layers(model, comp)
        comp.loss = comp.applied and sft_speed.COMPILE_LOSS and tr == "fast"  # the fused loss is the fast trainer's
    except BaseException:
        if patch is not None:
            patch.restore()
        raise
    return loaded, model, dev, quant, tr, grad_ckpt, (choice, patch, comp)


def _wrap_for_training(model, params: dict, quant: str | None, grad_ckpt: bool, seed: int):
    """PEFT LoRA around the loaded model, in training mode."""
    import torch
    from peft import get_peft_model, prepare_model_for_kbit_training

    if quant == "nf4":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=grad_ckpt)
    elif grad_ckpt:
        model.enable_input_require_grads()
    model = get_peft_model(model, _lora_config(params))
    model.train()
    torch.manual_seed(seed)
    return model


class ResponseOnlyCollator:
    """Right-pads ``input_ids`` (pad id) and ``labels`` (-100) and builds the attention mask.

    The labels are used exactly as ``encode_example`` made them (prompt -100, response + eos
    labelled); this object is what the trainer batches with, so tests inspect its output.
    """

    def __init__(self, pad_id: int):
        self.pad_id = int(pad_id)

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        width = max(len(e["input_ids"]) for e in examples)
        ids = torch.full((len(examples), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(examples), width), -100, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for b, e in enumerate(examples):
            n = len(e["input_ids"])
            ids[b, :n] = torch.tensor(e["input_ids"], dtype=torch.long)
            labels[b, :n] = torch.tensor(e["labels"], dtype=torch.long)
            mask[b, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def _trl_available() -> bool:
    try:
        import datasets  # noqa: F401
        import trl  # noqa: F401
        return True
    except ImportError:
        return False


TENSORBOARD_DIR = "tensorboard"


def tensorboard_callback(log_dir: Path):
    """TensorBoard logging (train loss, dev loss, learning rate) into ``log_dir``, or None when
    ``tensorboard`` is not installed (the ``report`` extra). The same callback ``report_to=
    "tensorboard"`` would add, made here so the event files land in the step's work folder
    (kept across resumed attempts, copied into the outputs) rather than ``output_dir/runs/<date>``,
    without a process-wide ``TENSORBOARD_LOGGING_DIR``."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback
    except ImportError:
        return None
    log_dir.mkdir(parents=True, exist_ok=True)
    return TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(log_dir)))


def make_trainer(loaded, model, train_ex: list[dict], dev_ex: list[dict], params: dict, out_dir: Path,
                 seed: int, device: str, grad_ckpt: bool, use_trl: bool = True,
                 on_checkpoint: Callable[[str, int], None] | None = None, fast: bool = False,
                 compile_loss: bool = False, decoder_autocast: bool = False):
    """TRL's ``SFTTrainer`` over the pre-tokenized examples with ``ResponseOnlyCollator``.

    ``fast=True``: the fast trainer (``phases/sft_fast_trainer.py``) with the same optimizer,
    schedule, checkpoints and callbacks, gradient accumulation 1 and token-budget batches of at
    most ``per_device_batch_size x grad_accum`` examples (the same examples per optimizer step);
    ``compile_loss``: its fused loss's chunk math through torch.compile (``CompileChoice.loss``);
    ``decoder_autocast``: its decoder under bf16 autocast (``sft_fast_trainer.decoder_autocast_record``).

    Without ``trl``/``datasets`` (e.g. a GPU image where they cannot be installed) the plain
    ``transformers.Trainer`` runs the same examples with the same collator, optimizer and schedule.
    """
    has_dev = bool(dev_ex)
    cuda = device.startswith("cuda")
    kw = dict(
        output_dir=str(out_dir), seed=seed, data_seed=seed,
        learning_rate=params["learning_rate"], weight_decay=params["weight_decay"],
        warmup_steps=float(params["warmup_ratio"]), lr_scheduler_type=params["lr_scheduler"],
        per_device_train_batch_size=params["per_device_batch_size"],
        per_device_eval_batch_size=params["per_device_batch_size"],
        gradient_accumulation_steps=params["grad_accum"], num_train_epochs=params["epochs"],
        max_steps=params["max_steps"], logging_steps=params["logging_steps"], logging_first_step=True,
        save_strategy="steps", save_steps=params["save_steps"], save_total_limit=params["save_total_limit"],
        eval_strategy="steps" if has_dev else "no", eval_steps=params["save_steps"] if has_dev else None,
        load_best_model_at_end=has_dev, metric_for_best_model="eval_loss" if has_dev else None,
        greater_is_better=False if has_dev else None,
        bf16=cuda, fp16=False, use_cpu=not cuda, gradient_checkpointing=grad_ckpt,
        report_to="none", dataloader_num_workers=0, disable_tqdm=True, save_only_model=False,
        optim="adamw_torch", remove_unused_columns=False,
    )
    # pad with the profile's eos, never the tokenizer's pad (SmolLM2's is the chat token <|im_end|>);
    # padding is masked either way, but no control token ever enters a training batch
    collator = ResponseOnlyCollator(loaded.eos_token_id)
    cbs = _callbacks(params["early_stopping_patience"], has_dev, on_checkpoint)
    tb = tensorboard_callback(Path(out_dir).parent / TENSORBOARD_DIR)
    if tb is not None:
        cbs.append(tb)
    if fast:
        from transformers import TrainingArguments

        from phases.sft_fast_trainer import make_fast_trainer  # lazy: it imports torch at its top (phases/sft_fast.py)

        rows = int(params["per_device_batch_size"]) * int(params["grad_accum"])
        kw.update(gradient_accumulation_steps=1, per_device_train_batch_size=rows)
        return make_fast_trainer(model, train_ex, dev_ex, TrainingArguments(**kw), collator, loaded.eos_token_id,
                                 int(params["fast_max_tokens"]), rows, seed, processing_class=loaded.tokenizer,
                                 callbacks=cbs, compile_loss=compile_loss, decoder_autocast=decoder_autocast)
    if use_trl:
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        args = SFTConfig(**kw, max_length=params["max_seq_len"], packing=False, padding_free=False,
                         dataset_kwargs={"skip_prepare_dataset": True})
        return SFTTrainer(model=model, args=args, data_collator=collator, train_dataset=Dataset.from_list(train_ex),
                          eval_dataset=Dataset.from_list(dev_ex) if has_dev else None,
                          processing_class=loaded.tokenizer, callbacks=cbs)
    from transformers import Trainer, TrainingArguments

    return Trainer(model=model, args=TrainingArguments(**kw), data_collator=collator, train_dataset=train_ex,
                   eval_dataset=dev_ex if has_dev else None, processing_class=loaded.tokenizer, callbacks=cbs)


def run_sft(records: list[dict], ref: str, params: dict, work_dir: Path, out_dir: Path, seed: int,
            log: Callable[..., None], encode_records: Callable[..., tuple[list[dict], dict]] | None = None,
            callbacks: list | None = None) -> dict:
    """Train and save ``out_dir/adapter``; returns the facts for the manifest.

    ``encode_records(loaded, records, max_seq_len) -> (examples, counts)`` replaces
    `build_examples` for other record shapes (multi-turn: phases/multiturn_steps.py); its
    examples carry ``input_ids`` and ``labels`` (-100 where no loss is taken).
    ``callbacks``: extra ``TrainerCallback``s (benchmarks/bench_sft.py times steps with one; the
    ``sft`` step passes none).

    ``log(message, kind=..., **data)`` records events (``sft_resumed`` with ``from_step``).
    Resumes from the last complete checkpoint under ``work_dir/trainer`` if there is one.
    """
    params = {**SFT_DEFAULTS, **params}
    loaded, model, device, quant, trainer_name, grad_ckpt, (kernels, patch, comp) = load_for_training(
        ref, params, seed, log)
    try:
        return _train(loaded, model, device, quant, trainer_name, grad_ckpt, kernels, records, params, work_dir,
                      out_dir, seed, log, encode_records, callbacks, comp)
    finally:
        if patch is not None:
            patch.restore()  # Liger's module-level names live exactly as long as this training call


def _train(loaded, model, device, quant, trainer_name, grad_ckpt, kernels, records, params, work_dir, out_dir, seed,
           log, encode_records, callbacks, comp) -> dict:
    import torch

    kernels_record, compile_record, attention = kernels.record(), comp.record(), attention_record(device)
    from phases.sft_fast_trainer import decoder_autocast_record  # lazy: it imports torch (phases/sft_fast.py)

    autocast = decoder_autocast_record(device, quant, trainer_name)
    if params["max_examples"] > 0:
        records = records[: params["max_examples"]]
    examples, counts = (encode_records or build_examples)(loaded, records, params["max_seq_len"])
    train_ex, dev_ex = split_dev(examples, params["dev_fraction"], seed)
    for ex in train_ex + dev_ex:  # the guard's control-token check over the training batches too
        loaded.check_ids(ex["input_ids"])
    trainer_dir = Path(work_dir) / "trainer"
    trainer_dir.mkdir(parents=True, exist_ok=True)
    use_trl = _trl_available()
    if trainer_name == "fast":
        use_trl = False
    elif not use_trl:
        log("trl/datasets not importable here: training with transformers.Trainer and the same collator",
            kind="sft_trainer_fallback")
        trainer_name = "transformers.Trainer (trl missing)"
    def checkpoint_done(name: str, global_step: int) -> None:  # durable progress: see runner/context.py
        log(f"{name} complete (global step {global_step})", kind=PROGRESS_EVENT, marker=name,
            global_step=global_step)

    trainer = make_trainer(loaded, model, train_ex, dev_ex, params, trainer_dir, seed, device, grad_ckpt, use_trl,
                           on_checkpoint=checkpoint_done, fast=trainer_name == "fast", compile_loss=comp.loss,
                           decoder_autocast=autocast["applied"])
    speed = throughput_callback(device.startswith("cuda"))
    trainer.add_callback(speed)
    for cb in callbacks or ():
        trainer.add_callback(cb)
    ckpt, step = last_complete_checkpoint(trainer_dir)
    kernels_line = (f"kernels {kernels.label}" + ("" if kernels.applied else f" ({kernels.reason})")
                    + f", {comp.label}" + ("" if comp.applied else f" ({comp.reason})"))
    if ckpt is not None:
        log(f"resuming training from checkpoint {ckpt.name} (global step {step}), not from step 0; {kernels_line}",
            kind="sft_resumed", from_step=step, checkpoint=ckpt.name, kernels=kernels_record, compile=compile_record,
            attention=attention, decoder_autocast=autocast)
    else:
        log(f"training from step 0 on {len(train_ex)} examples ({len(dev_ex)} dev), device {device}, "
            f"quantization {quant}, trainer {trainer_name}, {kernels_line}, attention {attention['sdpa']}, "
            f"decoder autocast {'bf16' if autocast['applied'] else 'off'}",
            kind="sft_started", kernels=kernels_record, compile=compile_record, attention=attention,
            decoder_autocast=autocast)
    t0 = time.time()
    with variable_shape_attention(device):  # SDPA without cuDNN's per-shape graphs: phases/models/attention.py
        result = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
        seconds = time.time() - t0
        final_eval = trainer.evaluate() if dev_ex else {}
    adapter_dir = Path(out_dir) / "adapter"
    trainer.model.save_pretrained(str(adapter_dir))
    tb_dir = Path(work_dir) / TENSORBOARD_DIR
    if tb_dir.is_dir() and any(tb_dir.iterdir()):  # the event files of every attempt, for TensorBoard
        import shutil
        for cb in trainer.callback_handler.callbacks:
            if getattr(cb, "tb_writer", None) is not None:
                cb.tb_writer.flush()
        shutil.copytree(tb_dir, Path(out_dir) / TENSORBOARD_DIR, dirs_exist_ok=True)
    # PEFT writes target_modules from a set (order varies with hash seeding): sort it so the
    # same training gives the same bytes
    acfg_path = adapter_dir / "adapter_config.json"
    acfg = json.loads(acfg_path.read_text(encoding="utf-8"))
    if isinstance(acfg.get("target_modules"), list):
        acfg["target_modules"] = sorted(acfg["target_modules"])
    acfg_path.write_text(json.dumps(acfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    cfg = loaded.model.config if loaded.model is not None else model.config
    (adapter_dir / "cai_adapter.json").write_text(json.dumps({
        "base_model_id": loaded.model_id, "base_model_revision": loaded.provenance.get("model_revision"),
        "base_model_path": str(loaded.path), "model_type": getattr(cfg, "model_type", None),
        "hidden_size": getattr(cfg, "hidden_size", None), "num_hidden_layers": getattr(cfg, "num_hidden_layers", None),
        "vocab_size": getattr(cfg, "vocab_size", None), "quantization": quant,
    }, sort_keys=True, indent=2) + "\n")
    state = trainer.state
    checkpoints = sorted((p.name for p in trainer_dir.glob("checkpoint-*") if (p / COMPLETE).is_file()),
                         key=lambda n: int(n.split("-")[-1]))
    train_losses = [{"step": h["step"], "loss": h["loss"]} for h in state.log_history if "loss" in h]
    eval_losses = [{"step": h["step"], "eval_loss": h["eval_loss"]} for h in state.log_history if "eval_loss" in h]
    # tokens of this attempt only: a resumed trainer starts from the checkpoint's count
    tokens_attempt = int(state.num_input_tokens_seen or 0) - speed.tokens_at_begin
    out = {
        "kernels": kernels_record, "compile": compile_record, "attention": attention, "decoder_autocast": autocast,
        "device": device, "quantization": quant, "loaded_in_4bit": bool(getattr(loaded.model, "is_loaded_in_4bit", False)),
        "trainer": trainer_name, "gradient_checkpointing": grad_ckpt,
        "model_provenance": {k: v for k, v in loaded.provenance.items() if k != "load_seconds"},
        "examples": {**counts, "train": len(train_ex), "dev": len(dev_ex)},
        "resumed_from": {"checkpoint": ckpt.name, "step": step} if ckpt else None,
        "checkpoints": checkpoints, "checkpoint_dir": str(trainer_dir),
        "best_checkpoint": Path(state.best_model_checkpoint).name if state.best_model_checkpoint else None,
        "metrics": {"global_step": state.global_step, "epochs_done": state.epoch,
                    "train_loss": result.training_loss, "final_train_loss": train_losses[-1]["loss"] if train_losses else None,
                    "eval_loss": final_eval.get("eval_loss"), "train_seconds": round(seconds, 2),
                    "tokens_trained": int(state.num_input_tokens_seen) or None,
                    "tokens_this_attempt": tokens_attempt or None,
                    "train_tokens_per_s": round(tokens_attempt / seconds, 1) if tokens_attempt and seconds > 0 else None,
                    "throughput": speed.record(),
                    "early_stopped": bool(dev_ex) and params["max_steps"] <= 0 and state.global_step < state.max_steps},
        "loss_curve": {"train": train_losses, "eval": eval_losses},
        "gpu_seconds": round(seconds, 2) if device.startswith("cuda") else 0.0,
    }
    # free the GPU before the evaluate step runs in the same process: the Trainer's accelerator
    # keeps references to the model and optimizer state otherwise
    try:
        trainer.accelerator.free_memory()
    except Exception:  # older accelerate: nothing to free there
        pass
    trainer.model = trainer.model_wrapped = trainer.optimizer = trainer.lr_scheduler = None
    loaded.model = None
    loaded.backend.model = None
    del trainer, model, loaded
    import gc

    gc.collect()
    if torch.cuda.is_available():
        # The ~66 MiB that stayed allocated after training on the H100 (docs/gpu/sft-check.md) match
        # cuBLAS + cuBLASLt workspaces (32 MiB each on Hopper by default): live allocations of the
        # caching allocator, kept per handle for the process's life, which empty_cache() does not
        # release. They do not grow with the model, so evaluation may stay in the same process;
        # clearing them here makes the freed-memory check measure what training really left.
        clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
        if clear is not None:
            clear()
        torch.cuda.empty_cache()
    return out
