"""The stage-1 data nodes of the cai-stage1 pipeline, in order, and the config hook.

Not runnable; `phases/pipeline.py` assembles ``DATA_NODES + TRAIN_EVAL_NODES``. Launch the
pipeline with ``runner run --config phases/stages/demo.yaml`` (spec: specs/stage1-pipeline.md).

    prepare_model -> heldout -> pilot -> base_skill -> [base_skill_gate] -> [qc_pilot] -> scale -> merge -> [qc_scale]

(``base_skill``/``base_skill_gate``: phases/steps/base_skill.py, the check that the base model
lacks the skill before scale generation and SFT are paid for.)

Step names are a contract with `phases/steps/train_eval.py` (it reads prepare_model, heldout,
merge). Gates: ``qc_pilot`` (pilot QC before scaling) and ``qc_scale`` (QC over the merged
union, before training). Their check is the QC summary's ``thresholds_passed``; their evidence
for the LLM reviewer is the QC summary plus a fixed-seed sample of kept and rejected items.
Default policy ``review+human``; a config's ``gates.<name>.policy`` overrides it.
"""
from __future__ import annotations

from runner import gate

from phases.steps.base_skill import BASE_SKILL_NODES
from phases.steps.common import prepare_model
from phases.steps.config import expand_stage_config
from phases.steps.heldout import heldout
from phases.steps.pilot import pilot, qc_gate_check, qc_gate_evidence
from phases.steps.scale import merge, scale

__all__ = ["DATA_NODES", "expand_stage_config", "qc_pilot", "qc_scale"]

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

DATA_NODES: list = [prepare_model, heldout, pilot, *BASE_SKILL_NODES, qc_pilot, scale, merge, qc_scale]
