"""Runner hardening found by fault injection (issue 18, D6-D13): each test reproduces one defect.

D6 secrets and bad reviewer settings at validate; D7 a foreign or zero-byte runner.db; D8 a
read-only artifacts/ directory; D9 clear errors instead of tracebacks; D10 lease_ttl_s <= 0;
D11 a param set to null; D12 `supervise --config bad.yaml` leaves no state; D13 a kill during
cleanup after success never leaves a `.work-*` directory for good. (D5 is in
tests/crash/test_supervise_backoff.py: it needs real processes.)

Run: .venv/bin/python -m pytest tests/unit/test_runner_hardening.py -q
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from runner.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers_runner import cli, rows, toy_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def run_cli(capsys, home, *args):
    code = main(["--home", str(home), *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def edited_toy(path: Path, **top) -> Path:
    cfg = yaml.safe_load(toy_config(path, items=3, gate="human").read_text())
    cfg.update(top)
    path.write_text(yaml.safe_dump(cfg, sort_keys=True))
    return path


# ---- D6: secrets never stored; reviewer settings checked at validate ---------------------------
@pytest.mark.parametrize("reviewer, pattern", [
    ({"api_key": "sk-live-abcdef0123456789"}, r"must not contain 'api_key'"),
    ({"base_url": "https://user:hunter2secret@llm.example.com/v1"}, r"password"),
    ({"modle": "gpt-5"}, r"unknown reviewer config key\(s\): modle"),
    ({"backend": "command", "command": ["no-such-reviewer-binary-xyz", "exec"]}, r"not found on PATH"),
    ({"backend": "command", "command": []}, r"non-empty list"),
])
@pytest.mark.parametrize("command", ["validate", "init"])
def test_d6_bad_reviewer_settings_refused_and_never_stored(tmp_path, capsys, reviewer, pattern, command):
    cfg = edited_toy(tmp_path / "c.yaml", reviewer=reviewer)
    home = tmp_path / "h"
    code, out, err = run_cli(capsys, home, command, "--config", cfg)
    assert code == 2, out + err
    assert "reviewer" in err and __import__("re").search(pattern, err), err
    for secret in ("sk-live-abcdef0123456789", "hunter2secret"):
        assert secret not in out + err
    assert not (home / ".runner").exists()  # nothing was stored


def test_d6_gate_level_reviewer_checked_too(tmp_path, capsys):
    cfg = edited_toy(tmp_path / "c.yaml", gates={"approve_items": {"policy": "review",
                                                                   "reviewer": {"api_key": "sk-xyz0123456789"}}})
    code, out, err = run_cli(capsys, tmp_path / "h", "validate", "--config", cfg)
    assert code == 2 and "gates.approve_items.reviewer" in err and "sk-xyz0123456789" not in err, err


# ---- D7: never write runner tables into another app's (or a zero-byte) database -------------------
def _foreign_db(home: Path) -> Path:
    (home / ".runner").mkdir(parents=True)
    path = home / ".runner" / "runner.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    con.execute("INSERT INTO notes (body) VALUES ('mine')")
    con.commit()
    con.close()
    return path


def _tables(path: Path) -> set[str]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        con.close()


@pytest.mark.parametrize("args", [["status"], ["status", "--json"], ["brief"],
                                  ["init", "--config", str(ROOT / "runner/examples/toy.yaml")]])
def test_d7_foreign_database_is_refused_untouched(tmp_path, capsys, args):
    path = _foreign_db(tmp_path)
    before = path.read_bytes()
    code, out, err = run_cli(capsys, tmp_path, *args)
    assert code == 2, out + err
    assert "not a runner state database" in err and "notes" in err, err
    assert _tables(path) == {"notes"} and path.read_bytes() == before


@pytest.mark.parametrize("args", [["status"], ["brief"], ["init", "--config", str(ROOT / "runner/examples/toy.yaml")]])
def test_d7_zero_byte_database_is_refused_untouched(tmp_path, capsys, args):
    (tmp_path / ".runner").mkdir()
    path = tmp_path / ".runner" / "runner.db"
    path.touch()
    code, out, err = run_cli(capsys, tmp_path, *args)
    assert code == 2, out + err
    assert "empty (0 bytes)" in err, err
    assert path.stat().st_size == 0


# ---- D8: a read-only artifacts/ directory -------------------------------------------------------
_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@functools.lru_cache(maxsize=1)
def _nobody_can_import_runner() -> bool:
    p = subprocess.run([*_NOBODY, sys.executable, "-c", "import runner.cli, sqlmodel"],
                       capture_output=True, text=True, timeout=60, cwd="/")
    return p.returncode == 0


def _as_owner_of(home: Path, cmd: list[str]) -> list[str]:
    """Root ignores permissions: run as nobody, owning the home (as a normal user would)."""
    if os.geteuid() != 0:
        return cmd
    if shutil.which("setpriv") is None or not _nobody_can_import_runner():
        pytest.skip("running as root and the unprivileged user cannot run this checkout: "
                    "cannot test file permissions")
    for p in [home, *home.rglob("*")]:
        os.chown(p, 65534, 65534, follow_symlinks=False)
    return [*_NOBODY, *cmd]


def test_d8_read_only_artifacts_fail_the_attempt_cleanly(capsys):
    tmp = Path(tempfile.mkdtemp(prefix="runner-ro-"))
    try:
        tmp.chmod(0o755)
        home = tmp / "home"
        cfg = toy_config(tmp / "c.yaml", items=3, gate="human")
        cfg.chmod(0o644)
        code, out, err = run_cli(capsys, home, "init", "--config", cfg, "--run-id", "t")
        assert code == 0, out + err
        (home / "artifacts").mkdir()
        cmd = _as_owner_of(home, [sys.executable, "-m", "runner", "--home", str(home), "resume"])
        (home / "artifacts").chmod(0o555)
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd="/",
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert p.returncode == 1, p.stdout + p.stderr
        assert "Traceback" not in p.stderr, p.stderr
        assert "artifacts" in p.stdout + p.stderr and "writable" in p.stdout + p.stderr, p.stdout + p.stderr
        att = rows(home, "SELECT status, error FROM attempts")
        assert [a[0] for a in att] == ["failed"] and "artifacts" in att[0][1]
        assert rows(home, "SELECT released FROM leases")[0][0] == 1
    finally:
        for p in [tmp, *tmp.rglob("*")]:
            if p.is_dir():
                p.chmod(0o755)
        shutil.rmtree(tmp, ignore_errors=True)


# ---- D9: clear errors, no tracebacks ------------------------------------------------------------
def test_d9_non_utf8_config(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(b"pipeline: runner.examples.toy:pipeline\ngoal: caf\xe9 \xff\n")
    code, out, err = run_cli(capsys, tmp_path / "h", "validate", "--config", cfg)
    assert code == 2 and "UTF-8" in err and str(cfg) in err, err


def test_d9_pipeline_naming_a_plain_function_is_not_called(tmp_path, capsys, monkeypatch):
    mod = tmp_path / "plainmod_d9.py"
    marker = tmp_path / "called"
    mod.write_text(f"def launch():\n    open({str(marker)!r}, 'w').write('x')\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out, err = run_cli(capsys, tmp_path / "h", "validate", "--pipeline", "plainmod_d9:launch")
    assert code == 2 and "not a runner Pipeline" in err, err
    assert not marker.exists(), "the named function was called"


def test_d9_pipeline_module_raising_on_import(tmp_path, capsys, monkeypatch):
    (tmp_path / "brokenmod_d9.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out, err = run_cli(capsys, tmp_path / "h", "validate", "--pipeline", "brokenmod_d9:pipeline")
    assert code == 2 and "brokenmod_d9" in err and "RuntimeError: boom at import" in err, err


@pytest.mark.parametrize("settings", [
    '{"hooks": {"SessionStart": {"matcher": "x"}}}',
    '{"hooks": {"PreCompact": "nope"}}',
    b'{"a": "\xff"}',
])
def test_d9_hooks_install_over_malformed_settings(tmp_path, capsys, settings):
    path = tmp_path / ".claude" / "settings.json"
    path.parent.mkdir()
    (path.write_bytes if isinstance(settings, bytes) else path.write_text)(settings)
    before = path.read_bytes()
    code, out, err = run_cli(capsys, tmp_path, "hooks", "install", "--project", tmp_path)
    assert code == 2 and str(path) in err and "nothing was changed" in err, out + err
    assert path.read_bytes() == before


# ---- D10 / D11: values that validate must be able to run -----------------------------------------
@pytest.mark.parametrize("ttl", [0, -5, 0.0])
def test_d10_non_positive_lease_ttl_refused(tmp_path, capsys, ttl):
    cfg = edited_toy(tmp_path / "c.yaml", lease_ttl_s=ttl)
    code, out, err = run_cli(capsys, tmp_path / "h", "validate", "--config", cfg)
    assert code == 2 and "lease_ttl_s" in err and "> 0" in err, err


def test_d10_non_positive_lease_ttl_env_refused(tmp_path, capsys, monkeypatch):
    cfg = toy_config(tmp_path / "c.yaml", items=3, gate="human")
    monkeypatch.setenv("RUNNER_LEASE_TTL", "0")
    code, out, err = run_cli(capsys, tmp_path / "h", "run", "--config", cfg)
    assert code == 2 and "RUNNER_LEASE_TTL" in err, out + err


def test_d11_param_set_to_null_refused(tmp_path, capsys):
    cfg = toy_config(tmp_path / "c.yaml", items=3, gate="human")
    data = yaml.safe_load(cfg.read_text())
    data["params"]["make_items"]["items"] = None
    cfg.write_text(yaml.safe_dump(data))
    code, out, err = run_cli(capsys, tmp_path / "h", "validate", "--config", cfg)
    assert code == 2 and "params.make_items.items" in err and "null" in err, err


# ---- D12: a bad config leaves no state behind -----------------------------------------------------
def test_d12_supervise_with_a_bad_config_leaves_no_runner_db(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pipeline: runner.examples.toy:pipeline\nparams: {nosuch: {}}\n")
    home = tmp_path / "h"
    home.mkdir()
    p = cli(home, "supervise", "--config", bad)
    assert p.returncode == 2 and "nosuch" in p.stderr, p.stdout + p.stderr
    assert not (home / ".runner").exists()


# ---- D13: a kill during cleanup after success ---------------------------------------------------
def test_d13_kill_during_cleanup_leaves_no_work_dir_for_good(tmp_path):
    cfg = toy_config(tmp_path / "c.yaml", items=6, gate="auto")
    home = tmp_path / "h"
    p = cli(home, "run", "--config", cfg, "--run-id", "t", RUNNER_FAULT="before_cleanup:process")
    assert p.returncode == 137, p.stdout + p.stderr
    assert list((home / "artifacts" / "t" / "process").glob(".work-*")), "the fault did not hit cleanup"
    cli(home, "resume", check=0)
    assert not list((home / "artifacts" / "t").glob("*/.work-*"))
    assert not list((home / "artifacts" / "t").glob("*/.staging-*"))
