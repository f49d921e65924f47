"""vLLM beside the project's own generation path on one CUDA GPU: correctness and throughput (issue 15).

Measures, in one run (one machine, one command), per model size (random-weight Qwen2.5 configs):
- **throughput**: greedy decoding of 64-token random prompts, exactly 64 new tokens each (EOS
  ignored), at batch 64 and 256: the project's fast path (`fastgen`, static KV cache + CUDA graph,
  as `HFBackend` routes it on CUDA; with and without `torch.compile` of the decode step) and vLLM
  (`LLM.generate` on token-id prompts, CUDA graphs + torch.compile, its defaults). Tokens/s and the
  fraction of the decode bandwidth bound, computed exactly as `bench_generation.py` does (time per
  new token, prefill included); beside it the **decode-only** step, the same call with one new
  token timed too: ``(t(64 new) - t(1 new)) / 63``, the prefill and per-call overhead taken out,
  which is what the bandwidth bound (weights read once per decode step) describes.
- **correctness** (0.5B config): the same saved random weights loaded by HF and by vLLM, in fp32
  and in bf16: share of rows whose 16 greedy tokens are identical, and the critic's quantity — the
  log-probability of a candidate next token — via vLLM `prompt_logprobs` against the HF model's
  log-softmax (max abs difference).
- **the project's `VLLMBackend`** (phases/models/backends/vllm.py) through the canonical loader
  (`load_model(..., backend="vllm")`) against `backend="hf"` on a small random model with its own
  tokenizer, fp32: greedy texts and A/B log-probs.

Each part runs in its own child process (vLLM keeps GPU memory until its process ends).

Run (CUDA machine with vllm installed; nothing is downloaded):
    python3 benchmarks/bench_vllm.py --sizes 0.5B,7B --out $OUT/vllm
Writes ``vllm.json`` (rows) and ``vllm_table.md`` under ``--out``; prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NEW, PLEN, BATCHES = 64, 64, (64, 256)


def _vllm(model_dir: str, dtype: str, **kw):
    from phases.models.backends.vllm import vllm_environment

    vllm_environment()
    from vllm import LLM

    args = dict(model=model_dir, dtype=dtype, skip_tokenizer_init=True, seed=0, max_model_len=512, max_num_seqs=256,
                gpu_memory_utilization=0.5)
    args.update(kw)
    return LLM(**args)


def _vgen(llm, prompts: list[list[int]], new: int) -> list[list[int]]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    sp = SamplingParams(max_tokens=new, min_tokens=new, ignore_eos=True, temperature=0.0, detokenize=False)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], sp, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def _timed(fn, repeats: int = 3) -> tuple[float, float]:
    """(median seconds of ``repeats`` timed calls, first call seconds); device-synchronised.

    Wall-clock on purpose, not ``common.timeit``'s CUDA events: vLLM's engine runs in another
    process, so events recorded on this process's stream around ``llm.generate`` would time an
    idle stream. The fastgen rows use the same clock so the two paths are timed alike."""
    import torch

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2], first


def child_throughput(size: str, copy_gbps: float) -> list[dict]:
    import torch

    from benchmarks import common
    from phases.models.backends import fastgen
    from phases.models.backends.base import GenerationParams

    model = common.build_model(size, "cuda")
    params = sum(p.numel() for p in model.parameters())
    read = params - (0 if model.config.tie_word_embeddings else model.get_input_embeddings().weight.numel())
    bound = read * 2 / (copy_gbps * 1e9)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(1)
    ids = [common.rand_ids(g, PLEN, vocab) for _ in range(max(BATCHES))]
    texts = [" ".join(map(str, r)) for r in ids]
    greedy = GenerationParams.greedy(NEW)
    be = common.id_backend(model, max(BATCHES))
    rows = []

    def row(variant, bs, t, first, t_one):
        step, decode = t / NEW, (t - t_one) / (NEW - 1)
        r = {"bench": "vllm-throughput", "size": size, "variant": variant, "batch": bs, "prompt_tokens": PLEN,
             "new_tokens": NEW, "seconds": round(t, 4), "first_call_s": round(first, 2),
             "tokens_per_s": round(bs * NEW / t, 1), "ms_per_step": round(step * 1e3, 3),
             "bound_ms_per_step": round(bound * 1e3, 3), "frac_bandwidth_bound": round(bound / step, 3),
             "seconds_one_token": round(t_one, 4), "decode_ms_per_step": round(decode * 1e3, 3),
             "frac_bound_decode": round(bound / decode, 3), "params": params}
        print(f"vllm-bench {size:>5} {variant:40} bs{bs:<4} {r['tokens_per_s']:10.1f} tok/s  "
              f"{r['ms_per_step']:7.2f} ms/step  bound {r['frac_bandwidth_bound']:6.1%}  "
              f"decode only {r['decode_ms_per_step']:7.2f} ms/step  {r['frac_bound_decode']:6.1%}", flush=True)
        rows.append(r)

    one = GenerationParams.greedy(1)
    for bs in BATCHES:
        for variant, comp in (("fastgen (pipeline default, no compile)", False), ("fastgen + torch.compile", True)):
            t, f = _timed(lambda: fastgen.generate(be, texts[:bs], greedy, batch_size=bs, compile_step=comp))
            t1, _ = _timed(lambda: fastgen.generate(be, texts[:bs], one, batch_size=bs, compile_step=comp))
            row(variant, bs, t, f, t1)
    cfg = model.config
    del be, model
    common.free("cuda")
    with tempfile.TemporaryDirectory(prefix="vllm-dummy-") as d:
        cfg.save_pretrained(d)  # config only: vLLM initialises random ("dummy") weights itself
        t0 = time.perf_counter()
        llm = _vllm(d, "bfloat16", load_format="dummy", gpu_memory_utilization=0.85)
        start = time.perf_counter() - t0
        for bs in BATCHES:
            t, f = _timed(lambda: _vgen(llm, ids[:bs], NEW))
            t1, _ = _timed(lambda: _vgen(llm, ids[:bs], 1))
            row("vLLM (CUDA graphs + compile, defaults)", bs, t, f, t1)
    for r in rows:
        if r["variant"].startswith("vLLM"):
            r["engine_start_s"] = round(start, 1)
    return rows


def _hf_next_logprobs(model, prompts: list[list[int]]) -> list[list[float]]:
    """log-softmax over the vocabulary at each prompt's last position (plain HF forward, batch 1)."""
    import torch

    out = []
    with torch.no_grad():
        for p in prompts:
            logits = model(torch.tensor([p], device="cuda")).logits[0, -1].float()
            out.append(torch.log_softmax(logits, -1).tolist())
    return out


def child_correctness(dtype: str) -> list[dict]:
    import torch
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from benchmarks import common

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    g = torch.Generator().manual_seed(2)
    with tempfile.TemporaryDirectory(prefix="vllm-corr-") as d:
        model = common.build_model("0.5B", "cuda")  # bf16 random weights, seeded
        model.save_pretrained(d)
        model = model.to(torch_dtype)
        vocab = model.config.vocab_size
        prompts = [common.rand_ids(g, 48, vocab) for _ in range(32)]
        be = common.id_backend(model, 32)
        from phases.models.backends.base import GenerationParams

        hf = [list(x.token_ids) for x in be.generate([" ".join(map(str, p)) for p in prompts], GenerationParams.greedy(16))]
        cands = [common.rand_ids(g, 2, vocab) for _ in range(16)]
        hf_lp = _hf_next_logprobs(model, prompts[:16])
        del be, model
        common.free("cuda")
        llm = _vllm(d, dtype, enforce_eager=True, gpu_memory_utilization=0.4)
        vl = _vgen(llm, prompts, 16)
        reqs = [TokensPrompt(prompt_token_ids=p + [c]) for p, cs in zip(prompts[:16], cands) for c in cs]
        outs = llm.generate(reqs, SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0, detokenize=False),
                            use_tqdm=False)
    diffs, k = [], 0
    for lp, cs in zip(hf_lp, cands):
        for c in cs:
            diffs.append(abs(float(outs[k].prompt_logprobs[-1][c].logprob) - lp[c]))
            k += 1
    same = sum(a == b for a, b in zip(hf, vl)) / len(hf)
    first_tok = sum(a[:1] == b[:1] for a, b in zip(hf, vl)) / len(hf)
    r = {"bench": "vllm-correctness", "size": "0.5B", "dtype": dtype, "rows": len(hf), "new_tokens": 16,
         "greedy_rows_identical": round(same, 3), "first_token_identical": round(first_tok, 3),
         "logprob_max_abs_diff": float(f"{max(diffs):.3g}"), "logprob_mean_abs_diff": float(f"{sum(diffs) / len(diffs):.3g}"),
         "logprobs_compared": len(diffs)}
    print(f"vllm-bench correctness {r}", flush=True)
    return [r]


def child_backend() -> list[dict]:
    """The project's VLLMBackend through the canonical loader vs the HF backend (fp32, small model)."""
    from phases.models.backends.base import GenerationParams
    from phases.models.loader import load_model
    from phases.models.tiny import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="vllm-tiny-") as d:
        # head size 64 (hidden 256 / 4 heads): one every vLLM attention backend supports
        path = str(build_tiny_model(Path(d) / "tiny256", seed=0, hidden_size=256, max_position_embeddings=1024))
        prompts = ["Water freezes at", "The capital of France is", "def add(a, b):", "Label:"]
        gp = GenerationParams.greedy(12)
        hf = load_model(path, device="cuda", dtype="float32", backend="hf")
        a_gen = hf.generate(prompts, gp)
        a_lp = hf.next_token_logprobs(prompts, ["A", " B"])
        del hf
        from benchmarks import common

        common.free("cuda")
        t0 = time.perf_counter()
        vl = load_model(path, device="cuda", dtype="float32", backend="vllm")
        start = time.perf_counter() - t0
        b_gen = vl.generate(prompts, gp)
        b_lp = vl.next_token_logprobs(prompts, ["A", " B"])
        prov = vl.provenance
    same = sum(x.token_ids == y.token_ids and x.text == y.text for x, y in zip(a_gen, b_gen)) / len(prompts)
    diff = max(abs(x[k] - y[k]) for x, y in zip(a_lp, b_lp) for k in ("A", " B"))
    r = {"bench": "vllm-backend", "model": "tiny random Qwen2 (hidden 256, 2 layers), fp32",
         "backend_provenance": prov.get("backend"), "engine_start_s": round(start, 1),
         "greedy_rows_identical_text_and_tokens": same, "ab_logprob_max_abs_diff": float(f"{diff:.3g}"),
         "finish_reasons_hf": [x.finish_reason for x in a_gen], "finish_reasons_vllm": [x.finish_reason for x in b_gen]}
    print(f"vllm-bench backend {r}", flush=True)
    return [r]


def _child(argv: list[str]) -> int:
    part, out = argv[0], Path(argv[1])
    if part == "throughput":
        rows = child_throughput(argv[2], float(argv[3]))
    elif part == "correctness":
        rows = child_correctness(argv[2])
    else:
        rows = child_backend()
    out.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="0.5B,7B")
    ap.add_argument("--parts", default="backend,correctness,throughput")
    ap.add_argument("--out", default="/tmp/bench-vllm")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        return _child(a.child)
    import torch

    if not torch.cuda.is_available():
        print("bench_vllm: no CUDA device (vLLM needs one)", file=sys.stderr)
        return 2
    try:
        import vllm
    except Exception as e:  # noqa: BLE001 - report why vllm is unusable, in one line
        print(f"bench_vllm: vllm does not import: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    from benchmarks import common

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    ceil = common.ceilings("cuda")
    meta = {"bench": "vllm-meta", "vllm": vllm.__version__, "torch": torch.__version__, **common.machine("cuda"), **ceil}
    print(f"vllm-bench meta {meta}", flush=True)
    rows, parts = [meta], a.parts.split(",")
    jobs = ([["backend"]] if "backend" in parts else []) + \
           ([["correctness", "float32"], ["correctness", "bfloat16"]] if "correctness" in parts else []) + \
           ([["throughput", s, str(ceil["copy_gbps"])] for s in a.sizes.split(",")] if "throughput" in parts else [])
    for i, job in enumerate(jobs):
        f = out / f"part{i}.json"
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, __file__, "--child", job[0], str(f), *job[1:]],
                           env={**os.environ, "PYTHONUNBUFFERED": "1"})
        print(f"vllm-bench part {job} rc={p.returncode} {time.perf_counter() - t0:.0f} s", flush=True)
        rows += json.loads(f.read_text()) if p.returncode == 0 and f.exists() else \
            [{"bench": "vllm-error", "part": job, "rc": p.returncode}]
    (out / "vllm.json").write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    lines = ["| size | variant | batch | tokens/s | ms/step | % of bandwidth bound | decode-only ms/step | "
             "decode-only % of bound | first call s |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['size']} | {r['variant']} | {r['batch']} | {r['tokens_per_s']:,} | {r['ms_per_step']} | "
              f"{r['frac_bandwidth_bound']:.1%} | {r['decode_ms_per_step']} | {r['frac_bound_decode']:.1%} | "
              f"{r['first_call_s']} |" for r in rows if r["bench"] == "vllm-throughput"]
    lines += ["", *[f"- {json.dumps(r)}" for r in rows if r["bench"] != "vllm-throughput"]]
    (out / "vllm_table.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0 if not any(r["bench"] == "vllm-error" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
