"""Critic scoring throughput: a naive one-prompt-at-a-time loop vs our batched A/B scoring
(HFBackend.next_token_logprobs) vs the shared-prefix fast path (phases/models/prefix_cache.py).

Measures, per model size and prompt shape: scorings/s (one scoring = one prompt in one label
order = one forward pass; a judged item is two scorings), achieved TFLOP/s counting ALL prompt
tokens at 2 x params x tokens (the issue's convention; the fast path skips the shared prefix, so
its figure is "effective") and that as a fraction of the measured matmul peak (MFU), and the
largest |log-prob| difference of each path from the plain batched one.

Prompt shapes (token counts of the real rubrics under the Qwen2.5 tokenizer):
- ``pair256``: 256 tokens = 46 rubric-prefix tokens (per label order; the two orders share their
  first ~8) + 194 item tokens + 16 answer-line tokens: the issue's shape, stage 1's pair critic.
- ``instr80``: 80 tokens = 33 prefix + 31 item + 16 answer line: the instruction critic.
Batches: each (size, shape) runs at ``batch`` (64 on a GPU) and at ``4 * batch`` (256), plain and
prefix-cached and the production route at both. ``x_plain_batched`` is against plain at ``batch``
(as in earlier tables); ``x_plain_same_batch`` against plain at the row's own batch.
The rows "rule: HFBackend auto (bsN)" are the production route (``fast_paths="auto"``, backend
``batch_size`` N: on CUDA the path ``phases/models/fast_rules.py`` picks, which
``HFBackend.critic_route`` names in ``route``, with ``prefix_rows_per_forward``, the rule's batch
term); ``rule_ok`` says whether it ran at >= 0.97x plain batched at the same batch (1.0x within
timing noise), the issue's "no slower fast path" check. A call has 2 x n_items prompts in two
label-order groups, so the prefix path runs ``min(N, n_items)`` rows per forward (128 at bs256).
The naive loop is what a straightforward script does: ``model(ids[None])`` per prompt, full
logits, log-softmax of the last row.

Run alone:  python3 benchmarks/bench_critic.py --sizes 0.5B --out /tmp/critic   (or via run_all.py)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks import common  # noqa: E402

SHAPES = {"pair256": (46, 194, 16), "instr80": (33, 31, 16)}
CANDS = ("65", "362", "33", "425")  # id strings standing for "A", " A", "B", " B"


def make_prompts(shape: str, n_items: int, vocab: int, seed: int = 0) -> list[str]:
    """``2 * n_items`` id-string prompts: per item, order AB then BA (like critic.judge)."""
    pre, body, tail = SHAPES[shape]
    g = torch.Generator().manual_seed(seed)
    common_head = common.rand_ids(g, 8, vocab)
    heads = {o: common_head + common.rand_ids(g, pre - 8, vocab) for o in ("AB", "BA")}
    answer = common.rand_ids(g, tail, vocab)
    out = []
    for _ in range(n_items):
        item = common.rand_ids(g, body, vocab)
        for o in ("AB", "BA"):
            out.append(" ".join(map(str, heads[o] + item + answer)))
    return out


def naive_scores(model, prompts: list[str], cand_ids: list[int]) -> list[list[float]]:
    dev = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([[int(x) for x in p.split()]], device=dev)
            logits = model(input_ids=ids).logits[0, -1].float()
            out.append(torch.log_softmax(logits, -1)[cand_ids].tolist())
    return out


def run(size: str, dev: str, *, n_items: int, n_naive: int, batch: int, repeats: int, peak_tflops: float,
        shapes=("pair256", "instr80")) -> list[dict]:
    from phases.models import fast_rules, prefix_cache

    model = common.build_model(size, dev)
    params = sum(p.numel() for p in model.parameters())
    vocab = model.config.vocab_size
    big = 4 * batch
    be = common.id_backend(model, batch)
    be_big = common.id_backend(model, big)
    be_rule = {b: common.id_backend(model, b) for b in (batch, big)}
    for b in be_rule.values():
        b.fast_paths = "auto"
    cand_ids = be.candidate_ids(CANDS)
    rows = []
    for shape in shapes:
        prompts = make_prompts(shape, n_items, vocab)
        tokens = sum(SHAPES[shape])
        ref = be.next_token_logprobs(prompts, CANDS)
        # name -> (fn, scorings, batch); plain at a batch is timed before the rows compared with it
        variants = {
            "naive 1-at-a-time": (lambda: naive_scores(model, prompts[:n_naive], cand_ids), n_naive, 1),
            f"ours batched (bs{batch})": (lambda: be.next_token_logprobs(prompts, CANDS), len(prompts), batch),
            f"fast prefix-cached (bs{batch})": (lambda: prefix_cache.next_token_logprobs(be, prompts, CANDS, max_batch=batch), len(prompts), batch),
            f"rule: HFBackend auto (bs{batch})": (lambda: be_rule[batch].next_token_logprobs(prompts, CANDS), len(prompts), batch),
            f"ours batched (bs{big})": (lambda: be_big.next_token_logprobs(prompts, CANDS), len(prompts), big),
            f"fast prefix-cached (bs{big})": (
                lambda: prefix_cache.next_token_logprobs(be, prompts, CANDS, max_batch=big, max_tokens=1 << 17), len(prompts), big),
            f"rule: HFBackend auto (bs{big})": (lambda: be_rule[big].next_token_logprobs(prompts, CANDS), len(prompts), big),
        }
        enc_rows = be.encode_rows(prompts, 0, "error")
        base_rate = None
        plain_rate: dict[int, float] = {}
        for name, (fn, n, bs) in variants.items():
            t, times = common.timeit(fn, dev, warmup=1, repeats=repeats)
            res = fn() if not name.startswith("naive") else None
            diff = None
            if res is not None:
                diff = max(abs(a[c] - b[c]) for a, b in zip(ref, res) for c in CANDS)
            else:
                nv = naive_scores(model, prompts[:2], cand_ids)
                diff = max(abs(nv[i][j] - ref[i][CANDS[j]]) for i in range(2) for j in range(4))
            rate = n / t
            tflops = 2 * params * tokens * n / t / 1e12
            base_rate = base_rate or rate
            if name.startswith("ours"):
                plain_rate[bs] = rate
            same = plain_rate.get(bs) if not name.startswith("naive") else None
            rows.append({
                "bench": "critic", "size": size, "shape": shape, "prompt_tokens": tokens, "variant": name,
                "scorings": n, "seconds": round(t, 4), "times": [round(x, 4) for x in times],
                "scorings_per_s": round(rate, 1), "x_naive": round(rate / base_rate, 2),
                "x_plain_batched": round(rate / plain_rate[batch], 2) if batch in plain_rate else None,
                "x_plain_same_batch": round(rate / same, 2) if same else None,
                "tflops_all_tokens": round(tflops, 1), "mfu_all_tokens": round(tflops / peak_tflops, 3),
                "max_abs_logprob_diff_vs_plain": float(f"{diff:.3g}"), "params": params,
            })
            if name.startswith("rule"):
                rb = be_rule[bs]
                route = rb.critic_route(enc_rows) if rb._use_fast() else "plain (fast paths off here)"
                rows[-1].update(route=route, rule_ok=bool(same and rate / same >= 0.97),
                                prefix_rows_per_forward=round(fast_rules.rows_per_forward(enc_rows, rb._prefix_max_batch()), 1))
            print(f"critic {size:>5} {shape:8} {name:32} {rate:9.1f}/s  {tflops:7.1f} TFLOP/s  x{rate / base_rate:6.1f}  diff {diff:.2g}", flush=True)
    if dev.startswith("cuda"):
        # bf16 rounding dominates the differences above; in fp32 the paths must agree to ~1e-4.
        model.float()
        prompts = make_prompts("pair256", 16, vocab, seed=5)
        a = be.next_token_logprobs(prompts, CANDS)
        b = prefix_cache.next_token_logprobs(be, prompts, CANDS, max_batch=batch)
        rows.append({"bench": "critic-check", "size": size,
                     "fp32_max_abs_logprob_diff": float(f"{max(abs(x[c] - y[c]) for x, y in zip(a, b) for c in CANDS):.3g}")})
    del model, be, be_big, be_rule
    common.free(dev)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="0.5B")
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--out", default="/tmp/bench-critic")
    a = ap.parse_args(argv)
    dev = "cpu" if a.cpu else "cuda"
    peak = common.ceilings(dev, quick=a.cpu)["matmul_tflops"]
    rows = []
    for s in a.sizes.split(","):
        rows += run(s, dev, n_items=8 if a.cpu else 128, n_naive=4 if a.cpu else 32, batch=8 if a.cpu else 64,
                    repeats=1 if a.cpu else 3, peak_tflops=peak)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    from state.files import atomic_write_text

    atomic_write_text(Path(a.out) / "critic.json", json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
