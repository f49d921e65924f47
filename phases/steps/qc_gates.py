"""The QC gates (`qc_pilot`, `qc_scale`): their check, the reviewer's evidence, and the QC
numbers the data steps report.

Not runnable; the gates run inside the pipeline (``runner run --config phases/stages/demo.yaml``),
placed by phases/steps/data.py: ``qc_pilot`` after `pilot`, ``qc_scale`` after `merge`. The
thresholds come from the step's ``qc`` params (the stage YAML's ``qc:`` section) and are checked
once, by `phases.qc.compute_qc`; the gate and the reviewer read the verdicts and numbers it wrote
to ``qc_summary.json``.
"""
from __future__ import annotations

import random

from phases.qc import QCThresholds
from phases.steps.common import load_json, read_records
from runner import GateCheck, gate
from runner.pipeline import derive_seed


def qc_thresholds(qc: dict) -> QCThresholds:
    """A step's ``qc`` params as the thresholds `phases.qc.compute_qc` checks."""
    return QCThresholds.from_params(qc)


def qc_numbers(qc: dict) -> dict:
    """The QC numbers shown in `runner status` and given to the gate (compact)."""
    c = qc["counts"]
    return {"generated": c["generated"], "responses": c["responses"], "kept": c["kept"],
            "rates": qc["rates"],
            "instruction_acceptance": qc["acceptance"]["instruction"]["rate"],
            "pair_acceptance": qc["acceptance"]["pair"]["rate"],
            "median_cleaned_tokens_kept": qc["tokens"]["cleaned_kept"]["median"],
            "token_limit_hits": c["token_limit_hits"], "runaway": c["runaway"],
            "marker_leaks_kept": c["marker_leaks_kept"],
            "checks": {ch["name"]: ch["passed"] for ch in qc["checks"]},
            "thresholds": {ch["name"]: f"{ch['op']} {ch['threshold']}" for ch in qc["checks"]},
            "thresholds_passed": qc["thresholds_passed"], "failed_reasons": qc["failed_reasons"],
            **({"try": qc["try"]} if "try" in qc else {})}


def qc_gate_check(step_name: str):
    """Gate check: the step's QC summary's thresholds_passed, with its numbers and reasons."""
    def check(gctx) -> GateCheck:
        qc = load_json(gctx.output(step_name) / "qc_summary.json")
        return GateCheck(bool(qc["thresholds_passed"]), summary=qc_numbers(qc), reasons=list(qc["failed_reasons"]))
    check.__name__ = f"check_{step_name}"
    return check


def qc_gate_evidence(step_name: str, kept_file: str, n_kept: int = 10, n_rejected: int = 5):
    """Evidence for the LLM reviewer: ``qc_checks`` (each check's name, measured value, operator,
    configured threshold and result, as `phases.qc.compute_qc` evaluated them), the whole QC
    summary, and a fixed-seed sample of kept and rejected items."""
    def evidence(gctx) -> dict:
        out = gctx.output(step_name)
        qc = load_json(out / "qc_summary.json")
        kept = read_records(out / kept_file)
        records = read_records(out / "records.jsonl") if (out / "records.jsonl").is_file() else []
        rejected = [r for r in records if not r.get("kept")]
        rng = random.Random(derive_seed(gctx.run_seed, gctx.gate, "evidence"))
        pick = lambda xs, n: [xs[i] for i in sorted(rng.sample(range(len(xs)), min(n, len(xs))))]  # noqa: E731
        show = lambda r, why: {"id": r["id"], "family": r.get("family"), "instruction": r["instruction"],  # noqa: E731
                               "response": r.get("response"), "why": why,
                               "instruction_verdict": (r.get("instruction_verdict") or {}).get("label"),
                               "pair_verdict": (r.get("pair_verdict") or {}).get("label")}
        samples = [show(r, "kept") for r in pick(kept, n_kept)]
        samples += [show(r, "rejected: " + _why(r)) for r in pick(rejected, n_rejected)]
        return {"qc_checks": qc["checks"], "qc_summary": qc, "samples": samples}
    evidence.__name__ = f"evidence_{step_name}"
    return evidence


def _why(r: dict) -> str:
    iv, pv = r.get("instruction_verdict") or {}, r.get("pair_verdict") or {}
    if iv.get("rubric") == "request_safety" and not iv.get("keep"):
        return "request-safety critic: confidently safe to answer (teaches no refusal)"
    if not iv.get("keep"):
        return "instruction critic " + ("bad" if iv.get("confident") else "low confidence")
    if not r.get("response"):
        return "empty response after cleaning"
    if r.get("runaway"):
        return f"runaway ({r['runaway']})"
    return "pair critic " + ("bad" if pv.get("confident") else "low confidence")


# No numbers here: the thresholds are the stage config's, and the evidence carries them next to
# the measured values (`qc_checks`), so a changed threshold can never leave the reviewer reading
# an old one.
QC_CRITERIA = [
    "Every QC check passed: in the evidence `qc_checks`, each measured value meets its threshold "
    "(runaway rate, token-limit rate, end-marker leaks in kept items, median kept length, instruction and "
    "pair acceptance, contamination sentinels); the thresholds shown are the ones this run is configured with",
    "The sampled kept items are real instruction/response pairs that follow the instruction",
    "The sampled rejected items deserved rejection (the critics and cleaning are not discarding good data)",
    "The held-out leakage check ran and leaked items were dropped",
]

qc_pilot = gate("qc_pilot", check=qc_gate_check("pilot"), evidence=qc_gate_evidence("pilot", "kept.jsonl"),
                policy="review+human", criteria=QC_CRITERIA,
                description="Pilot QC before spending compute on scale generation.")
qc_scale = gate("qc_scale", check=qc_gate_check("merge"), evidence=qc_gate_evidence("merge", "sft.jsonl"),
                policy="review+human", criteria=QC_CRITERIA,
                description="QC over the merged union before training on it.")
