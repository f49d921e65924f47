"""Progress is progress, with real SIGKILLs: more kills than ``max_attempts`` never dead-letter a
step whose attempts keep advancing it.

- SFT on the tiny random Qwen2 is SIGKILLed right after each of its checkpoints (2, 4, 6: three
  kills, ``max_attempts`` 2) and still finishes training from checkpoint 6.
- The toy's ``process`` step is SIGKILLed three times before an attempt's first batch, each
  time followed by an attempt that commits a batch and is killed too; it still finishes.

Run: .venv/bin/pytest -m crash tests/crash/test_progress_kills.py -q   (about 2 min on 2 cores)
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers_runner import (REPO, assert_items_exactly_once, batches_done, cli, final_dir, kill9,  # noqa: E402
                            rows, spawn, toy_config, wait_for)

pytestmark = pytest.mark.crash
FIXTURES = Path(__file__).resolve().parents[1] / "integration"
# this checkout's code in every child, whatever its working directory (cli() runs in the home)
PATH = {"PYTHONPATH": os.pathsep.join([str(FIXTURES), str(REPO)])}


def _progress(home: Path, step: str) -> list[str]:
    try:
        return [json.loads(r[0])["marker"] for r in rows(
            home, "SELECT data_json FROM events WHERE kind='step_progress' AND step=? ORDER BY id", step)]
    except Exception:  # the database may not exist yet
        return []


def _dead_letters(home: Path) -> int:
    return rows(home, "SELECT count(*) FROM events WHERE kind='step_dead_lettered'")[0][0]


def test_sft_killed_at_every_checkpoint_still_finishes(tmp_path):
    cfg = {"pipeline": "sft_fixture_pipeline:pipeline", "seed": 11, "max_attempts": 2,
           "params": {"prepare_model": {"model": "tiny-random-qwen2"},
                      "sft": {"max_steps": 8, "save_steps": 2, "per_device_batch_size": 2, "grad_accum": 1,
                              "max_seq_len": 128, "logging_steps": 1, "dev_fraction": 0.0, "lora_r": 4,
                              "lora_alpha": 8, "save_total_limit": 10},
                      "evaluate": {"max_new_tokens": 4, "arms": ["instruction"], "critic": False, "n_boot": 100,
                                   "ifeval_limit": 0, "task_critic": False, "refusal_critic": False}},
           "gates": {"sft_gate": {"policy": "auto"}}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    args = ("run", "--config", tmp_path / "cfg.yaml", "--run-id", "t")
    for n in (1, 2, 3):  # kill right after checkpoints 2, 4 and 6
        p = spawn(tmp_path, *args, CAI_SFT_STEP_DELAY_S="1.0", **PATH)
        try:
            assert wait_for(lambda: len(_progress(tmp_path, "sft")) >= n or p.poll() is not None,
                            timeout=300, every=0.05)
            assert p.poll() is None, f"the runner ended (code {p.returncode}) before checkpoint {2 * n}: " + (
                p.stdout.read() if p.stdout else "")
        finally:
            kill9(p)
        assert _progress(tmp_path, "sft")[n - 1] == f"checkpoint-{2 * n}"
    r = cli(tmp_path, "resume", timeout=600, **PATH)
    assert r.returncode == 3, r.stdout + r.stderr  # trained; waits at sft_gate (random model: no lift)
    assert _dead_letters(tmp_path) == 0
    statuses = [x[0] for x in rows(tmp_path, "SELECT status FROM attempts WHERE step='sft' ORDER BY id")]
    assert statuses == ["interrupted"] * 3 + ["succeeded"]
    man = json.loads((final_dir(tmp_path, "sft") / "training_manifest.json").read_text())
    assert man["resumed_from"]["step"] >= 6 and man["metrics"]["global_step"] == 8


def test_toy_killed_before_first_batches_still_finishes(tmp_path):
    cfg = toy_config(tmp_path / "c.yaml", items=12, batch_size=2, delay=0.5, max_attempts=2)
    home = tmp_path / "h"
    cli(home, "init", "--config", cfg, "--run-id", "t", check=0, **PATH)

    def attempts() -> list:
        try:
            return rows(home, "SELECT id, status FROM attempts WHERE step='process' ORDER BY id")
        except Exception:
            return []

    for _ in range(3):
        # an attempt killed before its first batch (each batch takes about 1 s)
        seen, before = len(attempts()), batches_done(home)
        p = spawn(home, "resume", **PATH)
        try:
            assert wait_for(lambda: len(attempts()) > seen or p.poll() is not None, timeout=120, every=0.02)
        finally:
            kill9(p)
        assert batches_done(home) == before, "the kill was meant to land before the attempt's first batch"
        # then an attempt that commits one batch and is killed
        p = spawn(home, "resume", **PATH)
        try:
            assert wait_for(lambda: batches_done(home) > before or p.poll() is not None, timeout=120, every=0.02)
        finally:
            kill9(p)
    assert cli(home, "resume", timeout=120, **PATH).returncode == 0
    assert _dead_letters(home) == 0
    assert_items_exactly_once(home, 12)
