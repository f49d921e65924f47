"""The `sft` step's loss alone: fused linear + cross-entropy against a frozen lm_head, forward and
backward, three implementations side by side in one process.

- ``fused (eager)``: ``phases.sft_fast.fused_linear_cross_entropy`` as the step runs it without
  compiled layers (each chunk's logits upcast to fp32, logsumexp, softmax, one-hot subtraction as
  separate PyTorch ops).
- ``fused (compiled chunk)``: the same with ``compiled=True`` (``compiled_ce_chunk``: the chunk
  math through torch.compile), what the step runs with compiled layers (``COMPILE_LOSS``).
- ``Liger FLCE``: ``liger_kernel.transformers.functional.liger_fused_linear_cross_entropy``
  (Liger's Triton fused linear + CE, sum reduction, ignore_index -100), skipped with a note where
  liger-kernel does not import.

Each row: median milliseconds of forward + backward (hidden states' gradient) over ``--repeats``
after warm-up calls (compilation and Triton autotuning happen there), tokens/s of loss work,
peak extra memory, and the largest difference of the loss and of the hidden-state gradient from a
reference computed in fp32 (full fp32 logits, ``torch.nn.functional.cross_entropy``, sum).
Shapes: the labelled tokens of one optimizer step of the SFT benchmark (``benchmarks/bench_sft.py``)
at 1.5B (hidden 1536) and 7B (hidden 3584), vocabulary 151,936 / 152,064.

Run:  python3 benchmarks/bench_loss.py --sizes 1.5B,7B --out /tmp/loss     (CUDA)
CPU smoke (tiny shapes):  python3 benchmarks/bench_loss.py --cpu --out /tmp/loss
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks import common  # noqa: E402
from phases.sft_fast import fused_linear_cross_entropy  # noqa: E402

#: labelled tokens per optimizer step in bench_sft's step rows (16 rows of ~416 tokens, ~90% labelled)
TOKENS = {"tiny": 96, "1.5B": 6144, "7B": 6144}


def _liger():
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        return liger_fused_linear_cross_entropy
    except Exception:
        return None


def reference(h: torch.Tensor, W: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss sum, d loss / d h) in fp32 from full logits (``h``, ``y`` already shifted)."""
    h32 = h.detach().float().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(h32 @ W.float().t(), y, reduction="sum")
    loss.backward()
    return loss.detach(), h32.grad


def variants() -> dict:
    out = {"fused (eager)": lambda h, W, y: fused_linear_cross_entropy(h[None], W, y[None], chunk=4096)[0],
           "fused (compiled chunk)": lambda h, W, y: fused_linear_cross_entropy(h[None], W, y[None], chunk=4096,
                                                                               compiled=True)[0]}
    lig = _liger()
    if lig is not None:
        out["Liger FLCE"] = lambda h, W, y: lig(h[:-1], W, y[1:], reduction="sum")  # Liger takes shifted rows
    return out


def run(size: str, dev: str, repeats: int = 5) -> list[dict]:
    c = common.SIZES[size]
    d, V, n = c["hidden_size"], c["vocab_size"], TOKENS[size]
    dtype = torch.bfloat16 if dev.startswith("cuda") else torch.float32
    g = torch.Generator(device="cpu").manual_seed(0)
    W = (torch.randn(V, d, generator=g) * 0.02).to(dev, dtype)
    h0 = torch.randn(n + 1, d, generator=g).to(dev, dtype)  # +1: the loss shifts by one position
    y = torch.randint(0, V, (n + 1,), generator=g).to(dev)
    ref_loss, ref_grad = reference(h0[:-1], W, y[1:])
    rows = []
    for name, fn in variants().items():
        h = h0.clone().requires_grad_(True)

        def step():
            h.grad = None
            loss = fn(h, W, y)
            loss.backward()
            return loss

        try:
            loss = step()
            common.sync(dev)
            err_loss = abs(float(loss.detach()) - float(ref_loss)) / max(abs(float(ref_loss)), 1e-9)
            gr = h.grad[:-1].float()
            err_grad = float((gr - ref_grad).abs().max() / ref_grad.abs().max())
            if dev.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            t, _ = common.timeit(step, dev, warmup=2, repeats=repeats)
            r = {"variant": name, "ms": round(t * 1e3, 3), "tokens_per_s": round(n / t, 1),
                 "loss_rel_err": float(f"{err_loss:.3g}"), "grad_max_rel_err": float(f"{err_grad:.3g}")}
            if dev.startswith("cuda"):
                r["peak_extra_gib"] = round((torch.cuda.max_memory_allocated() - base) / 2**30, 2)
        except Exception as e:  # a variant that fails here is a finding, not a crash of the others
            r = {"variant": name, "error": f"{type(e).__name__}: {e}"[:400]}
        r.update(bench="loss", size=size, tokens=n, hidden=d, vocab=V, dtype=str(dtype).replace("torch.", ""))
        rows.append(r)
        print(f"loss {size:>5} {name:24} {r.get('ms', r.get('error'))} ms  {r.get('tokens_per_s')} tok/s  "
              f"loss err {r.get('loss_rel_err')}  grad err {r.get('grad_max_rel_err')}", flush=True)
    if _liger() is None:
        rows.append({"bench": "loss", "size": size, "variant": "Liger FLCE", "note": "skipped: liger-kernel not importable"})
    base = next((r.get("ms") for r in rows if r["variant"] == "fused (eager)"), None)
    for r in rows:
        r["x_eager"] = round(base / r["ms"], 2) if base and r.get("ms") else None
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1.5B,7B")
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="/tmp/bench-loss")
    a = ap.parse_args(argv)
    dev = "cpu" if a.cpu else "cuda"
    sizes = ["tiny"] if a.cpu else a.sizes.split(",")
    rows = [r for s in sizes for r in run(s, dev, a.repeats)]
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "loss.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["| size | variant | tokens | ms (fwd+bwd) | × eager | loss rel. err | grad max rel. err | peak extra GiB |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['size']} | {r['variant']} | {r.get('tokens', '')} | {r.get('ms', r.get('error', r.get('note')))} | "
              f"{r.get('x_eager')} | {r.get('loss_rel_err')} | {r.get('grad_max_rel_err')} | {r.get('peak_extra_gib')} |"
              for r in rows]
    (Path(a.out) / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
