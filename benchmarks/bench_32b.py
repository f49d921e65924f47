"""Qwen2.5-32B (random weights) on one GPU through the pipeline's own paths: decode, critic, nf4 SFT.

Run (GPU, H200 141 GB; trl/datasets/bitsandbytes wheels as in docs/performance.md "Reproduce"):
    python3 benchmarks/bench_32b.py --out $OUT            # ~4 min: build, decode, critic, nf4 SFT
    python3 benchmarks/bench_32b.py --out $OUT --quick    # fewer items and steps (~2.5 min)
CPU smoke (tiny config, no nf4: bitsandbytes 4-bit is GPU-only; tests/integration/test_benchmarks_cpu.py):
    .venv/bin/python benchmarks/bench_32b.py --cpu --out /tmp/b32

Nothing is written to disk but the results. What it measures, each row naming its path:
- decode: ``HFBackend.generate`` with ``fast_paths="auto"`` (the route ``fast_rules`` picks; the
  static-KV graph path), greedy, 64-token prompts, 64 new tokens, at batch 64 and 256, bf16:
  generated tokens/s and the fraction of the decode bandwidth bound (weights read per step /
  measured copy bandwidth).
- critic: ``HFBackend.next_token_logprobs`` (auto route) on the pair256 and instr80 shapes of
  bench_critic.py, 256 scorings per call: scorings/s, and the route taken.
- SFT: the bf16 model is quantized to nf4 in place, layer by layer (each ``nn.Linear`` of the
  decoder becomes a bitsandbytes ``Linear4bit``; lm_head and embeddings stay bf16, as the
  loader's nf4 path does), then ``phases.sft.make_trainer`` with the step's params (trainer
  ``fast``: LoRA r=16 on all linear layers, ``prepare_model_for_kbit_training``, <= 16 examples
  and ``fast_max_tokens`` padded tokens a step, checkpointing as ``auto`` decides: on above 10 B)
  trains random examples of 64-768 tokens: real tokens/s between step callbacks after warm-up,
  peak GPU memory. Only the canonical loader is skipped (it would need the 65 GB on disk).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks import common  # noqa: E402


def quantize_nf4_inplace(model) -> None:
    """Replace every decoder ``nn.Linear`` by an nf4 ``bnb.nn.Linear4bit`` holding its weights."""
    import bitsandbytes as bnb

    for layer in model.model.layers:
        for name, mod in list(layer.named_modules()):
            if not isinstance(mod, torch.nn.Linear):
                continue
            parent = layer.get_submodule(name.rsplit(".", 1)[0]) if "." in name else layer
            q = bnb.nn.Linear4bit(mod.in_features, mod.out_features, bias=mod.bias is not None,
                                  compute_dtype=torch.bfloat16, quant_type="nf4", device="meta")
            # Params4bit quantizes when moved to a device; from a CUDA tensor that stays on the GPU
            q.weight = bnb.nn.Params4bit(mod.weight.data, requires_grad=False, quant_type="nf4").to(mod.weight.device)
            if mod.bias is not None:
                q.bias = torch.nn.Parameter(mod.bias.data, requires_grad=False)
            setattr(parent, name.rsplit(".", 1)[-1], q)
            del mod
        torch.cuda.empty_cache()
    model.is_loaded_in_4bit = True
    model.config.quantization_config = None


def decode_rows(model, dev: str, batches: tuple[int, ...], new: int, copy_gbps: float) -> list[dict]:
    from phases.models.backends.base import GenerationParams

    be = common.id_backend(model, max(batches))
    be.fast_paths = "auto"
    params = sum(p.numel() for p in model.parameters())
    read = params - model.get_input_embeddings().weight.numel()
    bound = read * next(model.parameters()).element_size() / (copy_gbps * 1e9)
    g = torch.Generator().manual_seed(1)
    rows = []
    for bs in batches:
        prompts = [" ".join(map(str, common.rand_ids(g, 64, model.config.vocab_size))) for _ in range(bs)]
        t, _ = common.timeit(lambda: be.generate(prompts, GenerationParams.greedy(new)), dev, warmup=1, repeats=2)
        rows.append({"bench": "32b", "part": f"decode bf16 bs{bs}", "path": "HFBackend auto (fastgen)" if dev != "cpu" else "plain (CPU)",
                     "value": round(bs * new / t, 1), "unit": "tokens/s", "frac_bandwidth_bound": round(bound / (t / new), 3)})
    return rows


def critic_rows(model, dev: str, n_items: int) -> list[dict]:
    from benchmarks.bench_critic import CANDS, make_prompts

    be = common.id_backend(model, 64)
    be.fast_paths = "auto"
    rows = []
    for shape in ("pair256", "instr80"):
        prompts = make_prompts(shape, n_items, model.config.vocab_size)
        t, _ = common.timeit(lambda: be.next_token_logprobs(prompts, CANDS), dev, warmup=1, repeats=2)
        route = be.critic_route(be.encode_rows(prompts, 0, "error")) if be._use_fast() else "plain (CPU)"
        rows.append({"bench": "32b", "part": f"critic {shape}", "path": f"HFBackend auto ({route})",
                     "value": round(len(prompts) / t, 1), "unit": "scorings/s"})
    return rows


def sft_row(model, dev: str, warm: int, steps: int, tmp: str) -> dict:
    from phases import sft
    from phases.sft_speed import apply_liger, resolve_kernels

    p = {**sft.SFT_DEFAULTS, "trainer": "fast", "max_steps": warm + steps, "save_steps": 10**6, "dev_fraction": 0.0,
         "logging_steps": 1, "lora_dropout": 0.0}
    grad_ckpt = sft.needs_checkpointing(model)  # the fast trainer's auto rule (on above 10 B parameters)
    # the step's kernels rule (params.sft.kernels auto): Liger's RoPE/RMSNorm/SwiGLU on CUDA when importable,
    # patched before quantization and PEFT as load_for_training does; undone when the row ends
    kernels = resolve_kernels("auto", dev, model.config.model_type)
    patch = apply_liger(model, model.config.model_type) if kernels.applied else None
    try:
        return _train_row(model, dev, warm, steps, tmp, p, grad_ckpt, kernels)
    finally:
        if patch is not None:
            patch.restore()


def _train_row(model, dev, warm, steps, tmp, p, grad_ckpt, kernels) -> dict:
    """``sft_row``'s training, with ``kernels`` already patched in (the caller undoes them)."""
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoTokenizer, TrainerCallback

    from phases import sft
    from phases.models.tiny import build_tiny_model

    cuda = dev.startswith("cuda")
    if cuda:
        quantize_nf4_inplace(model)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=grad_ckpt)
    elif grad_ckpt:
        model.enable_input_require_grads()
    model = get_peft_model(model, sft._lora_config(p))
    model.train()
    g = torch.Generator().manual_seed(0)
    lo, hi = (64, 768) if cuda else (16, 48)
    ex = []
    for _ in range(16 * (warm + steps)):
        L = int(torch.randint(lo, hi + 1, (1,), generator=g))
        ids = common.rand_ids(g, L, model.config.vocab_size)
        k = L // 4
        ex.append({"input_ids": ids, "labels": [-100] * k + ids[k:]})
    tok = AutoTokenizer.from_pretrained(build_tiny_model(Path(tmp) / "tok", hidden_size=16, num_layers=1))
    loaded = SimpleNamespace(eos_token_id=0, tokenizer=tok)
    box: dict = {}

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == warm:
                common.sync(dev)
                box["t0"], box["tok0"] = time.perf_counter(), state.num_input_tokens_seen

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == warm + steps:
                common.sync(dev)
                box["t1"], box["tok1"] = time.perf_counter(), state.num_input_tokens_seen

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    tr = sft.make_trainer(loaded, model, ex, [], p, Path(tmp) / "trainer", 0, dev, grad_ckpt, use_trl=False, fast=True)
    tr.add_callback(Timer())
    tr.train()
    t, tokens = box["t1"] - box["t0"], box["tok1"] - box["tok0"]
    row = {"bench": "32b", "part": "SFT " + ("nf4 QLoRA" if cuda else "fp32 LoRA (CPU)"), "value": round(tokens / t, 1),
           "unit": "tokens/s", "path": f"phases.sft.make_trainer fast (grad ckpt {grad_ckpt}, kernels {kernels.label})",
           "kernels": kernels.record(), "steps": steps}
    if cuda:
        row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    del tr
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu", action="store_true", help="tiny config on the CPU (smoke run)")
    ap.add_argument("--quick", action="store_true", help="fewer items and steps")
    ap.add_argument("--out", default="/tmp/bench-32b")
    a = ap.parse_args(argv)
    dev = "cpu" if a.cpu else "cuda"
    size = "tiny" if a.cpu else "32B"
    t0 = time.time()
    ceil = common.ceilings(dev, quick=a.cpu)
    rows: list[dict] = []
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    def save():
        from state.files import atomic_write_text

        atomic_write_text(out / "results_32b.json", json.dumps({"machine": common.machine(dev), "ceilings": ceil,
                                                                "rows": rows, "seconds": round(time.time() - t0, 1)},
                                                               indent=1, sort_keys=True) + "\n")

    model = common.build_model(size, dev)
    print(f"built {size} in {time.time() - t0:.0f} s", flush=True)
    parts = [("decode", lambda: decode_rows(model, dev, (4, 8) if a.cpu else (64, 256), 8 if a.cpu else (32 if a.quick else 64),
                                             ceil["copy_gbps"])),
             ("critic", lambda: critic_rows(model, dev, 4 if a.cpu else (64 if a.quick else 128)))]
    for name, fn in parts:
        try:
            rows.extend(fn())
        except Exception as e:  # keep the other parts' numbers
            traceback.print_exc()
            rows.append({"bench": "32b", "part": name, "error": f"{type(e).__name__}: {e}"[:400]})
        save()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            rows.append(sft_row(model, dev, 1 if a.cpu else 2, 2 if a.cpu else (3 if a.quick else 6), tmp))
        except Exception as e:
            traceback.print_exc()
            rows.append({"bench": "32b", "part": "SFT", "error": f"{type(e).__name__}: {e}"[:400]})
    save()
    for r in rows:
        print(json.dumps(r), flush=True)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
