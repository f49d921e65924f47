"""Step ``base_skill`` and gate ``base_skill_gate``: does the base model already have the skill?

Runs inside the pipeline after the pilot (``runner run --config phases/stages/demo.yaml``):
``... pilot -> base_skill -> [base_skill_gate] -> [qc_pilot] -> scale ...``. METHOD.md's first
lesson: check that the base model lacks the skill before paying for training it.

How: the base arms of the evaluation (`phases.evaluate`: raw, instruction, fewshot, urial; the
same prompts, the same one stop rule, greedy, the same scoring: constraints AND task done, refusal
on ``refusal_expected`` items) on the held-out set (or its first ``max_items``). Outputs
``base_skill.json`` (per-arm rates, the task critic's calibration, the decision of
`phases.gate_criteria.decide_base_skill`), ``items.jsonl``, ``summary.txt``.

Gate ``base_skill_gate`` (default policy ``auto``): passes when the best base arm's ``metric``
rate (``both`` by default) is below ``target``; otherwise it stops the run before any GPU hour
goes to scale generation and SFT, naming the arm and its rate, and a human decides
(``runner approve base_skill_gate --note ...`` to train anyway, or ``runner reject``).
"""
from __future__ import annotations

import time

from phases import evaluate as ev
from phases.gate_criteria import decide_base_skill
from phases.models.loader import load_model
from phases.pieces import CRITIC_REFUSAL, CRITIC_TASK, IFEVAL, STATS, builder_param
from phases.sft import model_ref
from phases.steps import sizes
from phases.steps.train_eval import _arms, judge_outcomes
from runner import gate, step
from runner.errors import ConfigError
from runner.pipeline import GateCheck
from state.files import atomic_write_json, atomic_write_text, write_jsonl

__all__ = ["BASE_SKILL_DEFAULTS", "base_skill", "base_skill_gate", "BASE_SKILL_NODES"]

BASE_SKILL_DEFAULTS: dict = {
    "device": "auto", "quantization": "auto", "max_new_tokens": 256, "batch_size": 8,
    "arms": ["raw", "instruction", "fewshot", "urial"], "response_fewshot": [],
    "task_critic": True, "refusal_critic": True, "critic": False, "critic_threshold": 1.0,
    "task_calibration_limit": 0, "max_items": 0,
    "target": 0.90,        # the stage's target success rate: a base arm at or above it already has the skill
    "metric": "both",      # both | constraint
}


@step(inputs=["prepare_model", "heldout"], outputs=["base_skill.json", "items.jsonl", "summary.txt"],
      params=dict(BASE_SKILL_DEFAULTS), version="1",
      uses=[builder_param("arms"), CRITIC_TASK, CRITIC_REFUSAL, IFEVAL, STATS], gpu=True, size=sizes.base_skill_items)
def base_skill(ctx):
    """Evaluate the base arms on the held-out set before any training is paid for."""
    import torch

    p = {**BASE_SKILL_DEFAULTS, **dict(ctx.params)}
    if p["metric"] not in ("both", "constraint"):
        raise ConfigError(f"params.base_skill.metric = {p['metric']!r}; allowed: both, constraint")
    arms = _arms(p)
    fewshot = [list(x) for x in p["response_fewshot"]]
    items = ev.load_heldout(ctx.input("heldout") / "heldout.jsonl", p["max_items"])
    ref = model_ref(ctx.input("prepare_model") / "model.json")
    dev = p["device"] if p["device"] != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    q = p["quantization"]
    if q not in ("auto", "none", "nf4"):
        raise ConfigError(f"params.base_skill.quantization = {q!r}; allowed: auto, none, nf4")
    quant = ("nf4" if dev.startswith("cuda") else None) if q == "auto" else (None if q == "none" else "nf4")
    bs = p["batch_size"]
    t0 = time.time()

    def load():
        ctx.log(f"loading the base model ({ref}) on {dev}, quantization {quant}", kind="eval_model_load")
        return load_model(ref, device=dev, quantization=quant, backend="hf", batch_size=bs, run_sentinels=False)

    slot = ev.ModelSlot(load)
    instructions = [r["instruction"] for r in items]
    scored = {}
    for arm in arms:
        gens = ctx.ledger(f"gen-{arm}").run(instructions, bs, lambda b, info, arm=arm: ev.generate_batch(
            slot.get(), arm, b, p["max_new_tokens"], fewshot=fewshot))
        scored[arm] = judge_outcomes(ctx, slot, items, arm, gens, p)
    calibration = None
    if p["task_critic"]:
        calibration = ctx.ledger("task-calibration").run([0], 1, lambda b, info: [ev.calibrate_task_critic(
            slot.get(), p["critic_threshold"], limit=int(p["task_calibration_limit"]))])[0]
    slot.free()
    key = "both" if p["metric"] == "both" else "success"
    n = len(items)
    rates = {a: sum(bool(o[key]) for o in scored[a]) / n for a in arms}
    decision = decide_base_skill(rates, float(p["target"]), p["metric"])
    per_arm = {a: {"n": n, "both_rate": sum(o["both"] for o in scored[a]) / n,
                   "constraint_rate": sum(o["success"] for o in scored[a]) / n,
                   "truncated": sum(o["truncated"] for o in scored[a]),
                   "median_words": sorted(o["words"] for o in scored[a])[n // 2]} for a in arms}
    report = {"schema": "base_skill/v1", "model_ref": ref, "device": dev, "quantization": quant, "n_items": n,
              "metric": p["metric"], "target": p["target"], "arms": per_arm, "task_calibration": calibration,
              "decision": decision, "decoding": {"greedy": True, "max_new_tokens": p["max_new_tokens"],
                                                 "stop_strings_per_arm": {a: list(ev.stop_strings(a)) for a in arms}}}
    atomic_write_json(ctx.out_dir / "base_skill.json", report)
    write_jsonl(ctx.out_dir / "items.jsonl", [{"id": r["id"], "family": r["family"], "instruction": r["instruction"],
                                               "arms": {a: scored[a][i] for a in arms}} for i, r in enumerate(items)])
    lines = [f"Base-skill check of {ref} on {n} held-out items (before training; metric {p['metric']}, "
             f"target {100 * float(p['target']):.1f}%)", "arm           both    constraint  truncated  median words"]
    for a, b in per_arm.items():
        lines.append(f"{a:<12} {100 * b['both_rate']:5.1f}%   {100 * b['constraint_rate']:5.1f}%      "
                     f"{b['truncated']:>4}/{n:<4}  {b['median_words']:>6}")
    if calibration:
        lines.append(f"Task critic calibration: {calibration['correct']}/{calibration['n']} = "
                     f"{100 * calibration['accuracy']:.1f}% on {calibration['path']}")
    lines.append(decision["line"])
    atomic_write_text(ctx.out_dir / "summary.txt", "\n".join(lines) + "\n")
    if dev.startswith("cuda"):
        ctx.add_cost("gpu_s", round(time.time() - t0, 2))
    best = max(rates, key=lambda a: rates[a])
    return {"headline": decision["line"], "best_arm": best, "best_rate": round(rates[best], 3),
            "rates": {a: round(r, 3) for a, r in rates.items()}, "target": p["target"], "go": decision["go"]}


def _check(gctx) -> GateCheck:
    import json

    rep = json.loads((gctx.output("base_skill") / "base_skill.json").read_text(encoding="utf-8"))
    d = rep["decision"]
    return GateCheck(passed=bool(d["go"]), summary={"line": d["line"], "criteria": d["criteria"],
                                                    "rates": {a: b["both_rate"] for a, b in rep["arms"].items()}},
                     reasons=list(d["reasons"]))


def _evidence(gctx) -> dict:
    return {"summary": (gctx.output("base_skill") / "summary.txt").read_text(encoding="utf-8")}


base_skill_gate = gate("base_skill_gate", check=_check, evidence=_evidence, policy="auto",
                       criteria=["The best base arm (raw, instruction, fewshot, urial) is below the stage's target "
                                 "success rate, so training has something to add"],
                       description="Stop before paying for SFT when the base model already has the skill.")

BASE_SKILL_NODES: list = [base_skill, base_skill_gate]
