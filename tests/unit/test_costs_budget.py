"""The cost ledger in dollars, the budget gate, and progress (runner/costs.py, runner/progress.py).

Run: .venv/bin/pytest tests/unit/test_costs_budget.py -q
"""
from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

import pytest
import yaml

from runner.cli import main
from runner.config import validate
from runner.costs import cost_ledger
from runner.errors import EXIT_DONE, EXIT_GATE, ConfigError
from runner.examples.toy import pipeline as toy
from runner.progress import Progress
from state.schema import Review
from state.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers_runner import init_run, kill9, spawn, status_json, toy_config, wait_for  # noqa: E402

USD_PER_GPU_S = 3600.0  # prices.gpu_usd_per_hour: one dollar per GPU-second keeps the numbers readable


def _cfg(path: Path, items: int, delay: float, budget: float | None) -> Path:
    toy_config(path, items=items, delay=delay, batch_size=4)
    cfg = yaml.safe_load(path.read_text())
    cfg["prices"] = {"gpu_usd_per_hour": USD_PER_GPU_S}
    if budget is not None:
        cfg["budget"] = budget
    path.write_text(yaml.safe_dump(cfg))
    return path


def _status(home: Path, capsys) -> dict:
    capsys.readouterr()
    assert main(["--home", str(home), "status", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_tiny_budget_stops_at_the_budget_gate_and_approve_resumes(tmp_path, capsys, person_at_terminal):
    home, cfg = tmp_path / "home", tmp_path / "toy.yaml"
    home.mkdir()
    _cfg(cfg, items=8, delay=0.05, budget=1000.0)
    assert main(["--home", str(home), "run", "--config", str(cfg), "--run-id", "b"]) == EXIT_DONE
    st = _status(home, capsys)
    led = st["ledger"]
    # process slept 8 x 0.05 s at least; at $1/GPU-s that is >= $0.40, and only process holds the GPU
    assert led["steps"]["process"]["gpu_s"] >= 0.4
    assert led["steps"]["process"]["usd"] == pytest.approx(led["steps"]["process"]["gpu_s"], abs=0.01)
    assert led["steps"]["make_items"]["gpu_s"] == 0
    assert led["budget_usd"] == 1000.0 and led["spent_usd"] == pytest.approx(led["steps"]["process"]["usd"])
    spent = led["spent_usd"]

    # 5x the items, and a budget leaving 50 cents: the measured rate (>= 0.05 GPU-s/item) projects >= $2
    _cfg(cfg, items=40, delay=0.05, budget=round(spent + 0.5, 6))
    capsys.readouterr()
    assert main(["--home", str(home), "resume"]) == EXIT_GATE
    out = capsys.readouterr().out
    assert "waiting at gate budget" in out
    st = _status(home, capsys)
    assert st["state"] == "waiting" and st["detail"] == "budget"
    gate = next(g for g in st["gates"] if g["name"] == "budget")
    assert gate["status"] == "pending"
    nums = gate["check"]["summary"]
    assert nums["step"] == "process"
    assert nums["spent_usd"] == pytest.approx(spent)
    assert nums["projected_usd"] >= 40 * 0.05 and "40 units" in nums["basis"]
    assert nums["total_if_run_usd"] > nums["budget_usd"]
    proc = next(s for s in st["steps"] if s["name"] == "process")
    assert proc["status"] == "pending", "the step that would exceed the budget must not have started"
    assert st["next_action"]["command"] == "runner show budget"

    assert main(["--home", str(home), "approve", "budget", "--note", "accept the overrun"]) == EXIT_DONE
    assert main(["--home", str(home), "resume"]) == EXIT_DONE
    st = _status(home, capsys)
    assert st["state"] == "done"
    assert st["ledger"]["spent_usd"] > st["ledger"]["budget_usd"]  # the approved overrun happened
    assert next(g for g in st["gates"] if g["name"] == "budget")["status"] == "approved"


def test_raising_the_budget_passes_the_check(tmp_path, capsys):
    home, cfg = tmp_path / "home", tmp_path / "toy.yaml"
    home.mkdir()
    _cfg(cfg, items=8, delay=0.05, budget=1000.0)
    assert main(["--home", str(home), "run", "--config", str(cfg), "--run-id", "b"]) == EXIT_DONE
    _cfg(cfg, items=40, delay=0.0, budget=0.01)  # spent alone is over: stops before process
    assert main(["--home", str(home), "resume"]) == EXIT_GATE
    _cfg(cfg, items=40, delay=0.0, budget=10_000.0)
    assert main(["--home", str(home), "resume"]) == EXIT_DONE


def test_ledger_prices_reviews_by_tokens_unless_the_backend_reported_dollars(tmp_path):
    home = tmp_path / "h"
    home.mkdir()
    store = Store.open(home, create=True)
    store.create_run("r", "runner.examples.toy:pipeline", None, {}, toy.plan(), 1)
    for i, (tin, tout, usd) in enumerate([(1_000_000, 100_000, None), (10, 10, 0.5)]):
        store.add_review(Review(run_id="r", gate="approve_items", gate_key="k", memo_key=f"m{i}", backend="openai",
                                model="gpt-5", prompt_hash="p", input_hash="i", ok=True, decision="GO",
                                tokens_in=tin, tokens_out=tout, cost_usd=usd, created_at=time.time()))
    led = cost_ledger(store, "r", {"budget": 5, "prices": {"llm_usd_per_mtok_in": 2.0, "llm_usd_per_mtok_out": 10.0}})
    # 1M in x $2/M + 0.1M out x $10/M = $3, plus the reported $0.5
    assert led["reviews"] == {"n": 2, "tokens_in": 1_000_010, "tokens_out": 100_010, "usd": pytest.approx(3.5)}
    assert led["spent_usd"] == pytest.approx(3.5) and led["remaining_usd"] == pytest.approx(1.5)


@pytest.mark.parametrize("key,value,pattern", [
    ("budget", "lots", "'budget' must be a number of US dollars"),
    ("budget", -1, "'budget' must be a number"),
    ("prices", {"gpu_usd_per_hr": 2}, r"prices.gpu_usd_per_hr: unknown key"),
    ("prices", {"gpu_usd_per_hour": "2"}, r"prices.gpu_usd_per_hour must be a number"),
])
def test_bad_cost_keys_name_the_key(key, value, pattern):
    with pytest.raises(ConfigError, match=pattern):
        validate({key: value}, toy, "my.yaml")


def test_status_shows_the_running_steps_progress_from_the_batch_ledger(tmp_path):
    home, cfg = tmp_path / "home", tmp_path / "toy.yaml"
    home.mkdir()
    toy_config(cfg, items=40, delay=0.2, batch_size=4)
    init_run(home, cfg)
    p = spawn(home, "resume")
    try:
        seen: dict = {}

        def progressing() -> bool:
            st = status_json(home)
            pr = next((s.get("progress") for s in st["steps"] if s["name"] == "process"), None)
            if pr and pr["batches_done"] >= 1:
                seen.update(pr)
                return True
            return False

        assert wait_for(progressing, timeout=120, every=0.2), "no progress was shown for the running step"
        assert seen["n_batches"] == 10 and seen["items"] == 40 and seen["ledger"] == "items"
        assert 1 <= seen["batches_done"] <= 10
    finally:
        kill9(p)


def test_plain_progress_lines_when_not_a_terminal(monkeypatch):
    monkeypatch.setenv("RUNNER_PROGRESS_EVERY_S", "0")
    monkeypatch.delenv("RUNNER_PROGRESS", raising=False)
    buf = io.StringIO()
    bar = Progress("gen/main", 10, done=2, stream=buf)
    assert bar.mode == "plain"
    bar.advance(4)
    bar.close()
    bar.close()  # idempotent
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("[progress] gen/main: 2/10 items (20.0%)")
    assert lines[1].startswith("[progress] gen/main: 6/10 items (60.0%)") and "items/s, ETA" in lines[1]
    assert len(lines) == 3 and "10" not in lines[-1].split(":")[1].split("/")[0]


def test_rich_bar_on_a_terminal(monkeypatch):
    monkeypatch.delenv("RUNNER_PROGRESS", raising=False)

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    buf = Tty()
    bar = Progress("gen/main", 8, stream=buf)
    assert bar.mode == "rich"
    bar.advance(8)
    bar.close()
    assert "gen/main" in buf.getvalue() and "8/8" in buf.getvalue()


def test_status_with_ledger_and_progress_imports_nothing_heavy(tmp_path, capsys):
    import subprocess
    home, cfg = tmp_path / "home", tmp_path / "toy.yaml"
    home.mkdir()
    _cfg(cfg, items=4, delay=0.0, budget=100.0)
    assert main(["--home", str(home), "run", "--config", str(cfg), "--run-id", "b"]) == EXIT_DONE
    for args in (["status"], ["status", "--json"]):
        p = subprocess.run([sys.executable, "-X", "importtime", "-m", "runner", "--home", str(home), *args],
                           capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
        assert p.returncode == 0, p.stderr[-2000:]
        modules = {line.split("|")[-1].strip().split(".")[0] for line in p.stderr.splitlines()
                   if line.startswith("import time:")}
        assert "runner" in modules
        heavy = modules & {"matplotlib", "jinja2", "tensorboard", "torch", "numpy", "PIL"}
        assert not heavy, f"`runner {' '.join(args)}` imports {sorted(heavy)}"
        if args == ["status"]:
            assert "spent $" in p.stdout and "of $100.00 budget" in p.stdout
