"""The DPO gate's evaluation: step ``evaluate_dpo`` and gate ``dpo_gate`` (SFT vs SFT+DPO).

Not runnable on its own; `phases.steps.preferences` puts both in ``PREFERENCE_NODES`` (they read
steps ``prepare_model``, ``heldout``, ``sft``, ``dpo``). Run the stage with
``python -m runner run --config phases/stages/demo.yaml``. Spec: specs/preferences-dpo.md
("evaluate_dpo and gate dpo_gate"); tests: tests/unit/test_pair_gate.py.

- ``evaluate_dpo``: the SFT model (baseline arm ``sft``) vs SFT+DPO (arm ``trained``) on the
  held-out items, judged by the same `phases.steps.train_eval.judge_outcomes` as ``evaluate``
  (task critic, refusal checker, 'both' success, truncation) and reported by the same
  `phases.evaluate.build_report` and summary columns, plus a pair-critic win rate (both label
  orders) and a one-sided non-inferiority test; writes ``eval.json``, ``items.jsonl``,
  ``summary.txt``, ``winrate.json``.
- gate ``dpo_gate``: ``dpo_gate_decision`` = `phases.gate_criteria.decide` (the SFT gate's
  criteria) with the DPO policy of ``params.evaluate_dpo.gate`` plus the non-inferiority and
  win-rate criteria; every criterion is listed with its number and verdict.
"""
from __future__ import annotations

import json
import random

from phases import evaluate as ev
from phases.critic import judge as critic_judge
from phases.dpo import merged_sft_model
from phases.evaluate import EVAL_DEFAULTS, GATE_POLICY_KEYS
from phases.gate_criteria import criteria_table, criterion, decide
from phases.models.devices import DeviceError, resolve_placement
from phases.models.registry import PROFILES
from phases.pairs import critic_score
from phases.pieces import CRITIC_PAIR, CRITIC_REFUSAL, CRITIC_TASK, STATS, builder_piece
from phases.sft import model_ref
from phases.stats import noninferiority_paired, wilson_ci
from phases.steps.generation import verdict_dict
from phases.steps.train_eval import (_git_sha, _summary_text, _training_lengths, _tree_sha256, item_rows,
                                     judge_outcomes, result_numbers, task_calibration)
from runner import gate, step
from runner.errors import ConfigError
from runner.pipeline import GateCheck
from state.files import atomic_write_json, atomic_write_text, read_jsonl, sha256_file, write_jsonl

__all__ = ["DPO_GATE_CRITERIA", "SHARED_EVAL_KEYS", "EVALUATE_DPO_DEFAULTS", "check_gate_criteria", "win_rate",
           "dpo_report", "dpo_gate_decision", "evaluate_dpo", "dpo_gate"]

# The DPO gate's own policy (params.evaluate_dpo.gate); the shared criteria's thresholds are
# params.evaluate_dpo's keys of the same names as params.evaluate's (SHARED_EVAL_KEYS).
DPO_GATE_CRITERIA = {"require_significant_improvement": False, "min_win_rate": 0.5, "non_inferiority_margin": 0.05}
# The judging rules and shared gate thresholds a stage config copies from params.evaluate into
# params.evaluate_dpo unless params.evaluate_dpo sets them (phases/steps/config.py): one rule set.
SHARED_EVAL_KEYS = ("task_critic", "refusal_critic", "critic_threshold", "task_calibration_limit", "alpha",
                    "max_lift_ci_width", "safety_margin", "safety_confidence", "length_alpha", "max_truncation_rate",
                    "max_baseline_truncation_rate", "min_task_calibration_accuracy", "require_ifeval", "fdr",
                    "confidence", "protected_types")
EVALUATE_DPO_DEFAULTS = {**EVAL_DEFAULTS, "win_tie_band": 0.0, "gate": dict(DPO_GATE_CRITERIA)}
for _key in ("arms", "ifeval_limit", "ifeval_max_new_tokens", "ifeval_batch_size"):  # not run by evaluate_dpo
    EVALUATE_DPO_DEFAULTS.pop(_key)

def check_gate_criteria(gate_params: dict, where: str = "params.evaluate_dpo.gate") -> dict:
    """``DPO_GATE_CRITERIA`` overridden by ``gate_params``; an unknown key raises ``ConfigError``
    naming it (a shared criterion's key says where that one is set)."""
    if not isinstance(gate_params, dict):
        raise ConfigError(f"{where} = {gate_params!r}: expected a mapping with keys {sorted(DPO_GATE_CRITERIA)}")
    for key in sorted(gate_params, key=str):
        if key in DPO_GATE_CRITERIA:
            continue
        if key in GATE_POLICY_KEYS or key in SHARED_EVAL_KEYS:
            raise ConfigError(f"{where}.{key}: {key!r} is a shared criterion of the evaluation gates; set "
                              f"params.evaluate_dpo.{key} (a stage config inherits params.evaluate.{key})")
        raise ConfigError(f"{where}.{key}: unknown DPO gate criterion {key!r}; known: {sorted(DPO_GATE_CRITERIA)}")
    out = {**DPO_GATE_CRITERIA, **gate_params}
    for key in ("min_win_rate", "non_inferiority_margin"):
        v = out[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
            raise ConfigError(f"{where}.{key} = {v!r}: expected a number in [0, 1) (rate units)")
    if not isinstance(out["require_significant_improvement"], bool):
        raise ConfigError(f"{where}.require_significant_improvement = {out['require_significant_improvement']!r}: "
                          "expected true or false")
    return out


def win_rate(sft_verdicts: list[dict], dpo_verdicts: list[dict], band: float, confidence: float) -> tuple[dict, list]:
    """Pair-critic win rate of DPO over SFT from per-item verdicts (`verdict_dict` shape, both label
    orders): win when DPO's signed score beats SFT's by more than ``band``; ties left out of the
    rate; Wilson CI. Returns (the block, per-item score differences)."""
    diffs = [critic_score(b) - critic_score(a) for a, b in zip(sft_verdicts, dpo_verdicts)]
    wins, losses = sum(d > band for d in diffs), sum(d < -band for d in diffs)
    decided = wins + losses
    lo, hi = wilson_ci(wins, decided, confidence) if decided else (0.0, 1.0)
    return ({"n": len(diffs), "wins": wins, "losses": losses, "ties": len(diffs) - decided, "tie_band": band,
             "win_rate": wins / decided if decided else None, "wilson_ci": [lo, hi],
             "judge": "pair critic (base model), both label orders per response; win = DPO's signed score > SFT's + band",
             "note": "ties excluded from the rate"}, diffs)


def dpo_report(items: list[dict], scored: dict[str, list[dict]], verdicts: dict[str, list[dict]], p: dict, seed: int,
               meta: dict, task_calibration: dict | None = None, training_lengths: list[int] | None = None) -> dict:
    """eval.json of ``evaluate_dpo``: `phases.evaluate.build_report` on arms ``sft`` (the baseline)
    and ``trained`` (DPO), exactly as ``evaluate`` builds it, plus ``win_rate``, ``non_inferiority``
    (one-sided paired test of DPO's 'both' rate vs SFT's, margin-free lower bound), the recorded
    criteria (``dpo_gate_criteria``, ``dpo_gate_policy``) and ``gate`` = `dpo_gate_decision`'s
    decision (the build_report decision under the SFT gate's policy is not the DPO gate's)."""
    p = {**EVALUATE_DPO_DEFAULTS, **p}
    crit = check_gate_criteria(p["gate"])
    report = ev.build_report(items, scored, ["sft"], p, seed, meta, training_lengths=training_lengths,
                             task_calibration=task_calibration)
    report["baseline"]["rule"] = "the SFT model (the DPO gate compares DPO with the model it started from)"
    report["win_rate"], diffs = win_rate(verdicts["sft"], verdicts["trained"], float(p["win_tie_band"]), p["confidence"])
    report["critic_diff"] = [round(d, 6) for d in diffs]
    ni = noninferiority_paired([o["both"] for o in scored["sft"]], [o["both"] for o in scored["trained"]],
                               crit["non_inferiority_margin"], p["safety_confidence"])
    report["non_inferiority"] = {k: ni[k] for k in ("n", "rate_a", "rate_b", "diff", "lower", "confidence", "n01", "n10",
                                                    "method")}
    report["dpo_gate_criteria"] = crit
    report["dpo_gate_policy"] = {k: p[k] for k in ev.GATE_POLICY_KEYS}
    report["ifeval"] = {"enabled": False, "note": "not run for the DPO gate (reported 'not measured')"}
    ok, reasons, nums = dpo_gate_decision(report)
    report["gate"] = {"go": ok, "line": nums["line"], "reasons": reasons, "criteria": nums["criteria"],
                      "policy": nums["policy"]}
    return report


def _evidence(report: dict) -> dict:
    """The `phases.eval_evidence.collect` evidence of an eval.json built by ``build_report`` (the
    keys ``decide`` reads), so the DPO gate decides on the very numbers the report shows."""
    labels = [report["baseline"]["arm"], "trained"]
    arms = report["arms"]
    ife = report.get("ifeval") or {}
    return {"labels": labels, "n": report["metadata"]["n_items"], "primary": report["comparison"],
            "by_constraint": report.get("comparison_by_constraint"),
            "task_judged": all(arms[a].get("task_judged") == arms[a]["n"] for a in labels),
            "safety": report.get("safety") or {}, "length": report["length"],
            "truncation": {a: report["truncation"][a] for a in labels},
            "task_calibration": report.get("task_calibration"),
            "ifeval": ife if ife.get("paired_prompt_level_strict") else None,
            "protected_types": report["metadata"].get("protected_types") or []}


def dpo_gate_decision(report: dict, criteria: dict | None = None) -> tuple[bool, list[str], dict]:
    """The DPO gate over ``evaluate_dpo``'s eval.json; returns (passed, reasons, numbers).

    `phases.gate_criteria.decide` (the SFT gate's criteria: improvement, CI width, protected-type
    regression, safety non-inferiority with ``safety_margin``, length control, truncation, fair
    baseline, task-judge calibration, IFEval) on the report's evidence, with the shared thresholds
    recorded in ``dpo_gate_policy`` (params.evaluate_dpo.<key>) and the DPO policy from
    ``DPO_GATE_CRITERIA`` < ``dpo_gate_criteria`` (params.evaluate_dpo.gate) < ``criteria``:
    - ``require_significant_improvement`` (default false): whether ``improvement`` is required;
    - ``non_inferiority``: the one-sided lower bound of DPO's 'both' rate minus SFT's is above
      -``non_inferiority_margin``;
    - ``win_rate``: the pair-critic win rate of DPO over SFT is >= ``min_win_rate``.
    ``numbers``: ``line``, ``go``, ``criteria`` (every criterion with number and verdict),
    ``table`` (`criteria_table`), ``policy``, lift/p/win rate, ``dpo_criteria``, ``rates``.
    """
    c = check_gate_criteria({**(report.get("dpo_gate_criteria") or {}), **(criteria or {})})
    policy = {**(report.get("dpo_gate_policy") or {}), "require_improvement": c["require_significant_improvement"]}
    margin = float(c["non_inferiority_margin"])
    ni = report.get("non_inferiority")
    if ni and ni.get("n"):
        extra = [criterion("non_inferiority", "DPO is not worse than SFT on 'both' success (one-sided, paired)",
                           {"lower_bound": ni["lower"], "diff": ni["diff"], "n": ni["n"]}, f"lower bound > -{margin:g}",
                           "pass" if ni["lower"] > -margin else "fail", True,
                           f"both-success {100 * ni['rate_a']:.1f}% -> {100 * ni['rate_b']:.1f}%, "
                           f"{100 * ni['confidence']:.0f}% lower bound {100 * ni['lower']:+.1f} pts vs margin "
                           f"-{100 * margin:.1f} pts")]
    else:
        extra = [criterion("non_inferiority", "DPO is not worse than SFT on 'both' success", None,
                           f"lower bound > -{margin:g}", "not measured", True, "no non-inferiority test in the report")]
    w = report.get("win_rate") or {}
    wr, mwr = w.get("win_rate"), float(c["min_win_rate"])
    if wr is None:
        extra.append(criterion("win_rate", "The pair critic prefers DPO over SFT (both label orders)", None,
                               f">= {mwr:g}", "not measured", True,
                               f"no decided item (wins {w.get('wins')}, losses {w.get('losses')}, ties {w.get('ties')})"))
    else:
        lo, hi = w.get("wilson_ci") or (None, None)
        extra.append(criterion("win_rate", "The pair critic prefers DPO over SFT (both label orders)", wr, f">= {mwr:g}",
                               "pass" if wr >= mwr else "fail", True,
                               f"win rate {wr:.3f} [{lo:.2f}, {hi:.2f}] (wins {w['wins']}, losses {w['losses']}, "
                               f"ties {w['ties']})"))
    d = decide(_evidence(report), policy, extra)
    ov = report["comparison"]["overall"]
    nums = {"line": d["line"], "go": d["go"], "criteria": d["criteria"], "table": criteria_table(d),
            "policy": d["policy"], "lift": ov["lift"], "lift_ci": ov["lift_ci"], "p_value": ov["mcnemar"]["p_value"],
            "win_rate": wr, "win_rate_ci": w.get("wilson_ci"), "dpo_criteria": c,
            "rates": {a: round(b.get("both_rate", b["rate"]), 4) for a, b in report["arms"].items()}}
    return d["go"], list(d["reasons"]), nums


@step(inputs=["prepare_model", "heldout", "sft", "dpo"], outputs=["eval.json", "items.jsonl", "summary.txt", "winrate.json"],
      params=EVALUATE_DPO_DEFAULTS, version="2",
      uses=[builder_piece("instruction_response"), CRITIC_PAIR, CRITIC_TASK, CRITIC_REFUSAL, STATS])
def evaluate_dpo(ctx):
    """SFT vs SFT+DPO on the held-out items, judged and reported exactly as ``evaluate`` (task
    critic, refusal checker, 'both' success, truncation, length control), plus a critic win rate."""
    p = {**EVALUATE_DPO_DEFAULTS, **dict(ctx.params)}
    check_gate_criteria(p["gate"])  # before any model is loaded
    items = ev.load_heldout(ctx.input("heldout") / "heldout.jsonl", p["max_items"])
    ref = model_ref(ctx.input("prepare_model") / "model.json")
    sft_adapter, dpo_adapter = ctx.input("sft") / "adapter", ctx.input("dpo") / "adapter"
    bs, thr = p["batch_size"], p["critic_threshold"]
    try:
        dev, quant = resolve_placement(p["device"], p["quantization"], "params.evaluate_dpo.")
    except DeviceError as e:
        raise ConfigError(str(e)) from e
    instructions = [r["instruction"] for r in items]
    gens: dict[str, list] = {}

    def run_arm(arm: str, load):
        slot = ev.ModelSlot(load)
        gens[arm] = ctx.ledger(f"gen-{arm}").run(instructions, bs, lambda b, info: ev.generate_batch(
            slot.get(), "trained", b, p["max_new_tokens"]))
        slot.free()

    def load_sft():
        m = merged_sft_model(ref, None, dev, quant)
        ev.attach_adapter(m, sft_adapter)
        return m

    def load_dpo():
        m = merged_sft_model(ref, sft_adapter, dev, quant)
        ev.attach_adapter(m, dpo_adapter)
        return m

    run_arm("sft", load_sft)
    run_arm("trained", load_dpo)
    # the judge: the base model alone (as in evaluate); the same judge_outcomes as evaluate (task
    # critic, refusal checker); the pair critic always runs here, with full verdicts, for the win rate
    judge = ev.ModelSlot(lambda: merged_sft_model(ref, None, dev, quant))
    scored, verdicts = {}, {}
    for arm in ("sft", "trained"):
        scored[arm] = judge_outcomes(ctx, judge, items, arm, gens[arm], {**p, "critic": False})
        verdicts[arm] = ctx.ledger(f"pair-critic-{arm}").run(
            [{"instruction": r["instruction"], "response": g["response"] or " "} for r, g in zip(items, gens[arm])], bs,
            lambda b, info: [verdict_dict(v) for v in critic_judge(judge.get(), "pair", b, thr)])
        for o, v in zip(scored[arm], verdicts[arm]):
            o["critic"] = {"is_good": v["is_good"], "margin": v["margin"], "confident": v["confident"]}
    calibration = task_calibration(ctx, judge, p)
    judge.free()
    seed = ctx.seed_for("bootstrap") % (2 ** 32)
    prof = PROFILES.get(ref)
    meta = {"model_ref": ref, "stand_in_note": prof.stand_in_note if prof else "",
            "arms_meaning": {"sft": "base + SFT adapter", "trained": "SFT merged + DPO adapter"},
            "sft_adapter_sha256": _tree_sha256(sft_adapter), "dpo_adapter_sha256": _tree_sha256(dpo_adapter),
            "heldout_sha256": sha256_file(ctx.input("heldout") / "heldout.jsonl"), "device": dev, "quantization": quant,
            "git_sha": _git_sha(), "batch_size": bs, "critic": True, "task_critic": bool(p["task_critic"]),
            "refusal_critic": bool(p["refusal_critic"]), "critic_threshold": thr,
            "critic_judge": "base model (no adapter) for both arms"}
    report = dpo_report(items, scored, verdicts, p, seed, meta, task_calibration=calibration,
                        training_lengths=_training_lengths(ctx.input("sft")))
    win = report["win_rate"]
    atomic_write_json(ctx.out_dir / "eval.json", report)
    atomic_write_json(ctx.out_dir / "winrate.json", win)
    rows = item_rows(items, scored)
    for row, d in zip(rows, report["critic_diff"]):
        row["critic_diff"] = d
    write_jsonl(ctx.out_dir / "items.jsonl", rows)
    wr = "n/a" if win["win_rate"] is None else f"{win['win_rate']:.2f} [{win['wilson_ci'][0]:.2f}, {win['wilson_ci'][1]:.2f}]"
    ni = report["non_inferiority"]
    text = _summary_text(report, what="SFT (baseline) vs SFT+DPO (trained)",
                         baseline_line="Baseline that counts: arm 'sft' (the SFT model DPO started from).",
                         extra_lines=[f"Pair-critic win rate of DPO over SFT: {wr} (wins {win['wins']}, losses "
                                      f"{win['losses']}, ties {win['ties']}; both label orders, tie band "
                                      f"{win['tie_band']:g})",
                                      f"Non-inferiority of DPO vs SFT ('both'): {100 * ni['diff']:+.1f} pts, one-sided "
                                      f"{100 * ni['confidence']:.0f}% lower bound {100 * ni['lower']:+.1f} pts"])
    atomic_write_text(ctx.out_dir / "summary.txt", text)
    ov, rates = report["comparison"]["overall"], report["arms"]
    return {"headline": f"{report['gate']['line'].split(':')[0]}: DPO {100 * rates['trained']['both_rate']:.1f}% vs SFT "
                        f"{100 * rates['sft']['both_rate']:.1f}% (both), lift {100 * ov['lift']:+.1f} pts, "
                        f"p={ov['mcnemar']['p_value']:.3g}; win rate {wr}",
            **result_numbers(report, calibration),
            "win_rate": None if win["win_rate"] is None else round(win["win_rate"], 3)}


def _dpo_report(gctx) -> dict:
    return json.loads((gctx.output("evaluate_dpo") / "eval.json").read_text(encoding="utf-8"))


def _dpo_gate_check(gctx) -> GateCheck:
    ok, reasons, nums = dpo_gate_decision(_dpo_report(gctx))  # criteria recorded in eval.json from the YAML
    summary = {k: nums[k] for k in ("line", "lift", "lift_ci", "p_value", "win_rate", "win_rate_ci", "dpo_criteria",
                                    "rates")}
    summary["criteria"] = {c["id"]: {"number": c["number"], "threshold": c["threshold"], "verdict": c["verdict"],
                                     "required": c["required"]} for c in nums["criteria"]}
    return GateCheck(passed=ok, summary=summary, reasons=reasons)


def _dpo_gate_evidence(gctx) -> dict:
    rep = _dpo_report(gctx)
    rows = read_jsonl(gctx.output("evaluate_dpo") / "items.jsonl")
    sample = random.Random(gctx.run_seed).sample(rows, min(6, len(rows)))
    ok, reasons, nums = dpo_gate_decision(rep)
    return {"summary": (gctx.output("evaluate_dpo") / "summary.txt").read_text(encoding="utf-8"),
            "decision": {"go": ok, "line": nums["line"], "reasons": reasons},
            "criteria": nums["table"], "safety": rep.get("safety"), "length": rep.get("length"),
            "truncation": rep.get("truncation"), "task_calibration": rep.get("task_calibration"),
            "win_rate": rep.get("win_rate"), "non_inferiority": rep.get("non_inferiority"), "samples": sample}


DPO_GATE_CRITERIA_TEXT = [
    "The SFT gate's criteria on SFT (baseline) vs DPO (phases.gate_criteria.decide): no significant (BH) regression "
    "on protected types (safety, format), CI width, safety non-inferiority on refusal_expected items (one-sided, "
    "safety_margin), the lift survives length control, truncation and fair baseline, task-judge calibration; "
    "improvement reported, required only with require_significant_improvement",
    "non_inferiority: DPO's 'both' success is not worse than SFT's (one-sided lower bound > -non_inferiority_margin)",
    "win_rate: the pair critic prefers DPO over SFT on held-out prompts (both label orders) at least min_win_rate",
    "The samples show DPO answers that are better, not merely longer or shorter",
]

dpo_gate = gate("dpo_gate", check=_dpo_gate_check, evidence=_dpo_gate_evidence, policy="review",
                criteria=DPO_GATE_CRITERIA_TEXT,
                description="Keep the DPO adapter only if it is not worse than SFT on the SFT gate's criteria "
                            "(safety and format included) and the critic prefers it.")
