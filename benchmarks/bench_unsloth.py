"""SFT throughput of Unsloth with the ``sft`` step's token-budget batches, in a process of its own.

Unsloth patches transformers, PEFT and TRL globally when it is imported (and must be imported
before them), so it can never share a process with bench_sft.py's rows; this script is the
Unsloth row of that table, run right after it on the same machine:

    python3 benchmarks/bench_unsloth.py --sizes 1.5B,7B --out $OUT/unsloth    # GPU, unsloth installed
    python3 benchmarks/bench_unsloth.py --sizes 1.5B,7B --plan                # CPU: the batch plan only

What it measures, per size (the same random Qwen2.5 configuration as bench_sft, ``common.SIZES``):
- the model: ``bench_sft.save_random_model`` (random weights, bf16, the tiny tokenizer) loaded by
  ``FastLanguageModel.from_pretrained(folder, dtype=bf16, load_in_4bit=False, max_seq_length=1024,
  use_gradient_checkpointing=False)`` (the default "unsloth" would already set up its offloaded
  checkpointing at load time), then ``FastLanguageModel.get_peft_model``: LoRA r=16, alpha 32,
  dropout 0, bias none, on q/k/v/o/gate/up/down (every linear layer but lm_head), no checkpointing;
- the data: ``bench_sft.make_data(640, vocab, 64, 768)`` (bench_sft's random rows, loss on every
  token), cut by ``phases.sft_fast_trainer.TokenBudgetBatchSampler`` like the ``sft`` step's fast
  trainer: at most 16 rows (2 x 8, the method's examples per optimizer step) and at most
  ``--max-tokens`` padded tokens (rows x longest; default 16,384 = ``FAST_MAX_TOKENS_DEFAULT``) a
  step, right padding (pad label -100) and no attention mask, as ``phases.sft_fast`` collates;
- the step: Unsloth's own patched forward with ``labels`` (its fused, chunked linear + cross-entropy
  loss), under bf16 autocast as its Trainer runs it, backward, grad clipping 1.0, fused AdamW lr 2e-5;
  3 warm-up steps, then the rest of the plan (or ``--steps``) timed between CUDA synchronisations;
  inside ``phases.models.attention.variable_shape_attention`` (cuDNN's attention out of SDPA's
  picks, as the pipeline trains; recorded as ``attention``). ``--warm-pass``: a whole pass first,
  timed after its first 3 steps (``first_pass_tokens_per_s``: every batch shape new, what the
  step's first epoch sees), then the timed window over the same batches again (steady state).
  A step that runs out of memory halves the token budget and starts again (as bench_sft does).
Reported like bench_sft's rows (``bench: sft``): real tokens/s, 6N-MFU against the bf16 matmul
peak measured in this process by ``common.ceilings`` (or ``--peak-tflops``, e.g. run_all's), peak
GiB, padding fraction, first/last loss, plus the unsloth / unsloth_zoo versions and the median and
longest step (a long one is a torch.compile stall). ``x_trl`` is left None: divide by the ``trl``
row of bench_sft.py from the same machine and session.

Offline: the GPU machine has no network, so the hub, telemetry and Unsloth's statistics download
are switched off before the import (``OFFLINE_ENV``); Unsloth's compiled cache goes to a temp dir.
If unsloth does not import, one line says why on stderr, ``unsloth.json`` gets an error row per
size, and the exit status is 2. A failing size writes its traceback to ``unsloth_errors.log``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: environment set before unsloth is imported: no hub traffic, no telemetry, no Unsloth statistics
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1", "UNSLOTH_DISABLE_STATISTICS": "1", "DO_NOT_TRACK": "1"}
KNOWN_SIZES = ("tiny", "0.5B", "1.5B", "7B", "32B")  # benchmarks.common.SIZES (a test keeps them equal)
MAX_ROWS = 16      # per_device_batch_size 2 x grad_accum 8: the sft step's examples per optimizer step
MAX_TOKENS = 16384  # phases.sft_fast_trainer.FAST_MAX_TOKENS_DEFAULT (a test keeps them equal)
N_EXAMPLES, MIN_LEN, MAX_LEN = 640, 64, 768  # bench_sft's GPU data
WARM = 3
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
HEAVY = ("transformers", "peft", "trl")  # what unsloth must patch before anyone imports it


class UnslothUnavailable(RuntimeError):
    """unsloth did not import (its message is one line)."""


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1.5B,7B", help=f"comma list of {KNOWN_SIZES}")
    ap.add_argument("--out", default="/tmp/bench-unsloth", help="folder for unsloth.json")
    ap.add_argument("--max-tokens", type=int, default=MAX_TOKENS, help="padded tokens per step at most")
    ap.add_argument("--max-rows", type=int, default=MAX_ROWS, help="rows per step at most")
    ap.add_argument("--steps", type=int, default=0, help="timed steps (0: the rest of the plan after warm-up)")
    ap.add_argument("--warm-pass", action="store_true",
                    help="warm up on one whole pass over the plan (every sequence length compiled once), then time "
                         "a second pass (or its first --steps): Unsloth's steady state. The warm-up pass is timed "
                         "too after its first steps (first_pass_tokens_per_s: every shape new, a first epoch)")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="bf16 matmul peak for MFU (0: measure here)")
    ap.add_argument("--plan", action="store_true", help="print the batch plan and exit (no unsloth, no GPU)")
    a = ap.parse_args(argv)
    a.sizes = [s for s in a.sizes.split(",") if s]
    bad = [s for s in a.sizes if s not in KNOWN_SIZES]
    if not a.sizes or bad:
        ap.error(f"--sizes: unknown {bad or a.sizes}; choose from {KNOWN_SIZES}")
    if a.max_tokens < 1 or a.max_rows < 1 or a.steps < 0:
        ap.error(f"--max-tokens {a.max_tokens} and --max-rows {a.max_rows} must be >= 1, --steps {a.steps} >= 0")
    return a


def plan(size: str, max_tokens: int = MAX_TOKENS, max_rows: int = MAX_ROWS, *, n: int = N_EXAMPLES,
         lo: int = MIN_LEN, hi: int = MAX_LEN, seed: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    """(bench_sft's random rows for ``size``, the fast trainer's batches of them for epoch 0)."""
    from benchmarks import common
    from benchmarks.bench_sft import make_data
    from phases.sft_fast_trainer import TokenBudgetBatchSampler

    data = make_data(n, common.SIZES[size]["vocab_size"], lo, hi, seed=seed)
    batches = TokenBudgetBatchSampler([len(x) for x in data], max_tokens, max_rows, seed).order(0)
    return data, batches


def plan_summary(data: list[list[int]], batches: list[list[int]], warm: int = WARM) -> dict:
    padded = [len(b) * max(len(data[i]) for i in b) for b in batches]
    return {"examples": len(data), "steps": len(batches), "timed_steps": max(0, len(batches) - warm),
            "most_rows": max(len(b) for b in batches), "most_padded_tokens": max(padded),
            "real_tokens": sum(len(x) for x in data),
            "padding_frac": round(1 - sum(len(x) for x in data) / sum(padded), 3)}


def import_unsloth() -> tuple[object, dict]:
    """(``unsloth.FastLanguageModel``, versions) with the offline environment set first.

    Raises ``UnslothUnavailable`` (one line) when unsloth does not import or when transformers,
    PEFT or TRL were imported before it (its patches would then miss them).
    """
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    os.environ.setdefault("UNSLOTH_COMPILE_LOCATION", str(Path(tempfile.gettempdir()) / "unsloth_compiled_cache"))
    early = [m for m in HEAVY if m in sys.modules]
    if early:
        raise UnslothUnavailable(f"{early} imported before unsloth; unsloth must be imported first")
    try:
        import unsloth  # noqa: F401
        from unsloth import FastLanguageModel
    except (Exception, SystemExit) as e:
        msg = " ".join(str(e).split())[:300]
        raise UnslothUnavailable(f"{type(e).__name__}: {msg}") from None
    from importlib.metadata import PackageNotFoundError, version

    vers = {}
    for pkg in ("unsloth", "unsloth_zoo", "torch", "transformers", "peft", "trl", "triton", "bitsandbytes", "xformers"):
        try:
            vers[pkg] = version(pkg)
        except PackageNotFoundError:
            vers[pkg] = None
    return FastLanguageModel, vers


def _step_loop(model, opt, params, data, batches, warm: int, steps: int, dev: str = "cuda",
               warm_pass: bool = False) -> dict:
    """Train on ``batches`` (warm-up, then timed steps); the timing and token counts of the row.

    ``warm_pass``: the warm-up is the whole plan once, the timed steps a second pass over it (its
    first ``steps`` when given), so no shape is new inside the window (Unsloth's torch.compile
    recompiles once per new sequence length).

    ``model(input_ids, labels)`` must return ``.loss`` (Unsloth's patched forward computes its fused
    CE there). ``dev`` ``cpu`` exists for the tests (a plain model, no autocast).
    """
    import torch

    from phases.sft_fast import collate_right_padded

    cuda = dev.startswith("cuda")
    first_warm = warm  # with warm_pass: the first pass is timed too, after its own first ``warm`` steps
    if warm_pass:
        warm, todo = len(batches), batches + (batches[:steps] if steps else batches)
    else:
        todo = batches[: warm + steps] if steps else batches
    if len(todo) <= warm or (warm_pass and len(batches) <= first_warm):
        raise ValueError(f"plan has {len(batches)} steps; need more than the "
                         f"{first_warm if warm_pass else warm} warm-up steps")

    def mark():  # a point in time: a CUDA event (no host sync per step) or the host clock
        if not cuda:
            return time.perf_counter()
        e = torch.cuda.Event(enable_timing=True)
        e.record()
        return e

    losses, tokens, marks, first_tokens = [], 0, [], 0
    for k, b in enumerate(todo):
        if warm_pass and k == first_warm:
            if cuda:
                torch.cuda.synchronize()
            t_first = time.perf_counter()
        if k == warm:
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            if warm_pass:
                first_s = t0 - t_first
        batch = collate_right_padded([data[i] for i in b], 0)
        ids = batch["input_ids"].to(dev, non_blocking=True)
        labels = batch["labels"].to(dev, non_blocking=True)
        start = mark() if k >= warm else None
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            loss = model(input_ids=ids, labels=labels, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        if k >= warm:
            marks.append((start, mark()))
            tokens += batch["n_tokens"]
        elif warm_pass and k >= first_warm:
            first_tokens += batch["n_tokens"]
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter() - t0
    step_s = sorted((a.elapsed_time(b) / 1e3) if cuda else (b - a) for a, b in marks)
    sel = todo[warm:]
    real = sum(len(data[i]) for b in sel for i in b)
    padded = sum(len(b) * max(len(data[i]) for i in b) for b in sel)
    res = {"seconds": round(t, 3), "tokens": tokens, "tokens_per_s": tokens / t, "steps": len(sel), "warmup_steps": warm,
           "padding_frac": round(1 - real / padded, 3), "loss_first": float(losses[0]), "loss_last": float(losses[-1]),
           "step_s_median": round(step_s[len(step_s) // 2], 4), "step_s_max": round(step_s[-1], 4)}
    if warm_pass:  # the warm-up pass after its first steps: every shape new, as in a first epoch
        res.update(first_pass_seconds=round(first_s, 3), first_pass_tokens=first_tokens,
                   first_pass_steps=len(batches) - first_warm,
                   first_pass_tokens_per_s=round(first_tokens / first_s, 1) if first_s > 0 else None)
    return res


def run_size(size: str, FastLanguageModel, tmp: str, *, max_tokens: int, max_rows: int, steps: int,
             warm_pass: bool = False) -> dict:
    import torch

    from benchmarks import common
    from benchmarks.bench_sft import save_random_model
    from phases.models.attention import variable_shape_attention

    folder = Path(tmp) / f"model-{size}"  # main() deletes it after the size (15 GB at 7B)
    if not folder.is_dir():
        save_random_model(size, "cuda", folder)
    budget = max_tokens
    while True:
        data, batches = plan(size, budget, max_rows)
        model, _tok = FastLanguageModel.from_pretrained(str(folder), dtype=torch.bfloat16, load_in_4bit=False,
                                                        max_seq_length=1024, use_gradient_checkpointing=False)
        model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=32, lora_dropout=0.0, bias="none",
                                                 target_modules=LORA_TARGETS, use_gradient_checkpointing=False,
                                                 random_state=0)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=2e-5, fused=True)
        torch.cuda.reset_peak_memory_stats()
        try:
            # the SDPA kernels the pipeline trains with (cuDNN's attention out: phases/models/attention.py)
            with variable_shape_attention("cuda") as attention:
                res = _step_loop(model, opt, params, data, batches, WARM, steps, warm_pass=warm_pass)
            break
        except torch.OutOfMemoryError:
            if budget <= 1024:
                raise
        # outside the except block: the exception's frames hold the step's activations until here
        del model, opt, params
        common.free("cuda")
        budget //= 2
        print(f"unsloth {size}: out of memory, token budget -> {budget}", flush=True)
    res["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    res["trainable_params"] = sum(p.numel() for p in params)
    res["variant"] = (f"unsloth (token budget {budget}, <= {max_rows} rows, no ckpt, its fused CE"
                      + (", timed after a warm-up pass)" if warm_pass else ")"))
    res["batch"] = f"<= {max_rows} rows, <= {budget} tokens"
    res["gradient_checkpointing"] = False
    res["attention"] = attention
    del model, opt, params
    common.free("cuda")
    return res


def _write(out: Path, rows: list[dict]) -> None:
    from state.files import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "unsloth.json", json.dumps(rows, indent=1) + "\n")


def main(argv=None) -> int:
    a = parse_args(argv)
    out = Path(a.out)
    if a.plan:
        for s in a.sizes:
            print(json.dumps({"size": s, "max_tokens": a.max_tokens, "max_rows": a.max_rows,
                              **plan_summary(*plan(s, a.max_tokens, a.max_rows))}), flush=True)
        return 0
    try:
        FastLanguageModel, vers = import_unsloth()
    except UnslothUnavailable as e:
        msg = f"bench_unsloth: unsloth does not import here: {e}"
        _write(out, [{"bench": "sft", "size": s, "variant": "unsloth", "error": msg} for s in a.sizes])
        print(msg, file=sys.stderr, flush=True)
        return 2
    print("bench_unsloth: " + " ".join(f"{k} {v}" for k, v in vers.items()), flush=True)
    import torch

    from benchmarks import common

    if not torch.cuda.is_available():
        print("bench_unsloth: no CUDA device here; Unsloth trains on CUDA only (use --plan on CPU)", file=sys.stderr)
        return 2
    peak = a.peak_tflops or common.ceilings("cuda")["matmul_tflops"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for s in a.sizes:
            params = common.count_params(s)
            try:
                r = run_size(s, FastLanguageModel, tmp, max_tokens=a.max_tokens, max_rows=a.max_rows, steps=a.steps,
                             warm_pass=a.warm_pass)
                r["mfu_6N"] = round(6 * params * r["tokens_per_s"] / (peak * 1e12), 3)
                r["tokens_per_s"] = round(r["tokens_per_s"], 1)
            except Exception as e:
                out.mkdir(parents=True, exist_ok=True)
                with open(out / "unsloth_errors.log", "a") as f:
                    f.write(f"== {s}\n{traceback.format_exc()}\n")
                r = {"variant": "unsloth", "error": f"{type(e).__name__}: {' '.join(str(e).split())}"[:400]}
            # after the except block, whose traceback held the failed size's model and activations
            common.free("cuda")
            shutil.rmtree(Path(tmp) / f"model-{s}", ignore_errors=True)
            r.update(bench="sft", size=s, params=params, x_trl=None, peak_tflops=round(peak, 1),
                     unsloth=vers["unsloth"], unsloth_zoo=vers["unsloth_zoo"])
            rows.append(r)
            _write(out, rows)  # after every size: a later crash keeps the earlier rows
            print(f"unsloth {s:>5} {r['variant']:56} {r.get('tokens_per_s', r.get('error'))} tok/s  "
                  f"MFU(6N) {r.get('mfu_6N')}  peak {r.get('peak_mem_gib')} GiB", flush=True)
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
