"""Which SDPA kernel each of the project's inference paths runs, and what a batch shape it has
not seen before costs there: with PyTorch's own pick, and with cuDNN's attention left out.

Why: the fifth H200 run found that SDPA picked cuDNN's attention for the SFT step's batches and
that cuDNN builds a graph per new input shape on the CPU (144 ms a training step at 1.5B); the
`sft` and `dpo` steps now train inside ``phases.models.attention.variable_shape_attention``. The
critic and generation paths also see a new batch shape on nearly every call in a real run
(prompt lengths and bucket sizes vary), while their benchmarks repeat one shape after a warm-up
call, which would hide such a cost. This check answers, per path, whether it does.

Per path and mode, ``calls`` calls each on a batch whose shape this process has not run (the
number of prompts and their lengths change from call to call), then the same calls again:
- ``new_ms``: median wall time of a call on a new shape; ``repeat_ms``: the same calls repeated;
  ``x_new_vs_repeat``: their ratio (near 1 = no per-shape cost);
- ``attention_ops``: the ``aten::_*attention*`` ops one call ran (a CPU-activity profiler), which
  says which kernel the path really uses (flash, efficient, cudnn, math). A replayed CUDA graph
  (fastgen's decode steps) runs no aten ops on the CPU, so fastgen lists its prefill's ops and
  those of a decode step it captures (its graphs are kept per decode shape, lengths rounded to 64).
Modes: ``default`` (PyTorch's pick: ``phases.models.attention.AVOID_CUDNN`` off, so the HF backend's
own ``variable_shape_attention`` around scoring is a no-op) and ``no_cudnn`` (inside
``variable_shape_attention``: what critic scoring runs since the sixth H200 run measured this;
generation keeps PyTorch's pick); Dynamo's cache is reset between modes, since it does not guard
on SDPA's flags.
Paths: ``critic plain`` (``HFBackend.next_token_logprobs``, batched, padded with a mask),
``critic prefix`` (``phases.models.prefix_cache``), ``generate fastgen`` (``fastgen.generate``:
static KV cache, graph-captured decode), ``generate plain`` (``HFBackend.generate``), and
``generate fastgen, one batch size``: fastgen with the batch size fixed and only the prompt lengths
changing, as the pipeline's buckets call it (the decode graphs then repeat per rounded cache
length, the prefill widths do not; the sixth run's "new" fastgen calls changed the batch size on
every call, a new decode graph each, so this path answers whether generation should leave cuDNN
out too). It shares the backend's graph cache with ``generate fastgen``, as a run's calls would.

GPU:  python3 benchmarks/check_attention.py --size 1.5B --out /tmp/attn      (about 2 minutes)
CPU smoke (tiny model):  python3 benchmarks/check_attention.py --cpu --out /tmp/attn
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks import common  # noqa: E402

from benchmarks.bench_critic import CANDS  # noqa: E402  (the id strings standing for the A/B labels)

PATHS = ("critic plain", "critic prefix", "generate fastgen", "generate plain", "generate fastgen, one batch size")
#: paths whose timed calls keep one batch size (only the prompt lengths change): the pipeline's buckets
FIXED_BATCH = ("generate fastgen, one batch size",)


def call_prompts(seed: int, n: int, lo: int, hi: int, vocab: int, shared: int = 40) -> list[str]:
    """``n`` prompts sharing a ``shared``-token rubric head, each of a length drawn from
    ``lo``-``hi`` with ``seed``."""
    g = torch.Generator().manual_seed(1000 + seed)
    head = common.rand_ids(torch.Generator().manual_seed(7), shared, vocab)
    lens = torch.randint(lo, hi + 1, (n,), generator=g).tolist()
    return [" ".join(map(str, head + common.rand_ids(g, L, vocab))) for L in lens]


def call_sets(path_index: int, calls: int, batch: int, lo: int, hi: int, vocab: int,
              fixed_batch: bool = False) -> list[list[str]]:
    """The timed calls' prompts for one path: call ``i`` has ``batch - i`` prompts (so the batch
    dimension differs from call to call, as well as the lengths), each path its own seeds;
    ``fixed_batch``: ``batch`` prompts every call, only the lengths change (the pipeline's buckets)."""
    return [call_prompts(100 * path_index + i, batch if fixed_batch else max(1, batch - i), lo, hi, vocab)
            for i in range(calls)]


def attention_ops(fn) -> dict[str, int]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key: e.count for e in prof.key_averages() if e.key.startswith("aten::_") and "attention" in e.key}


def _timed(fn, dev: str) -> float:
    common.sync(dev)
    t = time.perf_counter()
    fn()
    common.sync(dev)
    return time.perf_counter() - t


def run(size: str, dev: str, *, calls: int, batch: int, new_tokens: int, lo: int, hi: int) -> list[dict]:
    import torch._dynamo

    from unittest import mock

    from phases.models import attention, prefix_cache
    from phases.models.attention import variable_shape_attention
    from phases.models.backends import fastgen
    from phases.models.backends.base import GenerationParams

    model = common.build_model(size, dev)
    model.generation_config.pad_token_id = 0
    vocab = model.config.vocab_size
    greedy = GenerationParams.greedy(new_tokens)
    rows = []
    for mode in ("default", "no_cudnn"):
        torch._dynamo.reset()
        be = common.id_backend(model, batch)  # fresh per mode: fastgen's captured graphs live on it
        fns = {
            "critic plain": lambda P: be.next_token_logprobs(P, CANDS),
            "critic prefix": lambda P: prefix_cache.next_token_logprobs(be, P, CANDS, max_batch=batch),
            "generate fastgen": lambda P: fastgen.generate(be, P, greedy, batch_size=batch),
            "generate plain": lambda P: be.generate(P, greedy),
            "generate fastgen, one batch size": lambda P: fastgen.generate(be, P, greedy, batch_size=batch),
        }
        with (variable_shape_attention(dev) if mode == "no_cudnn"
              else mock.patch.object(attention, "AVOID_CUDNN", False)):
            for k, path in enumerate(PATHS):
                fn = fns[path]
                # warm-up on a shape no timed call uses (allocations, the decode graphs, imports)
                fn(call_prompts(10_000 + k, batch, lo, hi, vocab))
                fixed = path in FIXED_BATCH
                sets = call_sets(k, calls, batch, lo, hi, vocab, fixed_batch=fixed)
                new = [_timed(lambda P=P: fn(P), dev) for P in sets]
                again = [_timed(lambda P=P: fn(P), dev) for P in sets]
                # one more call of the same pattern, not timed: which attention ops the path runs
                extra = call_sets(k, calls + 1, batch, lo, hi, vocab, fixed_batch=fixed)[calls]
                ops = attention_ops(lambda: fn(extra))
                r = {"bench": "attention-check", "size": size, "path": path, "mode": mode, "calls": calls,
                     "new_ms": round(statistics.median(new) * 1e3, 2), "repeat_ms": round(statistics.median(again) * 1e3, 2),
                     "new_ms_each": [round(x * 1e3, 1) for x in new], "batch_sizes": [len(P) for P in sets],
                     "attention_ops": ops}
                r["x_new_vs_repeat"] = round(r["new_ms"] / r["repeat_ms"], 2) if r["repeat_ms"] else None
                rows.append(r)
                print(f"{size:>5} {mode:8} {path:17} new {r['new_ms']:9.1f} ms  repeat {r['repeat_ms']:9.1f} ms  "
                      f"x{r['x_new_vs_repeat']}  {sorted(ops)}", flush=True)
        del be
        common.free(dev)
    del model
    common.free(dev)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| size | path | mode | new shape ms | repeated shape ms | new / repeated | attention ops |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        ops = ", ".join(k.removeprefix("aten::") for k in sorted(r["attention_ops"]))
        lines.append(f"| {r['size']} | {r['path']} | {r['mode']} | {r['new_ms']} | {r['repeat_ms']} | "
                     f"{r['x_new_vs_repeat']} | {ops} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="1.5B")
    ap.add_argument("--cpu", action="store_true", help="tiny model on the CPU (a smoke run)")
    ap.add_argument("--calls", type=int, default=None, help="calls on new shapes per path and mode (default 6; CPU 2)")
    ap.add_argument("--out", default="/tmp/check-attention")
    a = ap.parse_args(argv)
    dev = "cpu" if a.cpu else "cuda"
    if dev == "cuda" and not torch.cuda.is_available():
        print("no CUDA device; use --cpu for the tiny CPU smoke run", file=sys.stderr)
        return 2
    size = "tiny" if a.cpu else a.size
    kw = dict(calls=a.calls or 2, batch=6, new_tokens=4, lo=8, hi=24) if a.cpu else \
        dict(calls=a.calls or 6, batch=64, new_tokens=32, lo=40, hi=300)
    rows = run(size, dev, **kw)
    from state.files import atomic_write_text

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "attention.json", json.dumps(rows, indent=1) + "\n")
    atomic_write_text(out / "attention.md", table(rows))
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
