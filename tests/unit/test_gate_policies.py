"""Gate policies without a reviewer: auto (check decides, failure waits) and approve (demo only)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from runner.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _cfg(tmp: Path, policy: str) -> Path:
    p = tmp / "cfg.yaml"
    p.write_text(yaml.safe_dump({"pipeline": "runner.examples.toy:pipeline", "seed": 1,
                                 "params": {"make_items": {"items": 3}, "process": {"delay": 0.0}},
                                 "gates": {"approve_items": {"policy": policy}},
                                 **({"demo": True} if policy == "approve" else {})}))
    return p


def test_auto_without_check_passes(tmp_path):
    home = tmp_path / "h"
    assert main(["--home", str(home), "run", "--config", str(_cfg(tmp_path, "auto"))]) == 0


def test_approve_policy_passes_and_says_so(tmp_path, capsys):
    home = tmp_path / "h"
    assert main(["--home", str(home), "run", "--config", str(_cfg(tmp_path, "approve"))]) == 0
    out = capsys.readouterr().out
    assert "approved automatically by policy 'approve'" in out and "no decision was taken" in out
    main(["--home", str(home), "status", "--json"])
    st = json.loads(capsys.readouterr().out)
    assert st["gates"][0]["decided_by"] == "policy:approve"
    assert "demo profile" in st["gates"][0]["note"]


def test_unknown_policy_is_a_config_error(tmp_path, capsys):
    assert main(["--home", str(tmp_path / "h"), "run", "--config", str(_cfg(tmp_path, "yolo"))]) == 2
    assert "approve_items.policy" in capsys.readouterr().err


def test_approve_policy_refused_unless_the_config_is_a_demo(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"pipeline": "runner.examples.toy:pipeline", "seed": 1,
                                   "gates": {"approve_items": {"policy": "approve"}}}))
    home = tmp_path / "h"
    assert main(["--home", str(home), "run", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "gates.approve_items.policy = 'approve'" in err and "demo: true" in err
    assert not home.exists()


def test_a_demo_run_records_that_it_is_a_demo(tmp_path, capsys):
    home = tmp_path / "h"
    assert main(["--home", str(home), "run", "--config", str(_cfg(tmp_path, "approve"))]) == 0
    capsys.readouterr()
    main(["--home", str(home), "log", "--kind", "demo_profile", "--json"])
    assert "demo: true" in capsys.readouterr().out
