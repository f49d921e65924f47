"""Generation throughput: one-at-a-time ``model.generate`` vs plain batched ``model.generate`` vs
our backend's batched loop (HFBackend.generate) vs the fast path (phases/models/backends/fastgen.py:
static KV cache + one CUDA graph per decode step), greedy, fixed lengths.

Measures, per model size: generated tokens/s (prompts of 64 random tokens, exactly 64 new tokens
each: no stop tokens), and the fraction of the decode memory-bandwidth bound:
    bound step time = bytes of weights read per decode step / measured copy bandwidth
    (all parameters, minus the input embedding table when it is not tied to the output layer),
    fraction = bound step time / measured time per step (elapsed / new tokens; prefill included).
Correctness reported alongside: the share of rows whose greedy tokens equal the plain backend's
(bf16 on GPU; exact equality is checked on CPU in fp32 by the tests), and whether the fast path
gives the same tokens for a row alone as in its batch.

Run alone:  python3 benchmarks/bench_generation.py --sizes 0.5B --out /tmp/gen   (or via run_all.py)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks import common  # noqa: E402


def hf_generate(model, prompts: list[list[int]], new: int) -> list[list[int]]:
    """What a plain script does: left-padded batch through ``model.generate``, greedy, fixed length."""
    dev = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, p in enumerate(prompts):
        ids[b, width - len(p):] = torch.tensor(p)
        mask[b, width - len(p):] = 1
    with torch.no_grad():
        out = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), do_sample=False, max_new_tokens=new,
                             min_new_tokens=new, pad_token_id=0, eos_token_id=None)
    return out[:, width:].tolist()


def run(size: str, dev: str, *, batch: int, big_batch: int, prompt_len: int, new: int, n_single: int, repeats: int,
        copy_gbps: float, plain_repeats: int = 1, compile_step: bool = False) -> list[dict]:
    from phases.models.backends import fastgen
    from phases.models.backends.base import GenerationParams

    model = common.build_model(size, dev)
    model.generation_config.pad_token_id = 0
    params = sum(p.numel() for p in model.parameters())
    elt = next(model.parameters()).element_size()
    read = params - (0 if model.config.tie_word_embeddings else model.get_input_embeddings().weight.numel())
    bound_step = read * elt / (copy_gbps * 1e9)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(1)
    ids = [common.rand_ids(g, prompt_len, vocab) for _ in range(big_batch)]
    prompts = [" ".join(map(str, r)) for r in ids]
    greedy = GenerationParams.greedy(new)
    sampling = GenerationParams(max_new_tokens=new)  # METHOD.md defaults: T 0.4, top-p 0.9, rep 1.1
    be = common.id_backend(model, batch)
    P = prompts[:batch]
    plain = be.generate(P, greedy)
    fast = fastgen.generate(be, P, greedy, batch_size=batch)
    same = sum(a.token_ids == b.token_ids for a, b in zip(plain, fast)) / len(P)
    alone = fastgen.generate(be, P[:2], greedy, batch_size=1)
    batch_inv = all(a.token_ids == b.token_ids for a, b in zip(alone, fast[:2]))
    sa = fastgen.generate(be, P, sampling, seeds=list(range(batch)), batch_size=batch)
    sb = fastgen.generate(be, P[:2], sampling, seeds=[0, 1], batch_size=1)
    samp_inv = all(a.token_ids == b.token_ids for a, b in zip(sb, sa[:2]))
    variants = [
        ("HF generate 1-at-a-time", lambda: [hf_generate(model, [r], new) for r in ids[:n_single]], n_single, 1, 1),
        (f"HF generate batched (bs{batch})", lambda: hf_generate(model, ids[:batch], new), batch, batch, repeats),
        (f"ours plain batched (bs{batch})", lambda: be.generate(P, greedy), batch, batch, plain_repeats),
        (f"fast graph (bs{batch})", lambda: fastgen.generate(be, P, greedy, batch_size=batch), batch, batch, repeats),
        (f"fast graph sampling (bs{batch})", lambda: fastgen.generate(be, P, sampling, batch_size=batch), batch, batch, repeats),
        (f"fast graph (bs{big_batch})", lambda: fastgen.generate(be, prompts, greedy, batch_size=big_batch), big_batch, big_batch, repeats),
    ]
    if compile_step:
        variants += [
            (f"fast graph+compile (bs{batch})", lambda: fastgen.generate(be, P, greedy, batch_size=batch, compile_step=True), batch, batch, repeats),
            (f"fast graph+compile (bs{big_batch})", lambda: fastgen.generate(be, prompts, greedy, batch_size=big_batch, compile_step=True),
             big_batch, big_batch, repeats),
        ]
    rows, base, hf_batched = [], None, None
    for name, fn, n, bs, reps in variants:
        t_first, _ = common.timeit(fn, dev, warmup=0, repeats=1)  # includes capture / compilation
        t, times = common.timeit(fn, dev, warmup=0, repeats=reps)
        tps = n * new / t
        step = t / (new * (n // bs))
        base = base or tps
        if name.startswith("HF generate batched"):
            hf_batched = tps
        rows.append({
            "bench": "generation", "size": size, "variant": name, "batch": bs, "prompt_tokens": prompt_len, "new_tokens": new,
            "seconds": round(t, 4), "times": [round(x, 4) for x in times], "first_call_s": round(t_first, 3), "tokens_per_s": round(tps, 1),
            "x_one_at_a_time": round(tps / base, 2), "x_hf_batched": round(tps / hf_batched, 2) if hf_batched else None,
            "ms_per_step": round(step * 1e3, 3), "bound_ms_per_step": round(bound_step * 1e3, 3),
            "frac_bandwidth_bound": round(bound_step / step, 3), "params": params,
        })
        print(f"gen {size:>5} {name:34} {tps:9.1f} tok/s  {step * 1e3:7.2f} ms/step  bound {bound_step / step:6.1%}", flush=True)
    check = {"bench": "generation-check", "size": size, "greedy_rows_equal_plain": round(same, 3),
             "fast_batch_invariant_greedy": batch_inv, "fast_batch_invariant_sampling": samp_inv}
    if dev.startswith("cuda"):
        # bf16 rounding flips near-ties of a random model's flat logits; in fp32 the paths must agree.
        be.__dict__.pop(fastgen.CACHE_ATTR, None)
        model.float()
        q, g16 = P[:8], GenerationParams.greedy(16)
        a32, b32 = be.generate(q, g16), fastgen.generate(be, q, g16, batch_size=8)
        c32 = fastgen.generate(be, q[:2], g16, batch_size=1)
        if compile_step:
            d32 = fastgen.generate(be, q, g16, batch_size=8, compile_step=True)
            check["fp32_compiled_rows_equal_plain"] = sum(x.token_ids == y.token_ids for x, y in zip(a32, d32)) / len(q)
        check["fp32_greedy_rows_equal_plain"] = sum(x.token_ids == y.token_ids for x, y in zip(a32, b32)) / len(q)
        check["fp32_fast_batch_invariant"] = all(x.token_ids == y.token_ids for x, y in zip(c32, b32[:2]))
    print(f"gen {size:>5} check {check}", flush=True)
    rows.append(check)
    del model, be
    common.free(dev)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="0.5B")
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--out", default="/tmp/bench-gen")
    a = ap.parse_args(argv)
    dev = "cpu" if a.cpu else "cuda"
    bw = common.ceilings(dev, quick=a.cpu)["copy_gbps"]
    rows = []
    for s in a.sizes.split(","):
        if a.cpu:
            rows += run(s, dev, batch=4, big_batch=8, prompt_len=8, new=8, n_single=2, repeats=1, copy_gbps=bw)
        else:
            rows += run(s, dev, batch=64, big_batch=256, prompt_len=64, new=64, n_single=3, repeats=3, copy_gbps=bw, compile_step=True)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    from state.files import atomic_write_text

    atomic_write_text(Path(a.out) / "generation.json", json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
