"""A SIGTERM whose Interrupted exception is swallowed (raised inside a finalizer, as when vLLM
shuts its engine down while a step's model is collected) still stops the run before the next step.

Run: .venv/bin/python -m pytest tests/unit/test_runner_swallowed_signal.py -q
"""
from __future__ import annotations

from runner.cli import main
from runner.errors import EXIT_INTERRUPTED

PIPELINE = '''
import os, signal, weakref
from runner import Pipeline, step

class _Engine:
    pass

@step(outputs=["a.txt"])
def first(ctx):
    engine = _Engine()
    # the signal arrives while a finalizer runs: Python prints "Exception ignored" and goes on
    weakref.finalize(engine, lambda: (os.kill(os.getpid(), signal.SIGTERM), signal.sigtimedwait([], 0)))
    del engine
    (ctx.out_dir / "a.txt").write_text("a")
    return {"ok": True}

@step(outputs=["b.txt"], inputs=["first"])
def second(ctx):
    (ctx.out_dir / "b.txt").write_text("b")
    return {"ok": True}

pipeline = Pipeline("swallowed-signal", [first, second], goal="Test a swallowed stop signal.")
'''


def test_swallowed_sigterm_stops_before_the_next_step(tmp_path, monkeypatch, capsys):
    (tmp_path / "swallowed_signal_pipeline.py").write_text(PIPELINE)
    monkeypatch.syspath_prepend(str(tmp_path))
    home = tmp_path / "h"
    swallowed = []
    monkeypatch.setattr("sys.unraisablehook", lambda u: swallowed.append(u.exc_type.__name__))
    code = main(["--home", str(home), "run", "--pipeline", "swallowed_signal_pipeline:pipeline", "--run-id", "r"])
    out = capsys.readouterr()
    assert code == EXIT_INTERRUPTED, (code, out.out, out.err)
    assert swallowed == ["Interrupted"]  # the exception really was swallowed by the finalizer
    assert list((home / "artifacts" / "r").glob("first/*/a.txt")), "the first step should have finished"
    assert not list((home / "artifacts" / "r").glob("second/*")), "the second step ran after SIGTERM"
