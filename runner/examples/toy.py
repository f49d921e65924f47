"""The runner's tutorial pipeline, and the subject of the crash tests. No ML dependencies.

    runner run --config runner/examples/toy.yaml      # stops at the gate approve_items
    runner approve approve_items --note "looks fine"
    runner resume

Steps: ``make_items`` writes N items; gate ``approve_items`` (human); ``process`` handles the
items in batches through the batch ledger, sleeping ``delay`` seconds per item, with a seeded
random number per item (so a resumed run must reproduce it byte for byte); ``summarize``
writes totals. ``process`` is declared ``gpu=True`` (a pretend accelerator step) so the cost
ledger and the budget gate have something to measure. ``crash_on_item``/``fail_on_item`` are fault-injection knobs for tests.
"""
from __future__ import annotations

import json
import os
import random
import time

from runner import Pipeline, gate, step
from state.files import read_jsonl, write_jsonl


@step(outputs=["items.jsonl"], params={"items": 20})
def make_items(ctx):
    """Write the items to process."""
    n = ctx.params["items"]
    if n < 0:
        raise ValueError(f"params.make_items.items must be >= 0, got {n}")
    write_jsonl(ctx.out_dir / "items.jsonl", [{"id": i, "text": f"item-{i:05d}"} for i in range(n)])
    return {"items": n}


def _n_items(inputs, params):
    """The process step's size in items (for cost projections)."""
    return len(read_jsonl(inputs["make_items"] / "items.jsonl"))


@step(inputs=["make_items"], outputs=["processed.jsonl"], gpu=True, size=_n_items,
      params={"delay": 0.05, "batch_size": 4, "crash_on_item": -1, "fail_on_item": -1})
def process(ctx):
    """Process the items in batches (resumable inside)."""
    items = read_jsonl(ctx.input("make_items") / "items.jsonl")
    p = ctx.params

    def work(batch, info):
        rng = random.Random(info.seed)
        out = []
        for it in batch:
            if it["id"] == p["crash_on_item"]:
                os._exit(9)  # a poison pill: the process dies, every time
            if it["id"] == p["fail_on_item"]:
                raise RuntimeError(f"cannot process item {it['id']}")
            time.sleep(p["delay"])
            out.append({"id": it["id"], "text": it["text"].upper(), "draw": rng.random(), "batch": info.index})
        return out

    results = ctx.ledger("items").run(items, p["batch_size"], work)
    write_jsonl(ctx.out_dir / "processed.jsonl", results)
    return {"processed": len(results)}


@step(inputs=["process"], outputs=["summary.json"])
def summarize(ctx):
    """Totals over the processed items."""
    rows = read_jsonl(ctx.input("process") / "processed.jsonl")
    summary = {"n": len(rows), "sum_draw": round(sum(r["draw"] for r in rows), 12),
               "batches": len({r["batch"] for r in rows})}
    (ctx.out_dir / "summary.json").write_text(json.dumps(summary, sort_keys=True) + "\n")
    return summary


pipeline = Pipeline("toy", [make_items, gate("approve_items", policy="human",
                                             criteria=["The items look right"]), process, summarize],
                    goal="Demonstrate the runner: a batched, resumable step behind a human gate.")
