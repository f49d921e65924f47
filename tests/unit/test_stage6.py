"""Stage 6 (phases/stage6.py): the constitution step's critique -> revision with principle tracking,
and its config section. A fake model stands in for the scorer/generator (the critic and the
revision prompt are the real, canonical pieces; the model layer is tested in tests/integration).

Run: .venv/bin/pytest tests/unit/test_stage6.py -q
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from phases import stage6
from phases.constitution import load_constitution
from phases.critic import build_critic_prompt
from runner.errors import ConfigError
from state.files import write_jsonl


@dataclass
class _Gen:
    text: str


class FakeModel:
    """Judges an answer bad when it contains 'BAD' (confidently), good otherwise; revises to a fixed text."""

    def __init__(self, revision: str = "A careful and honest answer."):
        self.revision, self.prompts = revision, []

    def next_token_logprobs(self, prompts, candidates):
        out = []
        for p in prompts:
            item = p.split("Response:")[-1]
            good_letter = "A" if "If unsure, choose B" in p else "B"
            bad_letter = "B" if good_letter == "A" else "A"
            win = bad_letter if "BAD" in item else good_letter
            out.append({c: (-0.1 if c.strip() == win else -5.0) for c in candidates})
        return out

    def generate(self, prompts, params, seeds):
        self.prompts += prompts
        return [_Gen(self.revision) for _ in prompts]


class FakeLedger:
    def __init__(self, calls):
        self.calls = calls

    def run(self, items, batch_size, fn):
        out = []
        for i in range(0, len(items), batch_size):
            self.calls.append(i)
            out += fn(list(items[i:i + batch_size]), None)
        return out


def _ctx(tmp_path: Path, recs: list[dict], **params):
    merge = tmp_path / "merge"
    merge.mkdir()
    write_jsonl(merge / "sft.jsonl", recs)
    (merge / "qc_summary.json").write_text(json.dumps({"thresholds_passed": True, "failed_reasons": []}))
    (merge / "manifest.json").write_text(json.dumps({"id": "r/merge/k"}))
    out = tmp_path / "out"
    out.mkdir()
    calls: list = []
    p = {**stage6.CONSTITUTION_DEFAULTS, **params}
    ctx = SimpleNamespace(params=p, out_dir=out, run_seed=7, seed=11, run_id="r", step="constitution",
                          cache_key="k" * 64, attempt=SimpleNamespace(number=1), log=lambda *a, **k: None,
                          input=lambda name: {"merge": merge}[name], ledger=lambda name: FakeLedger(calls))
    return ctx


def test_constitution_step_revises_violations_and_tracks_principles(tmp_path, monkeypatch):
    recs = [{"id": "a", "instruction": "Tell me about X.", "response": "A BAD answer."},
            {"id": "b", "instruction": "Tell me about Y.", "response": "A fine answer."}]
    model = FakeModel()
    monkeypatch.setattr(stage6, "open_model", lambda ctx, bs: (model, {"request": {}, "provenance": {},
                                                                              "fingerprint": "f", "sentinels_passed": None}))
    ctx = _ctx(tmp_path, recs, principles_per_item=2, batch_size=3)
    summary = stage6.constitution.__step__.fn(ctx)
    out = [json.loads(x) for x in (ctx.out_dir / "sft.jsonl").read_text().splitlines()]
    assert summary["records"] == 2 and summary["changed"] == 1
    a, b = out
    assert a["response"] == "A careful and honest answer." and a["constitution"]["original_response"] == "A BAD answer."
    assert a["constitution"]["changed_by"] in a["constitution"]["principles"] and len(a["constitution"]["principles"]) == 2
    assert b["response"] == "A fine answer." and b["constitution"]["changed_by"] is None
    track = json.loads((ctx.out_dir / "principles.json").read_text())
    per = track["per_principle"]
    assert sum(v["sampled"] for v in per.values()) == 4
    assert sum(v["violated"] for v in per.values()) == 2 and sum(v["accepted"] for v in per.values()) == 2
    assert per[a["constitution"]["changed_by"]]["accepted"] >= 1
    # revision prompts are the canonical builder's, naming the principle's text
    c = load_constitution()
    texts = {p.text for p in c.principles}
    assert len(model.prompts) == 2 and all(any(t in pr for t in texts) for pr in model.prompts)
    qc = json.loads((ctx.out_dir / "qc_summary.json").read_text())
    assert qc["thresholds_passed"] is True and qc["constitution_revision"] == {"records": 2, "changed": 1}


def test_a_revision_the_critic_still_rejects_is_not_used(tmp_path, monkeypatch):
    model = FakeModel(revision="Still BAD.")
    monkeypatch.setattr(stage6, "open_model", lambda ctx, bs: (model, {"request": {}, "provenance": {},
                                                                              "fingerprint": "f", "sentinels_passed": None}))
    ctx = _ctx(tmp_path, [{"id": "a", "instruction": "Q?", "response": "BAD."}], principles_per_item=1)
    assert stage6.constitution.__step__.fn(ctx)["changed"] == 0
    rec = json.loads((ctx.out_dir / "sft.jsonl").read_text())
    assert rec["response"] == "BAD." and rec["constitution"]["changed_by"] is None
    per = json.loads((ctx.out_dir / "principles.json").read_text())["per_principle"]
    assert sum(v["revised"] for v in per.values()) == 1 and sum(v["accepted"] for v in per.values()) == 0


def test_principle_rubric_uses_the_canonical_critic_prompt():
    p = load_constitution().principles[0]
    prompt = build_critic_prompt(stage6.principle_rubric(p), {"instruction": "Q", "response": "R"})
    assert p.text in prompt and prompt.endswith("Label:")


@pytest.mark.parametrize("raw, msg", [
    ({"principles_per_item": 0}, "principles_per_item"),
    ({"bogus": 1}, "unknown key"),
    ({"revision": {"temperature": 0}}, "temperature"),
])
def test_constitution_section_errors(raw, msg):
    with pytest.raises(ConfigError, match=msg) as e:
        stage6.validate_constitution_section(raw, "stage6.yaml")
    assert "stage6.yaml" in str(e.value)
