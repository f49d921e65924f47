"""Step `pilot`: the pilot dataset, its QC summary and automatic retries (gate `qc_pilot`: phases/steps/qc_gates.py).

Runs inside the pipeline: ``runner run --config phases/stages/demo.yaml`` (after `heldout`).

One try = instruction generation (``ceil(pilot.size * over_generation)`` unique instructions:
numbered-list completion, parse/filter, exact+near dedup incl. against the seeds, held-out
leakage check, leaked items dropped) -> instruction critic (a ``refusal_expected`` family's
instructions: the request-safety critic, flipped, `phases.qc.instruction_rule`) -> responses for every
instruction (not only critic-kept: the response QC numbers then do not hinge on the critic;
``Instruction: ...\\nResponse:`` with the seeds' few-shot pairs, cleaning, raw and
cleaned token counts) -> pair critic -> `phases.qc.compute_qc`. When QC fails, up to
``qc.max_retries`` (≤ 2) more tries with `phases.qc.plan_retry`'s adjusted params; a try whose
instruction params did not change reuses the previous instructions and their critic verdicts
(same ledgers, keyed by a params hash). Every try is kept under ``tries/t<N>/``.

Outputs (the last try's): ``records.jsonl`` (every judged item: candidate fields,
``instruction_verdict``, response fields or None, ``pair_verdict``, ``kept``), ``kept.jsonl``
(SFT records, `phases.steps.generation.sft_record`), ``dropped_instructions.jsonl``,
``qc_summary.json`` (`compute_qc` + ``try``, ``retries``; ``counts.instruction_rules``: judged, kept,
dropped per rule, also in ``manifest.json``), ``final_params.json`` (the generation
params scale must use), ``leakage.json``, ``manifest.json``. The step summary (shown by
``runner status``) is the QC numbers.

Test hook: env ``CAI_TEST_PLANT_HELDOUT=N`` inserts the first N held-out base instructions into
the candidates before the leakage check (the check must catch and drop them).
"""
from __future__ import annotations

import math
import os

from phases.prompts import END_MARKER
from phases.qc import compute_qc, plan_retry
from phases.steps import sizes
from phases.steps.common import dump, load_json, read_records, session_manifest, write_records
from phases.steps.generation import (DATA_PIECES, build_records, collect_instructions, leak_summary, leakage_check,
                                     phash, sft_record)
from phases.steps.model import open_model, record_meta
from phases.steps.qc_gates import qc_numbers, qc_thresholds
from runner import step
from runner.errors import DataError

PILOT_DEFAULTS = {"families": {}, "seeds": {}, "list_header": "", "instruction_builder": "numbered_list",
                  "instruction_generation": {}, "critics": {}, "batch_size": 16, "response_builder": "instruction_response",
                  "end_marker": END_MARKER, "response_fewshot": [], "generation": {}, "size": 150, "qc": {},
                  "leakage": {}, "stage_name": ""}

def plant_heldout(cands: list[dict], heldout: list[dict]) -> list[dict]:
    n = int(os.environ.get("CAI_TEST_PLANT_HELDOUT") or 0)
    planted = [{"id": f"planted-{i:02d}", "prompt_index": -1, "family": h["family"], "instruction": h["base_instruction"],
                "planted": True} for i, h in enumerate(heldout[:n])]
    return planted + cands


def run_try(ctx, model, p: dict, gen: dict, heldout: list[dict], t: int) -> dict:
    """One pilot try: records + QC. Instruction ledgers are keyed by the instruction params."""
    needed = math.ceil(int(p["size"]) * float(p["instruction_generation"]["over_generation"]))
    ikey = phash([gen["instructions"], p["families"], p["seeds"], p["instruction_generation"], p["list_header"]])
    leak_reports: list[dict] = []

    def leak_filter(cands):
        clean, dropped, rep = leakage_check(plant_heldout(cands, heldout), heldout, p["leakage"])
        leak_reports.append(rep)
        return clean, dropped

    got = collect_instructions(ctx, model, p, gen["instructions"], seed_base=ctx.seed, needed=needed,
                               tag=f"instr-{ikey}", id_prefix="pilot", against_filter=leak_filter)
    rkey = phash([ikey, gen["responses"], p["critics"], p["response_builder"], p["response_fewshot"], p["end_marker"]])
    records = build_records(ctx, model, p, got["candidates"], gen, ctx.seed, f"try-{rkey}", respond_all=True)
    return {"records": records, "dropped": got["dropped"], "counts": got["counts"], "leakage": leak_reports[-1],
            "prompts_used": len(got["lists"])}


@step(inputs=["prepare_model", "heldout"], version="1", params=PILOT_DEFAULTS, uses=DATA_PIECES,
      gpu=True, size=sizes.pilot_items,
      outputs=["records.jsonl", "kept.jsonl", "qc_summary.json", "final_params.json", "manifest.json"])
def pilot(ctx):
    """Pilot: instructions, critics, responses, QC; up to 2 automatic retries."""
    p = ctx.params
    if not p["families"]:
        raise DataError("step pilot has no families; run it with a stage config (e.g. phases/stages/demo.yaml)")
    heldout = read_records(ctx.input("heldout") / "heldout.jsonl")
    model, info = open_model(ctx, p["batch_size"])
    sentinels = info["sentinels_passed"]
    gen = {"instructions": dict(p["generation"]["instructions"]), "responses": dict(p["generation"]["responses"])}
    max_retries = int(p["qc"].get("max_retries", 2))
    history = []
    for t in range(max_retries + 1):
        ctx.log(f"pilot try {t}: generating (responses {gen['responses']})")
        res = run_try(ctx, model, p, gen, heldout, t)
        qc = compute_qc(res["records"], qc_thresholds(p["qc"]), sentinels, p["end_marker"] or END_MARKER,
                        extra_counts=res["counts"])
        qc["try"], qc["generation_params"] = t, gen
        tdir = ctx.out_dir / "tries" / f"t{t}"
        write_records(tdir / "records.jsonl", res["records"])
        dump(tdir / "qc_summary.json", qc)
        history.append({"try": t, "params": gen, "thresholds_passed": qc["thresholds_passed"],
                        "failed_reasons": qc["failed_reasons"], "kept": qc["counts"]["kept"]})
        ctx.log(f"pilot try {t}: kept {qc['counts']['kept']}/{qc['counts']['generated']}; QC "
                + ("passed" if qc["thresholds_passed"] else "failed: " + "; ".join(qc["failed_reasons"])))
        if qc["thresholds_passed"] or t == max_retries:
            break
        plan = plan_retry(gen, qc, t + 1, p["end_marker"] or END_MARKER)
        history[-1]["retry_plan"] = plan.changes
        if not plan.retryable:
            ctx.log(f"pilot: no automatic retry ({'; '.join(plan.changes)}); the gate decides")
            break
        gen = {"instructions": dict(plan.params["instructions"]), "responses": dict(plan.params["responses"])}
    qc["retries"] = history
    meta = record_meta(info)
    kept = [sft_record(r, meta, gen, "pilot") for r in res["records"] if r["kept"]]
    files = {"records.jsonl": write_records(ctx.out_dir / "records.jsonl", res["records"]),
             "kept.jsonl": write_records(ctx.out_dir / "kept.jsonl", kept),
             "dropped_instructions.jsonl": write_records(ctx.out_dir / "dropped_instructions.jsonl", res["dropped"])}
    dump(ctx.out_dir / "qc_summary.json", qc)
    dump(ctx.out_dir / "final_params.json", {"generation": gen, "prompts_used": res["prompts_used"],
                                              "instructions_judged": len(res["records"]), "kept": len(kept)})
    dump(ctx.out_dir / "leakage.json", res["leakage"])
    counts = {"generated": len(res["records"]), "kept": len(kept), "tries": len(history), **res["counts"]}
    dump(ctx.out_dir / "manifest.json", session_manifest(
        ctx, "pilot", info, files, counts, leakage=leak_summary(res["leakage"]), tries=history,
        instruction_rules=qc["counts"]["instruction_rules"],
        heldout_sha256=load_json(ctx.input("heldout") / "manifest.json")["files"]["heldout.jsonl"],
        seeds_detail={"pilot_seed_base": ctx.seed, "item_seeds": "derive_seed(pilot_seed_base, kind, global index or id)"}))
    return qc_numbers(qc)
