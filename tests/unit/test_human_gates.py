"""Human gates need a human; a waiting gate's policy is frozen; decisions are atomic.

- `runner approve` of a gate that needs a person is refused from an agent session (Claude Code's
  `CLAUDECODE`/`CLAUDE_CODE_ENTRYPOINT`, Codex's `CODEX_SANDBOX*`) and from a non-terminal, with
  the command a human runs; at a real pseudo-terminal, typing the gate's name approves it, and
  who/how/where is recorded.
- Editing a waiting gate's policy in the YAML is refused at resume (an event); `runner regate`
  (a person's act) adopts it.
- 20 racing approves and rejects record exactly one decision.

Run: .venv/bin/pytest tests/unit/test_human_gates.py -q
"""
from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import pytest
import yaml

from runner.approval import needs_human
from runner.cli import main
from state.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers_runner import cli, cli_at_terminal, rows, toy_config  # noqa: E402


@pytest.fixture
def at_human_gate(tmp_path):
    cfg = toy_config(tmp_path / "c.yaml", items=3, gate="human")
    home = tmp_path / "h"
    assert main(["--home", str(home), "run", "--config", str(cfg), "--run-id", "t"]) == 3
    return home, cfg


def gate_state(home: Path) -> tuple:
    g = rows(home, "SELECT status, policy FROM gates")
    d = rows(home, "SELECT source, decision, who FROM gate_decisions")
    return [tuple(r) for r in g], [tuple(r) for r in d]


@pytest.mark.parametrize("marker", [{"CLAUDECODE": "1", "CLAUDE_CODE_ENTRYPOINT": "cli"},
                                    {"CLAUDE_CODE_ENTRYPOINT": "sdk-py"}, {"CODEX_SANDBOX": "seatbelt"},
                                    {"CODEX_SANDBOX_NETWORK_DISABLED": "1"}])
def test_an_agent_session_cannot_approve_a_human_gate(at_human_gate, marker):
    home, _ = at_human_gate
    r = cli(home, "approve", "approve_items", "--note", "looks fine", **marker)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "agent session" in r.stderr and next(iter(marker)) in r.stderr
    assert f"runner --home {home.resolve()} --run t approve approve_items" in r.stderr
    assert gate_state(home) == ([("pending", "human")], [])
    # even at a terminal: the markers win
    code, out = cli_at_terminal(home, "approve", "approve_items", typed="approve_items", **marker)
    assert code == 2 and "agent session" in out
    assert gate_state(home) == ([("pending", "human")], [])


def test_a_non_terminal_cannot_approve_a_human_gate(at_human_gate):
    home, _ = at_human_gate
    r = cli(home, "approve", "approve_items")
    assert r.returncode == 2 and "interactive terminal" in r.stderr, r.stdout + r.stderr
    assert "--run t approve approve_items" in r.stderr
    assert gate_state(home) == ([("pending", "human")], [])


def test_a_person_at_a_terminal_approves_and_is_recorded(at_human_gate):
    home, _ = at_human_gate
    code, out = cli_at_terminal(home, "approve", "approve_items", typed="wrong_name")
    assert code == 2 and "did not match" in out
    assert gate_state(home) == ([("pending", "human")], [])
    code, out = cli_at_terminal(home, "approve", "approve_items", "--note", "checked", typed="approve_items")
    assert code == 0, out
    [status], [(source, decision, who)] = gate_state(home)
    assert status == ("approved", "human") and (source, decision) == ("human", "approve") and who
    [(data,)] = rows(home, "SELECT data_json FROM events WHERE kind='gate_approved'")
    prov = json.loads(data)
    assert prov["how"] == "tty-confirmed" and prov["tty"].startswith("/dev/") and prov["host"]
    assert prov["os_user"] and prov["agent_markers"] == []
    assert cli(home, "resume").returncode == 0


def test_an_agent_may_reject_and_is_recorded_as_an_agent(at_human_gate):
    home, _ = at_human_gate
    r = cli(home, "reject", "approve_items", "--reason", "wrong items", CLAUDECODE="1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert gate_state(home)[1][0][:2] == ("agent", "reject")


def test_which_gates_need_a_person():
    assert needs_human("human") and needs_human("review+human")
    assert needs_human("review", "review failed closed: no API key; a human decides")
    assert not needs_human("review", "reviewer said NO-GO: thin evidence; a human decides")
    assert not needs_human("auto", "automatic check failed: x (a human decides)")


def test_an_edited_policy_does_not_pass_a_waiting_gate(at_human_gate, capsys):
    home, cfg = at_human_gate
    data = yaml.safe_load(cfg.read_text())
    data["gates"]["approve_items"]["policy"] = "auto"
    cfg.write_text(yaml.safe_dump(data))
    assert main(["--home", str(home), "resume"]) == 2
    out = capsys.readouterr().out
    assert "frozen" in out and "runner regate approve_items" in out
    assert gate_state(home) == ([("pending", "human")], [])
    assert len(rows(home, "SELECT id FROM events WHERE kind='gate_policy_edit_refused'")) == 1
    r = cli(home, "regate", "approve_items", CLAUDECODE="1")  # an agent cannot adopt it either
    assert r.returncode == 2 and "agent session" in r.stderr and "regate approve_items" in r.stderr
    code, out = cli_at_terminal(home, "regate", "approve_items", typed="approve_items")
    assert code == 0, out
    [(msg, d)] = rows(home, "SELECT message, data_json FROM events WHERE kind='gate_policy_changed'")
    assert "human -> auto" in msg and json.loads(d)["how"] == "tty-confirmed"
    assert main(["--home", str(home), "resume"]) == 0  # now decided under the adopted policy


def test_racing_approves_and_rejects_record_exactly_one_decision(at_human_gate, person_at_terminal):
    from runner.commands import decide
    from runner.errors import RunnerError
    home, _ = at_human_gate
    start, results = threading.Barrier(20), []

    def one(i: int) -> None:
        store = Store.open(home)
        try:
            start.wait(timeout=60)
            decision = "approve" if i % 2 else "reject"
            try:
                results.append((decision, decide(store, "t", "approve_items", decision, f"n{i}", f"p{i}")))
            except RunnerError as e:
                results.append((decision, str(e)))
        finally:
            store.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 20
    [(status, _policy)], decisions = gate_state(home)
    assert len(decisions) == 1, decisions
    assert status == ("approved" if decisions[0][1] == "approve" else "rejected")
    events = rows(home, "SELECT kind FROM events WHERE kind IN ('gate_approved', 'gate_rejected')")
    assert len(events) == 1
    run_status = rows(home, "SELECT status FROM runs")[0][0]
    assert run_status == ("ready" if status == "approved" else "rejected")


def test_the_runners_own_decision_yields_to_a_racing_rejection(tmp_path):
    """The runner requested the gate; a person rejects it before the runner's auto-approval is
    written: the rejection stands and the runner's write is a no-op."""
    from runner.lease import dead_reason, this_owner
    store = Store.open(tmp_path / "h")
    try:
        store.create_run("t", "x:y", None, {}, [{"kind": "gate", "name": "g"}], 0)
        fence, _, _ = store.acquire_lease("t", this_owner(), 60, dead_reason)
        g = store.request_gate(fence, "g", "k", "auto", None, "automatic check passed")
        store.decide_pending_gate("t", "g", g.id, "auto", "reject", "alice", "no", "human")
        decided = store.decide_gate(g.id, "approve", "auto-check", "automatic check passed", "auto", fence=fence)
        assert decided.status == "rejected" and decided.decided_by == "alice"
        assert [(d.source, d.decision) for d in store.gate_decisions(g.id)] == [("human", "reject")]
    finally:
        store.close()
