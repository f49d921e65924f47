"""GPU check of the model layer: loader (guard), generate, next_token_logprobs, critic, nf4 on CUDA.

Purpose: prove on a real CUDA machine that the canonical loader, the transformers backend and the
A/B critic work in bf16, and that 4-bit nf4 loading works when bitsandbytes is present. It builds
a random Qwen2-architecture model offline (hidden 512, 4 layers, the tiny trained tokenizer; the
real Qwen vocabulary is not needed), so nothing is downloaded. Outputs of a random model mean
nothing; what is checked is plumbing, equality and determinism.

Run (on a CUDA machine, from the repo root):
    python3 benchmarks/gpu_check_models.py --out docs/gpu/models-check.json

Prints a table and writes JSON (the path given by --out). Exit status 0 unless a hard check fails
(guard, determinism, batched-vs-single log-prob agreement within 5e-2 in bf16/nf4 and 1e-4 in
fp32). Runs: bf16 (the CUDA default), fp32 on CUDA, and nf4 if bitsandbytes imports.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def run_checks(model_dir: Path, quantization: str | None, device: str = "cuda", dtype: str | None = None) -> dict:
    import torch

    from phases.critic import judge
    from phases.models.backends.base import GenerationParams
    from phases.models.guard import ContaminationError
    from phases.models.loader import load_model

    res: dict = {"quantization": quantization, "dtype_requested": dtype}
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m, t = _timed(lambda: load_model(model_dir, device=device, dtype=dtype, backend="hf", quantization=quantization))
    res["load_s"] = round(t, 2)
    prov = m.provenance
    res["provenance"] = {k: prov[k] for k in ("dtype", "device", "backend", "quantization", "template_disabled", "add_special_tokens", "loader_version")}
    res["sentinels_recorded"] = [r["name"] for r in prov["sentinels"]["results"]]
    try:
        m.encode("<|im_start|>user\nhi<|im_end|>")
        res["guard_caught_template"] = False
    except ContaminationError:
        res["guard_caught_template"] = True
    prompts = [
        "Water freezes at",
        "Instruction: write a short poem about the sea.\nResponse:",
        "List three prime numbers:",
        "The quick brown fox jumps over the lazy dog. " * 6,
    ]
    greedy = GenerationParams.greedy(16)
    batched, t = _timed(lambda: m.generate(prompts, greedy))
    res["generate_batched_s"] = round(t, 3)
    single = [m.generate([p], greedy)[0] for p in prompts]
    res["greedy_batched_eq_single"] = [a.token_ids == b.token_ids for a, b in zip(batched, single)]
    cands = ["A", " A", "B", " B"]
    lb, t = _timed(lambda: m.next_token_logprobs(prompts, cands))
    res["logprobs_batched_s"] = round(t, 3)
    ls = [m.next_token_logprobs([p], cands)[0] for p in prompts]
    res["logprob_max_abs_diff_batched_vs_single"] = max(abs(a[k] - b[k]) for a, b in zip(lb, ls) for k in a)
    samp = GenerationParams(max_new_tokens=16, temperature=0.8)
    s1 = m.generate(prompts, samp, seeds=[11, 12, 13, 14])
    s2 = m.generate(prompts, samp, seeds=[11, 12, 13, 14])
    s3 = m.generate(prompts[::-1], samp, seeds=[14, 13, 12, 11])[::-1]
    res["sampling_deterministic"] = [a.token_ids == b.token_ids for a, b in zip(s1, s2)]
    res["sampling_independent_of_batch_order"] = [a.token_ids == b.token_ids for a, b in zip(s1, s3)]
    verdicts, t = _timed(lambda: judge(m, "instruction", ["Write a haiku about rain.", "Do the thing with the stuff."]))
    res["critic_s"] = round(t, 3)
    res["critic"] = [
        {"label": v.label, "margin": round(v.margin, 4), "confident": v.confident, "ab": v.ab.label, "ba": v.ba.label}
        for v in verdicts
    ]
    many = [f"Instruction: item number {i}.\nResponse:" for i in range(64)]
    gens, t = _timed(lambda: m.generate(many, GenerationParams(max_new_tokens=64, temperature=0.7)))
    ntok = sum(g.n_tokens for g in gens)
    res["throughput_64x64"] = {"seconds": round(t, 2), "tokens": ntok, "tokens_per_s": round(ntok / t, 1)}
    if device == "cuda":
        res["peak_mem_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        del m
        torch.cuda.empty_cache()
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="docs/gpu/models-check.json")
    ap.add_argument("--cpu-smoke", action="store_true", help="run the same checks on CPU (fp32) to test this script")
    args = ap.parse_args(argv)
    import torch
    import transformers

    from phases.models.tiny import build_tiny_model

    device = "cpu" if args.cpu_smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: this check needs a GPU", file=sys.stderr)
        return 2
    report: dict = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
    try:
        import bitsandbytes

        report["bitsandbytes"] = bitsandbytes.__version__
    except Exception as e:  # ImportError or a broken native library
        report["bitsandbytes"] = f"unavailable: {type(e).__name__}: {e}"[:200]
    with tempfile.TemporaryDirectory() as td:
        model_dir = build_tiny_model(Path(td) / "qwen2-random-512x4", seed=0, hidden_size=512, num_layers=4, max_position_embeddings=2048)
        report["model"] = {"arch": "Qwen2ForCausalLM (random)", "hidden": 512, "layers": 4, "vocab": 400}
        report["runs"] = [run_checks(model_dir, None, device)]
        if device == "cuda":  # fp32 on CUDA: does batched == single hold exactly there too?
            report["runs"].append(run_checks(model_dir, None, device, "float32"))
        if device == "cuda" and not str(report["bitsandbytes"]).startswith("unavailable"):
            try:
                report["runs"].append(run_checks(model_dir, "nf4"))
            except Exception as e:
                report["runs"].append({"quantization": "nf4", "error": f"{type(e).__name__}: {e}"[:500]})
    failures = []
    for r in report["runs"]:
        if "error" in r:
            failures.append(f"{r['quantization']}: {r['error']}")
            continue
        if not r["guard_caught_template"]:
            failures.append(f"{r['quantization']}: guard missed a template")
        if not all(r["sampling_deterministic"]):
            failures.append(f"{r['quantization']}: sampling not deterministic")
        tol = 1e-4 if r.get("provenance", {}).get("dtype") == "float32" else 5e-2
        if r["logprob_max_abs_diff_batched_vs_single"] > tol:
            failures.append(f"{r['quantization']}: batched vs single log-probs differ by {r['logprob_max_abs_diff_batched_vs_single']}")
    report["failures"] = failures
    print(f"device {report['device']}  torch {report['torch']}  transformers {report['transformers']}  bitsandbytes {report['bitsandbytes']}")
    keys = [
        "load_s", "guard_caught_template", "greedy_batched_eq_single", "logprob_max_abs_diff_batched_vs_single",
        "sampling_deterministic", "sampling_independent_of_batch_order", "critic", "throughput_64x64", "peak_mem_mib",
    ]
    for r in report["runs"]:
        print(f"--- quantization={r['quantization']} dtype={r.get('provenance', {}).get('dtype')}")
        for k in keys if "error" not in r else ["error"]:
            print(f"  {k:<42} {r.get(k)}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, sort_keys=True, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {out}; failures: {failures or 'none'}")
    return 1 if failures else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
