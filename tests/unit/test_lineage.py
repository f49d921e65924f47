"""Chaining runs in the runner, with the toy pipeline (no ML): --from-run, the from: key, lineage
in status, the parent view recomputed on resume.

Run: .venv/bin/pytest tests/unit/test_lineage.py -q
"""
from __future__ import annotations

import json

import yaml

from helpers_runner import cli, rows, toy_config


def _status(home, run):
    return json.loads(cli(home, "status", "--json", "--run", run, check=0).stdout)


def _stored(home, run):
    return json.loads(rows(home, "select config_json from runs where id=?", run)[0]["config_json"])


def test_from_run_exposes_the_parent_outputs_and_shows_lineage(tmp_path):
    home = tmp_path
    parent = toy_config(home / "parent.yaml", items=4)
    cli(home, "run", "--config", parent, "--run-id", "p", check=0)
    child = toy_config(home / "child.yaml", items=3)
    out = cli(home, "init", "--config", child, "--from-run", "p", "--run-id", "c", check=0)
    assert "created run c" in out.stdout
    fr = _stored(home, "c")["from_run"]
    assert fr["run_id"] == "p" and fr["status"] == "done" and fr["chain"] == []
    got = {r["step"]: r["output_hash"] for r in rows(home, "select step, output_hash from attempts where run_id='p' "
                                                            "and status='succeeded'")}
    assert {k: v["hash"] for k, v in fr["outputs"].items()} == got
    assert all((home / v["dir"]).is_dir() for v in fr["outputs"].values())
    st = _status(home, "c")
    assert st["lineage"]["line"] == "from run p" and st["lineage"]["runs"][0]["run_id"] == "p"
    assert "lineage: from run p" in cli(home, "status", "--run", "c", check=0).stdout
    assert _status(home, "p")["lineage"] is None
    # a grandchild carries the whole chain
    cli(home, "run", "--config", child, "--run-id", "c", check=0)
    cli(home, "init", "--config", toy_config(home / "g.yaml", items=2), "--from-run", "c", "--run-id", "g", check=0)
    assert _status(home, "g")["lineage"]["line"] == "from run c <- run p"


def test_parent_view_is_recomputed_on_resume(tmp_path):
    home = tmp_path
    parent = toy_config(home / "parent.yaml", items=4)
    cli(home, "run", "--config", parent, "--run-id", "p", check=0)
    cli(home, "init", "--config", toy_config(home / "child.yaml", items=3), "--from-run", "p", "--run-id", "c", check=0)
    before = _stored(home, "c")["from_run"]["outputs"]["make_items"]["hash"]
    toy_config(parent, items=6)  # the parent's first step now makes other bytes
    cli(home, "resume", "--run", "p", check=0)
    cli(home, "resume", "--run", "c", check=0)
    after = _stored(home, "c")["from_run"]["outputs"]["make_items"]["hash"]
    assert after != before, "a re-run parent must show up in the child's from_run on its next resume"


def test_from_key_and_errors(tmp_path):
    home = tmp_path
    parent = toy_config(home / "parent.yaml", items=4)
    child = toy_config(home / "child.yaml", items=3)
    cfg = yaml.safe_load(child.read_text())
    cfg["from"] = {"config": "parent.yaml"}
    child.write_text(yaml.safe_dump(cfg))
    p = cli(home, "init", "--config", child, "--run-id", "c0")
    assert p.returncode == 2 and "no run of" in p.stderr and "parent.yaml" in p.stderr
    cli(home, "run", "--config", parent, "--run-id", "p", check=0)
    cli(home, "init", "--config", child, "--run-id", "c", check=0)
    assert _stored(home, "c")["from_run"]["run_id"] == "p"
    p = cli(home, "init", "--config", child, "--from-run", "nope", "--run-id", "c2")
    assert p.returncode == 2 and "--from-run nope: no such run" in p.stderr
    cfg["from_run"] = "p"
    child.write_text(yaml.safe_dump(cfg))
    p = cli(home, "validate", "--config", child)
    assert p.returncode == 2 and "from_run" in p.stderr
    cfg.pop("from_run")
    cfg["from"] = {"run": 3}
    child.write_text(yaml.safe_dump(cfg))
    p = cli(home, "validate", "--config", child)
    assert p.returncode == 2 and "from = " in p.stderr
