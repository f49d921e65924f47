"""The multi-turn stage on the tiny random Qwen2 model, through the real CLI; a toy stage added as YAML only.

Run: .venv/bin/pytest -m integration tests/integration/test_multiturn_stage.py -q   (about 2 min)

- The toy stage (written here as YAML + a seeds file, no Python) includes phases/stages/multiturn.yaml,
  switches its families off and declares its own; it runs end to end: held-out plans first, the
  data step (answers turn by turn, every turn checked), mt_qc, SFT on assistant turns only,
  the paired per-turn / per-conversation evaluation, and stops at mt_gate.
- Kill/resume: the same config in a fresh home, SIGKILLed while mt_data has committed some
  batches, then resumed: conversations.jsonl, sft.jsonl and qc.json are byte-identical to the
  uninterrupted run's.
- The loss mask with the model's real tokenizer: trained tokens decode to the assistant turns only.
"""
from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from helpers_models import tiny_dir
from helpers_runner import cli, cli_cmd, env

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 400
HOOKS = {"CAI_TEST_KEEP_ALL": "1", "OMP_NUM_THREADS": "2"}


def _toy(home: Path, mt_qc: str = "approve") -> Path:
    (home / "toy_seeds.yaml").write_text(yaml.safe_dump({"families": {"trivia": [
        "Tell me a fact about the moon.", "Tell me a fact about owls.", "Tell me a fact about volcanoes.",
        "Tell me a fact about honey.", "Tell me a fact about glaciers."]}}))
    cfg = {
        "include": str(REPO / "phases" / "stages" / "multiturn.yaml"),
        "stage": {"name": "toy-multiturn", "description": "A toy stage added as YAML only."},
        "seeds_file": "toy_seeds.yaml",
        "families": {"explain": {"enabled": False}, "advise": {"enabled": False}, "describe": {"enabled": False},
                     "trivia": {"description": "Short facts, then follow-ups."}},
        "generation": {"batch_size": 2, "responses": {"max_new_tokens": 6}},
        # the tiny model's context is 256 tokens: a short header and short follow-ups
        "multiturn": {"conversations": 8, "heldout_conversations": 4, "min_kept": 1, "max_turns": 3,
                      "header": "A chat.", "followups": ["More?", "Why?", "And then?"]},
        "params": {"prepare_model": {"model": str(tiny_dir()), "device": "cpu"},
                   "mt_sft": {"max_steps": 2, "per_device_batch_size": 2, "grad_accum": 1, "max_seq_len": 256,
                              "save_steps": 1, "logging_steps": 1, "dev_fraction": 0.0, "require_qc_pass": False},
                   "mt_evaluate": {"max_new_tokens": 6, "batch_size": 4}},
        "gates": {"mt_qc": {"policy": mt_qc}, "mt_gate": {"policy": "auto"}},
        **({"demo": True} if mt_qc == "approve" else {}),  # 'approve' is demo-only (issue 18)
    }
    path = home / "toy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _status(home: Path) -> dict:
    return json.loads(cli(home, "status", "--json", check=0).stdout)


def _out(home: Path, step: str) -> Path:
    entry = next(s for s in _status(home)["steps"] if s["name"] == step)
    assert entry["status"] == "succeeded", entry
    return home / entry["output_dir"]


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    home = tmp_path_factory.mktemp("mt-a")
    p = cli(home, "run", "--config", _toy(home), timeout=TIMEOUT, **HOOKS)
    assert p.returncode == 3, f"expected to stop at mt_gate\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return home


def test_toy_stage_runs_end_to_end(run_a):
    home = run_a
    st = _status(home)
    assert st["run"]["pipeline"] == "phases.multiturn_steps:pipeline" and st["lineage"] is None
    held = [json.loads(x) for x in (_out(home, "mt_heldout") / "heldout.jsonl").read_text().splitlines()]
    convs = [json.loads(x) for x in (_out(home, "mt_data") / "conversations.jsonl").read_text().splitlines()]
    assert len(held) == 4 and len(convs) == 8
    assert not {c["request"] for c in convs} & {h["request"] for h in held}, "held-out requests stay out of training"
    for c in convs:
        assert 2 <= len(c["answers"]) == len(c["turns"]) <= 3
        assert len(c["score"]["turns"]) == len(c["turns"])
    qc = json.loads((_out(home, "mt_data") / "qc.json").read_text())
    assert qc["test_keep_all"] is True and qc["counts"]["kept"] >= 1
    man = json.loads((_out(home, "mt_data") / "manifest.json").read_text())
    assert man["test_hooks"]["CAI_TEST_KEEP_ALL"] == "1" and man["lineage"] == []
    sft = _out(home, "mt_sft")
    assert (sft / "adapter" / "adapter_config.json").is_file()
    tm = json.loads((sft / "training_manifest.json").read_text())
    assert tm["format"]["loss"].startswith("assistant turns only")
    assert tm["decoder_autocast"]["applied"] is False  # the manifest records the training precision (CPU: fp32)
    ev = json.loads((_out(home, "mt_evaluate") / "eval.json").read_text())
    assert ev["conversation"]["overall"]["n"] == 4
    assert set(ev["conversation"]["per_type"]) <= {"carry_constraint", "recall_fact", "resolve_reference", "correction"}
    items = [json.loads(x) for x in (_out(home, "mt_evaluate") / "items.jsonl").read_text().splitlines()]
    assert all(set(r["arms"]) == {"base", "trained"} and len(r["arms"]["base"]["answers"]) == len(r["turns"])
               for r in items)
    assert ev["gate"]["line"].startswith(("GO", "NO-GO"))
    assert st["gates"][-1]["name"] == "mt_gate"


@pytest.mark.crash
def test_kill_during_mt_data_then_resume_is_byte_identical(run_a, tmp_path):
    home = tmp_path / "b"
    home.mkdir()
    cfg = _toy(home, mt_qc="human")
    proc = subprocess.Popen(cli_cmd(home, "run", "--config", cfg), env=env(CAI_TEST_MT_BATCH_DELAY_S="0.5", **HOOKS),
                            cwd=str(home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    db = home / ".runner" / "runner.db"
    killed_at, deadline = None, time.time() + TIMEOUT
    try:
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
            if not db.exists():
                continue
            try:
                with sqlite3.connect(db, timeout=1) as con:
                    n = con.execute("select count(*) from batches where step='mt_data'").fetchone()[0]
            except sqlite3.OperationalError:
                continue
            if n >= 3:
                proc.send_signal(signal.SIGKILL)
                killed_at = n
                break
    finally:
        if proc.poll() is None and killed_at is None:
            proc.kill()
        proc.wait()
    assert killed_at is not None, "the runner finished or timed out before mt_data committed 3 batches"
    assert {s["name"]: s["status"] for s in _status(home)["steps"]}["mt_data"] == "interrupted"
    p = cli(home, "resume", timeout=TIMEOUT, **HOOKS)
    assert p.returncode == 3, p.stdout[-3000:] + p.stderr[-3000:]
    a, b = _out(run_a, "mt_data"), _out(home, "mt_data")
    for name in ("conversations.jsonl", "sft.jsonl", "qc.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_loss_mask_with_the_real_tokenizer():
    from phases.models.loader import load_model
    from phases.multiturn import encode_conversation
    from phases.prompts import TRANSCRIPT_HEADER

    m = load_model(tiny_dir(), device="cpu", run_sentinels=False)
    turns = [("Tell me a fact about owls.", "Owls can turn their heads far."), ("Why?", "Their necks have many bones.")]
    ex = encode_conversation(m.encode, TRANSCRIPT_HEADER, turns)
    m.check_ids(ex["input_ids"])
    trained = [m.decode(ex["input_ids"][s:e]) for s, e in ex["assistant_spans"]]
    assert trained == [" Owls can turn their heads far.\nUser:", " Their necks have many bones.\nUser:"]
    masked = [i for i, lab in zip(ex["input_ids"], ex["labels"]) if lab == -100]
    assert "Tell me a fact about owls." in m.decode(masked) and "Why?" in m.decode(masked)
    n_trained = sum(e - s for s, e in ex["assistant_spans"])
    assert sum(1 for lab in ex["labels"] if lab != -100) == n_trained
