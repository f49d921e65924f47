"""Stage 6, full constitutional integration: critique and revision against sampled principles,
principle tracking, and adherence metrics. Pipeline ``phases.stage6:pipeline`` (named by
phases/stages/stage6.yaml):

    parent_model -> prepare_model -> heldout -> pilot -> [qc_pilot] -> scale -> merge -> [qc_scale]
    -> constitution -> sft -> evaluate -> adherence -> regression -> [regression_gate] -> [sft_gate]

Launch: ``runner init --config phases/stages/stage6.yaml --from-run <stage-5 run>`` then
``runner resume --detach``. Spec: specs/stages.md ("Stage 6").

- ``constitution`` (inputs prepare_model, merge): for every kept SFT record, ``k`` principles
  sampled from constitution.yaml balanced across categories (`phases.constitution`, seeded per
  record). The **critique** is the canonical A/B critic with a rubric built from the principle
  (single-token log-probs, never free text: METHOD.md says a judgment that gates anything is
  A/B). A principle judged confidently violated gets a **revision** (sampled,
  `phases.prompts.principle_revision_prompt`, temperature from ``constitution.revision``); the
  revision replaces the answer only if the same critic then judges it confidently as following
  the principle. Writes ``sft.jsonl`` (merge's records, revised where accepted, each with a
  ``constitution`` block naming the principles and the one that changed it), ``principles.json``
  (per principle: sampled, judged violated, revised, accepted = how often it changed the answer),
  and merge's ``qc_summary.json`` / ``manifest.json`` carried over with the revision counts, so
  stage 1's ``sft`` trains on it unchanged (its ``merge`` input is this step).
- ``adherence`` (inputs prepare_model, evaluate): the held-out answers of the best base framing and
  of the trained model judged against ``k`` sampled principles each (this stage's starting model as
  judge); paired per principle (`phases.stats.compare_paired`, BH). ``adherence.json``,
  ``adherence.txt``.

Where this meets the preference-pair work (DPO): the same critique -> revision produces
(revised = chosen, original = rejected) pairs; this module keeps the SFT side only.
"""
from __future__ import annotations

from typing import Any

from phases.chain import _Params, _regression_nodes, expand_chain_config, parent_model, prepare_model
from phases.constitution import load_constitution, sample_principles
from phases.critic import Rubric, first_paragraph, judge
from phases.prompts import principle_revision_prompt
from phases.stats import compare_paired
from phases.steps import common
from phases.steps.data import DATA_NODES
from phases.steps.model import open_model
from phases.steps.preferences import PREFERENCE_NODES
from phases.steps.train_eval import evaluate, sft as stage1_sft, sft_gate
from runner import Pipeline, step
from runner.errors import ConfigError
from runner.pipeline import derive_seed
from state.files import atomic_write_json, atomic_write_text, sha256_file

CONSTITUTION_DEFAULTS: dict[str, Any] = {
    "principles_per_item": 2, "threshold": 1.0, "file": None, "batch_size": 8,
    "revision": {"max_new_tokens": 120, "temperature": 0.5, "top_p": 0.9, "repetition_penalty": 1.1,
                 "do_sample": True, "stop": ["\n\n"]},
}


def validate_constitution_section(raw: Any, where: str) -> dict:
    """Check the stage's ``constitution:`` mapping; errors name the file, key and value."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: constitution = {raw!r}: expected a mapping (see phases/stages/stage6.yaml)")
    bad = sorted(set(raw) - set(CONSTITUTION_DEFAULTS))
    if bad:
        raise ConfigError(f"{where}: constitution: unknown key(s) {bad}; allowed: {sorted(CONSTITUTION_DEFAULTS)}")
    d = {**CONSTITUTION_DEFAULTS, **raw, "revision": {**CONSTITUTION_DEFAULTS["revision"], **(raw.get("revision") or {})}}
    c = load_constitution(d["file"])
    k = d["principles_per_item"]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(c.principles):
        raise ConfigError(f"{where}: constitution.principles_per_item = {k!r}: expected 1..{len(c.principles)}")
    if isinstance(d["threshold"], bool) or not isinstance(d["threshold"], (int, float)) or d["threshold"] < 0:
        raise ConfigError(f"{where}: constitution.threshold = {d['threshold']!r}: expected a number >= 0")
    r = d["revision"]
    if not (0 < float(r["temperature"]) <= 2 and int(r["max_new_tokens"]) >= 1):
        raise ConfigError(f"{where}: constitution.revision = {r!r}: temperature in (0, 2], max_new_tokens >= 1")
    return d


def expand_stage6_config(raw: dict, path: Any) -> dict:
    """``expand_config`` hook: the chained stage expansion plus ``params.constitution``."""
    d = validate_constitution_section(raw.get("constitution"), str(path))
    if isinstance(raw.get("params"), dict) and "constitution" in raw["params"]:
        raise ConfigError(f"{path}: params.constitution comes from the top-level 'constitution' key; set it there")
    out = expand_chain_config(raw, path, extra_keys=frozenset({"constitution"}))
    out["params"]["constitution"] = d
    if "adherence" not in out["params"]:  # the evaluation samples principles the same way, unless set
        out["params"]["adherence"] = {k: d[k] for k in ("principles_per_item", "threshold", "file", "batch_size")}
    return out


def principle_rubric(p) -> Any:
    return Rubric(name=f"principle:{p.id}", task=f"Judge whether the response below follows this principle: {p.text}",
                  good="follows the principle", bad="goes against the principle", fields=("instruction", "response"))


def _judge(model, principle, pairs: list[dict], threshold: float) -> list[dict]:
    return [v.to_dict() for v in judge(model, principle_rubric(principle), pairs, threshold)]


def _judge_mixed(model, by_id: dict, items: list[dict], threshold: float, field: str = "response") -> list[dict]:
    """Verdicts for items that each name their principle: one batched critic call per principle."""
    out: list = [None] * len(items)
    for pid in sorted({it["principle"] for it in items}):
        idx = [i for i, it in enumerate(items) if it["principle"] == pid]
        vs = _judge(model, by_id[pid], [{"instruction": items[i]["instruction"], "response": items[i][field]} for i in idx],
                    threshold)
        for i, v in zip(idx, vs):
            out[i] = v
    return out


@step(inputs=["prepare_model", "merge"], outputs=["sft.jsonl", "principles.json", "qc_summary.json", "manifest.json"],
      params=dict(CONSTITUTION_DEFAULTS), version="1")
def constitution(ctx):
    """Critique (A/B per principle) and revise the merged SFT data; track which principle changed what."""
    p = ctx.params
    c = load_constitution(p["file"])
    recs = common.read_records(ctx.input("merge") / "sft.jsonl")
    model, info = open_model(ctx, p["batch_size"])
    k, thr = int(p["principles_per_item"]), float(p["threshold"])
    items = []
    for r in recs:
        for pr in sample_principles(k, derive_seed(ctx.run_seed, "constitution", r.get("id", r["instruction"])), c):
            items.append({"rid": r.get("id", r["instruction"]), "principle": pr.id, "instruction": r["instruction"],
                          "response": r["response"]})
    by_id = {x.id: x for x in c.principles}
    gen = common.sampling(p["revision"])

    def work(batch, info_):
        out = [{**it, "critique": v, "violated": (not v["is_good"]) and v["confident"], "revision": None,
                "accepted": False} for it, v in zip(batch, _judge_mixed(model, by_id, batch, thr))]
        todo = [o for o in out if o["violated"]]
        if todo:
            prompts = [principle_revision_prompt(o["instruction"], o["response"], by_id[o["principle"]].text) for o in todo]
            gens = model.generate(prompts, gen, [derive_seed(ctx.seed, "revise", o["rid"], o["principle"]) for o in todo])
            for o, g in zip(todo, gens):
                o["revision"] = first_paragraph(g.text) or None
            revised = [o for o in todo if o["revision"]]
            for o, rv in zip(revised, _judge_mixed(model, by_id, revised, thr, field="revision")):
                o["revision_verdict"] = rv
                o["accepted"] = rv["is_good"] and rv["confident"]
        return out

    judged = ctx.ledger("critique-revise").run(items, p["batch_size"], work)
    track = {pid: {"category": by_id[pid].category, "sampled": 0, "violated": 0, "revised": 0, "accepted": 0}
             for pid in sorted(by_id)}
    changed: dict[str, dict] = {}
    sampled: dict[str, list[str]] = {}
    for o in judged:
        t = track[o["principle"]]
        t["sampled"] += 1
        t["violated"] += int(o["violated"])
        t["revised"] += int(bool(o.get("revision")))
        t["accepted"] += int(bool(o.get("accepted")))
        sampled.setdefault(o["rid"], []).append(o["principle"])
        if o.get("accepted") and o["rid"] not in changed:  # the first accepted principle changes the answer
            changed[o["rid"]] = o
    out = []
    for r in recs:
        rid = r.get("id", r["instruction"])
        ch = changed.get(rid)
        out.append({**r, "response": ch["revision"] if ch else r["response"],
                    "constitution": {"principles": sampled.get(rid, []), "changed_by": ch["principle"] if ch else None,
                                     "original_response": r["response"] if ch else None}})
    sha = common.write_records(ctx.out_dir / "sft.jsonl", out)
    summary = {"records": len(out), "changed": len(changed), "principles_per_item": k, "per_principle": track,
               "change_rate": len(changed) / len(out) if out else 0.0}
    atomic_write_json(ctx.out_dir / "principles.json", summary, indent=2)
    qc = common.load_json(ctx.input("merge") / "qc_summary.json")
    qc["constitution_revision"] = {"records": len(out), "changed": len(changed)}
    atomic_write_json(ctx.out_dir / "qc_summary.json", qc, indent=2)
    merge_man = common.load_json(ctx.input("merge") / "manifest.json")
    common.dump(ctx.out_dir / "manifest.json", common.session_manifest(
        ctx, "constitution_revision", info, {"sft.jsonl": sha}, {"records": len(out), "changed": len(changed)},
        merge_manifest={"path": str(ctx.input("merge") / "manifest.json"), "sha256": sha256_file(ctx.input("merge") / "manifest.json"),
                        "id": merge_man.get("id")}, principles=summary))
    return {"records": len(out), "changed": len(changed), "top": sorted(
        ((v["accepted"], pid) for pid, v in track.items()), reverse=True)[:3]}


class _Inputs(_Params):
    """A context whose ``input(name)`` maps names (stage 1's sft reads 'merge'; here it is 'constitution')."""

    def __init__(self, ctx, alias: dict):
        super().__init__(ctx, ctx.params)
        self._alias = alias

    def input(self, name: str):
        return self._ctx.input(self._alias.get(name, name))


_s1 = stage1_sft.__step__


@step(name="sft", inputs=["prepare_model", "constitution"], outputs=list(_s1.outputs), params=dict(_s1.params), version="1")
def sft(ctx):
    """Stage 1's SFT on the constitution-revised data."""
    return _s1.fn(_Inputs(ctx, {"merge": "constitution"}))


@step(inputs=["prepare_model", "evaluate"], outputs=["adherence.json", "adherence.txt"],
      params={"principles_per_item": 2, "threshold": 1.0, "file": None, "batch_size": 8}, version="1")
def adherence(ctx):
    """Principle adherence of the best base framing vs the trained model on the held-out answers."""
    import json

    p = ctx.params
    c = load_constitution(p["file"])
    by_id = {x.id: x for x in c.principles}
    rep = json.loads((ctx.input("evaluate") / "eval.json").read_text(encoding="utf-8"))
    base_arm = rep["baseline"]["arm"]
    rows = common.read_records(ctx.input("evaluate") / "items.jsonl")
    model, _ = open_model(ctx, p["batch_size"])
    items = []
    for r in rows:
        for pr in sample_principles(int(p["principles_per_item"]), derive_seed(ctx.run_seed, "adherence", r["id"]), c):
            for arm in (base_arm, "trained"):
                items.append({"id": r["id"], "principle": pr.id, "arm": arm, "instruction": r["instruction"],
                              "response": r["arms"][arm].get("response") or "(no answer)"})

    def work(batch, info_):
        return [{**it, "follows": bool(v["keep"])} for it, v in zip(batch, _judge_mixed(model, by_id, batch, float(p["threshold"])))]

    judged = ctx.ledger("adherence").run(items, p["batch_size"], work)
    a = [x for x in judged if x["arm"] == base_arm]
    b = [x for x in judged if x["arm"] == "trained"]
    cmp = compare_paired([x["follows"] for x in a], [x["follows"] for x in b], types=[x["principle"] for x in a],
                         labels=("base", "trained"), seed=ctx.seed_for("bootstrap") % (2 ** 32)) if a else None
    out = {"baseline_arm": base_arm, "judge": "this stage's starting model, A/B per principle (keep = good and confident)",
           "comparison": cmp, "items": len(a)}
    atomic_write_json(ctx.out_dir / "adherence.json", out, indent=2)
    lines = [f"Principle adherence on {len(rows)} held-out answers, {p['principles_per_item']} principles each "
             f"(base arm '{base_arm}' vs trained):"]
    for pid, blk in ((cmp or {}).get("per_type") or {}).items():
        lines.append(f"  {pid:<28} base {100 * blk['arms']['base']['rate']:5.1f}%  trained "
                     f"{100 * blk['arms']['trained']['rate']:5.1f}%  n={blk['n']}  p_adj={blk['p_adjusted']:.3g}")
    if cmp:
        ov = cmp["overall"]
        lines.append(f"overall: base {100 * ov['arms']['base']['rate']:.1f}% trained {100 * ov['arms']['trained']['rate']:.1f}% "
                     f"(McNemar p={ov['mcnemar']['p_value']:.3g})")
    atomic_write_text(ctx.out_dir / "adherence.txt", "\n".join(lines) + "\n")
    return {"items": len(a), "overall": None if not cmp else {k: round(v["rate"], 3) for k, v in cmp["overall"]["arms"].items()}}


_data = [n for n in DATA_NODES if getattr(n, "__step__", n).name != "prepare_model"]
pipeline = Pipeline(
    "cai-stage6", [parent_model, prepare_model, *_data, constitution, sft, evaluate, adherence,
                   *_regression_nodes("sft"), sft_gate, *PREFERENCE_NODES],
    expand_config=expand_stage6_config,
    goal="Stage 6 of constitutional bootstrapping: the previous stage's model generates data, critiques it against "
         "sampled constitution principles (A/B) and revises it, with principle tracking; SFT on the revised data; "
         "paired evaluation plus per-principle adherence; then preference pairs and DPO as in stage 1.")
