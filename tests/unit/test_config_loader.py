"""The one config loader: strict YAML, include lists, file:line origins, every error at once.

Run: .venv/bin/pytest tests/unit/test_config_loader.py -q
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from runner.config import load_config, load_yaml, read_yaml
from runner.errors import ConfigError, DataError
from runner.examples.toy import pipeline as toy

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "phases" / "stages" / "demo.yaml"


def _w(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_duplicate_keys_are_refused_by_every_config(tmp_path):
    cfg = _w(tmp_path / "c.yaml", "seed: 1\nparams:\n  process: {delay: 0.1}\nseed: 2\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: malformed YAML: .*duplicate key 'seed' \(first on line 1\)"):
        load_config(cfg, toy)
    with pytest.raises(DataError, match="duplicate key"):
        read_yaml(_w(tmp_path / "d.yaml", "a: 1\na: 1\n"), DataError)


def test_include_list_merges_in_order_and_records_file_and_line(tmp_path):
    _w(tmp_path / "a.yaml", "seed: 1\nparams:\n  process: {delay: 0.1, batch_size: 2}\n")
    _w(tmp_path / "b.yaml", "params:\n  process:\n    delay: 0.2\n")
    top = _w(tmp_path / "top.yaml", "include: [a.yaml, b.yaml]\nmax_attempts: 2\n")
    doc = load_yaml(top)
    assert doc == {"seed": 1, "max_attempts": 2, "params": {"process": {"delay": 0.2, "batch_size": 2}}}
    assert doc.sources[("params", "process", "delay")] == f"{tmp_path / 'b.yaml'}:3"
    assert doc.sources[("params", "process", "batch_size")] == f"{tmp_path / 'a.yaml'}:3"
    assert doc.sources[("max_attempts",)] == f"{top}:2"


def test_unknown_keys_are_named_with_the_file_and_line_that_set_them(tmp_path):
    _w(tmp_path / "base.yaml", "seed: 1\nparams:\n  process:\n    dealy: 0.1\n")
    top = _w(tmp_path / "top.yaml", "include: base.yaml\n")
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'base.yaml'}:4: params.process.dealy")):
        load_config(top, toy)


def test_every_error_is_reported_at_once(tmp_path):
    cfg = _w(tmp_path / "c.yaml", "bogus: 1\nseed: x\nparams:\n  process: {dealy: 1}\ngates:\n  approve_items: {policy: maybe}\n")
    with pytest.raises(ConfigError) as e:
        load_config(cfg, toy)
    lines = str(e.value).splitlines()
    assert len(lines) == 4, lines
    assert [ln.split(": ", 1)[0] for ln in lines] == [f"{cfg}:{n}" for n in (1, 2, 4, 6)]


def test_stage_and_runner_errors_together_with_lines(tmp_path):
    cfg = _w(tmp_path / "run.yaml", f"include: {DEMO}\npilot: {{size: ten}}\ngeneration:\n  responses: {{temprature: 0.3}}\n"
                                     "max_attempts: 0\n")
    from phases.pipeline import pipeline

    with pytest.raises(ConfigError) as e:
        load_config(cfg, pipeline)
    text = str(e.value)
    assert f"{cfg}:2: pilot.size = 'ten'" in text
    assert f"{cfg}:4: generation.responses.temprature" in text
    assert f"{cfg}:5: 'max_attempts' must be >= 1" in text


def test_runner_validate_prints_every_error_with_file_and_line(tmp_path):
    cfg = _w(tmp_path / "run.yaml", f"include: {DEMO}\npilot: {{size: ten}}\nqc: {{max_runaway_rate: 2}}\n")
    p = subprocess.run([sys.executable, "-m", "runner", "--home", str(tmp_path), "validate", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stdout + p.stderr
    out = p.stdout + p.stderr
    assert f"{cfg}:2: pilot.size" in out and f"{cfg}:3: qc.max_runaway_rate = 2" in out
