"""Shared pieces of the performance benchmarks: machine facts, the two ceilings, timing, models.

Not runnable on its own; ``benchmarks/run_all.py`` drives it:
    python3 benchmarks/run_all.py --out $OUT          # GPU (bf16, 0.5B/1.5B/7B Qwen2 configs)
    .venv/bin/python benchmarks/run_all.py --cpu      # tiny CPU version (tests use it)

Conventions of every benchmark here:
- Models are randomly initialised Qwen2-architecture models at the real Qwen2.5 sizes (throughput
  does not depend on weight values); bf16 on CUDA, fp32 on CPU. Prompts are random token ids, fed
  through the real backend code with an id-string encoder (``"12 7 99"`` -> ``[12, 7, 99]``),
  so the measured path is the production one minus tokenization.
- Time: warm-up runs first, then ``repeats`` timed runs, each bracketed by device
  synchronisation (CUDA events when on CUDA); the median is reported.
- Ceilings (measured once per run): bf16 matmul peak = median TFLOP/s of an 8192^3 product on
  random data; copy bandwidth = (bytes read + bytes written) / time of a 2 GiB device-to-device
  copy.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable

import torch

# Qwen2.5 base configurations (hidden, intermediate, layers, heads, kv heads, tied embeddings).
SIZES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=1024, tie_word_embeddings=False),
    "0.5B": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "1.5B": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "7B": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
    "32B": dict(hidden_size=5120, intermediate_size=27648, num_hidden_layers=64, num_attention_heads=40, num_key_value_heads=8, vocab_size=152064, tie_word_embeddings=False),
}


def count_params(size: str) -> int:
    """Parameter count of a SIZES entry (analytic, no model built)."""
    c = SIZES[size]
    d, i, L, H, KV, V = (c[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size"))
    hd = d // H
    attn = d * d + 2 * d * KV * hd + d * d + d + 2 * KV * hd  # q, k, v, o weights + q/k/v biases
    per_layer = attn + 3 * d * i + 2 * d
    emb = V * d * (1 if c["tie_word_embeddings"] else 2)
    return L * per_layer + emb + d


def sync(dev: str) -> None:
    if dev.startswith("cuda"):
        torch.cuda.synchronize()


def timeit(fn: Callable[[], object], dev: str, *, warmup: int = 1, repeats: int = 3) -> tuple[float, list[float]]:
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs, and all times."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if dev.startswith("cuda"):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times), times


def machine(dev: str) -> dict:
    import transformers

    info = {
        "device": dev,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "host_cpus": os.cpu_count(),
    }
    for mod in ("peft", "trl", "accelerate"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception as e:  # not installed here
            info[mod] = f"unavailable ({type(e).__name__})"
    if dev.startswith("cuda"):
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_mem_gib=round(p.total_memory / 2**30, 1), sms=p.multi_processor_count)
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,power.limit", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=20)
            info["nvidia_smi"] = q.stdout.strip()
        except (OSError, subprocess.SubprocessError) as e:
            info["nvidia_smi"] = f"unavailable ({e})"
    else:
        info["cpu"] = platform.processor() or platform.machine()
    return info


def ceilings(dev: str, quick: bool = False) -> dict:
    """Measured bf16 (fp32 on CPU) matmul peak in TFLOP/s and copy bandwidth in GB/s."""
    if dev.startswith("cuda"):
        n, dtype, reps = 8192, torch.bfloat16, 10
    else:
        n, dtype, reps = (512 if quick else 1024), torch.float32, 3
    gen = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(n, n, device=dev, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=dev, dtype=dtype, generator=gen)
    t, _ = timeit(lambda: a @ b, dev, warmup=3, repeats=reps)
    peak = 2 * n**3 / t / 1e12
    nbytes = (2 << 30) if dev.startswith("cuda") else (64 << 20)
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=dev).normal_(generator=gen)
    dst = torch.empty_like(src)
    t, _ = timeit(lambda: dst.copy_(src), dev, warmup=3, repeats=reps)
    bw = 2 * nbytes / t / 1e9
    del a, b, src, dst
    return {"matmul_tflops": round(peak, 3), "matmul_n": n, "copy_gbps": round(bw, 2), "copy_bytes": nbytes}


def build_model(size: str, dev: str):
    """A randomly initialised Qwen2ForCausalLM of ``size`` on ``dev`` (bf16 on CUDA, fp32 on CPU), eval mode."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    dtype = torch.bfloat16 if dev.startswith("cuda") else torch.float32
    cfg = Qwen2Config(**SIZES[size], max_position_embeddings=4096, rope_theta=1e6, rms_norm_eps=1e-6,
                      bos_token_id=0, eos_token_id=0, pad_token_id=0)
    cfg._attn_implementation = "sdpa"
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(0)
        with torch.device(dev):
            model = Qwen2ForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    return model.eval()


def id_backend(model, batch_size: int):
    """The production ``HFBackend`` over ``model`` with an id-string encoder (no tokenizer needed)."""
    from phases.models.backends.hf import HFBackend

    def encode(text: str) -> list[int]:
        return [int(x) for x in text.split()]

    def decode(ids) -> str:
        return " ".join(str(int(i)) for i in ids)

    # No stop tokens: every generation runs to max_new_tokens (fixed output lengths).
    be = HFBackend(model, encode, decode, model.config.max_position_embeddings, pad_id=0, stop_token_ids=(), batch_size=batch_size)
    be.fast_paths = False  # "ours plain batched" rows measure the plain path; fast rows call it directly
    return be


def rand_ids(gen: torch.Generator, n: int, vocab: int, lo: int = 16) -> list[int]:
    return torch.randint(lo, vocab, (n,), generator=gen).tolist()


def free(dev: str) -> None:
    import gc

    gc.collect()
    if dev.startswith("cuda"):
        torch.cuda.empty_cache()
