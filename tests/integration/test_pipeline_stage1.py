"""End-to-end stage-1 data pipeline on the SmolLM2-135M test model, through the real CLI.

Run: .venv/bin/pytest -m integration tests/integration/test_pipeline_stage1.py -q
(needs `python -m phases.models.embedded prepare smollm2-135m-instruct`; skipped otherwise).

The tiny profile (tests/data/stage1_tiny.yaml) has lenient QC thresholds and stops at gate
qc_scale (policy human). SmolLM2 judges every item bad, so the runs set the documented test
hook CAI_TEST_KEEP_ALL=1 (critic scores still computed and recorded, verdicts overridden and
marked) to have data to merge; CAI_TEST_PLANT_HELDOUT=2 plants two held-out instructions among
the pilot's candidates for the leakage check to catch.

Scenarios (one module-scoped reference run, reused):
- reference run A: pilot data, QC summary, manifests; `status --json` shows the QC numbers and
  the waiting gate; the planted overlap is caught and dropped.
- crash run B: SIGKILL the runner while `pilot` has committed some batches but not all, then
  resume: records.jsonl / kept.jsonl / sft.jsonl byte-identical to A's.
- shards: A's config edited from 1 shard to 2 shards and resumed: only scale/merge re-run and
  the merged set equals the 1-shard set.
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

from helpers_runner import cli, cli_cmd, env

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "data" / "stage1_tiny.yaml"
HOOKS = {"CAI_TEST_KEEP_ALL": "1", "CAI_TEST_PLANT_HELDOUT": "2", "OMP_NUM_THREADS": "2"}
TIMEOUT = 400


def _prepared() -> bool:
    try:
        from phases.models import embedded
        from phases.models.registry import PROFILES
        return (embedded.cached_path(PROFILES["smollm2-135m-instruct"], None) / embedded.MARKER).is_file()
    except Exception:  # noqa: BLE001
        return False


if not _prepared():
    pytest.skip("smollm2-135m-instruct is not prepared (python -m phases.models.embedded prepare "
                "smollm2-135m-instruct)", allow_module_level=True)


def _config(home: Path, shard_size: int = 100) -> Path:
    cfg = home / "stage.yaml"
    cfg.write_text(yaml.safe_dump({"include": str(TINY), "scale": {"target_kept": 20, "shard_size": shard_size}}))
    return cfg


def _out(home: Path, step: str) -> Path:
    st = json.loads(cli(home, "status", "--json", check=None).stdout)
    entry = next(s for s in st["steps"] if s["name"] == step)
    assert entry["status"] == "succeeded", entry
    return home / entry["output_dir"]


def _status(home: Path) -> dict:
    return json.loads(cli(home, "status", "--json").stdout)


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    home = tmp_path_factory.mktemp("stage1-a")
    t0 = time.time()
    p = cli(home, "run", "--config", _config(home), timeout=TIMEOUT, **HOOKS)
    assert p.returncode == 3, f"expected to stop at qc_scale (exit 3)\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return {"home": home, "seconds": time.time() - t0, "stdout": p.stdout}


def test_pilot_outputs_qc_and_status(run_a):
    home = run_a["home"]
    pilot = _out(home, "pilot")
    for name in ("records.jsonl", "kept.jsonl", "qc_summary.json", "manifest.json", "final_params.json",
                 "tries/t0/records.jsonl"):
        assert (pilot / name).is_file(), name
    qc = json.loads((pilot / "qc_summary.json").read_text())
    assert qc["thresholds_passed"] is True and qc["counts"]["kept"] > 0
    kept = [json.loads(x) for x in (pilot / "kept.jsonl").read_text().splitlines()]
    rec = kept[0]
    assert {"instruction", "response", "prompt", "raw_completion", "instruction_verdict", "pair_verdict",
            "metadata"} <= set(rec)
    assert rec["prompt"].endswith(f"Instruction: {rec['instruction']}\nResponse:")
    assert {"logp_a", "logp_b", "margin", "confident", "is_good", "label"} <= set(rec["pair_verdict"])
    assert rec["metadata"]["template_disabled"] is True and rec["metadata"]["seed"] is not None
    man = json.loads((pilot / "manifest.json").read_text())
    assert man["environment"]["python"] and man["git"]["commit"] and man["loader"]["fingerprint"]
    assert man["test_hooks"]["CAI_TEST_KEEP_ALL"] == "1"
    held = _out(home, "heldout")
    hm = json.loads((held / "manifest.json").read_text())
    ho = [json.loads(x) for x in (held / "heldout.jsonl").read_text().splitlines()]
    assert ho and set(hm["record_sha256"]) == {r["id"] for r in ho}
    assert all(r["instruction_id_list"] and r["instruction"].startswith(r["base_instruction"]) for r in ho)
    st = _status(home)
    steps = {s["name"]: s for s in st["steps"]}
    assert steps["pilot"]["summary"]["thresholds_passed"] is True
    assert "pair_acceptance" in steps["pilot"]["summary"] and "rates" in steps["pilot"]["summary"]
    gates = {g["name"]: g for g in st["gates"]}
    assert gates["qc_pilot"]["status"] == "approved"
    assert gates["qc_pilot"]["check"]["summary"]["kept"] == qc["counts"]["kept"]
    assert st["state"] == "waiting" and st["detail"] == "qc_scale"
    assert gates["qc_scale"]["check"]["passed"] is True


def test_refusal_family_instructions_are_judged_by_request_safety(run_a):
    pilot = _out(run_a["home"], "pilot")
    records = [json.loads(x) for x in (pilot / "records.jsonl").read_text().splitlines()]
    refusal = [r for r in records if r["family"] == "safety_refusals"]  # demo.yaml: refusal_expected
    assert all(r["instruction_verdict"]["rubric"] == "request_safety" and r["instruction_critic_verdict"]
               for r in refusal)
    assert not any("instruction_critic_verdict" in r for r in records if r["family"] != "safety_refusals")
    rules = json.loads((pilot / "qc_summary.json").read_text())["counts"]["instruction_rules"]
    assert rules["request_safety"]["judged"] == len(refusal)
    assert rules["instruction"]["judged"] == len(records) - len(refusal)
    assert json.loads((pilot / "manifest.json").read_text())["instruction_rules"] == rules
    assert "instruction_rules" in json.loads((_out(run_a["home"], "scale") / "manifest.json").read_text())


def test_planted_heldout_overlap_is_caught(run_a):
    pilot = _out(run_a["home"], "pilot")
    leak = json.loads((pilot / "manifest.json").read_text())["leakage"]
    assert not leak["passed"] and leak["counts"]["exact"] >= 2
    assert {"planted-00", "planted-01"} <= set(leak["dropped_ids"])
    records = (pilot / "records.jsonl").read_text()
    assert "planted-0" not in records
    merged = json.loads((_out(run_a["home"], "merge") / "manifest.json").read_text())["leakage"]
    assert merged["passed"] is True  # nothing leaked through to the SFT set


@pytest.mark.crash
def test_kill_during_pilot_then_resume_is_byte_identical(run_a, tmp_path):
    home = tmp_path / "b"
    home.mkdir()
    cfg = _config(home)
    proc = subprocess.Popen(cli_cmd(home, "run", "--config", cfg), env=env(**HOOKS), cwd=str(home),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    db = home / ".runner" / "runner.db"
    killed_at, deadline = None, time.time() + TIMEOUT
    try:
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
            if not db.exists():
                continue
            try:
                with sqlite3.connect(db, timeout=1) as con:
                    n = con.execute("select count(*) from batches where step='pilot'").fetchone()[0]
            except sqlite3.OperationalError:
                continue
            if n >= 2:
                proc.send_signal(signal.SIGKILL)
                killed_at = n
                break
    finally:
        if proc.poll() is None and killed_at is None:
            proc.kill()
        proc.wait()
    assert killed_at is not None, "the runner finished or timed out before pilot committed 2 batches"
    st = _status(home)
    assert {s["name"]: s["status"] for s in st["steps"]}["pilot"] == "interrupted"
    p = cli(home, "resume", timeout=TIMEOUT, **HOOKS)
    assert p.returncode == 3, p.stdout[-3000:] + p.stderr[-3000:]
    assert "already done; resuming" in p.stdout
    a, b = _out(run_a["home"], "pilot"), _out(home, "pilot")
    for name in ("records.jsonl", "kept.jsonl", "qc_summary.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (_out(run_a["home"], "merge") / "sft.jsonl").read_bytes() == (_out(home, "merge") / "sft.jsonl").read_bytes()


def _pairs(path: Path) -> set:
    return {(r["instruction"], r["response"]) for r in map(json.loads, path.read_text().splitlines())}


def test_two_shards_merge_to_the_one_shard_result(run_a):
    home = run_a["home"]
    one_scale, one_merge = _out(home, "scale"), _out(home, "merge")
    plan1 = json.loads((one_scale / "plan.json").read_text())
    assert len(plan1["shards"]) == 1 and plan1["n_prompts"] > 0
    one = _pairs(one_merge / "sft.jsonl")
    pilot_before = _out(home, "pilot")
    _config(home, shard_size=2)  # same run config file, edited: only scale and merge re-run
    p = cli(home, "resume", timeout=TIMEOUT, **HOOKS)
    assert p.returncode == 3, p.stdout[-3000:] + p.stderr[-3000:]
    assert _out(home, "pilot") == pilot_before
    two_scale = _out(home, "scale")
    plan2 = json.loads((two_scale / "plan.json").read_text())
    assert len(plan2["shards"]) >= 2 and plan2["n_prompts"] == plan1["n_prompts"]
    for sh in plan2["shards"]:
        d = two_scale / "shards" / f"shard-{sh['shard']:04d}"
        assert json.loads((d / "manifest.json").read_text())["shard"] == sh
    assert _pairs(_out(home, "merge") / "sft.jsonl") == one
