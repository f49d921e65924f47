"""`runner hooks`: install/uninstall merging, the installed command run as the agent runs it
(a shell subprocess) at each state of the toy run, the PreCompact note, and failing open.

    .venv/bin/pytest tests/unit/test_hooks.py -q
"""
from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import pytest

from runner.cli import main
from runner.hooks import MARKER, install, uninstall

PRE_EXISTING = {
    "model": "opus",
    "permissions": {"allow": ["Bash(ls:*)"]},
    "hooks": {
        "SessionStart": [{"matcher": "startup", "hooks": [{"type": "command", "command": "echo mine"}]}],
        "PreToolUse": [{"matcher": "Bash", "hooks": [{"type": "command", "command": "guard.sh"}]}],
    },
}


def write_cfg(d: Path, gate: str = "human", fail_on_item: int = -1) -> Path:
    cfg = d / "cfg.yaml"
    cfg.write_text(
        "pipeline: runner.examples.toy:pipeline\nseed: 1234\n"
        "params:\n  make_items: {items: 8}\n"
        f"  process: {{delay: 0.0, batch_size: 4, fail_on_item: {fail_on_item}}}\n"
        f"gates:\n  approve_items: {{policy: {gate}}}\n")
    return cfg


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.delenv("RUNNER_HOME", raising=False)
    p = tmp_path / "proj"
    (p / ".claude").mkdir(parents=True)
    (p / ".claude" / "settings.json").write_text(json.dumps(PRE_EXISTING, indent=2))
    return p


def settings(project: Path) -> dict:
    return json.loads((project / ".claude" / "settings.json").read_text())


def our_commands(data: dict, event: str) -> list[tuple[str, str]]:
    return [(g.get("matcher"), h["command"]) for g in data.get("hooks", {}).get(event, [])
            for h in g["hooks"] if MARKER in h["command"]]


def hook_cmd(project: Path, event: str = "SessionStart") -> str:
    return our_commands(settings(project), event)[0][1]


def run_hook(cmd: str, stdin: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", cmd], input=json.dumps(stdin), capture_output=True, text=True,
                          cwd=cwd, timeout=60)


def briefing(cmd: str, cwd: Path, source: str = "compact") -> str:
    r = run_hook(cmd, {"hook_event_name": "SessionStart", "source": source, "session_id": "s1"}, cwd)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["hookSpecificOutput"]["hookEventName"] == "SessionStart"
    return out["hookSpecificOutput"]["additionalContext"]


# ---- install / uninstall ---------------------------------------------------------------------------------
def test_install_keeps_keys_is_idempotent_and_uninstall_restores(project, tmp_path):
    home = tmp_path / "home"
    install(project, home)
    once = settings(project)
    install(project, home)
    assert settings(project) == once  # idempotent
    assert once["model"] == "opus" and once["permissions"] == PRE_EXISTING["permissions"]
    assert once["hooks"]["PreToolUse"] == PRE_EXISTING["hooks"]["PreToolUse"]
    assert once["hooks"]["SessionStart"][0] == PRE_EXISTING["hooks"]["SessionStart"][0]
    starts = our_commands(once, "SessionStart")
    assert sorted(m for m, _ in starts) == ["clear", "compact", "resume", "startup"]
    assert sorted(m for m, _ in our_commands(once, "PreCompact")) == ["auto", "manual"]
    cmd = starts[0][1]
    assert f"--home {home}" in cmd and "hooks session-start" in cmd and cmd.split()[0].startswith("/")
    assert "|| true" in cmd
    _, n = uninstall(project)
    assert n == 6
    assert settings(project) == PRE_EXISTING
    assert uninstall(project)[1] == 0


def test_install_into_missing_settings_then_uninstall_leaves_no_hooks(tmp_path):
    p = tmp_path / "fresh"
    p.mkdir()
    install(p, tmp_path)
    assert our_commands(settings(p), "SessionStart")
    uninstall(p)
    assert settings(p) == {}


def test_install_refuses_invalid_json_and_changes_nothing(project, tmp_path):
    bad = '{"model": "opus",'
    (project / ".claude" / "settings.json").write_text(bad)
    with pytest.raises(ValueError, match="not valid JSON"):
        install(project, tmp_path)
    assert (project / ".claude" / "settings.json").read_text() == bad


def test_cli_install_codex_and_uninstall(tmp_path, capsys):
    p = tmp_path / "cx"
    (p / ".codex").mkdir(parents=True)
    (p / ".codex" / "hooks.json").write_text(json.dumps({"hooks": {"Stop": [{"hooks": [
        {"type": "command", "command": "notify.sh"}]}]}}))
    assert main(["--home", str(tmp_path), "hooks", "install", "--agent", "codex", "--project", str(p)]) == 0
    data = json.loads((p / ".codex" / "hooks.json").read_text())
    assert data["hooks"]["Stop"][0]["hooks"][0]["command"] == "notify.sh"
    (matcher, cmd), = our_commands(data, "SessionStart")
    assert matcher == "startup|resume|clear|compact" and "--agent codex" in cmd
    assert main(["hooks", "uninstall", "--agent", "codex", "--project", str(p)]) == 0
    assert json.loads((p / ".codex" / "hooks.json").read_text()) == {"hooks": {"Stop": [{"hooks": [
        {"type": "command", "command": "notify.sh"}]}]}}


def test_home_defaults_to_project_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("RUNNER_HOME", raising=False)
    p = tmp_path / "p"
    p.mkdir()
    assert main(["hooks", "install", "--project", str(p)]) == 0
    assert f"--home {p.resolve()} " in hook_cmd(p)


# ---- the installed command, at each state ------------------------------------------------------------
def cli(home: Path, *argv: str) -> int:
    """The CLI in a subprocess, as an agent runs it (keeps this process free of open DB handles)."""
    import sys
    return subprocess.run([sys.executable, "-m", "runner", "--home", str(home), *argv],
                          capture_output=True, text=True, timeout=60).returncode


def test_installed_hook_briefs_each_state(project, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    install(project, home)
    cmd = hook_cmd(project)
    h = home.resolve()

    text = briefing(cmd, project)  # fresh: nothing yet
    assert "No run yet" in text and f"runner --home {h} run --config" in text
    assert "session compact" in text

    cfg = write_cfg(home)
    assert cli(home, "init", "--config", str(cfg), "--run-id", "toy") == 0
    assert f"`runner --home {h} resume --detach`" in briefing(cmd, project)  # created

    assert cli(home, "resume") == 3  # at the gate
    text = briefing(cmd, project)
    assert "is **waiting**" in text and f"`runner --home {h} show approve_items`" in text

    from helpers_runner import cli_at_terminal  # a person approves the human gate at a terminal
    code, out = cli_at_terminal(home, "approve", "approve_items", "--note", "ok", "--who", "test",
                                typed="approve_items")
    assert code == 0, out
    cfg.write_text(cfg.read_text().replace("fail_on_item: -1", "fail_on_item: 6"))
    assert cli(home, "resume") == 1  # failed
    text = briefing(cmd, project)
    assert "is **failed**" in text and "cannot process item 6" in text
    assert f"`runner --home {h} resume --detach`" in text

    cfg.write_text(cfg.read_text().replace("fail_on_item: 6", "fail_on_item: -1"))
    assert cli(home, "resume") == 0  # done
    text = briefing(cmd, project)
    assert "is **done**" in text and "nothing: the run is done" in text


def test_installed_hook_briefs_a_running_run(project, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    install(project, home)
    assert cli(home, "init", "--config", str(write_cfg(home)), "--run-id", "toy") == 0
    from runner.lease import this_owner
    from state.store import Store
    store = Store.open(home)
    owner = this_owner()  # this test process is the live owner
    fence, _, _ = store.acquire_lease("toy", owner, 60.0, lambda lease: None)
    store.update_run(fence, "toy", status="running", status_detail="make_items")
    text = briefing(hook_cmd(project), project)
    assert "is **running**" in text and f"pid {owner.pid}" in text
    assert f"`runner --home {home.resolve()} wait --timeout 540`" in text


def test_pre_compact_hook_records_a_note(project, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    assert cli(home, "init", "--config", str(write_cfg(home)), "--run-id", "toy") == 0
    install(project, home)
    cmd = hook_cmd(project, "PreCompact")
    r = run_hook(cmd, {"hook_event_name": "PreCompact", "trigger": "auto", "session_id": "sess-9"}, project)
    assert r.returncode == 0, r.stderr
    from state.store import Store
    store = Store.open(home)
    notes = store.events("toy", kinds=["agent_note"])
    store.close()
    assert len(notes) == 1 and "compaction (auto)" in notes[0].message and "sess-9" in notes[0].message
    assert "agent context compaction" in briefing(hook_cmd(project), project)  # shows in recent events


def test_hook_fails_open_on_a_broken_home(project, tmp_path):
    home = tmp_path / "broken"
    (home / ".runner").mkdir(parents=True)
    (home / ".runner" / "runner.db").write_bytes(b"this is not sqlite at all" * 10)
    install(project, home)
    for event in ("SessionStart", "PreCompact"):
        r = run_hook(hook_cmd(project, event), {"source": "startup", "trigger": "manual"}, project)
        assert r.returncode == 0
        assert "runner hook" in r.stderr and "skipped" in r.stderr
    out = json.loads(run_hook(hook_cmd(project), {"source": "startup"}, project).stdout)
    assert "could not be built" in out["hookSpecificOutput"]["additionalContext"]
    log = (home / ".runner" / "hooks.log").read_text()
    assert "session-start failed" in log and "pre-compact failed" in log


def test_hook_fails_open_without_an_interpreter(project, tmp_path):
    install(project, tmp_path)
    cmd = hook_cmd(project).replace(hook_cmd(project).split()[0], "/nonexistent/python3", 1)
    r = run_hook(cmd, {}, project)
    assert r.returncode == 0


def test_note_command(tmp_path, capsys):
    assert main(["--home", str(tmp_path), "hooks", "note", "hello"]) == 2  # no run yet
    assert main(["--home", str(tmp_path), "init", "--config", str(write_cfg(tmp_path)), "--run-id", "toy"]) == 0
    assert main(["--home", str(tmp_path), "hooks", "note", "switched", "reviewer"]) == 0
    from state.store import Store
    store = Store.open(tmp_path)
    assert store.events("toy", kinds=["agent_note"])[-1].message == "switched reviewer"
    store.close()


def test_pre_existing_structure_not_mutated_in_memory():
    from runner.hooks import add_ours, remove_ours
    data = copy.deepcopy(PRE_EXISTING)
    add_ours(data, Path("/h"), "claude-code", python="/usr/bin/python3")
    assert remove_ours(data) == 6
    assert data == PRE_EXISTING
