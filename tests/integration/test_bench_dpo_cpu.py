"""CPU smoke of the DPO GPU scripts: benchmarks/bench_dpo.py (tiny config) and the DPO GPU check's dry run.

Run: .venv/bin/pytest -m integration tests/integration/test_bench_dpo_cpu.py -q   (about a minute on 2 cores)
The real numbers come from a CUDA machine (commands in specs/preferences-dpo.md).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for `benchmarks`

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_bench_dpo_tiny_on_cpu(tmp_path):
    from benchmarks import bench_dpo

    assert bench_dpo.main(["--cpu", "--sizes", "tiny", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "dpo.json").read_text())["rows"]
    trl, ours = rows
    assert trl["gradient_checkpointing"] is True and ours["gradient_checkpointing"] is False
    assert trl["batch"] == "8 x 1" and ours["tokens"] == trl["tokens"] > 0
    assert ours["x_trl"] > 0 and ours["ref_tokens_per_s"] > 0 and "x_trl_incl_ref" in ours


def test_gpu_check_dpo_dry_run_on_cpu(tmp_path):
    from benchmarks import gpu_check_dpo

    assert gpu_check_dpo.main(["--cpu-dry-run", "--out", str(tmp_path), "--steps", "4"]) == 0
    rep = json.loads((tmp_path / "gpu_check_dpo.json").read_text())
    assert rep["passed"] and rep["checks"]["resumed_from_checkpoint"] and rep["ref_max_abs_diff_batched_vs_single"] <= 1e-5
