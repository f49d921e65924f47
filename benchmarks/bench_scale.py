"""Scale-out benchmark: a sharded generation step on 1 vs N worker processes (one per GPU), and a
worker SIGKILLed mid-shard whose shard is reclaimed (issue 17, item 4; docs/scale-out.md).

    python3 benchmarks/bench_scale.py --workers 2 --size 0.5B --items 4096      # on a 2-GPU box
    python3 benchmarks/bench_scale.py --cpu                                      # CPU smoke test (tests run it)

Results go to ``$OUT`` (or ``--out``): ``results.json`` and ``table.md``.

What runs: the pipeline ``bench-scale`` below (one sharded step ``gen``) through the real runner
(``python -m runner run --workers N``), so claims, leases, worker processes and the merge are
the production code. Each shard generates greedy, fixed-length continuations (``--new`` tokens,
no stop tokens) for ``--shard-size`` prompts of 64 random token ids (seeded by the prompt's
index) with a randomly initialised Qwen2 of ``--size`` (benchmarks/common.py: bf16 on CUDA) through
the production ``HFBackend``; each worker builds its model once, at its first shard.
Measured per run: items/s = items / the ``gen`` attempt's wall time (model builds included, so
use enough items that they are small), and ``ratio`` = items/s with N workers / with 1.
Kill run: N workers; once a shard has a committed batch but is unfinished, its worker gets
SIGKILL; the run must still finish, with that shard reclaimed (event ``shard_reclaimed``), every
shard completed exactly once, and the merged output equal to the 1-worker run's bytes
(``identical_to_1_worker``; on GPUs this also needs bitwise-deterministic kernels across devices).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from runner import Pipeline, step  # noqa: E402

GEN_DEFAULTS = {"items": 64, "shard_size": 16, "batch_size": 8, "new": 16, "size": "tiny", "prompt_len": 64}


@step(outputs=["outputs.jsonl"], params=GEN_DEFAULTS)
def gen(ctx):
    """Sharded greedy generation with a random-weight Qwen2 (see the module docstring)."""
    import torch

    from benchmarks import common
    from phases.models.backends.base import GenerationParams

    p = ctx.params
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    held: dict = {}

    def one(spec, out_dir):  # noqa: ANN001
        if "be" not in held:
            held["be"] = common.id_backend(common.build_model(p["size"], dev), int(p["batch_size"]))
        be = held["be"]
        vocab = common.SIZES[p["size"]]["vocab_size"]

        def work(idxs, info):  # noqa: ANN001
            prompts = []
            for i in idxs:
                g = torch.Generator().manual_seed(1_000_003 * (i + 1))
                prompts.append(" ".join(map(str, common.rand_ids(g, int(p["prompt_len"]), vocab))))
            outs = be.generate(prompts, GenerationParams.greedy(int(p["new"])),
                               seeds=[info.seed + j for j in range(len(prompts))])
            return [{"id": i, "tokens": list(o.token_ids)} for i, o in zip(idxs, outs)]

        rows = ctx.ledger(f"g{spec['start']:07d}").run(list(range(spec["start"], spec["stop"])),
                                                       int(p["batch_size"]), work)
        (out_dir / "outputs.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        return {"items": len(rows)}

    n, size = int(p["items"]), int(p["shard_size"])
    specs = [{"start": a, "stop": min(a + size, n)} for a in range(0, n, size)]
    done = ctx.shards("gen").run(specs, one)
    with open(ctx.out_dir / "outputs.jsonl", "wb") as f:
        for r in done:
            f.write((r.path / "outputs.jsonl").read_bytes())
    return {"items": sum(r.result["items"] for r in done), "shards": len(done)}


pipeline = Pipeline("bench-scale", [gen])


# ---- the driver ------------------------------------------------------------------------------
def _runner(home: Path, *args: str, env_extra: dict | None = None, popen: bool = False):
    cmd = [sys.executable, "-m", "runner", "--home", str(home), *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
    env.update({"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **(env_extra or {})})
    if popen:
        return subprocess.Popen(cmd, cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    return subprocess.run(cmd, cwd=str(REPO), env=env, capture_output=True, text=True)


def _config(path: Path, args: argparse.Namespace) -> Path:
    import yaml
    path.write_text(yaml.safe_dump({"pipeline": "benchmarks.bench_scale:pipeline", "seed": 7, "params": {"gen": {
        "items": args.items, "shard_size": args.shard_size, "batch_size": args.batch_size, "new": args.new,
        "size": args.size}}}))
    return path


def _result(home: Path) -> dict:
    from state.store import Store
    store = Store.open(home, create=False)
    try:
        (a,) = [a for a in store.attempts(store.latest_run_id(), "gen") if a.status == "succeeded"]
        out = (home / a.output_dir / "outputs.jsonl").read_bytes()
        events = store.events(a.run_id, limit=10000)
        return {"seconds": a.ended_at - a.started_at, "sha256": hashlib.sha256(out).hexdigest(),
                "kinds": [(e.kind, json.loads(e.data_json or "{}")) for e in events]}
    finally:
        store.close()


def run_once(work: Path, args: argparse.Namespace, workers: int, kill: bool = False) -> dict:
    home = work / f"w{workers}{'-kill' if kill else ''}"
    home.mkdir(parents=True)
    cfg = _config(home / "bench.yaml", args)
    env = {"RUNNER_WORKER_DEVICES": args.devices} if args.devices else {}
    t0 = time.time()
    if not kill:
        p = _runner(home, "run", "--config", str(cfg), "--workers", str(workers), env_extra=env)
        if p.returncode != 0:
            raise SystemExit(f"bench run with {workers} worker(s) failed ({p.returncode}):\n{p.stdout[-4000:]}{p.stderr[-4000:]}")
        victim = None
    else:
        victim = _kill_one(home, cfg, workers, env)
    r = _result(home)
    out = {"workers": workers, "items": args.items, "seconds": round(r["seconds"], 3),
           "items_per_s": round(args.items / r["seconds"], 3), "wall_s": round(time.time() - t0, 3),
           "sha256": r["sha256"]}
    if kill:
        done = [d.get("shard") for k, d in r["kinds"] if k == "shard_done"]
        out.update(killed=victim, reclaimed=[d.get("shard") for k, d in r["kinds"] if k == "shard_reclaimed"],
                   worker_restarts=sum(1 for k, _ in r["kinds"] if k == "worker_restarted"),
                   each_shard_done_once=sorted(done) == list(range(len(set(done)))) and len(done) == len(set(done)))
        out["victim_shard_reclaimed"] = victim is not None and victim["shard"] in out["reclaimed"]
    return out


def _kill_one(home: Path, cfg: Path, workers: int, env: dict) -> dict | None:
    from state import shards as claims
    from state.store import Store
    p = _runner(home, "run", "--config", str(cfg), "--workers", str(workers), env_extra=env, popen=True)
    victim = None
    deadline = time.time() + 1800
    store = None
    while p.poll() is None and time.time() < deadline and victim is None:
        time.sleep(0.2)
        try:
            store = store or Store.open(home, create=False)
            att = store.attempts(store.latest_run_id(), "gen")
        except Exception:  # noqa: BLE001  (the run is not created yet)
            continue
        if not att:
            continue
        a = att[-1]
        for r in claims.rows(store, a.run_id, "gen", a.cache_key, "gen"):
            spec = json.loads(r.spec_json)
            if r.status == "claimed" and store.batches(a.run_id, "gen", a.cache_key, f"g{spec['start']:07d}"):
                os.kill(r.pid, signal.SIGKILL)
                victim = {"shard": r.idx, "pid": r.pid, "worker": r.worker}
                break
    code = p.wait(timeout=3600)
    text = p.stdout.read()
    if store is not None:
        store.close()
    if code != 0:
        raise SystemExit(f"kill run failed ({code}):\n{text[-4000:]}")
    return victim


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2, help="N for the scaled run and the kill run (default 2)")
    ap.add_argument("--size", default="0.5B", help="model size from benchmarks/common.py SIZES (default 0.5B)")
    ap.add_argument("--items", type=int, default=4096)
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--new", type=int, default=64, help="new tokens per item (default 64)")
    ap.add_argument("--devices", default="", help="RUNNER_WORKER_DEVICES, e.g. 0,1 (default: 0..N-1)")
    ap.add_argument("--cpu", action="store_true", help="CPU smoke test: tiny model, few items")
    ap.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/results/scale")
    args = ap.parse_args(argv)
    if args.cpu:
        args.size, args.items, args.shard_size, args.batch_size, args.new = "tiny", 48, 8, 4, 8
        args.devices = args.devices or "cpu"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / f"work-{int(time.time())}"
    rows = [run_once(work, args, 1), run_once(work, args, args.workers), run_once(work, args, args.workers, kill=True)]
    base = rows[0]["items_per_s"]
    for r in rows:
        r["ratio_vs_1"] = round(r["items_per_s"] / base, 3)
        r["identical_to_1_worker"] = r["sha256"] == rows[0]["sha256"]
    import torch
    res = {"size": args.size, "items": args.items, "shard_size": args.shard_size, "batch_size": args.batch_size,
           "new_tokens": args.new, "gpus": torch.cuda.device_count(),
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "runs": rows}
    (out / "results.json").write_text(json.dumps(res, indent=2, sort_keys=True) + "\n")
    lines = ["| workers | run | items/s | × 1 worker | gen wall s | identical bytes | notes |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        note = (f"killed worker {r['killed']['worker']} on shard {r['killed']['shard']}; reclaimed: "
                f"{r['victim_shard_reclaimed']}; each shard once: {r['each_shard_done_once']}") if "killed" in r else ""
        lines.append(f"| {r['workers']} | {'kill' if 'killed' in r else 'clean'} | {r['items_per_s']:.1f} | "
                     f"{r['ratio_vs_1']:.2f} | {r['seconds']:.1f} | {r['identical_to_1_worker']} | {note} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    ok = rows[2].get("killed") is not None and rows[2]["victim_shard_reclaimed"] and rows[2]["each_shard_done_once"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
