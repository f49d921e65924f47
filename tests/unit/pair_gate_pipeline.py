"""A test pipeline: a fixture ``pairs`` step (planted pairs, real pair QC) then the real ``qc_pairs`` gate.

Used by tests/unit/test_pair_gate.py through ``runner`` (PYTHONPATH=tests/unit, pipeline
``pair_gate_pipeline:pipeline``). No model, no torch. Not for production runs.
"""
from __future__ import annotations

from phases.pair_qc import pair_qc
from phases.steps.preferences import qc_pairs
from runner import Pipeline, step
from state.files import atomic_write_json, write_jsonl


@step(outputs=["pairs.jsonl", "pair_qc.json"], params={"planted": "balanced", "n": 40})
def pairs(ctx):
    """Fixture: n pairs, either length-balanced or 'longer always wins'; the real pair QC over them."""
    n, longer = ctx.params["n"], ctx.params["planted"] == "longer_wins"
    kinds = ["best_of_n", "hard_negative:off_topic", "constitutional"]
    rows = []
    for i in range(n):
        c, r = (("word " * (12 + i % 5), "word " * 3) if longer else
                ("word " * (10 + (i % 2) * 2), "word " * (10 + ((i + 1) % 2) * 2)))
        rows.append({"id": f"pair-{i:03d}", "instruction": f"Question {i}?", "chosen": c.strip(), "rejected": r.strip(),
                     "type": kinds[i % 3], "margin": 1.0 + i % 4, "principle_ids": ["be_concise"] if i % 3 == 2 else []})
    write_jsonl(ctx.out_dir / "pairs.jsonl", rows)
    qc = pair_qc(rows, {"min_pairs": 10})
    atomic_write_json(ctx.out_dir / "pair_qc.json", qc)
    return {"n_pairs": n, "thresholds_passed": qc["thresholds_passed"]}


pipeline = Pipeline("pair-gate-fixture", [pairs, qc_pairs], goal="Test the qc_pairs gate's policies.")
