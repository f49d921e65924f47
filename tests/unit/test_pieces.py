"""Content-versioned pieces: their versions, the cache key, and which steps an edit re-runs.

Run: .venv/bin/pytest tests/unit/test_pieces.py -q

- runner side (`runner.pipeline`): a step without ``uses`` keeps the key it had before pieces
  existed; a piece's version enters the key; a callable entry resolves by params; bad entries
  and two versions for one name are errors.
- phases side (`phases.pieces`): editing the pair rubric changes ``critic.pair`` and nothing
  else; in the real cai-stage1 pipeline it changes exactly the keys of the steps that judge
  pairs (pilot, scale, evaluate), none upstream.
- the newcomer test: a temporary copy of the code, a pipeline run through the real CLI, one
  rubric line edited in the copy, `runner resume`: exactly the steps using that rubric and
  their descendants re-run; nothing upstream, no sibling.
"""
from __future__ import annotations

import dataclasses
import shutil
import sqlite3
import textwrap
from pathlib import Path

import pytest

from helpers_runner import REPO, cli
from runner import step
from runner.errors import ConfigError
from runner.pipeline import cache_key, piece_versions
from state.files import canonical_json, sha256_text

from phases import critic, pieces


class _P:
    def __init__(self, name, version):
        self.name, self.version = name, version


def test_step_without_pieces_keeps_its_old_key():
    @step(params={"a": 1})
    def s(ctx):
        pass
    spec = s.__step__
    old = sha256_text(canonical_json({"step": "s", "version": "1", "params": {"a": 1}, "inputs": {"x": "h"}}))
    assert cache_key(spec, {"a": 1}, {"x": "h"}) == old


def test_piece_version_enters_the_key_and_callables_resolve_by_params():
    box = _P("rubric", "v1")

    @step(params={"builder": "b1"}, uses=[box, lambda p: {"builder." + p["builder"]: "bv-" + p["builder"]}])
    def s(ctx):
        pass
    spec = s.__step__
    assert piece_versions(spec, {"builder": "b1"}) == {"builder.b1": "bv-b1", "rubric": "v1"}
    k1 = cache_key(spec, {"builder": "b1"}, {})
    box.version = "v2"
    k2 = cache_key(spec, {"builder": "b1"}, {})
    assert k1 != k2
    assert cache_key(spec, {"builder": "b2"}, {}) != k2


def test_bad_uses_entries_are_errors():
    with pytest.raises(ConfigError, match="neither a piece"):
        step(uses=["critic.pair"])
    a, b = _P("x", "1"), _P("x", "2")

    @step(uses=[a, b])
    def s(ctx):
        pass
    with pytest.raises(ConfigError, match="two versions"):
        piece_versions(s.__step__, {})

    @step(uses=[_P("y", "")])
    def t(ctx):
        pass
    with pytest.raises(ConfigError, match="non-empty str"):
        piece_versions(t.__step__, {})


def test_editing_the_pair_rubric_changes_only_its_piece(monkeypatch):
    before = pieces.versions()
    edited = dataclasses.replace(critic.RUBRICS["pair"], bad="anything else, or a response that rambles on")
    monkeypatch.setitem(critic.RUBRICS, "pair", edited)
    after = pieces.versions()
    assert {k for k in before if before[k] != after[k]} == {"critic.pair"}


def test_builder_alias_is_one_piece():
    assert pieces.builder_piece("instruction").name == "prompt.instruction_response"
    assert pieces.builder_piece("instruction").version == pieces.builder_piece("instruction_response").version
    with pytest.raises(KeyError, match="unknown prompt builder"):
        pieces.builder_piece("chat")


def _stage1_keys() -> dict[str, str]:
    """Every cai-stage1 step's key under the demo config, with fixed input hashes (so only the
    step's own identity, pieces included, can differ)."""
    from phases.pipeline import pipeline
    from runner.config import effective_params, load_config

    cfg = load_config(REPO / "phases" / "stages" / "demo.yaml", pipeline)
    return {name: cache_key(spec, effective_params(pipeline, cfg, name), {i: "same" for i in spec.inputs})
            for name, spec in pipeline.steps.items()}


def test_stage1_pair_rubric_edit_changes_exactly_the_judging_steps(monkeypatch):
    before = _stage1_keys()
    monkeypatch.setitem(critic.RUBRICS, "pair", dataclasses.replace(critic.RUBRICS["pair"], task="Judge this response."))
    after = _stage1_keys()
    assert {k for k in before if before[k] != after[k]} == {"pilot", "scale", "evaluate", "evaluate_dpo"}
    monkeypatch.setitem(critic.RUBRICS, "instruction",
                        dataclasses.replace(critic.RUBRICS["instruction"], good="clear and safe"))
    again = _stage1_keys()
    assert {k for k in after if after[k] != again[k]} == {"heldout", "pilot", "scale"}


# ---- the newcomer test -----------------------------------------------------------------------

PIPE = '''
"""A three-branch pipeline over the real pair rubric (newcomer test; no model).

    runner run --config cfg.yaml
"""
from runner import Pipeline, step
from state.files import read_jsonl, write_jsonl

from phases.critic import build_critic_prompt
from phases.pieces import CRITIC_INSTRUCTION, CRITIC_PAIR

ITEMS = [{"instruction": "Name a prime number.", "response": "7"},
         {"instruction": "Say hi.", "response": "Hi there."}]


@step(outputs=["items.jsonl"])
def source(ctx):
    write_jsonl(ctx.out_dir / "items.jsonl", ITEMS)


@step(inputs=["source"], outputs=["prompts.jsonl"], uses=[CRITIC_INSTRUCTION])
def judge_instructions(ctx):
    rows = read_jsonl(ctx.input("source") / "items.jsonl")
    write_jsonl(ctx.out_dir / "prompts.jsonl", [{"p": build_critic_prompt("instruction", r["instruction"])} for r in rows])


@step(inputs=["source"], outputs=["prompts.jsonl"], uses=[CRITIC_PAIR])
def judge_pairs(ctx):
    rows = read_jsonl(ctx.input("source") / "items.jsonl")
    write_jsonl(ctx.out_dir / "prompts.jsonl", [{"p": build_critic_prompt("pair", r)} for r in rows])


@step(inputs=["judge_pairs"], outputs=["report.jsonl"])
def report(ctx):
    write_jsonl(ctx.out_dir / "report.jsonl", read_jsonl(ctx.input("judge_pairs") / "prompts.jsonl"))


pipeline = Pipeline("newcomer", [source, judge_instructions, judge_pairs, report])
'''


def _attempts(home: Path) -> dict[str, int]:
    con = sqlite3.connect(home / ".runner" / "runner.db")
    try:
        rows = con.execute("SELECT step, COUNT(*) FROM attempts WHERE status = 'succeeded' GROUP BY step").fetchall()
    finally:
        con.close()
    return dict(rows)


def test_newcomer_changes_a_rubric_line_and_exactly_its_dependents_rerun(tmp_path):
    code = tmp_path / "code"
    for pkg in ("runner", "state", "phases"):
        shutil.copytree(REPO / pkg, code / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (code / "newcomer.py").write_text(textwrap.dedent(PIPE))
    home = tmp_path / "home"
    home.mkdir()
    cfg = home / "cfg.yaml"
    cfg.write_text("pipeline: newcomer:pipeline\nseed: 1\n")
    pp = {"PYTHONPATH": str(code)}
    cli(home, "run", "--config", cfg, check=0, **pp)
    first = _attempts(home)
    assert first == {"source": 1, "judge_instructions": 1, "judge_pairs": 1, "report": 1}

    cli(home, "resume", check=0, **pp)
    assert _attempts(home) == first, "a resume with no edit re-ran something"

    critic_py = code / "phases" / "critic.py"
    text = critic_py.read_text()
    old = 'bad="anything else",'
    assert text.count(old) == 1, "the pair rubric's 'bad' line moved; update this test"
    critic_py.write_text(text.replace(old, 'bad="anything else, including a response that rambles on",'))
    out = cli(home, "resume", check=0, **pp)
    assert _attempts(home) == {"source": 1, "judge_instructions": 1, "judge_pairs": 2, "report": 2}, out.stdout
    newest = sorted((home / "artifacts").glob("*/report/*/report.jsonl"), key=lambda p: p.stat().st_mtime)[-1]
    assert "rambles on" in newest.read_text()


def test_a_piece_describes_the_code_this_process_runs(tmp_path, monkeypatch):
    """Editing a source file after import must not change the version inside this process
    (the running code is still the old one); data parts are read live."""
    import linecache

    before = pieces.CLEANING.version
    real = linecache.getlines
    monkeypatch.setattr(linecache, "getlines", lambda *a, **k: ["# edited on disk\n"] + real(*a, **k))
    linecache.clearcache()
    assert pieces.CLEANING.version == before
