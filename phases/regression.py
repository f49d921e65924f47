"""Regression across stages: every earlier stage's held-out set (and IFEval) re-tested at this stage.

Not runnable on its own; `make_regression_step(adapter_step)` builds the step ``regression`` for
a chained pipeline (phases/chain.py, phases/stage6.py, phases/multiturn_steps.py) and
``regression_gate`` reads its output. Spec: specs/stages.md ("Regression across stages").

Which sets: the ``heldout`` output of every ancestor run in the lineage (`phases.chain`
records its directory and content hash per link; a changed file is refused). Multi-turn
ancestors' sets are conversations, not single-turn items, and are skipped (named in the output).
How: the trusted stage-1 evaluation pieces (`phases.evaluate`: the training framing
``trained``, greedy, the same stop rules, IFEval checkers via ``score_item``) on this stage's
starting model (the merged parent) and on starting model + this stage's adapter, one model in
memory at a time, each generation batch in the ledger. Per set and for IFEval (``ifeval_limit``:
-1 = all 541 prompts, the default; N = the first N; 0 = off; skipped when there is no earlier
set, i.e. no parent): `phases.stats.compare_paired`. A set whose trained arm is worse with
McNemar p < ``alpha`` is a regression; the gate is NO-GO with each regressed set named.
"""
from __future__ import annotations

import json
from pathlib import Path

from phases import evaluate as ev
from phases.ifeval import load_prompts, score_responses
from phases.models.loader import load_model
from phases.sft import model_ref
from phases.stats import compare_paired
from phases.steps import common
from runner import gate, step
from runner.errors import DataError
from runner.pipeline import GateCheck
from state.files import atomic_write_json, atomic_write_text, hash_tree, tree_digest

__all__ = ["make_regression_step", "regression_gate", "decide", "REGRESSION_DEFAULTS"]

REGRESSION_DEFAULTS = {"device": "auto", "max_items": 0, "max_new_tokens": 256, "batch_size": 8,
                       "ifeval_limit": -1, "ifeval_max_new_tokens": 512, "alpha": 0.01}


def earlier_sets(lineage: list[dict]) -> tuple[list[dict], list[str]]:
    """(usable single-turn held-out sets, skipped notes) from a lineage, oldest first."""
    sets, skipped = [], []
    for link in lineage:
        ho = link.get("heldout")
        label = f"{link.get('stage') or '?'} (run {link['run_id']})"
        if not ho:
            skipped.append(f"{label}: no single-turn held-out set")
            continue
        d = Path(ho["dir"])
        if not (d / "heldout.jsonl").is_file():
            raise DataError(f"{d / 'heldout.jsonl'}: the held-out set of {label} is gone; restore it or re-run that stage")
        got = tree_digest(hash_tree(d))
        if got != ho["hash"]:
            raise DataError(f"{d}: the held-out set of {label} hashes to {got[:12]}, not the recorded {ho['hash'][:12]}; "
                            "it was edited after that stage finished")
        sets.append({"label": label, "path": str(d / "heldout.jsonl")})
    return sets, skipped


def decide(blocks: dict[str, dict], alpha: float) -> dict:
    """GO unless some block's trained arm is significantly worse (lift < 0 and McNemar p < alpha)."""
    reasons = []
    for name, b in blocks.items():
        ov = b["overall"]
        if ov["lift"] < 0 and ov["mcnemar"]["p_value"] < alpha:
            reasons.append(f"{name} regressed: {100 * ov['lift']:+.1f} pts (McNemar p={ov['mcnemar']['p_value']:.3g}, "
                           f"n01={ov['discordant']['n01']}, n10={ov['discordant']['n10']})")
    return {"go": not reasons, "reasons": reasons,
            "line": ("NO-GO: " + "; ".join(reasons)) if reasons else
                    f"GO: no earlier set regressed significantly ({len(blocks)} re-tested, alpha {alpha})"}


def make_regression_step(adapter_step: str):
    """The ``regression`` step, reading the adapter from ``adapter_step`` (e.g. ``sft``, ``mt_sft``)."""

    @step(name="regression", inputs=["prepare_model", "parent_model", adapter_step],
          outputs=["regression.json", "summary.txt"], params=dict(REGRESSION_DEFAULTS), version="1")
    def regression(ctx):
        """Re-test every earlier stage's held-out set and IFEval: starting model vs + this stage's adapter."""
        import torch

        p = {**REGRESSION_DEFAULTS, **dict(ctx.params)}
        lineage = common.load_json(ctx.input("parent_model") / "parent.json")["lineage"]
        sets, skipped = earlier_sets(lineage)
        ref = model_ref(ctx.input("prepare_model") / "model.json")
        adapter = ctx.input(adapter_step) / "adapter"
        dev = p["device"] if p["device"] != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        data = {s["label"]: ev.load_heldout(Path(s["path"]), p["max_items"]) for s in sets}
        prompts = []
        if p["ifeval_limit"] != 0 and sets:
            prompts = load_prompts()
            prompts = prompts if p["ifeval_limit"] < 0 else prompts[: p["ifeval_limit"]]
        outs: dict[str, dict[str, list]] = {}
        for arm in ("start", "trained"):
            def load(arm=arm):
                m = load_model(ref, device=dev, backend="hf", batch_size=p["batch_size"], run_sentinels=False)
                if arm == "trained":
                    ev.attach_adapter(m, adapter)
                return m
            slot = ev.ModelSlot(load)
            outs[arm] = {}
            for i, (label, items) in enumerate(data.items()):
                outs[arm][label] = ctx.ledger(f"{arm}-set{i}").run(
                    [r["instruction"] for r in items], p["batch_size"],
                    lambda b, info: ev.generate_batch(slot.get(), "trained", b, p["max_new_tokens"]))
            if prompts:
                outs[arm]["ifeval"] = ctx.ledger(f"{arm}-ifeval").run(
                    [x.prompt for x in prompts], p["batch_size"],
                    lambda b, info: ev.generate_batch(slot.get(), "trained", b, p["ifeval_max_new_tokens"]))
            slot.free()
        seed = ctx.seed_for("bootstrap") % (2 ** 32)
        blocks = {}
        for label, items in data.items():
            ok = {a: [ev.score_item(r, g["response"], g["truncated"])["success"] for r, g in zip(items, outs[a][label])]
                  for a in outs}
            blocks[f"held-out {label}"] = compare_paired(ok["start"], ok["trained"], types=[r["family"] for r in items],
                                                         labels=("start", "trained"), seed=seed)
        if prompts:
            strict = {a: [r["follow_all_strict"] for r in score_responses(
                prompts, {x.key: g["response"] for x, g in zip(prompts, outs[a]["ifeval"])})["per_prompt"]] for a in outs}
            blocks["IFEval"] = compare_paired(strict["start"], strict["trained"], labels=("start", "trained"), seed=seed)
        verdict = decide(blocks, float(p["alpha"]))
        atomic_write_json(ctx.out_dir / "regression.json", {
            "sets": sets, "skipped": skipped, "blocks": blocks, "gate": verdict, "model_ref": ref,
            "adapter_step": adapter_step, "framing": "trained (Instruction/Response), greedy", "lineage": lineage}, indent=2)
        lines = [f"Regression re-test of {len(sets)} earlier held-out set(s)" + (" and IFEval" if prompts else "")
                 + f": starting model vs + adapter ({ref})."]
        lines += [f"  skipped: {s}" for s in skipped]
        for name, b in blocks.items():
            ov = b["overall"]
            lines.append(f"  {name}: start {100 * ov['arms']['start']['rate']:.1f}% trained "
                         f"{100 * ov['arms']['trained']['rate']:.1f}% (n={ov['n']}, p={ov['mcnemar']['p_value']:.3g})")
        lines.append(verdict["line"])
        atomic_write_text(ctx.out_dir / "summary.txt", "\n".join(lines) + "\n")
        return {"sets": len(sets), "skipped": len(skipped), "go": verdict["go"], "headline": verdict["line"][:200]}

    return regression


def _check(gctx) -> GateCheck:
    rep = json.loads((gctx.output("regression") / "regression.json").read_text(encoding="utf-8"))
    return GateCheck(passed=bool(rep["gate"]["go"]), reasons=list(rep["gate"]["reasons"]),
                     summary={"line": rep["gate"]["line"], "sets": len(rep["sets"]), "skipped": rep["skipped"]})


regression_gate = gate("regression_gate", check=_check, policy="auto",
                       criteria=["No earlier stage's held-out set or IFEval regressed significantly at this stage"],
                       description="NO-GO when a skill an earlier stage trained got significantly worse.")
