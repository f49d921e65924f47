"""The stage-1 scale step on 1, 2 and 3 worker processes (CPU, the SmolLM2-135M test model):
byte-identical shards and merged SFT set for any N.

Run: .venv/bin/pytest -m "integration and slow" tests/integration/test_scale_workers.py -q
(needs `python -m phases.models.embedded prepare smollm2-135m-instruct`; skipped otherwise).
One run goes to gate qc_scale with the shards in this process; then, for N = 2 and 3,
`runner rerun scale` + `runner resume --workers N` regenerates scale (each worker loads the model
itself) and merge, and their data files must equal the N = 1 bytes.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from helpers_runner import cli
from test_pipeline_stage1 import HOOKS, TINY, _out

pytestmark = [pytest.mark.integration, pytest.mark.slow]
LONG = 1200  # three stage-1 data runs on a shared 2-core machine

DATA = ("sft.jsonl", "records.jsonl", "dropped.jsonl", "qc_summary.json")
SHARD_DATA = ("records.jsonl", "kept.jsonl", "dropped_instructions.jsonl", "qc_summary.json")


def _snapshot(home: Path) -> dict[str, bytes]:
    scale, merge = _out(home, "scale"), _out(home, "merge")
    snap = {f"merge/{n}": (merge / n).read_bytes() for n in DATA}
    for d in sorted((scale / "shards").iterdir()):
        snap.update({f"scale/{d.name}/{n}": (d / n).read_bytes() for n in SHARD_DATA})
    snap["scale/plan.json"] = (scale / "plan.json").read_bytes()
    return snap


@pytest.mark.timeout(3 * LONG)
def test_scale_on_one_two_three_workers_is_byte_identical(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    cfg = home / "stage.yaml"
    cfg.write_text(yaml.safe_dump({"include": str(TINY), "scale": {"target_kept": 20, "shard_size": 2}}))
    p = cli(home, "run", "--config", cfg, timeout=LONG, **HOOKS)
    assert p.returncode == 3, p.stdout[-3000:] + p.stderr[-3000:]
    want = _snapshot(home)
    assert len([k for k in want if k.endswith("/kept.jsonl")]) >= 2, "the plan should have several shards"
    for n in (2, 3):
        cli(home, "rerun", "scale", check=0)
        p = cli(home, "resume", "--workers", str(n), timeout=LONG, **HOOKS)
        assert p.returncode == 3, p.stdout[-3000:] + p.stderr[-3000:]
        assert f"{n} workers started" in p.stdout
        got = _snapshot(home)
        assert got.keys() == want.keys()
        assert [k for k in want if got[k] != want[k]] == [], f"--workers {n} changed these files"
    manifest = json.loads((_out(home, "scale") / "manifest.json").read_text())
    assert set(manifest["top_up"]) >= {"rounds", "met", "cap_hit", "max_top_up_rounds"}
