"""The CLI's contract: gate decisions and step names, exit codes, `status --json` with the next
command, status speed on 100k events, no torch on the status path, and the dependency arrow.

Runs the CLI in-process through ``runner.cli.main`` (the same code as ``python -m runner``),
and as a subprocess where the interpreter matters (import time).

Run: .venv/bin/pytest tests/unit/test_runner_cli.py -q
"""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.cli import build_parser, main
from runner.errors import EXIT_CODES
from state.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers_runner import toy_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def run_cli(capsys, home, *args):
    code = main(["--home", str(home), *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def at_gate(tmp_path, capsys):
    """A toy run (3 items, no delay) stopped at its human gate."""
    cfg = toy_config(tmp_path / "c.yaml", items=3, gate="human")
    home = tmp_path / "h"
    code, out, err = run_cli(capsys, home, "run", "--config", cfg, "--run-id", "t")
    assert code == 3, out + err
    return home


def test_status_json_parses_and_names_the_next_command(at_gate, capsys):
    code, out, _ = run_cli(capsys, at_gate, "status", "--json")
    assert code == 0
    st = json.loads(out)
    assert st["state"] == "waiting" and st["exit_code"] == 3
    assert st["next_action"]["command"] == "runner show approve_items"
    assert "runner approve approve_items" in st["next_action"]["why"]
    assert [s["name"] for s in st["steps"]] == ["make_items", "process", "summarize"]
    assert st["steps"][0]["status"] == "succeeded" and st["steps"][1]["status"] == "pending"
    assert st["gates"][0]["status"] == "pending"
    assert "wall_s" in st["costs"]["make_items"]
    for key in ("run", "lease", "errors", "events"):
        assert key in st
    code, out, _ = run_cli(capsys, at_gate, "status")  # the rich table renders too
    assert code == 0 and "approve_items" in out and "next:" in out


def test_approve_twice_is_a_no_op(at_gate, capsys, person_at_terminal):
    code, out, _ = run_cli(capsys, at_gate, "approve", "approve_items", "--note", "ok")
    assert code == 0 and "approved" in out
    code, out, _ = run_cli(capsys, at_gate, "approve", "approve_items")
    assert code == 0 and "already approved" in out
    s = Store.open(at_gate, create=False)
    try:
        g = s.gates("t", "approve_items")
        assert len(g) == 1 and len(s.gate_decisions(g[0].id)) == 1
    finally:
        s.close()
    code, out, _ = run_cli(capsys, at_gate, "resume")
    assert code == 0, out


def test_approving_a_rejected_gate_is_a_clear_error(at_gate, capsys):
    code, out, _ = run_cli(capsys, at_gate, "reject", "approve_items", "--reason", "too few items")
    assert code == 0
    assert json.loads(run_cli(capsys, at_gate, "status", "--json")[1])["state"] == "rejected"
    code, _, err = run_cli(capsys, at_gate, "approve", "approve_items")
    assert code == 2 and "already rejected" in err and "rerun" in err
    code, out, _ = run_cli(capsys, at_gate, "resume")
    assert code == 5 and "rejected" in out


@pytest.mark.parametrize("args, pattern", [
    (["approve", "nosuch"], r"unknown gate 'nosuch' in run t \(gates: approve_items\)"),
    (["reject", "nosuch", "--reason", "x"], r"unknown gate 'nosuch'"),
    (["show", "nosuch"], r"unknown gate 'nosuch'"),
    (["retry", "nosuch"], r"unknown step 'nosuch' in run t \(steps: make_items, process, summarize\)"),
    (["rerun", "nosuch"], r"unknown step 'nosuch'"),
    (["status", "--run", "nosuch"], r"unknown run 'nosuch'"),
])
def test_unknown_names_exit_2(at_gate, capsys, args, pattern):
    code, _, err = run_cli(capsys, at_gate, *args)
    assert code == 2, err
    assert re.search(pattern, err), err


def test_gate_not_reached_yet(tmp_path, capsys):
    cfg = toy_config(tmp_path / "c.yaml", items=3, gate="human")
    assert run_cli(capsys, tmp_path / "h", "init", "--config", cfg, "--run-id", "t")[0] == 0
    code, _, err = run_cli(capsys, tmp_path / "h", "approve", "approve_items")
    assert code == 2 and "not been reached" in err


def test_rerun_invalidates_the_step_and_its_descendants_only(tmp_path, capsys):
    cfg = toy_config(tmp_path / "c.yaml", items=3)
    home = tmp_path / "h"
    assert run_cli(capsys, home, "run", "--config", cfg, "--run-id", "t")[0] == 0
    code, out, _ = run_cli(capsys, home, "rerun", "process")
    assert code == 0 and "process, summarize" in out
    assert json.loads(run_cli(capsys, home, "status", "--json")[1])["state"] == "ready"
    code, out, _ = run_cli(capsys, home, "resume")
    assert code == 0
    assert "= make_items: done earlier" in out and "> process: attempt 2" in out and "> summarize: attempt 2" in out


def test_failing_step_exits_1_and_status_says_resume(tmp_path, capsys):
    cfg = toy_config(tmp_path / "c.yaml", items=4, batch_size=2, fail_on_item=3)
    home = tmp_path / "h"
    code, out, _ = run_cli(capsys, home, "run", "--config", cfg, "--run-id", "t")
    assert code == 1 and "cannot process item 3" in out
    st = json.loads(run_cli(capsys, home, "status", "--json")[1])
    assert st["state"] == "failed" and st["next_action"]["command"] == "runner resume --detach"
    assert st["errors"][-1]["error"].endswith("RuntimeError: cannot process item 3")
    assert st["steps"][1]["batches_done"] == 1  # the first batch is kept for the retry


def test_exit_codes_are_documented():
    assert {0, 1, 2, 3, 4} <= set(EXIT_CODES)
    assert EXIT_CODES[0].startswith("done") and "gate" in EXIT_CODES[3] and "live runner" in EXIT_CODES[4]
    helptext = build_parser().format_help()
    for code in EXIT_CODES:
        assert re.search(rf"\b{code} ", helptext.split("exit codes:")[1]), f"exit code {code} missing from --help"
    doc = (ROOT / "docs" / "cli.md").read_text()
    for code in EXIT_CODES:
        assert re.search(rf"(^|\D){code}(\D|$)", doc), f"exit code {code} missing from docs/cli.md"


def test_status_stays_fast_with_100k_events(tmp_path):
    from sqlalchemy import insert

    from runner.status import run_state
    from state.schema import Event
    cfg = toy_config(tmp_path / "c.yaml", items=3, gate="human")
    home = tmp_path / "h"
    assert main(["--home", str(home), "run", "--config", str(cfg), "--run-id", "t"]) == 3
    store = Store.open(home, create=False)
    try:
        now = time.time()
        rows = [{"run_id": "t", "ts": now + i * 1e-3, "kind": "step_log", "step": "process",
                 "message": f"batch {i} done", "data_json": None} for i in range(100_000)]
        with store.db.writer.begin() as conn:
            conn.execute(insert(Event.__table__), rows)
        t = time.perf_counter()
        st = run_state(store, "t")
        elapsed = time.perf_counter() - t
        t = time.perf_counter()
        recent = store.events("t", limit=40)
        elapsed_log = time.perf_counter() - t
    finally:
        store.close()
    print(f"run_state on {st['events']} events: {elapsed * 1000:.0f} ms; last 40 events: {elapsed_log * 1000:.0f} ms")
    assert st["events"] > 100_000 and len(recent) == 40
    assert elapsed < 2.0 and elapsed_log < 2.0


def test_status_path_imports_no_torch(tmp_path):
    cfg = toy_config(tmp_path / "c.yaml", items=2, gate="human")
    home = tmp_path / "h"
    assert main(["--home", str(home), "run", "--config", str(cfg), "--run-id", "t"]) == 3
    for args in (["status"], ["status", "--json"], ["wait", "--timeout", "0"], ["log"], ["show", "approve_items"]):
        p = subprocess.run([sys.executable, "-X", "importtime", "-m", "runner", "--home", str(home), *args],
                           capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
        assert p.returncode in (0, 3), p.stderr[-2000:]
        modules = {line.split("|")[-1].strip().split(".")[0] for line in p.stderr.splitlines()
                   if line.startswith("import time:")}
        assert "runner" in modules and "state" in modules  # importtime output was captured
        heavy = modules & {"torch", "transformers", "numpy", "phases", "trl", "peft", "vllm"}
        assert not heavy, f"`runner {' '.join(args)}` imports {sorted(heavy)}"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            names.add(str(node.args[0].value))
    return names


def test_dependency_arrow():
    """phases -> runner -> state: runner never imports phases; state imports neither."""
    checked = 0
    for pkg, banned in (("runner", {"phases"}), ("state", {"phases", "runner"})):
        for f in sorted((ROOT / pkg).rglob("*.py")):
            top = {n.split(".")[0] for n in _imports(f)}
            bad = top & banned
            assert not bad, f"{f.relative_to(ROOT)} imports {sorted(bad)}"
            checked += 1
    assert checked > 15


def test_status_shows_the_attempt_of_the_current_config_after_an_edit_and_revert(tmp_path, capsys):
    cfg = toy_config(tmp_path / "c.yaml", items=3)
    home = tmp_path / "h"
    assert run_cli(capsys, home, "run", "--config", cfg, "--run-id", "t")[0] == 0
    first = json.loads(run_cli(capsys, home, "status", "--json")[1])
    toy_config(cfg, items=5)
    assert run_cli(capsys, home, "resume")[0] == 0
    st = json.loads(run_cli(capsys, home, "status", "--json")[1])
    assert st["steps"][2]["summary"]["n"] == 5
    toy_config(cfg, items=3)  # back: every step is a cache hit, nothing runs
    code, out, _ = run_cli(capsys, home, "resume")
    assert code == 0 and "> " not in out
    st = json.loads(run_cli(capsys, home, "status", "--json")[1])
    assert st["steps"][2]["summary"]["n"] == 3, "status shows the newest attempt, not the current one"
    assert [s["output_dir"] for s in st["steps"]] == [s["output_dir"] for s in first["steps"]]
    assert [s["attempts"] for s in st["steps"]] == [2, 2, 2]
