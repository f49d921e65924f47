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
- ``evaluate_dpo`` and gate ``dpo_gate`` (defined in `phases.steps.dpo_eval`, re-exported here):
  SFT vs SFT+DPO judged, reported and decided exactly as the SFT gate (`judge_outcomes`,
  `build_report`, `phases.gate_criteria.decide`), plus overall non-inferiority and a pair-critic
  win rate; every criterion is listed with its number and verdict.
"""
from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path

from phases.cleaning import clean_response
from phases.constitution_revision import (REVISION_DEFAULTS, accept_revision, critique_prompts, plan_principles,
                                          principle_usage, revision_prompts)
from phases.critic import judge
from phases.dedup import dedup
from phases.dpo import DPO_DEFAULTS, build_pair_examples, load_policy, sequence_logps, train_dpo
from phases.evaluate import attach_adapter
from phases.models.backends.base import GenerationParams
from phases.models.loader import load_model, loader_version
from phases.pair_qc import PAIR_QC_DEFAULTS, pair_qc
from phases.pairs import (_pair, best_of_n_pairs, dedup_pairs, hard_negative_pairs, length_bias, rank_candidates,
                          refusal_pairs)
from phases.prompts import END_MARKER, response_prompt
from phases.sft import model_ref
# the DPO gate's evaluation lives in its own module; its names stay importable from here
from phases.steps.dpo_eval import (DPO_GATE_CRITERIA, EVALUATE_DPO_DEFAULTS, SHARED_EVAL_KEYS, check_gate_criteria,
                                   dpo_gate, dpo_gate_decision, dpo_report, evaluate_dpo, win_rate)
from phases.steps.generation import collect_instructions, leakage_check, verdict_dict
from runner import gate, step
from runner.errors import DataError
from runner.pipeline import GateCheck, derive_seed
from state.files import atomic_write_json, hash_tree, read_jsonl, sha256_file, tree_digest, write_jsonl

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
STOP = ("\nInstruction:", "\n# Query:", END_MARKER)


def _tree_sha256(root: Path) -> str:
    return tree_digest(hash_tree(Path(root)))


def _model_ref(ctx) -> str:
    return model_ref(ctx.input("prepare_model") / "model.json")


def _load(ctx, ref: str, batch_size: int, sft_adapter: Path | None, what: str):
    """Base model (+ SFT adapter for generation; the judge disables it), device/quantization like evaluate."""
    import torch  # lazy: heavy; the step registry imports this module torch-free

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    quant = "nf4" if dev == "cuda" else None
    ctx.log(f"loading {what} ({ref}) on {dev}, quantization {quant}", kind="pref_model_load")
    m = load_model(ref, device=dev, quantization=quant, backend="hf", batch_size=batch_size, run_sentinels=False)
    if sft_adapter is not None:
        attach_adapter(m, sft_adapter)
    return m, dev


def _gen_params(s: dict, temperature: float | None = None, max_new: int | None = None):
    return GenerationParams(max_new_tokens=int(max_new or s["max_new_tokens"]),
                            temperature=float(s["temperature"] if temperature is None else temperature),
                            top_p=float(s["top_p"]), repetition_penalty=float(s["repetition_penalty"]),
                            do_sample=bool(s["do_sample"]), stop=STOP)


def _clean(text: str) -> str:
    return clean_response(text, end_marker=END_MARKER).text


# ---- candidates -----------------------------------------------------------------------------


@step(inputs=["prepare_model", "heldout", "merge", "sft"], outputs=["prompts.jsonl", "candidates.jsonl", "manifest.json"],
      params=CANDIDATES_DEFAULTS, version="1")
def candidates(ctx):
    """Fresh instructions (not the SFT set, leakage-checked) and k sampled SFT-model responses each."""
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
    def work(batch, info):
        with model.model.disable_adapter():
            return [verdict_dict(v) for v in judge(model, "pair", batch, p["critic_threshold"])]

    return ctx.ledger(ledger).run([{"instruction": i["instruction"], "response": i["response"] or " "} for i in items],
                                  p["batch_size"], work)


def _revisions(ctx, model, p: dict, prompts: list[dict], by_prompt: dict) -> tuple[list[dict], list[dict], dict]:
    """Constitutional critique -> revision for a seeded sample; returns (pairs, attempts, usage)."""
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


PREFERENCE_NODES: list = [candidates, pairs, qc_pairs, dpo, evaluate_dpo, dpo_gate]
