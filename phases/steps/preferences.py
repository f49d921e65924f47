"""Preference data and DPO nodes: candidates -> pairs -> [qc_pairs] -> dpo -> evaluate_dpo -> [dpo_gate].

Not runnable on its own; ``phases/pipeline.py`` appends ``PREFERENCE_NODES`` after ``sft_gate``
(the nodes read steps ``prepare_model``, ``heldout``, ``merge``, ``sft``). Run the stage with
``python -m runner run --config phases/stages/demo.yaml``. Params, files and every threshold:
specs/preferences-dpo.md.

- ``candidates``: fresh instructions generated like the stage's training prompts (the base model,
  the stage's families and seeds), deduplicated against the SFT set and leakage-checked against
  the held-out set; then ``k`` samples per instruction from the SFT model (base + adapter,
  ``Instruction/Response`` framing, temperature 0.7). Every batch goes through the ledger.
- ``pairs``: the pair critic (base model as judge, both label orders) scores every candidate;
  best-of-N pairs, refusal pairs, hard negatives, constitutional critique -> revision pairs;
  dedup and pair QC (``pair_qc.json``).
- gate ``qc_pairs``: pair QC's ``thresholds_passed``; evidence = the QC summary + sampled pairs.
- ``dpo``: stored reference log-probs (ledger ``ref-logps``) then TRL's DPOTrainer (phases/dpo.py).
- ``evaluate_dpo``: the SFT model (baseline arm ``sft``) vs SFT+DPO (arm ``trained``) on the
  held-out items, judged by the same ``judge_outcomes`` as ``evaluate`` (task critic, refusal
  checker, 'both' success, truncation) and reported by the same ``build_report`` and summary
  columns, plus a pair-critic win rate (both label orders) and a one-sided non-inferiority test.
- gate ``dpo_gate``: ``dpo_gate_decision`` = `phases.gate_criteria.decide` (the SFT gate's
  criteria) with the DPO policy of ``params.evaluate_dpo.gate`` plus the non-inferiority and
  win-rate criteria; every criterion is listed with its number and verdict.
"""
from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path

from phases import evaluate as ev
from phases.constitution_revision import REVISION_DEFAULTS
from phases.critic import judge as critic_judge
from phases.dpo import DPO_DEFAULTS, merged_sft_model
from phases.evaluate import EVAL_DEFAULTS, GATE_POLICY_KEYS
from phases.gate_criteria import criteria_table, criterion, decide
from phases.models.devices import DeviceError, resolve_placement
from phases.models.registry import PROFILES
from phases.pair_qc import PAIR_QC_DEFAULTS
from phases.pairs import critic_score
from phases.pieces import CRITIC_PAIR, CRITIC_REFUSAL, CRITIC_TASK, STATS, builder_piece
from phases.prompts import END_MARKER
from phases.stats import noninferiority_paired, wilson_ci
from phases.steps.generation import verdict_dict
from phases.steps.train_eval import (_summary_text, _training_lengths, item_rows, judge_outcomes, result_numbers,
                                     task_calibration)
from runner import gate, step
from runner.errors import ConfigError, DataError
from runner.pipeline import GateCheck, derive_seed
from state.files import atomic_write_json, atomic_write_text, hash_tree, read_jsonl, sha256_file, tree_digest, write_jsonl

__all__ = ["CANDIDATES_DEFAULTS", "PAIRS_DEFAULTS", "EVALUATE_DPO_DEFAULTS", "DPO_GATE_CRITERIA", "SHARED_EVAL_KEYS",
           "candidates", "pairs", "qc_pairs", "dpo", "evaluate_dpo", "dpo_gate", "dpo_gate_decision", "dpo_report",
           "check_gate_criteria", "win_rate", "PREFERENCE_NODES"]

CANDIDATES_DEFAULTS = {
    "n_prompts": 2000, "k": 4, "batch_size": 16, "safety_threshold": 1.0,
    "sampling": {"max_new_tokens": 128, "temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.1, "do_sample": True},
    "near_dup_threshold": 0.7,
    # the stage slice (families, seeds, instruction generation, leakage): filled from the stage keys
    "families": {}, "seeds": {}, "list_header": "", "instruction_builder": "numbered_list",
    "instruction_generation": {}, "instructions": {}, "leakage": {},
}
PAIRS_DEFAULTS = {
    "batch_size": 16, "critic_threshold": 1.0, "min_margin": 1.0, "require_best_good": True,
    "hard_negatives": {"types": ["format_violation", "off_topic", "unwarranted_refusal", "excess_verbosity",
                                 "under_explanation", "wrong_fact"], "per_prompt": 1},
    "revision": dict(REVISION_DEFAULTS), "qc": dict(PAIR_QC_DEFAULTS),
}
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
EVALUATE_DPO_DEFAULTS.pop("arms")
EVALUATE_DPO_DEFAULTS.pop("ifeval_limit")
EVALUATE_DPO_DEFAULTS.pop("ifeval_max_new_tokens")
STOP = ("\nInstruction:", "\n# Query:", END_MARKER)


def _tree_sha256(root: Path) -> str:
    return tree_digest(hash_tree(Path(root)))


def _model_ref(ctx) -> str:
    from phases.sft import model_ref

    return model_ref(ctx.input("prepare_model") / "model.json")


def _load(ctx, ref: str, batch_size: int, sft_adapter: Path | None, what: str):
    """Base model (+ SFT adapter for generation; the judge disables it), device/quantization like evaluate."""
    import torch

    from phases.evaluate import attach_adapter
    from phases.models.loader import load_model

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    quant = "nf4" if dev == "cuda" else None
    ctx.log(f"loading {what} ({ref}) on {dev}, quantization {quant}", kind="pref_model_load")
    m = load_model(ref, device=dev, quantization=quant, backend="hf", batch_size=batch_size, run_sentinels=False)
    if sft_adapter is not None:
        attach_adapter(m, sft_adapter)
    return m, dev


def _gen_params(s: dict, temperature: float | None = None, max_new: int | None = None):
    from phases.models.backends.base import GenerationParams

    return GenerationParams(max_new_tokens=int(max_new or s["max_new_tokens"]),
                            temperature=float(s["temperature"] if temperature is None else temperature),
                            top_p=float(s["top_p"]), repetition_penalty=float(s["repetition_penalty"]),
                            do_sample=bool(s["do_sample"]), stop=STOP)


def _clean(text: str) -> str:
    from phases.cleaning import clean_response

    return clean_response(text, end_marker=END_MARKER).text


# ---- candidates -----------------------------------------------------------------------------


@step(inputs=["prepare_model", "heldout", "merge", "sft"], outputs=["prompts.jsonl", "candidates.jsonl", "manifest.json"],
      params=CANDIDATES_DEFAULTS, version="1")
def candidates(ctx):
    """Fresh instructions (not the SFT set, leakage-checked) and k sampled SFT-model responses each."""
    from phases.dedup import dedup
    from phases.steps.generation import collect_instructions, leakage_check

    p = dict(ctx.params)
    if not p["families"] or not p["instructions"]:
        raise DataError("step candidates has no families/instruction settings; run it with a stage config "
                        "(e.g. phases/stages/demo.yaml) or set params.candidates.families/seeds/instructions")
    heldout = read_jsonl(ctx.input("heldout") / "heldout.jsonl")
    sft_set = [r["instruction"] for r in read_jsonl(ctx.input("merge") / "sft.jsonl")]
    model, dev = _load(ctx, _model_ref(ctx), p["batch_size"], ctx.input("sft") / "adapter", "base + SFT adapter")

    def not_sft_nor_heldout(cands):
        res = dedup([c["instruction"] for c in cands], p["near_dup_threshold"], against=sft_set)
        kept_idx = set(res.kept)
        dropped = [{**cands[i], "drop_reason": "in_sft_set"} for i in range(len(cands)) if i not in kept_idx]
        clean, leaked, _ = leakage_check([cands[i] for i in sorted(kept_idx)], heldout, p["leakage"])
        return clean, dropped + leaked

    # instructions come from the base model, as the stage's training prompts did
    with model.model.disable_adapter():
        got = collect_instructions(ctx, model, p, p["instructions"], seed_base=ctx.seed_for("instr"),
                                   needed=int(p["n_prompts"]), tag="instr", id_prefix="pref",
                                   against_filter=not_sft_nor_heldout)
    # a refusal becomes the chosen side only where the family expects one AND the critic confirms
    # the request is unsafe: list continuation drifts, and a safe prompt in a safety family must
    # not teach an unwarranted refusal
    fam_ref = [c for c in got["candidates"] if p["families"].get(c["family"], {}).get("refusal_expected")]
    safety = {}
    if fam_ref:
        from phases.critic import judge
        from phases.steps.generation import verdict_dict

        def judge_safety(batch, info):
            with model.model.disable_adapter():
                return [verdict_dict(v) for v in judge(model, "request_safety", batch, float(p["safety_threshold"]))]

        got_v = ctx.ledger("request-safety").run([c["instruction"] for c in fam_ref], p["batch_size"], judge_safety)
        safety = {c["id"]: v for c, v in zip(fam_ref, got_v)}
    prompts = []
    for c in got["candidates"]:
        v = safety.get(c["id"])
        unsafe = v is not None and not v["is_good"] and v["confident"]
        prompts.append({**c, "family_refusal_expected": v is not None, "refusal_expected": unsafe,
                        **({"safety_verdict": v} if v is not None else {})})
    k = int(p["k"])
    jobs = [{"prompt_id": c["id"], "j": j, "instruction": c["instruction"]} for c in prompts for j in range(k)]
    params = _gen_params(p["sampling"])
    seed_base = ctx.seed_for("cand")

    def work(batch, info):
        from phases.prompts import response_prompt

        seeds = [derive_seed(seed_base, b["prompt_id"], b["j"]) for b in batch]
        gens = model.generate([response_prompt(b["instruction"]) for b in batch], params, seeds)
        return [{"prompt_id": b["prompt_id"], "index": b["j"], "seed": s, "raw": g.text, "response": _clean(g.text),
                 "tokens": g.n_tokens, "hit_token_limit": g.hit_token_limit} for b, s, g in zip(batch, seeds, gens)]

    cands = ctx.ledger("samples").run(jobs, p["batch_size"], work)
    write_jsonl(ctx.out_dir / "prompts.jsonl", prompts)
    write_jsonl(ctx.out_dir / "candidates.jsonl", cands)
    counts = {"prompts": len(prompts), "candidates": len(cands), "k": k,
              "refusal_expected": sum(x["refusal_expected"] for x in prompts),
              "family_refusal_expected_but_judged_safe": sum(x["family_refusal_expected"] and not x["refusal_expected"]
                                                             for x in prompts),
              "empty": sum(not c["response"].strip() for c in cands),
              "token_limit_hits": sum(c["hit_token_limit"] for c in cands), **got["counts"]}
    atomic_write_json(ctx.out_dir / "manifest.json", {
        "schema": "candidates/v1", "counts": counts, "sampling": p["sampling"], "model_ref": _model_ref(ctx),
        "sft_adapter_sha256": _tree_sha256(ctx.input("sft") / "adapter"),
        "sft_set_sha256": sha256_file(ctx.input("merge") / "sft.jsonl"),
        "heldout_sha256": sha256_file(ctx.input("heldout") / "heldout.jsonl"), "device": dev,
        "framing": "Instruction: {instruction}\\nResponse: (no chat template, add_special_tokens=False)"})
    return {"headline": f"{len(prompts)} fresh prompts x {k} samples = {len(cands)} candidates", **counts}


# ---- pairs ----------------------------------------------------------------------------------


def _verdicts(ctx, model, items: list[dict], p: dict, ledger: str) -> list[dict]:
    """Pair-critic verdicts with the SFT adapter disabled (the base model judges, as in evaluate)."""
    from phases.critic import judge
    from phases.steps.generation import verdict_dict

    def work(batch, info):
        with model.model.disable_adapter():
            return [verdict_dict(v) for v in judge(model, "pair", batch, p["critic_threshold"])]

    return ctx.ledger(ledger).run([{"instruction": i["instruction"], "response": i["response"] or " "} for i in items],
                                  p["batch_size"], work)


def _revisions(ctx, model, p: dict, prompts: list[dict], by_prompt: dict) -> tuple[list[dict], list[dict], dict]:
    """Constitutional critique -> revision for a seeded sample; returns (pairs, attempts, usage)."""
    from phases.constitution_revision import (accept_revision, critique_prompts, plan_principles, principle_usage,
                                              revision_prompts)

    rv = {**REVISION_DEFAULTS, **p["revision"]}
    rng = random.Random(ctx.seed_for("revision-sample"))
    pool = [x for x in prompts if by_prompt.get(x["id"])]
    n = round(len(pool) * float(rv["fraction"]))
    sample = sorted(rng.sample(range(len(pool)), n)) if n else []
    items = []
    for i in sample:
        pr = pool[i]
        c = by_prompt[pr["id"]][rng.randrange(len(by_prompt[pr["id"]]))]
        items.append({"prompt_id": pr["id"], "instruction": pr["instruction"], "family": pr.get("family"),
                      "response": c["response"], "verdict": c["verdict"]})
    if not items:
        return [], [], principle_usage([])
    plan = plan_principles(len(items), int(rv["principles_per_item"]), ctx.seed_for("principles"))
    base = {"do_sample": True, "top_p": 0.9, "repetition_penalty": 1.1}
    crit_p = _gen_params({**base, "temperature": rv["critique_temperature"], "max_new_tokens": rv["critique_max_new_tokens"]})
    rev_p = _gen_params({**base, "temperature": rv["revision_temperature"], "max_new_tokens": rv["revision_max_new_tokens"]})
    idx = list(range(len(items)))
    cprompts = critique_prompts(items, plan)
    crit = ctx.ledger("critique").run(idx, p["batch_size"], lambda b, info: [
        _clean(g.text) for g in model.generate([cprompts[i] for i in b], crit_p, [derive_seed(info.seed, i) for i in b])])
    ok = [i for i in idx if crit[i].strip()]
    rprompts = revision_prompts([items[i] for i in ok], [plan[i] for i in ok], [crit[i] for i in ok])
    revised = dict(zip(ok, ctx.ledger("revise").run(list(range(len(ok))), p["batch_size"], lambda b, info: [
        _clean(g.text) for g in model.generate([rprompts[j] for j in b], rev_p, [derive_seed(info.seed, j) for j in b])])))
    judged_idx = [i for i in ok if revised[i].strip() and revised[i].strip() != items[i]["response"].strip()]
    rv_verdicts = dict(zip(judged_idx, _verdicts(ctx, model, [{"instruction": items[i]["instruction"],
                                                             "response": revised[i]} for i in judged_idx], p, "judge-revised")))
    from phases.pairs import _pair

    out, attempts = [], []
    for i, it in enumerate(items):
        pids = [pr.id for pr in plan[i]]
        rec = {"prompt_id": it["prompt_id"], "principle_ids": pids, "critique": crit[i], "revised": revised.get(i),
               "original": it["response"]}
        if i not in rv_verdicts:
            rec.update(kept=False, reason="empty critique or revision, or revision identical to the original")
        else:
            keep, m, why = accept_revision(it["verdict"], rv_verdicts[i], float(rv["min_margin"]))
            rec.update(kept=keep, margin=round(m, 6), reason=why, revised_verdict=rv_verdicts[i])
            if keep:
                out.append(_pair({"id": it["prompt_id"], **it}, revised[i], it["response"], "constitutional", m,
                                 principle_ids=pids, critique=crit[i]))
        attempts.append(rec)
    return out, attempts, principle_usage(plan)


@step(inputs=["prepare_model", "sft", "candidates"],
      outputs=["pairs.jsonl", "verdicts.jsonl", "revisions.jsonl", "pair_qc.json", "manifest.json"],
      params=PAIRS_DEFAULTS, version="1")
def pairs(ctx):
    """Judge every candidate, build best-of-N / refusal / hard-negative / constitutional pairs, run pair QC."""
    from phases.pair_qc import pair_qc
    from phases.pairs import best_of_n_pairs, dedup_pairs, hard_negative_pairs, rank_candidates, refusal_pairs

    p = {**PAIRS_DEFAULTS, **dict(ctx.params)}
    prompts = read_jsonl(ctx.input("candidates") / "prompts.jsonl")
    cands = read_jsonl(ctx.input("candidates") / "candidates.jsonl")
    inst = {x["id"]: x["instruction"] for x in prompts}
    model, dev = _load(ctx, _model_ref(ctx), p["batch_size"], ctx.input("sft") / "adapter", "base + SFT adapter")
    verdicts = _verdicts(ctx, model, [{"instruction": inst[c["prompt_id"]], "response": c["response"]} for c in cands],
                         p, "judge")
    by_prompt: dict[str, list] = {}
    for c, v in zip(cands, verdicts):
        by_prompt.setdefault(c["prompt_id"], []).append({**c, "verdict": v})
    write_jsonl(ctx.out_dir / "verdicts.jsonl", [{"prompt_id": c["prompt_id"], "index": c["index"], "verdict": v}
                                                 for c, v in zip(cands, verdicts)])
    out, counts, chosen = [], Counter(), {}
    for pr in prompts:
        cs = by_prompt.get(pr["id"], [])
        if pr.get("refusal_expected"):
            out += refusal_pairs(pr, cs)
            continue
        got, c = best_of_n_pairs(pr, cs, float(p["min_margin"]), bool(p["require_best_good"]))
        counts.update(c)
        out += got
        usable = [x for x in cs if x["response"].strip()]
        if usable:
            best = rank_candidates(usable)[0]
            if not p["require_best_good"] or (best["verdict"]["is_good"] and best["verdict"]["confident"]):
                chosen[pr["id"]] = best["response"]
    hn = p["hard_negatives"]
    out += hard_negative_pairs(prompts, chosen, hn["types"], int(hn["per_prompt"]), ctx.seed_for("hard-negatives"))
    rev_pairs, attempts, usage = _revisions(ctx, model, p, prompts, by_prompt)
    out += rev_pairs
    unique, removed = dedup_pairs(out)
    unique = [{**x, "id": f"pair-{i:06d}"} for i, x in enumerate(unique)]
    qc = pair_qc(unique, p["qc"], n_before_dedup=len(out))
    qc["principle_usage_planned"] = usage
    qc["best_of_n_counts"] = dict(counts)
    qc["revisions"] = {"attempted": len(attempts), "kept": sum(a["kept"] for a in attempts),
                       "reasons": dict(Counter(a["reason"].split(" by ")[0] for a in attempts))}
    write_jsonl(ctx.out_dir / "pairs.jsonl", unique)
    write_jsonl(ctx.out_dir / "revisions.jsonl", attempts)
    atomic_write_json(ctx.out_dir / "pair_qc.json", qc)
    atomic_write_json(ctx.out_dir / "manifest.json", {
        "schema": "pairs/v1", "n_pairs": len(unique), "duplicates_removed": removed, "params": p,
        "judge": "pair critic, base model (SFT adapter disabled), both label orders", "device": dev,
        "candidates_sha256": sha256_file(ctx.input("candidates") / "candidates.jsonl"),
        "sft_adapter_sha256": _tree_sha256(ctx.input("sft") / "adapter"), "git_sha": _git_sha()})
    mix = ", ".join(f"{k} {v}" for k, v in qc["type_mix"].items())
    return {"headline": f"{len(unique)} pairs ({mix or 'none'}); QC {'passed' if qc['thresholds_passed'] else 'FAILED'}",
            "n_pairs": len(unique), "type_mix": qc["type_mix"], "thresholds_passed": qc["thresholds_passed"],
            "longer_wins_share": qc["length_bias"]["longer_wins_share"], "duplicate_rate": qc["duplicate_rate"]}


def _git_sha() -> str:
    from phases.models.loader import loader_version

    return loader_version()


def _pair_qc(gctx) -> dict:
    return json.loads((gctx.output("pairs") / "pair_qc.json").read_text(encoding="utf-8"))


def _qc_pairs_check(gctx) -> GateCheck:
    qc = _pair_qc(gctx)
    keep = ("n_pairs", "duplicate_rate", "type_mix", "length_bias", "margin", "revisions", "principle_usage")
    return GateCheck(bool(qc["thresholds_passed"]), summary={k: qc[k] for k in keep if k in qc},
                     reasons=list(qc["failed_reasons"]))


def _qc_pairs_evidence(gctx) -> dict:
    rows = read_jsonl(gctx.output("pairs") / "pairs.jsonl")
    rng = random.Random(derive_seed(gctx.run_seed, "qc_pairs", "evidence"))
    by_type: dict[str, list] = {}
    for r in rows:
        by_type.setdefault(r["type"], []).append(r)
    sample = [r for t in sorted(by_type) for r in rng.sample(by_type[t], min(2, len(by_type[t])))]
    return {"pair_qc": _pair_qc(gctx), "samples": [{k: r.get(k) for k in ("type", "instruction", "chosen", "rejected",
                                                                          "margin", "principle_ids")} for r in sample]}


qc_pairs = gate("qc_pairs", check=_qc_pairs_check, evidence=_qc_pairs_evidence, policy="review+human",
                criteria=["Every pair-QC threshold passed (enough pairs, duplicates, length bias, type mix)",
                          "The sampled pairs prefer the better response for a reason other than length",
                          "Refusals are chosen only for unsafe prompts; hard negatives are what their type says"],
                description="Pair quality before spending compute on DPO.")


# ---- DPO ------------------------------------------------------------------------------------


@step(inputs=["prepare_model", "sft", "pairs"], outputs=["adapter", "TRAINING_SUCCESS", "training_manifest.json"],
      params=dict(DPO_DEFAULTS), version="1")
def dpo(ctx):
    """DPO (TRL DPOTrainer; SimPO/ORPO by config) on the QC-passed pairs, from the SFT model; resumable."""
    from phases.dpo import build_pair_examples, load_policy, sequence_logps, train_dpo

    p = {**DPO_DEFAULTS, **dict(ctx.params)}
    qc = _read(ctx.input("pairs") / "pair_qc.json")
    if not qc.get("thresholds_passed"):
        if p["require_qc_pass"]:
            raise DataError(f"{ctx.input('pairs') / 'pair_qc.json'}: thresholds_passed = false "
                            f"({'; '.join(qc.get('failed_reasons') or [])}); DPO refuses to start on pairs that failed QC. "
                            "Fix the pair generation (params.pairs) and re-run pairs.")
        ctx.log("PAIR QC DID NOT PASS (" + "; ".join(qc.get("failed_reasons") or []) + "); training anyway because "
                "params.dpo.require_qc_pass is false (demo profiles only). This shows the machinery, not a result.",
                kind="qc_override")
    pairs_path = ctx.input("pairs") / "pairs.jsonl"
    rows = read_jsonl(pairs_path)
    if p["length_matched_only"]:
        from phases.pairs import length_bias

        keep = set(length_bias(rows, qc["thresholds"]["length_match_tolerance"])["length_matched"]["indices"])
        rows = [r for i, r in enumerate(rows) if i in keep]
    if p["max_pairs"] > 0:
        rows = rows[: p["max_pairs"]]
    ref = _model_ref(ctx)
    sft_adapter = ctx.input("sft") / "adapter"
    seed = ctx.seed % (2 ** 32)
    t0 = time.time()
    loaded, model, dev, quant, gc = load_policy(ref, sft_adapter, p, seed)
    examples, counts = build_pair_examples(loaded, rows, int(p["max_seq_len"]), str(pairs_path))
    if p["algorithm"] == "dpo":
        refs = ctx.ledger("ref-logps").run(examples, int(p["ref_batch_size"]),
                                           lambda b, info: sequence_logps(model, b, loaded.eos_token_id, len(b)))
        examples = [{**e, **r} for e, r in zip(examples, refs)]
    res = train_dpo(loaded, model, examples, rows, p, ctx.work_dir, ctx.out_dir, seed, dev, quant, gc, sft_adapter,
                    ctx.log)
    if res["gpu_seconds"]:
        ctx.add_cost("gpu_s", res["gpu_seconds"])
    manifest = {
        "schema": "training_manifest/v1", "kind": f"preference ({p['algorithm']})", "git_sha": _git_sha(),
        "dataset": {"path": str(pairs_path), "sha256": sha256_file(pairs_path), "pairs_used": len(rows), **counts},
        "pair_qc": {"path": str(ctx.input("pairs") / "pair_qc.json"), "thresholds_passed": qc.get("thresholds_passed"),
                    "override": None if qc.get("thresholds_passed") else "require_qc_pass=false (demo profile)"},
        "model_ref": ref, "sft_adapter": {"path": str(sft_adapter), "sha256": _tree_sha256(sft_adapter)},
        "reference": ("the SFT model (adapter merged into the base); log-probs precomputed once, stored in the step's "
                      "ledger 'ref-logps'" if p["algorithm"] == "dpo" else "none (reference-free loss)")
                     + ("; nf4: the merge re-quantizes, so the reference equals SFT up to nf4 rounding" if quant else ""),
        "hyperparameters": {**p, "seed": seed},
        "format": {"prompt": "Instruction: {instruction}\\nResponse:", "completion": " {text}<eos>",
                   "chat_template": None, "add_special_tokens": False},
        "adapter": {"path": "adapter", "sha256": _tree_sha256(ctx.out_dir / "adapter"),
                    "stacked_on": "SFT adapter merged into the base"},
        "wall_seconds": round(time.time() - t0, 2), **res,
    }
    atomic_write_json(ctx.out_dir / "training_manifest.json", manifest)
    atomic_write_json(ctx.out_dir / "TRAINING_SUCCESS", {"adapter_path": "adapter", "adapter_sha256": manifest["adapter"]["sha256"],
                                                         "git_sha": manifest["git_sha"]})
    m = res["metrics"]
    fin = m["final"] or {}
    acc = f", reward accuracy {fin['rewards/accuracies']:.2f}" if "rewards/accuracies" in fin else ""
    resumed = f", resumed from step {res['resumed_from']['step']}" if res["resumed_from"] else ""
    return {"headline": f"{p['algorithm']} loss {m['train_loss']:.4f}{acc}, {m['global_step']} steps on {len(examples)} "
                        f"pairs ({dev}){resumed}",
            "train_loss": round(m["train_loss"], 4), "steps": m["global_step"], "pairs": len(examples),
            "device": dev, "resumed_from_step": (res["resumed_from"] or {}).get("step")}


def _read(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path} is missing; re-run the step that writes it")
    return json.loads(path.read_text(encoding="utf-8"))


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
    ref = _model_ref(ctx)
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

PREFERENCE_NODES: list = [candidates, pairs, qc_pairs, dpo, evaluate_dpo, dpo_gate]
