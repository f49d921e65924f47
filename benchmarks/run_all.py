"""Run every performance benchmark (ceilings, critic scoring, generation, SFT) and print one table.

Exact commands:
    # GPU (from the repo root; trl and its deps as wheels, see docs/performance.md "Reproduce"):
    python3 benchmarks/run_all.py --out $OUT
    python3 benchmarks/run_all.py --out $OUT --only critic,generation --sizes 0.5B,1.5B,7B
    # CPU, tiny random model, well under a minute (tests/integration/test_benchmarks_cpu.py):
    .venv/bin/python benchmarks/run_all.py --cpu --out /tmp/bench-cpu

Writes ``<out>/results.json`` (machine, ceilings, every row) and ``<out>/table.md`` (the Markdown
tables printed last, ending with issue 15's targets read from this run's rows: ``targets``). Each benchmark module's docstring says what it measures; common.py says how
timing and the ceilings are done.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks import common  # noqa: E402
from state.files import atomic_write_text  # noqa: E402

BENCHES = ("critic", "generation", "sft")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 10 else f"{v:,.0f}" if abs(v) >= 1000 else f"{v:,.1f}"
    return "" if v is None else str(v)


def tables(report: dict) -> str:
    rows = report["rows"]
    c = report["ceilings"]
    m = report["machine"]
    out = [f"Machine: {m.get('gpu', m.get('cpu'))} ({m.get('nvidia_smi', '')}); torch {m['torch']} (CUDA {m['cuda']}), "
           f"transformers {m['transformers']}, peft {m['peft']}, trl {m['trl']}.",
           f"Ceilings: matmul {c['matmul_tflops']} TFLOP/s ({c['matmul_n']}^3), copy {c['copy_gbps']} GB/s (read+write).", ""]
    specs = {
        "critic": ("Critic scoring", ["size", "shape", "variant", "scorings_per_s", "x_naive", "x_plain_batched", "x_plain_same_batch", "tflops_all_tokens", "mfu_all_tokens", "max_abs_logprob_diff_vs_plain", "route", "prefix_rows_per_forward", "rule_ok"]),
        "generation": ("Generation (64-token prompts, 64 new tokens)", ["size", "variant", "tokens_per_s", "x_one_at_a_time", "x_hf_batched", "ms_per_step", "bound_ms_per_step", "frac_bandwidth_bound", "first_call_s"]),
        "critic-check": ("Critic correctness on the GPU, fp32 (fast vs plain)", ["size", "fp32_max_abs_logprob_diff"]),
        "generation-check": ("Generation correctness (bf16 on the GPU, then fp32)", ["size", "greedy_rows_equal_plain", "fast_batch_invariant_greedy", "fast_batch_invariant_sampling", "fp32_greedy_rows_equal_plain", "fp32_fast_batch_invariant", "fp32_compiled_rows_equal_plain"]),
        "sft": ("SFT, LoRA r=16 on all linear layers (examples of 64-768 tokens)", ["size", "variant", "tokens_per_s", "x_trl", "mfu_6N", "kernels", "peak_mem_gib", "loss_first", "loss_last", "note", "error"]),
        "error": ("Errors", ["bench", "size", "error"]),
    }
    for key, (title, cols) in specs.items():
        sel = [r for r in rows if r.get("bench") == key]
        if not sel:
            continue
        out += [f"### {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        out += ["| " + " | ".join(_fmt(r.get(k)) for k in cols) + " |" for r in sel]
        out.append("")
    return "\n".join(out)


def _best(rows: list[dict], key: str) -> dict | None:
    rows = [r for r in rows if isinstance(r.get(key), (int, float))]
    return max(rows, key=lambda r: r[key]) if rows else None


def targets(report: dict) -> list[dict]:
    """Issue 15's targets, each read from this run's rows: ``target``, ``measured`` (the row it
    comes from) and ``met`` (True / False / None = not measured in this run). The `sft` step's
    figure is the ``runner`` row (a fresh process, what a run gets; docs/performance.md "Issue 15,
    fourth run" says why), else the best in-process step row, which is shown beside it. Generation here is the project's own path (fastgen); vLLM's rows come
    from ``benchmarks/bench_vllm.py``."""
    rows = report["rows"]
    out = []

    def sft_rows(size: str) -> tuple[dict | None, list[dict]]:
        """(the runner row, the in-process step rows) at ``size``"""
        sel = [r for r in rows if r.get("bench") == "sft" and r.get("size") == size]
        runner = next((r for r in sel if r.get("variant") == "sft step through runner" and r.get("tokens_per_s")), None)
        return runner, [r for r in sel if str(r.get("variant", "")).startswith("sft step (run_sft)")]

    for size, want in (("1.5B", 4.0), ("7B", 2.5)):  # judged on the runner row, else the best step row
        runner, steps = sft_rows(size)
        step = _best(steps, "x_trl")
        got = runner.get("x_trl") if runner else (step or {}).get("x_trl")
        measured = (f"runner row {runner.get('x_trl')}x" if runner else "no runner row") + (
            f"; best in-process step row {step['x_trl']}x ({step['variant']})" if step else "")
        out.append({"target": f"sft step >= {want}x TRL defaults at {size}", "measured": measured,
                    "met": None if got is None else got >= want})
    runner, steps = sft_rows("1.5B")
    step_mfu = _best(steps, "mfu_6N")
    got = runner.get("mfu_6N") if runner else (step_mfu or {}).get("mfu_6N")
    out.append({"target": "sft step >= 40% 6N-MFU at 1.5B",
                "measured": (f"runner row {runner['mfu_6N']:.1%}" if runner and runner.get("mfu_6N") is not None
                             else "no runner row") + (f"; best step row {step_mfu['mfu_6N']:.1%}" if step_mfu else ""),
                "met": None if got is None else got >= 0.40})
    gen = _best([r for r in rows if r.get("bench") == "generation" and r.get("size") == "7B"], "frac_bandwidth_bound")
    out.append({"target": "generation at 7B >= 60% of the decode bandwidth bound (fastgen here; vLLM: bench_vllm.py)",
                "measured": f"{gen['frac_bandwidth_bound']:.1%} per new token, prefill included ({gen['variant']}, "
                            f"batch {gen.get('batch')})" if gen else "no 7B generation row",
                "met": None if gen is None else gen["frac_bandwidth_bound"] >= 0.60})
    rule = [r for r in rows if r.get("bench") == "critic" and str(r.get("variant", "")).startswith("rule:")]
    worst = min(rule, key=lambda r: r.get("x_plain_same_batch") or 0) if rule else None
    out.append({"target": "critic route >= 1.0x plain at every size and shape (0.97 = within noise)",
                "measured": (f"{len(rule)} rule rows; lowest {worst.get('x_plain_same_batch')}x "
                             f"({worst['size']} {worst.get('shape')}, {worst['variant']})") if worst else "no critic rows",
                "met": None if not rule else all(r.get("rule_ok") for r in rule)})
    return out


def targets_table(report: dict) -> str:
    met = {True: "yes", False: "**no**", None: "not measured"}
    lines = ["### Targets (issue 15)", "", "| target | measured in this run | met? |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['measured']} | {met[t['met']]} |" for t in targets(report)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu", action="store_true", help="tiny model on the CPU (smoke run of every benchmark)")
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/bench"))
    ap.add_argument("--only", default=",".join(BENCHES), help=f"comma list of {BENCHES}")
    ap.add_argument("--sizes", default=None, help="comma list of model sizes (default: tiny on CPU, 0.5B,1.5B,7B on GPU)")
    ap.add_argument("--sft-sizes", default=None, help="sizes for the SFT benchmark (default: 1.5B,7B on GPU)")
    a = ap.parse_args(argv)
    import torch

    dev = "cpu" if a.cpu else "cuda"
    if dev == "cuda" and not torch.cuda.is_available():
        print("no CUDA device; use --cpu for the tiny CPU version", file=sys.stderr)
        return 2
    if a.cpu:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    sizes = (a.sizes or ("tiny" if a.cpu else "0.5B,1.5B,7B")).split(",")
    sft_sizes = (a.sft_sizes or ("tiny" if a.cpu else "1.5B,7B")).split(",")
    only = [b for b in a.only.split(",") if b]
    bad = [b for b in only if b not in BENCHES]
    if bad:
        raise SystemExit(f"--only: unknown benchmark(s) {bad}; choose from {BENCHES}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    report = {"machine": common.machine(dev), "ceilings": common.ceilings(dev, quick=a.cpu), "rows": []}
    print("machine", json.dumps(report["machine"]), "\nceilings", json.dumps(report["ceilings"]), flush=True)
    peak, bw = report["ceilings"]["matmul_tflops"], report["ceilings"]["copy_gbps"]

    def save():
        report["seconds"] = round(time.time() - t0, 1)
        atomic_write_text(out / "results.json", json.dumps(report, indent=1, sort_keys=True) + "\n")
        atomic_write_text(out / "table.md", tables(report) + "\n" + targets_table(report))

    for bench in only:
        for size in (sft_sizes if bench == "sft" else sizes):
            try:
                if bench == "critic":
                    from benchmarks import bench_critic as b

                    kw = dict(n_items=4, n_naive=2, batch=4, repeats=1) if a.cpu else dict(n_items=128, n_naive=32, batch=64, repeats=3)
                    report["rows"] += b.run(size, dev, peak_tflops=peak, **kw)
                elif bench == "generation":
                    from benchmarks import bench_generation as b

                    kw = (dict(batch=4, big_batch=8, prompt_len=8, new=6, n_single=1, repeats=1) if a.cpu
                          else dict(batch=64, big_batch=256, prompt_len=64, new=64, n_single=3, repeats=3, compile_step=True))
                    report["rows"] += b.run(size, dev, copy_gbps=bw, **kw)
                else:
                    from benchmarks import bench_sft as b

                    report["rows"] += b.run(size, dev, peak_tflops=peak, cpu=a.cpu)
            except Exception as e:  # keep the other benchmarks' numbers; the table shows the error
                traceback.print_exc()
                report["rows"].append({"bench": "error", "size": size, "error": f"{bench}: {type(e).__name__}: {e}"[:400]})
                common.free(dev)
            save()
    save()
    print("\n" + tables(report) + "\n" + targets_table(report))
    print(f"wrote {out / 'results.json'} and {out / 'table.md'} in {report['seconds']} s")
    return 1 if any(r.get("bench") == "error" or "error" in r for r in report["rows"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
