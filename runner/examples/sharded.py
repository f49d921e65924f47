"""A sharded toy pipeline (no ML): the subject of the worker/shard tests and the worked example
of ``ctx.shards(name).run(...)`` (runner/shards.py, docs/scale-out.md).

    runner run --config runner/examples/sharded.yaml --workers 3

Step ``draw`` is sharded: shard k covers item indices ``[k*shard_size, (k+1)*shard_size)``;
each item gets a seeded random draw (through a per-shard batch ledger, so a killed worker's
successor redoes only unfinished batches) and is *kept* when the draw is below ``keep``. When
the kept count is below ``target_kept``, top-up rounds plan more shards after the last one
(deterministically: from the results alone) until the target is met or ``max_top_up_rounds``
is hit; ``top_up.json`` reports which. ``merge`` concatenates the shards' kept items in shard
order. ``delay`` (seconds per item) and ``fail_shard`` (a shard that raises) are test knobs.
"""
from __future__ import annotations

import json
import math
import random
import time

from runner import Pipeline, step
from state.files import read_jsonl, write_jsonl

DRAW_DEFAULTS = {"items": 40, "shard_size": 8, "batch_size": 4, "keep": 0.5, "target_kept": 0,
                 "max_top_up_rounds": 2, "delay": 0.0, "fail_shard": -1}


@step(outputs=["plan.json", "top_up.json", "shards"], params=DRAW_DEFAULTS)
def draw(ctx):
    """Sharded: a seeded draw per item; keep draws below ``keep``; top up to ``target_kept``."""
    p = ctx.params
    size = int(p["shard_size"])
    if size < 1:
        raise ValueError(f"params.draw.shard_size must be >= 1, got {size}")

    def specs(start: int, stop: int) -> list[dict]:
        return [{"start": a, "stop": min(a + size, stop)} for a in range(start, stop, size)]

    def one(spec: dict, out_dir) -> dict:  # noqa: ANN001
        if spec["start"] // size == p["fail_shard"]:
            raise RuntimeError(f"fail_shard: shard starting at item {spec['start']} fails on purpose")

        def work(batch, info):  # noqa: ANN001
            rng = random.Random(info.seed)
            out = []
            for i in batch:
                time.sleep(p["delay"])
                d = rng.random()
                out.append({"id": i, "draw": d, "kept": d < p["keep"]})
            return out

        rows = ctx.ledger(f"s{spec['start']:06d}").run(list(range(spec["start"], spec["stop"])), p["batch_size"], work)
        write_jsonl(out_dir / "records.jsonl", rows)
        kept = [r for r in rows if r["kept"]]
        write_jsonl(out_dir / "kept.jsonl", kept)
        return {"records": len(rows), "kept": len(kept)}

    def top_up(results, round_):  # noqa: ANN001
        kept = sum(r.result["kept"] for r in results)
        short = int(p["target_kept"]) - kept
        if short <= 0 or round_ > int(p["max_top_up_rounds"]):
            return []
        rate = max(kept / max(1, sum(r.result["records"] for r in results)), 0.05)
        start = max(r.spec["stop"] for r in results) if results else 0
        return specs(start, start + math.ceil(short / rate * 1.1))

    plan = specs(0, int(p["items"]))
    (ctx.out_dir / "plan.json").write_text(json.dumps(plan, sort_keys=True))
    shard_set = ctx.shards("items")
    results = shard_set.run(plan, one, top_up)
    kept = sum(r.result["kept"] for r in results)
    target = int(p["target_kept"])
    report = {"target_kept": target, "kept": kept, "rounds": shard_set.rounds, "shards": len(results),
              "met": kept >= target, "cap_hit": kept < target, "max_top_up_rounds": int(p["max_top_up_rounds"])}
    (ctx.out_dir / "top_up.json").write_text(json.dumps(report, sort_keys=True))
    for r in results:
        d = ctx.out_dir / "shards" / f"shard-{r.idx:04d}"
        d.mkdir(parents=True)
        for name in ("records.jsonl", "kept.jsonl"):
            (d / name).write_bytes((r.path / name).read_bytes())
    return report


@step(inputs=["draw"], outputs=["merged.jsonl"])
def merge(ctx):
    """The kept items of every shard, in shard order."""
    root = ctx.input("draw") / "shards"
    rows = [r for d in sorted(root.iterdir()) for r in read_jsonl(d / "kept.jsonl")]
    write_jsonl(ctx.out_dir / "merged.jsonl", rows)
    return {"merged": len(rows)}


pipeline = Pipeline("sharded-toy", [draw, merge])
