"""Step `scale`: sharded generation with the pilot's final params (then `merge`: phases/steps/merge.py).

Run inside the pipeline: ``runner run --config phases/stages/demo.yaml`` (after gate qc_pilot).

scale — the plan (``plan.json``) is computed from the pilot's output alone:
- target: ``scale.target_kept`` minus the pilot's kept records (merge includes the pilot's
  kept records: they passed the same critics and the gate; see specs/stage1-pipeline.md);
- ``n_prompts = ceil(remaining / pilot kept-per-prompt * 1.1)`` instruction-generation prompts
  with global indices ``0..n_prompts-1`` (seeds derive from the run seed, "scale" and the index);
- shard k = the prompt-index range ``[k*P, min((k+1)*P, n_prompts))`` where P is
  ``scale.shard_size`` instructions divided by the pilot's instructions-per-prompt, rounded UP
  to a multiple of ``generation.batch_size`` (so batches never straddle a shard boundary and
  1 shard or N shards batch the instruction prompts identically).
Each shard runs the pilot's pipeline (parse, dedup within the shard and against the seeds,
held-out leakage check, critics, responses) through its own ledgers ``s<k>-...`` and writes
``shards/shard-<k>/{records.jsonl, kept.jsonl, qc_summary.json, manifest.json}``.

Parallel: a shard is a pure function of (params, pilot final params, held-out set, run seed,
its index range), and its ledgers are named by shard, so the shards go through
``ctx.shards("scale")`` (runner/shards.py): ``runner resume --workers N`` runs them in N
processes (one per GPU), claimed through the state store; the step then only assembles.
Top-up: when the shards keep fewer than ``remaining``, ``top_up_shards`` plans more shards after
the last prompt index, up to ``scale.max_top_up_rounds`` rounds (default 2); ``manifest.json``
``top_up`` reports rounds, shards added, met or cap_hit. See docs/scale-out.md.
Critics as in the pilot (`phases.steps.generation.build_records`): a ``refusal_expected``
family's instructions by the request-safety critic, flipped; each shard's manifest and the
step's ``manifest.json`` give ``instruction_rules`` (judged/kept/dropped per rule, summed).
"""
from __future__ import annotations

import math
import shutil

from phases.prompts import END_MARKER
from phases.qc import compute_qc
from phases.steps import sizes
from phases.steps.common import dump, load_json, read_records, session_manifest, write_records
from phases.steps.generation import (DATA_PIECES, build_records, collect_instructions, leak_summary, leakage_check,
                                     phash, sft_record)
from phases.steps.model import open_model, record_meta
from phases.steps.qc_gates import qc_thresholds
from runner import step
from runner.errors import DataError

SCALE_DEFAULTS = {"families": {}, "seeds": {}, "list_header": "", "instruction_builder": "numbered_list",
                  "instruction_generation": {}, "critics": {}, "batch_size": 16, "response_builder": "instruction_response",
                  "end_marker": END_MARKER, "response_fewshot": [], "scale": {}, "qc": {}, "leakage": {},
                  "stage_name": ""}


def plan_shards(final: dict, target_kept: int, shard_size: int, batch_size: int) -> dict:
    """The scale plan from the pilot's ``final_params.json`` (see the module docstring)."""
    prompts = max(1, int(final["prompts_used"]))
    remaining = max(0, target_kept - int(final["kept"]))
    kept_per_prompt = max(0.25, int(final["kept"]) / prompts)
    inst_per_prompt = max(0.5, int(final["instructions_judged"]) / prompts)
    n_prompts = math.ceil(remaining / kept_per_prompt * 1.1) if remaining else 0
    per_shard = math.ceil(math.ceil(shard_size / inst_per_prompt) / batch_size) * batch_size
    shards = [{"shard": k, "start": a, "stop": min(a + per_shard, n_prompts)}
              for k, a in enumerate(range(0, n_prompts, per_shard))]
    return {"target_kept": target_kept, "pilot_kept": int(final["kept"]), "remaining": remaining,
            "kept_per_prompt": round(kept_per_prompt, 6), "instructions_per_prompt": round(inst_per_prompt, 6),
            "n_prompts": n_prompts, "prompts_per_shard": per_shard, "shards": shards}


def run_shard(ctx, model, p: dict, gen: dict, heldout: list[dict], shard: dict, out_dir, info: dict,
              sentinels) -> dict:
    """Generate one shard into ``out_dir`` (records, kept, qc_summary, manifest); return its counts."""
    k = shard["shard"]
    ikey = phash([gen["instructions"], p["families"], p["seeds"], p["instruction_generation"], p["list_header"]])
    reps: list[dict] = []

    def leak_filter(cands):
        clean, dropped, rep = leakage_check(cands, heldout, p["leakage"])
        reps.append(rep)
        return clean, dropped

    got = collect_instructions(ctx, model, p, gen["instructions"], seed_base=ctx.seed, needed=0,
                               tag=f"s{k:04d}-instr-{ikey}", id_prefix="scale", start_index=shard["start"],
                               n_prompts=shard["stop"] - shard["start"], against_filter=leak_filter)
    rkey = phash([ikey, gen["responses"], p["critics"], p["response_builder"], p["response_fewshot"], p["end_marker"]])
    records = build_records(ctx, model, p, got["candidates"], gen, ctx.seed, f"s{k:04d}-{rkey}")
    meta = record_meta(info)
    kept = [sft_record(r, meta, gen, f"scale/shard-{k:04d}") for r in records if r["kept"]]
    qc = compute_qc(records, qc_thresholds(p["qc"]), sentinels, p["end_marker"] or END_MARKER,
                    extra_counts=got["counts"])
    files = {"records.jsonl": write_records(out_dir / "records.jsonl", records),
             "kept.jsonl": write_records(out_dir / "kept.jsonl", kept),
             "dropped_instructions.jsonl": write_records(out_dir / "dropped_instructions.jsonl", got["dropped"])}
    dump(out_dir / "qc_summary.json", qc)
    counts = {"generated": len(records), "kept": len(kept), **got["counts"]}
    dump(out_dir / "manifest.json", session_manifest(ctx, "scale_shard", info, files, counts, shard=shard,
                                                     leakage=leak_summary(reps[-1]), generation=gen,
                                                     instruction_rules=qc["counts"]["instruction_rules"]))
    return {"shard": k, "generated": len(records), "kept": len(kept), "qc_passed": qc["thresholds_passed"],
            "instruction_rules": qc["counts"]["instruction_rules"]}


def top_up_shards(plan: dict, results: list[dict], round_: int, max_rounds: int) -> list[dict]:
    """More shards when the shards' kept count is short of ``plan["remaining"]`` (else ``[]``).

    Deterministic given the results: the new prompts continue after the highest index planned
    so far; their number is ``ceil(short / observed kept-per-prompt * 1.1)`` (observed over
    every finished shard, floored at 0.25 like the plan), cut into shards of
    ``plan["prompts_per_shard"]``. ``round_`` counts from 1; past ``max_rounds`` nothing more is
    planned and the shortfall is reported (``manifest.json`` ``top_up``).
    """
    kept = sum(int(r["kept"]) for r in results)
    short = int(plan["remaining"]) - kept
    if short <= 0 or round_ > max_rounds or not results:
        return []
    prompts = sum(int(r["stop"]) - int(r["start"]) for r in results)
    rate = max(0.25, kept / max(1, prompts))
    start = max(int(r["stop"]) for r in results)
    n = math.ceil(short / rate * 1.1)
    per, first = int(plan["prompts_per_shard"]), max(int(r["shard"]) for r in results) + 1
    return [{"shard": first + j, "start": a, "stop": min(a + per, start + n)}
            for j, a in enumerate(range(start, start + n, per))]


@step(inputs=["prepare_model", "heldout", "pilot"], outputs=["plan.json", "manifest.json"], version="2",
      gpu=True, size=sizes.scale_items,
      params=SCALE_DEFAULTS, uses=DATA_PIECES)
def scale(ctx):
    """Sharded generation with the pilot's final params (one manifest per shard; top-up to target).

    Shards run through ``ctx.shards("scale")`` (runner/shards.py): in this process, or in N
    worker processes (one per GPU) with ``runner resume --workers N``; the outputs are the
    same bytes for any N. Each process loads the model once, at its first shard.
    """
    p = ctx.params
    if not p["families"]:
        raise DataError("step scale has no families; run it with a stage config (e.g. phases/stages/demo.yaml)")
    final = load_json(ctx.input("pilot") / "final_params.json")
    gen = final["generation"]
    plan = plan_shards(final, int(p["scale"]["target_kept"]), int(p["scale"]["shard_size"]), int(p["batch_size"]))
    max_rounds = int(p["scale"].get("max_top_up_rounds", 2))
    dump(ctx.out_dir / "plan.json", plan)
    heldout = read_records(ctx.input("heldout") / "heldout.jsonl")
    info = load_json(ctx.input("prepare_model") / "model.json")
    loaded: dict = {}

    def one(sh: dict, out_dir) -> dict:  # noqa: ANN001
        if "model" not in loaded:  # once per process, and never in a coordinator that only waits
            loaded["model"], loaded["info"] = open_model(ctx, p["batch_size"])
        ctx.log(f"scale shard {sh['shard']}: prompts {sh['start']}..{sh['stop'] - 1}")
        res = run_shard(ctx, loaded["model"], p, gen, heldout, sh, out_dir, loaded["info"],
                        loaded["info"]["sentinels_passed"])
        return {**res, "start": sh["start"], "stop": sh["stop"]}

    def more(done, round_):  # noqa: ANN001
        return top_up_shards(plan, [r.result for r in done], round_, max_rounds)

    if not plan["shards"]:
        ctx.log("scale: the pilot alone reaches target_kept; no shard to generate")
    shard_set = ctx.shards("scale")
    done = shard_set.run(plan["shards"], one, more)
    for r in done:
        shutil.copytree(r.path, ctx.out_dir / "shards" / f"shard-{r.idx:04d}")
    results = [{k: r.result[k] for k in ("shard", "generated", "kept", "qc_passed")} for r in done]
    kept = sum(r["kept"] for r in results)
    # per instruction-side rule (instruction critic / flipped request-safety), summed over shards
    rules: dict = {}
    for r in done:
        for rule, c in r.result.get("instruction_rules", {}).items():
            rules[rule] = {k: rules.get(rule, {}).get(k, 0) + int(v) for k, v in c.items()}
    top_up = {"rounds": max(0, shard_set.rounds - 1), "max_top_up_rounds": max_rounds,
              "shards_added": sum(1 for r in done if r.round > 0), "remaining": plan["remaining"], "kept": kept,
              "met": kept >= plan["remaining"], "cap_hit": kept < plan["remaining"]}
    if top_up["cap_hit"] and plan["shards"]:
        ctx.log(f"scale: kept {kept} of {plan['remaining']} after {top_up['rounds']} top-up round(s) "
                f"(cap scale.max_top_up_rounds = {max_rounds}); merge will be short of target_kept",
                kind="scale_short", **top_up)
    counts = {"shards": len(results), "generated": sum(r["generated"] for r in results), "kept": kept}
    dump(ctx.out_dir / "manifest.json", session_manifest(ctx, "scale", info, {}, counts, plan=plan, shards=results,
                                                         generation=gen, top_up=top_up,
                                                         instruction_rules=rules))
    return {**counts, "n_prompts": plan["n_prompts"], "target_kept": plan["target_kept"],
            "pilot_kept": plan["pilot_kept"], "top_up_rounds": top_up["rounds"], "top_up_cap_hit": top_up["cap_hit"]}
