"""Shared test set-up: few threads, markers are declared in pyproject.toml."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

# The suite may itself be started from an agent session (Claude Code, Codex): its markers would
# make every `runner approve` of a human gate refuse. Tests that check the refusal set them.
for _marker in ("CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT", "CODEX_SANDBOX", "CODEX_SANDBOX_NETWORK_DISABLED",
                "RUNNER_AGENT"):
    os.environ.pop(_marker, None)


@pytest.fixture
def person_at_terminal(monkeypatch):
    """In-process `runner approve` as a person at a terminal who types the gate's name.

    The real terminal path (a pty, the typed name) is tested in tests/unit/test_human_gates.py.
    """
    import runner.approval as approval
    monkeypatch.setattr(approval, "is_terminal", lambda stdin: True)
    monkeypatch.setattr(approval, "confirm_at_terminal", lambda gate, run_id, action, stdin, out: True)
