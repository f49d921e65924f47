"""SFT throughput: TRL's SFTTrainer with its default settings vs the pipeline's `sft` step
(phases/sft.py run_sft, directly and through the runner), all LoRA r=16 (alpha 32, dropout 0) on
every linear layer, bf16, examples of 64-768 tokens (uniform lengths).

Measures, per model size: trained tokens/s (real tokens, pads excluded) over the timed steps
after warm-up steps, MFU = 6 x params x tokens/s / measured matmul peak (the issue's convention;
with a frozen base the true FLOPs are nearer 4 x params x tokens, so 6N MFU overstates the
utilisation by up to 1.5x), peak GPU memory, and the first/last loss. TRL rows train on random
token ids (loss on every token); the step rows on records of random words (response-only loss).
- TRL: ``SFTTrainer(model, SFTConfig(output_dir, max_steps, report_to=[], save_strategy="no"),
  train_dataset=Dataset({"input_ids": ...}), peft_config=LoraConfig(...))``; every other setting
  is TRL's default (batch 8, gradient checkpointing on, padding to the longest row, no packing,
  fused AdamW, lr 2e-5, max_length 1024, bf16). Tokens are TRL's own count
  (``trainer._total_train_tokens``, the attention-mask sum) between step-begin and step-end
  callbacks, with CUDA synchronisation.
- TRL + Liger (``use_liger_kernel=True``: Liger's fused linear+CE, RMSNorm, RoPE, SwiGLU kernels)
  and TRL + Liger + ``padding_free=True`` (rows concatenated, position ids restart per example;
  TRL documents it for flash-attention; with SDPA the row says whether it ran): TRL defaults
  otherwise. Skipped (a ``note``, not an error) where ``liger-kernel`` does not import.
- The ``sft`` step itself: ``phases.sft.run_sft`` (what the step calls: canonical loader, example
  encoding with the response-only mask, LoRA r=16/alpha 32/dropout 0, lr 2e-5, the trainer's
  checkpoints off during the timed steps) with ``trainer: fast`` (bf16 base, ``quantization:
  none`` so it is comparable with the TRL rows; 16 examples per optimizer step at most and the
  token budget below), on a random model of the size saved to a temp folder (with the tiny
  model's tokenizer) and records whose encoded lengths spread over 64-768 tokens. Tokens are
  ``state.num_input_tokens_seen`` (real tokens) between the same step callbacks as TRL's.
  ``step_fast`` passes ``kernels: none``; ``step_liger`` the same step with ``kernels: liger``
  (Liger's fused RoPE, RMSNorm, SwiGLU patched into the model; the loss stays the project's fused
  CE), skipped with a note off CUDA or where ``liger_kernel`` does not import.
- ``runner``: the ``sft`` step run by ``python -m runner`` in a subprocess (pipeline
  ``benchmarks/sft_runner_pipeline.py``: model folder and records in, then the real step) with the
  step rows' params and ``kernels: auto``, ``compile: auto`` (what a user gets: compiled layers on
  CUDA, so no Liger); tokens/s is the step's own record (its manifest's
  ``metrics.throughput``: optimizer steps after the same warm-up, model load and imports outside;
  the run seed orders the batches, so the timed batches differ from the other step rows');
  ``wall_s`` is the whole subprocess, ``step_wall_s`` the step (load included).
- ``step_compile``: the step with ``compile: layers`` (every decoder layer through ``torch.compile``,
  Inductor, dynamic shapes; ``phases/sft_speed.py``), the fused loss's chunk math compiled with
  them (``COMPILE_LOSS``), and kernels none. Compilation happens in the
  warm-up steps (a recompile inside the timed window would show as a slow row, as it did for
  Unsloth; ``dynamo_unique_graphs`` counts the graphs). Compiled layers with Liger's kernels failed
  on the H200 (Liger's Triton kernels inside Dynamo), so the step refuses that pair.
- ``step_compile_layers``: ``step_compile`` with the fused loss's chunk math left eager
  (``phases.sft_speed.COMPILE_LOSS`` off in this process for the row): what compiling the loss's
  softmax and gradient (``phases.sft_fast.compiled_ce_chunk``) adds, side by side.
- ``step_compile_newdata``: ``step_compile`` on records drawn with another seed, so its batches
  have widths the earlier rows of the process never ran. The fourth H200 run found the first
  compiled row of a process 1.4-1.5x slower per step than a second one on the same data; after a
  ``step_compile`` row, this row says whether the gap follows the process (fast here) or new
  batch shapes (slow again, as a first-sight cost per GEMM shape would be). With ``--steps 100``
  it also shows whether a first row's gap fades.
- ``step_compile_cudnn``: ``step_compile`` with ``phases.models.attention.AVOID_CUDNN`` off for the
  row, so SDPA makes its own pick (cuDNN's attention on the H200, which builds a graph per new
  batch shape: the fourth run's "first-row effect", found by the fifth run's profile). The row
  starts from an empty Dynamo cache with the on-disk graph caches off (``run_step_cudnn`` says
  why); which attention ops really ran shows in ``profile.attention_ops_per_step`` (with
  ``--profile-steps``). A diagnostic: run only when named in ``--variants``.
- ``step_compile_fp32lora`` (a diagnostic, only when named): ``step_compile`` with
  ``phases.sft_fast_trainer.AUTOCAST_DECODER`` off for the row: the decoder outside autocast, so
  the LoRA matmuls run in fp32 (the step's precision before the sixth H200 run, which measured the
  autocast row 1.17x faster at 1.5B and 7B with the same loss curve; this row was then called
  ``step_compile_autocast`` with the switch the other way). Compare its tokens/s and loss curve
  with ``step_compile``'s on the same records.
- ``runner_defaults``: the ``runner`` row with the stage's own ``params.sft`` defaults
  (``phases/sft.py`` ``SFT_DEFAULTS``: nf4 QLoRA on CUDA, LoRA dropout 0.05, lr 2e-4, kernels and
  compile auto), only ``max_steps``, checkpoints and the dev split set as in the other rows: the
  speed a stage-1 run trains at. Not comparable 1:1 with the bf16 rows (nf4 dequantisation,
  dropout), which is why it is a separate row.

Run alone:  python3 benchmarks/bench_sft.py --sizes 1.5B --out /tmp/sft   (or via run_all.py)
The step rows only:  python3 benchmarks/bench_sft.py --sizes 1.5B,7B --variants trl,step_fast,step_liger,runner --out /tmp/sft
CPU smoke (tiny model, ~25 s):  python3 benchmarks/bench_sft.py --cpu --sizes tiny --out /tmp/sft
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks import common  # noqa: E402
from phases.sft_speed import liger_import_error  # noqa: E402

BUDGET = {"tiny": 256, "0.5B": 32768, "1.5B": 16384, "7B": 6144}


def make_data(n: int, vocab: int, lo: int, hi: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(lo, hi + 1, (n,), generator=g).tolist()
    return [common.rand_ids(g, L, vocab) for L in lens]


def _tiny_tokenizer(tmp: str):
    from transformers import AutoTokenizer

    from phases.models.tiny import build_tiny_model

    d = build_tiny_model(Path(tmp) / "tok", hidden_size=16, num_layers=1)
    return AutoTokenizer.from_pretrained(d)


TRL_VARIANTS = {"trl": ("TRL SFTTrainer defaults (bs8, grad ckpt)", {}),
                "trl_liger": ("TRL + Liger kernels", {"use_liger_kernel": True}),
                "trl_liger_pf": ("TRL + Liger + padding_free", {"use_liger_kernel": True, "padding_free": True,
                                                                 # TRL 1.16 refuses max_length with padding_free
                                                                 # and no packing; the rows are <= 768 already
                                                                 "max_length": None})}


def run_trl(size: str, dev: str, data: list[list[int]], warm: int, steps: int, tmp: str, variant: str = "trl") -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    model = common.build_model(size, dev)
    model.train()
    box: dict = {}

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == warm:
                common.sync(dev)
                box["t0"], box["tok0"] = time.perf_counter(), box["trainer"]._total_train_tokens

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == warm + steps:
                common.sync(dev)
                box["t1"], box["tok1"] = time.perf_counter(), box["trainer"]._total_train_tokens

    name, opts = TRL_VARIANTS[variant]
    extra = dict(use_cpu=True, bf16=False) if dev == "cpu" else {}
    args = SFTConfig(output_dir=str(Path(tmp) / variant), max_steps=warm + steps, report_to=[], save_strategy="no",
                     disable_tqdm=True, **extra, **opts)
    peft = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"input_ids": data}),
                         processing_class=_tiny_tokenizer(tmp), peft_config=peft, callbacks=[Timer()])
    box["trainer"] = trainer
    if dev.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    t = box["t1"] - box["t0"]
    tokens = box["tok1"] - box["tok0"]
    res = {"variant": name, "seconds": round(t, 3), "tokens": int(tokens),
           "tokens_per_s": tokens / t, "steps": steps,
           "gradient_checkpointing": bool(getattr(trainer.args, "gradient_checkpointing", None)),
           "batch": trainer.args.per_device_train_batch_size, "loss_first": losses[0] if losses else None,
           "loss_last": losses[-1] if losses else None}
    if dev.startswith("cuda"):
        res["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    del trainer, model, box
    common.free(dev)
    return res


def save_random_model(size: str, dev: str, folder: Path) -> Path:
    """A random ``size`` model (bf16 on CUDA) saved with the tiny model's tokenizer: a folder the
    canonical loader takes (``phases.models.loader.load_model(folder)``)."""
    import shutil

    from phases.models.tiny import build_tiny_model

    tok = build_tiny_model(Path(folder).parent / f"{Path(folder).name}-tok", hidden_size=16, num_layers=1)
    shutil.copytree(tok, folder)
    (Path(folder) / "model.safetensors").unlink()
    model = common.build_model(size, dev)
    model.config.eos_token_id = model.config.bos_token_id = model.config.pad_token_id = None
    model.save_pretrained(str(folder), max_shard_size="50GB")
    del model
    common.free(dev)
    return Path(folder)


def make_records(n: int, lo: int, hi: int, seed: int = 0) -> list[dict]:
    """SFT records whose encoded length (tiny tokenizer, ~2.6 tokens a word) spreads over lo-hi tokens."""
    import random

    rng = random.Random(seed)
    words = ["alpha", "bravo", "delta", "echo", "golf", "hotel", "india", "kilo", "lima", "mike", "oscar", "papa"]
    out = []
    for _ in range(n):
        total = rng.randint(lo, hi) * 10 // 26
        k = max(2, total // 5)
        out.append({"instruction": " ".join(rng.choice(words) for _ in range(k)),
                    "response": " ".join(rng.choice(words) for _ in range(max(1, total - k)))})
    return out


def step_params(size: str, dev: str, warm: int, steps: int, trainer: str = "fast", kernels: str = "none",
                compile: str = "off") -> dict:
    """``params.sft`` of the step rows: the method's 16 rows a step, the size's token budget, TRL's
    lr and LoRA shape, bf16 base (``quantization: none``, comparable with the TRL rows), no
    checkpoint or dev evaluation inside the timed steps."""
    return {"trainer": trainer, "kernels": kernels, "compile": compile, "device": "cuda" if dev.startswith("cuda") else "cpu",
            "quantization": "none", "max_steps": warm + steps, "save_steps": 10**6, "dev_fraction": 0.0, "lora_r": 16,
            "lora_alpha": 32, "lora_dropout": 0.0, "learning_rate": 2e-5, "logging_steps": 1, "max_seq_len": 1024,
            "fast_max_tokens": BUDGET[size], "per_device_batch_size": 2, "grad_accum": 8}


#: where the random models are saved (``--models-dir``; default: the run's temp folder), so that
#: several processes of one GPU call build and save each size once
MODELS_DIR: str | None = None


def _model_folder(size: str, dev: str, tmp: str) -> Path:
    folder = Path(MODELS_DIR or tmp) / f"model-{size}"
    if not folder.is_dir():
        save_random_model(size, dev, folder)
    return folder


def _kernels_label(kernels: dict | None) -> str:
    applied = (kernels or {}).get("applied") or []
    return "liger " + "+".join(applied) if applied else "none"


class GcTimer:
    """Python's garbage collector inside a window: collections per generation and seconds spent
    (``gc.callbacks``), to tell a collector pause from GPU or launch time in a slow row."""

    def __init__(self):
        self.on, self.t, self.seconds, self.count = False, 0.0, 0.0, [0, 0, 0]

    def __call__(self, phase: str, info: dict) -> None:
        if not self.on:
            return
        if phase == "start":
            self.t = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self.t
            self.count[info["generation"]] += 1

    def record(self) -> dict:
        return {"gc_seconds": round(self.seconds, 4), "gc_collections": list(self.count)}


#: BENCH_GC (environment) in a step row's timed window: ``freeze`` = ``gc.collect(); gc.freeze()``
#: when it opens (what compilation left on the heap is never scanned again), ``off`` =
#: ``gc.disable()`` for the window; unset = the interpreter's default collector
GC_MODES = ("", "freeze", "off")


def device_busy(events) -> tuple[float, float]:
    """(kernel seconds, busy seconds) of a profiler's device-side events: each kernel counted once
    (``key_averages`` sums would count a kernel under its launching op too, and overlapping
    kernels twice), busy = the union of their time ranges."""
    from torch.autograd import DeviceType

    spans = sorted((e.time_range.start, e.time_range.end) for e in events if e.device_type == DeviceType.CUDA)
    total = sum(b - a for a, b in spans)
    busy, end = 0.0, float("-inf")
    for a, b in spans:
        if b > end:
            busy += b - max(a, end)
            end = b
    return total / 1e6, busy / 1e6


def profile_summary(prof, n_steps: int, wall_s: float) -> tuple[dict, str]:
    """A torch.profiler run over ``n_steps`` optimizer steps taking ``wall_s``: per step, the GPU's
    kernel time and busy fraction (``device_busy``), the SDPA ops that ran (which attention kernel
    the compiled graphs call) and the CPU time of the CUDA runtime calls; and the top-ops tables
    (self CPU, self device) as text."""
    ka = prof.key_averages()
    calls = {}
    for e in ka:
        if e.key[:4] in ("cuda", "cuLa", "cuMe", "cuMo", "cuSt", "cuEv"):  # CUDA runtime / driver calls
            calls[e.key] = {"cpu_ms_per_step": round(e.self_cpu_time_total / 1e3 / n_steps, 2),
                            "count_per_step": round(e.count / n_steps, 1)}
    kernel_s, busy_s = device_busy(prof.events())
    attn = {e.key: round(e.count / n_steps, 1) for e in ka if "attention" in e.key and e.key.startswith("aten::_")}
    summ = {"steps": n_steps, "attention_ops_per_step": attn, "wall_ms_per_step": round(wall_s * 1e3 / n_steps, 1),
            "gpu_kernel_ms_per_step": round(kernel_s * 1e3 / n_steps, 1),
            "gpu_busy": round(busy_s / wall_s, 3) if wall_s > 0 else None, "runtime_calls": calls}
    text = ("# by self CPU time\n" + ka.table(sort_by="self_cpu_time_total", row_limit=40)
            + "\n# by self device time\n" + ka.table(sort_by="self_device_time_total", row_limit=40))
    return summ, text


def run_step(size: str, dev: str, records: list[dict], warm: int, steps: int, tmp: str, trainer: str = "fast",
             kernels: str = "none", compile: str = "off", row: int = 0, profile_steps: int = 0,
             out_dir: str | None = None) -> dict:
    """The sft step's own code (``phases.sft.run_sft``), timed between step callbacks.

    Also kept per row: each timed step's wall time and real tokens (``step_ms``, ``step_tokens``:
    does an early slowness fade?), the collector's work in the window (``GcTimer``; ``BENCH_GC``
    sets it up), and with ``profile_steps`` > 0 that many more steps after the window under
    torch.profiler (``profile`` summary; the op tables to ``out_dir/profile-row<row>.txt``).
    """
    import gc
    import os

    from transformers import TrainerCallback

    from phases.sft import run_sft

    folder = _model_folder(size, dev, tmp)
    box: dict = {"step_ms": [], "step_tokens": []}
    gc_mode = os.environ.get("BENCH_GC", "")
    if gc_mode not in GC_MODES:
        raise SystemExit(f"BENCH_GC={gc_mode!r}: choose one of {GC_MODES}")
    gct = GcTimer()
    gc.callbacks.append(gct)

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == warm:
                if gc_mode == "freeze":
                    gc.collect()
                    gc.freeze()
                elif gc_mode == "off":
                    gc.disable()
                common.sync(dev)
                box["t0"], box["tok0"] = time.perf_counter(), state.num_input_tokens_seen
                gct.on = True
            if warm <= state.global_step < warm + steps:
                box["b"], box["btok"] = time.perf_counter(), state.num_input_tokens_seen
            if profile_steps and state.global_step == warm + steps:
                from torch.profiler import ProfilerActivity, profile

                acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.startswith("cuda") else [])
                box["prof"] = profile(activities=acts)
                common.sync(dev)
                box["prof"].start()
                box["p0"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if warm < state.global_step <= warm + steps:
                common.sync(dev)
                box["step_ms"].append(round((time.perf_counter() - box["b"]) * 1e3, 1))
                box["step_tokens"].append(int(state.num_input_tokens_seen - box["btok"]))
            if state.global_step == warm + steps:
                box["t1"], box["tok1"] = time.perf_counter(), state.num_input_tokens_seen
                gct.on = False
                if gc_mode == "freeze":
                    gc.unfreeze()
                elif gc_mode == "off":
                    gc.enable()
            if profile_steps and state.global_step == warm + steps + profile_steps:
                common.sync(dev)
                wall = time.perf_counter() - box["p0"]
                box["prof"].stop()
                box["profile"], text = profile_summary(box["prof"], profile_steps, wall)
                if out_dir:
                    Path(out_dir).mkdir(parents=True, exist_ok=True)
                    (Path(out_dir) / f"profile-row{row}.txt").write_text(text)
                del box["prof"]

    params = step_params(size, dev, warm, steps + profile_steps, trainer, kernels, compile)
    if dev.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    from phases import sft_fast_trainer, sft_speed
    from phases.models import attention

    # a fresh work dir per row (a variant may repeat: --variants step_compile,step_compile)
    tag = (f"{row}-{trainer}-{kernels}-{compile}" + ("" if sft_speed.COMPILE_LOSS else "-eagerloss")
           + ("" if attention.AVOID_CUDNN else "-cudnn") + ("" if sft_fast_trainer.AUTOCAST_DECODER else "-fp32lora"))
    try:
        res = run_sft(records, str(folder), params, Path(tmp) / f"work-{tag}", Path(tmp) / f"out-{tag}", 0,
                      lambda *a, **k: None, callbacks=[Timer()])
    finally:
        gc.callbacks.remove(gct)
        gc.enable()
    t = box["t1"] - box["t0"]
    tokens = box["tok1"] - box["tok0"]
    losses = [x["loss"] for x in res["loss_curve"]["train"]]
    name = (f"sft step (run_sft), trainer {res['trainer']}" + (", Liger kernels" if kernels == "liger" else "")
            + (", compiled layers" if res["compile"]["applied"] else "")
            + (" + loss" if res["compile"].get("loss") else ""))
    tp = res["metrics"].get("throughput") or {}
    out = {"variant": name, "seconds": round(t, 3), "tokens": int(tokens), "kernels": _kernels_label(res["kernels"]),
           "median_step_s": tp.get("median_step_s"), "slowest_step_s": tp.get("slowest_step_s"),
           "compile": res["compile"], "attention": res.get("attention"), "decoder_autocast": res.get("decoder_autocast"),
           "tokens_per_s": tokens / t if tokens else None, "steps": steps,
           "gradient_checkpointing": res["gradient_checkpointing"], "batch": f"<= 16 rows, <= {BUDGET[size]} tokens",
           "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
           "step_ms": box["step_ms"], "step_tokens": box["step_tokens"], "gc_mode": gc_mode or "default",
           **gct.record()}
    if "profile" in box:
        out["profile"] = box["profile"]
    if res["compile"]["applied"]:  # graphs Dynamo compiled in this process so far (a recompile adds one)
        from torch._dynamo.utils import counters

        out["dynamo_unique_graphs"] = int(counters["stats"]["unique_graphs"])
    if dev.startswith("cuda"):
        out["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    common.free(dev)
    return out


def run_step_cudnn(size: str, dev: str, records: list[dict], warm: int, steps: int, tmp: str, row: int = 0,
                   **prof) -> dict:
    """``step_compile`` with ``phases.models.attention.AVOID_CUDNN`` off: SDPA's own pick.

    The SDPA kernel is chosen when a graph is traced and Dynamo does not guard on the SDPA flags,
    so a graph traced by an earlier row would be reused as it is (the fifth H200 run's first
    try: its "cuDNN" rows ran flash, as their profiles showed). So the row starts from an empty
    Dynamo cache with the on-disk graph caches off, and leaves an empty Dynamo cache behind.
    """
    import torch._dynamo
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    from phases.models import attention

    torch._dynamo.reset()
    try:
        with mock.patch.object(attention, "AVOID_CUDNN", False), functorch_config.patch(enable_autograd_cache=False), \
                inductor_config.patch(fx_graph_cache=False):
            r = run_step(size, dev, records, warm, steps, tmp, "fast", "none", "layers", row=row, **prof)
    finally:
        torch._dynamo.reset()
    r["variant"] += ", cuDNN attention allowed"
    return r


#: the step rows' keys the runner_defaults row keeps (the timed steps, no checkpoint or dev split
#: inside them, the data's length cap); everything else is the stage's own default
RUN_SHAPE_KEYS = ("max_steps", "save_steps", "dev_fraction", "logging_steps", "max_seq_len")


def _runner_sft_params(size: str, dev: str, warm: int, steps: int, defaults: bool) -> dict:
    p = step_params(size, dev, warm, steps, "fast", "auto", "auto")
    return {k: p[k] for k in RUN_SHAPE_KEYS} if defaults else p


def run_runner(size: str, dev: str, records: list[dict], warm: int, steps: int, tmp: str, defaults: bool = False,
               row: int = 0) -> dict:
    """The ``sft`` step run by ``python -m runner`` (a subprocess) on the benchmark's records.

    The run's pipeline is ``benchmarks/sft_runner_pipeline.py`` (two input steps, then the real
    ``sft`` step); ``params.sft`` are the step rows' with ``kernels: auto`` (what a user gets).
    Tokens/s is what the step recorded itself: its manifest's ``metrics.throughput`` (this
    attempt's optimizer steps after its warm-up steps: ``min(3, (n - 1) // 2)`` of ``n``, the same
    split as the other rows here), so interpreter start, imports and model load are outside it;
    ``wall_s`` is the whole subprocess.
    """
    import os
    import subprocess

    import yaml

    from state.files import write_jsonl

    repo = Path(__file__).resolve().parents[1]
    root = Path(tmp) / f"{row}-{'runner-defaults' if defaults else 'runner'}"  # its own run home per row
    root.mkdir(parents=True, exist_ok=True)
    write_jsonl(root / "records.jsonl", records)
    cfg = {"pipeline": "benchmarks.sft_runner_pipeline:pipeline", "seed": 0, "max_attempts": 1,
           "params": {"prepare_model": {"model_path": str(_model_folder(size, dev, tmp))},
                      "merge": {"records": str(root / "records.jsonl")},
                      "sft": _runner_sft_params(size, dev, warm, steps, defaults)}}
    (root / "run.yaml").write_text(yaml.safe_dump(cfg, sort_keys=True))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
    env["PYTHONPATH"] = os.pathsep.join([str(repo)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    cmd = [sys.executable, "-m", "runner", "--home", str(root / "home"), "run", "--config", str(root / "run.yaml"),
           "--run-id", "bench"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=str(repo), env=env, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    (root / "runner.log").write_text(p.stdout + p.stderr)
    mans = sorted((root / "home" / "artifacts" / "bench" / "sft").glob("[!.]*/training_manifest.json"))
    if p.returncode != 0 or not mans:
        raise RuntimeError(f"runner exited {p.returncode} (manifest {'found' if mans else 'missing'}); "
                           f"its output ends: {(p.stdout + p.stderr)[-600:]}")
    man = json.loads(mans[-1].read_text())
    tp = man["metrics"].get("throughput") or {}
    losses = [x["loss"] for x in man["loss_curve"]["train"]]
    name = "sft step through runner" + (", stage defaults (nf4 on CUDA, dropout 0.05)" if defaults else "")
    return {"variant": name, "quantization": man["quantization"], "compile": man.get("compile"), "seconds": tp.get("seconds"), "tokens": tp.get("tokens"),
            "tokens_per_s": tp.get("tokens_per_s"), "steps": tp.get("steps"), "warmup_steps": tp.get("warmup_steps"),
            "median_step_s": tp.get("median_step_s"), "slowest_step_s": tp.get("slowest_step_s"),
            "trainer": man["trainer"], "kernels": _kernels_label(man["kernels"]), "attention": man.get("attention"),
            "decoder_autocast": man.get("decoder_autocast"),
            "kernels_reason": man["kernels"]["reason"],
            "gradient_checkpointing": man["gradient_checkpointing"], "batch": f"<= 16 rows, <= {BUDGET[size]} tokens",
            "train_seconds": man["metrics"]["train_seconds"], "step_wall_s": man["wall_seconds"],
            "wall_s": round(wall, 1), "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None}


def _module_snapshot() -> list:
    """Undo records of the module globals Liger rebinds, taken before a row and restored after it.

    TRL's ``use_liger_kernel`` (transformers' ``apply_liger_kernel``) patches the model instance AND
    rebinds ``apply_rotary_pos_emb``, the RMSNorm and MLP classes in the modeling module for the
    rest of the process, so without this every row after a TRL + Liger row would build and run its
    model with Liger's kernels (``step_fast`` with ``kernels: none`` included).
    """
    import importlib

    import torch.nn.functional as F

    from phases.sft_speed import LigerPatch

    mods = [importlib.import_module(f"transformers.models.{a}.modeling_{a}") for a in ("qwen2", "llama")]
    return [LigerPatch(m, dict(vars(m))) for m in (*mods, F)]


def _liger_available() -> bool:
    try:
        import liger_kernel  # noqa: F401
        return True
    except Exception:
        return False


VARIANTS = ("trl", "trl_liger", "trl_liger_pf", "step_fast", "step_liger", "step_compile", "step_compile_layers",
            "step_compile_newdata", "step_compile_cudnn", "step_compile_fp32lora", "runner", "runner_defaults")
#: rows run only when named (``--variants``): diagnostics and experiments, not part of run_all's table
DIAGNOSTIC = ("step_compile_cudnn", "step_compile_fp32lora")
DEFAULT_VARIANTS = tuple(v for v in VARIANTS if v not in DIAGNOSTIC)


def run(size: str, dev: str, *, peak_tflops: float, cpu: bool = False, variants: tuple[str, ...] = DEFAULT_VARIANTS,
        on_row=None, steps: int | None = None, profile_steps: int = 0, out_dir: str | None = None) -> list[dict]:
    """The rows of ``variants`` at ``size``; ``on_row(rows)`` after each (main saves them, so a
    process killed by a time limit keeps the rows it finished). ``steps``: timed optimizer steps
    per row (default 2 on CPU, 12 on CUDA, after 1 / 3 warm-up steps); the data grows with it so
    no row runs out of batches. ``profile_steps``, ``out_dir``: see ``run_step`` (step rows only)."""
    vocab = common.SIZES[size]["vocab_size"]
    params = common.count_params(size)
    if cpu:
        warm, steps = 1, steps or 2
        data, records = make_data(max(32, 8 * (warm + steps)), vocab, 8, 40), make_records(max(48, 16 * (warm + steps)), 24, 60)
        other = make_records(len(records), 24, 60, seed=1)
    else:
        warm, steps = 3, steps or 12
        n = max(640, 40 * (warm + steps))  # TRL: 8 rows a step; the step: <= 16 rows (token budget)
        data, records = make_data(n, vocab, 64, 768), make_records(n, 64, 768)
        other = make_records(n, 64, 768, seed=1)  # step_compile_newdata: other lengths, other batch shapes
    rows = []
    prof = {"profile_steps": profile_steps, "out_dir": out_dir}
    with tempfile.TemporaryDirectory() as tmp:
        for fn in variants:
            undo = _module_snapshot()
            try:
                if fn.startswith("trl_") and not _liger_available():
                    r = {"variant": TRL_VARIANTS[fn][0], "note": "skipped: liger-kernel is not importable here"}
                elif fn.startswith("trl"):
                    r = run_trl(size, dev, data, warm, steps, tmp, fn)
                elif fn == "step_fast":
                    r = run_step(size, dev, records, warm, steps, tmp, "fast", "none", row=len(rows), **prof)
                elif fn == "step_liger" and (not dev.startswith("cuda") or liger_import_error()):
                    r = {"variant": "sft step (run_sft), trainer fast, Liger kernels",
                         "note": "skipped: Liger's kernels need CUDA and an importable liger-kernel"}
                elif fn == "step_liger":
                    r = run_step(size, dev, records, warm, steps, tmp, "fast", "liger", row=len(rows), **prof)
                elif fn == "step_compile":
                    r = run_step(size, dev, records, warm, steps, tmp, "fast", "none", "layers", row=len(rows), **prof)
                elif fn == "step_compile_newdata":
                    r = run_step(size, dev, other, warm, steps, tmp, "fast", "none", "layers", row=len(rows), **prof)
                    r["variant"] += ", other records (new batch shapes)"
                elif fn == "step_compile_fp32lora":  # the step's old precision, side by side
                    from phases import sft_fast_trainer

                    with mock.patch.object(sft_fast_trainer, "AUTOCAST_DECODER", False):
                        r = run_step(size, dev, records, warm, steps, tmp, "fast", "none", "layers", row=len(rows), **prof)
                    r["variant"] += ", decoder outside autocast (fp32 LoRA matmuls)"
                elif fn == "step_compile_cudnn":  # SDPA's own pick (cuDNN's attention on the H200) for the row
                    r = run_step_cudnn(size, dev, records, warm, steps, tmp, row=len(rows), **prof)
                elif fn == "step_compile_layers":  # the layers alone: the fused loss's chunk math eager
                    from phases import sft_speed

                    with mock.patch.object(sft_speed, "COMPILE_LOSS", False):
                        r = run_step(size, dev, records, warm, steps, tmp, "fast", "none", "layers", row=len(rows), **prof)
                elif fn == "runner_defaults" and not dev.startswith("cuda"):
                    r = {"variant": "sft step through runner, stage defaults (nf4 on CUDA, dropout 0.05)",
                         "note": "skipped: off CUDA the stage defaults train through TRL unquantized; this row is "
                                 "the CUDA path"}
                else:  # runner, runner_defaults
                    r = run_runner(size, dev, records, warm, steps, tmp, defaults=fn == "runner_defaults", row=len(rows))
            except Exception as e:
                import traceback

                traceback.print_exc()
                r = {"variant": fn, "error": f"{type(e).__name__}: {e}"[:400]}
                common.free(dev)
            finally:
                for u in undo:
                    u.restore()
            r.update(bench="sft", size=size, params=params)
            if r.get("tokens_per_s"):
                r["mfu_6N"] = round(6 * params * r["tokens_per_s"] / (peak_tflops * 1e12), 3)
                r["tokens_per_s"] = round(r["tokens_per_s"], 1)
            rows.append(r)
            print(f"sft {size:>5} {r['variant']:48} {r.get('tokens_per_s', r.get('error'))} tok/s  MFU(6N) {r.get('mfu_6N')}", flush=True)
            if on_row is not None:
                on_row(rows)
    trl = rows[0].get("tokens_per_s") if variants and variants[0] == "trl" else None  # x_trl: against TRL's row only
    for r in rows:
        r["x_trl"] = round(r["tokens_per_s"] / trl, 2) if trl and r.get("tokens_per_s") else None
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1.5B")
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--out", default="/tmp/bench-sft")
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                    help=f"comma list of {VARIANTS} (TRL defaults first: x_trl; {DIAGNOSTIC} only when named)")
    ap.add_argument("--steps", type=int, default=None,
                    help="timed optimizer steps per row (default 12 on CUDA, 2 with --cpu); longer windows show "
                         "whether a row's early slowness fades")
    ap.add_argument("--profile-steps", type=int, default=0,
                    help="after each step row's timed window, this many more steps under torch.profiler: GPU busy "
                         "fraction and launch-call CPU time in the row, op tables to OUT/profile-row<N>.txt")
    ap.add_argument("--models-dir", default=None,
                    help="save/reuse the random models here (default: a temp folder per process)")
    a = ap.parse_args(argv)
    global MODELS_DIR
    MODELS_DIR = a.models_dir
    variants = tuple(v for v in a.variants.split(",") if v)
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise SystemExit(f"--variants: unknown {bad}; choose from {VARIANTS}")
    dev = "cpu" if a.cpu else "cuda"
    peak = common.ceilings(dev, quick=a.cpu)["matmul_tflops"]
    from state.files import atomic_write_text

    Path(a.out).mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []

    def save(partial: list[dict]) -> None:
        atomic_write_text(Path(a.out) / "sft.json", json.dumps(rows + partial, indent=1) + "\n")

    for s in a.sizes.split(","):
        rows += run(s, dev, peak_tflops=peak, cpu=a.cpu, variants=variants, on_row=save, steps=a.steps,
                    profile_steps=a.profile_steps, out_dir=a.out)
    save([])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
