"""The newcomer test on the real cai-stage1 pipeline: edit the pair rubric, resume, see what re-runs.

Run: .venv/bin/pytest -m "integration and slow" tests/integration/test_newcomer_stage1.py -q  (~2.5 CPU-minutes)
(needs `python -m phases.models.embedded prepare smollm2-135m-instruct`; skipped otherwise).

A temporary copy of the code (runner/, state/, phases/) runs the tiny stage-1 profile
(tests/data/stage1_tiny.yaml) up to gate qc_pilot (policy human here, so the run stops right
after pilot). Then ONE line of the pair rubric is edited in the copy's phases/critic.py and the
run resumed: prepare_model and heldout (which never judge pairs) are reused, pilot re-runs with
a new key and its records carry the new rubric's prompts. Nothing else is changed, nor bumped.
"""
from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
import yaml

from helpers_runner import cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "data" / "stage1_tiny.yaml"
HOOKS = {"CAI_TEST_KEEP_ALL": "1", "OMP_NUM_THREADS": "2"}
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


def _attempts(home: Path) -> dict[str, list[str]]:
    con = sqlite3.connect(home / ".runner" / "runner.db")
    try:
        rows = con.execute("SELECT step, cache_key FROM attempts WHERE status = 'succeeded' ORDER BY id").fetchall()
    finally:
        con.close()
    out: dict[str, list[str]] = {}
    for step, key in rows:
        out.setdefault(step, []).append(key)
    return out


def test_a_pair_rubric_edit_reruns_pilot_and_nothing_upstream(tmp_path):
    code = tmp_path / "code"
    for pkg in ("runner", "state", "phases"):
        shutil.copytree(REPO / pkg, code / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    home = tmp_path / "home"
    home.mkdir()
    cfg = home / "stage.yaml"
    cfg.write_text(yaml.safe_dump({"include": str(TINY), "gates": {"qc_pilot": {"policy": "human"}}}))
    pp = {"PYTHONPATH": str(code), **HOOKS}

    p = cli(home, "run", "--config", cfg, timeout=TIMEOUT, **pp)
    assert p.returncode == 3, p.stdout[-3000:] + p.stderr[-3000:]
    before = _attempts(home)
    # base_skill (after the pilot, issue 11) reads the held-out set only: the pair rubric is not its piece
    assert set(before) == {"prepare_model", "heldout", "pilot", "base_skill"}, before

    critic_py = code / "phases" / "critic.py"
    text = critic_py.read_text()
    old = 'bad="anything else",'
    assert text.count(old) == 1, "the pair rubric's 'bad' line moved; update this test"
    critic_py.write_text(text.replace(old, 'bad="anything else, or a response that rambles past the answer",'))

    p = cli(home, "resume", timeout=TIMEOUT, **pp)
    assert p.returncode == 3, p.stdout[-3000:] + p.stderr[-3000:]
    after = _attempts(home)
    assert after["prepare_model"] == before["prepare_model"] and after["heldout"] == before["heldout"]
    assert after["base_skill"] == before["base_skill"]
    assert len(after["pilot"]) == 2 and after["pilot"][1] != after["pilot"][0]
    assert "= heldout: done earlier" in p.stdout and "> pilot: attempt" in p.stdout
    old_out, new_out = (next((home / "artifacts").glob(f"*/pilot/{k[:12]}")) for k in after["pilot"])

    def pair_scores(d: Path) -> list:
        recs = [json.loads(x) for x in (d / "records.jsonl").read_text().splitlines()]
        return [(r["id"], r["pair_verdict"]["logp_a"], r["pair_verdict"]["logp_b"]) for r in recs if r.get("pair_verdict")]

    old_scores, new_scores = pair_scores(old_out), pair_scores(new_out)
    assert old_scores and [s[0] for s in old_scores] == [s[0] for s in new_scores]  # same items, judged again
    assert old_scores != new_scores  # by the edited rubric
