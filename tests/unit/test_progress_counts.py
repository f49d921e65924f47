"""Progress is progress: interrupted attempts that advanced their step never dead-letter it.

The step below follows a script of what each attempt does (one entry per attempt): ``P``
reports durable progress with ``ctx.progress`` and is then interrupted (SIGTERM to itself),
``N`` is interrupted with no progress, ``F`` raises, ``.`` finishes. ``max_attempts`` is 2.
SIGKILLed attempts (the orphan path) are covered by tests/crash/test_progress_kills.py.

Run: .venv/bin/pytest tests/unit/test_progress_counts.py -q
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
import yaml

from runner import Pipeline, step
from runner.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers_runner import rows  # noqa: E402


@step(outputs=["done.json"], params={"script": ""})
def scripted(ctx):
    """Attempt k does ``script[k]`` (see the module docstring); counts attempts in work_dir."""
    counter = ctx.work_dir / "attempts.json"
    k = json.loads(counter.read_text()) if counter.exists() else 0
    counter.write_text(json.dumps(k + 1))
    what = ctx.params["script"][k]
    if what == "P":
        ctx.progress(f"unit-{k}")
    if what in "PN":
        os.kill(os.getpid(), signal.SIGTERM)  # the engine turns it into an interrupted attempt
        raise AssertionError("SIGTERM did not interrupt the step")
    if what == "F":
        raise RuntimeError("scripted failure")
    (ctx.out_dir / "done.json").write_text(json.dumps({"attempts": k + 1}))
    return {"attempts": k + 1}


pipeline = Pipeline("progress", [scripted])


def dead_letters(home: Path) -> int:
    return rows(home, "SELECT count(*) FROM events WHERE kind='step_dead_lettered'")[0][0]


def drive(tmp_path: Path, script: str) -> list[int]:
    """Run, then resume after every stop (as `runner supervise` would) until done or dead-lettered."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"pipeline": "test_progress_counts:pipeline", "max_attempts": 2,
                                   "params": {"scripted": {"script": script}}}))
    home = tmp_path / "h"
    codes = [main(["--home", str(home), "run", "--config", str(cfg), "--run-id", "t"])]
    while codes[-1] != 0 and not dead_letters(home) and len(codes) <= len(script):
        codes.append(main(["--home", str(home), "resume"]))
    return codes


@pytest.mark.parametrize("script", ["PPPP.", "NPNPNP.", "PNPNPN."])
def test_interrupted_attempts_with_progress_never_dead_letter(tmp_path, script):
    codes = drive(tmp_path, script)
    assert codes == [7] * (len(script) - 1) + [0]
    assert dead_letters(tmp_path / "h") == 0


@pytest.mark.parametrize("script, codes", [("PNN.", [7, 7, 7, 1]), ("NN.", [7, 7, 1]),
                                           ("PFPF.", [7, 1, 7, 1, 1])])
def test_attempts_without_progress_still_dead_letter(tmp_path, script, codes):
    """A crash loop (max_attempts interruptions in a row with no progress) and failures (always
    counted) still hit the cap."""
    assert drive(tmp_path, script) == codes
    assert dead_letters(tmp_path / "h") == 1
