"""benchmarks/bench_unsloth.py without unsloth and without torch: argument checks, the import-order
guard, and the one-line failure (exit 2, an error row per size) where unsloth does not import.

Run: .venv/bin/python -m pytest tests/unit/test_bench_unsloth.py -q
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "bench_unsloth.py"
sys.path.insert(0, str(REPO))

from benchmarks import bench_unsloth as bu  # noqa: E402


def test_parse_args_defaults_are_the_sft_steps_budget():
    a = bu.parse_args([])
    assert a.sizes == ["1.5B", "7B"] and a.max_rows == 16 and a.max_tokens == 16384 and a.steps == 0


@pytest.mark.parametrize("argv", [["--sizes", "3B"], ["--sizes", ","], ["--max-tokens", "0"], ["--steps", "-1"]])
def test_parse_args_rejects_bad_values(argv, capsys):
    with pytest.raises(SystemExit) as e:
        bu.parse_args(argv)
    assert e.value.code == 2


def test_bad_size_message_names_the_value(capsys):
    with pytest.raises(SystemExit):
        bu.parse_args(["--sizes", "1.5B,3B"])
    err = capsys.readouterr().err
    assert "unknown ['3B']" in err and "1.5B" in err


def test_import_guard_refuses_when_trl_came_first(monkeypatch):
    env = {k: v for k, v in os.environ.items() if k not in bu.OFFLINE_ENV}
    monkeypatch.setattr(os, "environ", env)  # the offline settings must not leak into other tests
    monkeypatch.setitem(sys.modules, "trl", types.ModuleType("trl"))  # earlier tests may have imported transformers/peft too
    with pytest.raises(bu.UnslothUnavailable, match=r"\[[^]]*'trl'[^]]*\] imported before unsloth"):
        bu.import_unsloth()
    assert env["HF_HUB_OFFLINE"] == "1" and env["UNSLOTH_DISABLE_STATISTICS"] == "1"
    assert env["UNSLOTH_COMPILE_LOCATION"].endswith("unsloth_compiled_cache")


def test_module_and_plan_free_paths_import_no_torch():
    code = ("import sys; import benchmarks.bench_unsloth as b; b.parse_args(['--sizes', '7B']); "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stderr


@pytest.mark.skipif(importlib.util.find_spec("unsloth") is not None, reason="unsloth is installed here")
def test_missing_unsloth_is_one_line_and_error_rows(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, str(SCRIPT), "--sizes", "1.5B,7B", "--out", str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert lines[0].startswith("bench_unsloth: unsloth does not import here: ModuleNotFoundError")
    rows = json.loads((tmp_path / "unsloth.json").read_text())
    assert [r["size"] for r in rows] == ["1.5B", "7B"]
    assert all(r["bench"] == "sft" and r["error"] == lines[0] for r in rows)
