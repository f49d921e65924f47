"""Step `merge`: the SFT set, from the pilot's and every scale shard's kept records.

Runs inside the pipeline: ``runner run --config phases/stages/demo.yaml`` (after `scale`).

Union of the pilot's kept records and every shard's kept records (in that order),
exact+near dedup across them (first occurrence wins), held-out leakage check again (leaks
dropped), QC recomputed over the union of all judged records. Outputs ``sft.jsonl``,
``records.jsonl`` (the union, for audit/evidence), ``dropped.jsonl``, ``qc_summary.json``,
``leakage.json``, ``manifest.json``. Shard files stay in the scale step's output for audit.
"""
from __future__ import annotations

from phases.dedup import dedup
from phases.pieces import CLEANING, DEDUP, QC
from phases.prompts import END_MARKER
from phases.qc import compute_qc
from phases.steps.common import dump, load_json, read_records, session_manifest, write_records
from phases.steps.generation import leak_summary, leakage_check
from phases.steps.qc_gates import qc_numbers, qc_thresholds
from runner import step
from runner.errors import DataError


def shard_dirs(scale_out) -> list:
    root = scale_out / "shards"
    return sorted(d for d in root.iterdir() if d.is_dir()) if root.is_dir() else []


MERGE_DEFAULTS = {"target_kept": 15000, "include_pilot": True, "qc": {}, "leakage": {}, "near_dup_threshold": 0.7,
                  "end_marker": END_MARKER, "stage_name": ""}


@step(inputs=["prepare_model", "heldout", "pilot", "scale"], version="1", params=MERGE_DEFAULTS,
      uses=[DEDUP, QC, CLEANING],
      outputs=["sft.jsonl", "records.jsonl", "qc_summary.json", "manifest.json"])
def merge(ctx):
    """Union of pilot + shards, cross-shard dedup, leakage re-check, QC over the union."""
    p = ctx.params
    info = load_json(ctx.input("prepare_model") / "model.json")
    heldout = read_records(ctx.input("heldout") / "heldout.jsonl")
    parts = [("pilot", ctx.input("pilot"))] if p["include_pilot"] else []
    parts += [(f"scale/{d.name}", d) for d in shard_dirs(ctx.input("scale"))]
    records, kept, sources = [], [], {}
    for name, d in parts:
        recs, ks = read_records(d / "records.jsonl"), read_records(d / "kept.jsonl")
        records += recs
        kept += ks
        sources[name] = {"records": len(recs), "kept": len(ks)}
    if not kept:
        raise DataError(f"merge: no kept record in {', '.join(n for n, _ in parts) or 'any part'}; "
                        "look at the pilot's and shards' qc_summary.json")
    dd = dedup([r["instruction"] for r in kept], float(p["near_dup_threshold"]))
    dropped = [{**kept[d["index"]], "drop_reason": f"merge_dedup_{d['reason']}", "match_id": kept[d["match"]]["id"]
                if d["match"] is not None else None} for d in dd.dropped]
    unique = [kept[i] for i in dd.kept]
    clean, leaked, rep = leakage_check(unique, heldout, p["leakage"])
    dropped += leaked
    extra = {"merge_parts": len(parts), "merge_kept_in": len(kept), "merge_dropped_duplicates": len(dd.dropped),
             "merge_dropped_heldout_leaks": sum(d["drop_reason"] == "heldout_leak" for d in leaked),
             "merge_dropped_ifeval_leaks": sum(d["drop_reason"] == "ifeval_leak" for d in leaked),
             "sft_records": len(clean)}
    qc = compute_qc(records, qc_thresholds(p["qc"]), info["sentinels_passed"], p["end_marker"] or END_MARKER,
                    extra_counts=extra)
    files = {"sft.jsonl": write_records(ctx.out_dir / "sft.jsonl", clean),
             "records.jsonl": write_records(ctx.out_dir / "records.jsonl", records),
             "dropped.jsonl": write_records(ctx.out_dir / "dropped.jsonl", dropped)}
    dump(ctx.out_dir / "qc_summary.json", qc)
    dump(ctx.out_dir / "leakage.json", rep)
    counts = {"records": len(records), "sft_records": len(clean), "target_kept": int(p["target_kept"]), **extra}
    dump(ctx.out_dir / "manifest.json", session_manifest(
        ctx, "sft_dataset", info, files, counts, sources=sources, leakage=leak_summary(rep),
        qc_summary={"thresholds_passed": qc["thresholds_passed"], "failed_reasons": qc["failed_reasons"]},
        instruction_rules=qc["counts"]["instruction_rules"],
        heldout_sha256=load_json(ctx.input("heldout") / "manifest.json")["files"]["heldout.jsonl"]))
    return {**qc_numbers(qc), "sft_records": len(clean), "target_kept": int(p["target_kept"]),
            "merge_dropped_duplicates": len(dd.dropped), "merge_dropped_heldout_leaks": extra["merge_dropped_heldout_leaks"],
            "merge_dropped_ifeval_leaks": extra["merge_dropped_ifeval_leaks"]}
