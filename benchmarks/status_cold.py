"""How long a cold `runner status --json` takes on a run with 100k events (issue 18).

    python3 benchmarks/status_cold.py                 # 100k events, 7 cold runs; prints the figure
    python3 benchmarks/status_cold.py --events 10000 --runs 5

It builds a toy run stopped at its gate in a temp home, appends N `step_log` events, then runs
`python -m runner --home H status --json` as a fresh process N times and prints the median and
the fastest wall time (after one warm-up run that writes the .pyc files), plus the interpreter's
bare start-up (`python -c pass`) for scale; the load average is printed because other work on the
machine inflates every figure. No
assertion: the figure is what the README quotes. Writes `$OUT/status_cold.json` when $OUT is set.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _time(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd="/")
    elapsed = time.perf_counter() - t
    if p.returncode not in (0, 3):
        raise SystemExit(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stderr[-2000:]}")
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    import yaml
    from sqlalchemy import insert

    from runner.cli import main as runner_main
    from state.schema import Event
    from state.store import Store
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # an installed checkout has its .pyc files: so do we
    with tempfile.TemporaryDirectory(prefix="status-bench-") as tmp:
        cfg = yaml.safe_load((ROOT / "runner/examples/toy.yaml").read_text())
        cfg["params"] = {"make_items": {"items": 3}, "process": {"delay": 0.0, "batch_size": 4}}
        (Path(tmp) / "c.yaml").write_text(yaml.safe_dump(cfg))
        home = Path(tmp) / "h"
        code = runner_main(["--home", str(home), "run", "--config", str(Path(tmp) / "c.yaml"), "--run-id", "t"])
        assert code == 3, f"toy run should stop at its gate, exited {code}"
        store = Store.open(home, create=False)
        now = time.time()
        rows = [{"run_id": "t", "ts": now + i * 1e-3, "kind": "step_log", "step": "process",
                 "message": f"batch {i} done", "data_json": None} for i in range(args.events)]
        with store.db.writer.begin() as conn:
            conn.execute(insert(Event.__table__), rows)
        store.close()
        _time([sys.executable, "-m", "runner", "--home", str(home), "status", "--json"], env)  # writes .pyc
        bare = [_time([sys.executable, "-c", "pass"], env) for _ in range(args.runs)]
        status = [_time([sys.executable, "-m", "runner", "--home", str(home), "status", "--json"], env)
                  for _ in range(args.runs)]
    res = {"events": args.events, "runs": args.runs, "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
           "status_json_median_s": round(statistics.median(status), 3), "status_json_min_s": round(min(status), 3),
           "python_startup_median_s": round(statistics.median(bare), 3)}
    print(f"cold `runner status --json` at {args.events} events: median {res['status_json_median_s']:.3f} s, "
          f"fastest {res['status_json_min_s']:.3f} s ({args.runs} runs, {res['cpus']} CPUs, load {res['load_avg_1m']:.1f}; bare python start-up "
          f"{res['python_startup_median_s']:.3f} s)")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"]).mkdir(parents=True, exist_ok=True)
        (Path(os.environ["OUT"]) / "status_cold.json").write_text(json.dumps(res, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
