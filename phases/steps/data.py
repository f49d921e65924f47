"""The stage-1 data nodes of the cai-stage1 pipeline, in order, and the config hook.

Not runnable; `phases/pipeline.py` assembles ``DATA_NODES + TRAIN_EVAL_NODES``. Launch the
pipeline with ``runner run --config phases/stages/demo.yaml`` (spec: specs/stage1-pipeline.md).

    prepare_model -> heldout -> pilot -> base_skill -> [base_skill_gate] -> [qc_pilot] -> scale -> merge -> [qc_scale]

(``base_skill``/``base_skill_gate``: phases/steps/base_skill.py, the check that the base model
lacks the skill before scale generation and SFT are paid for.)

Step names are a contract with `phases/steps/train_eval.py` (it reads prepare_model, heldout,
merge). Gates: ``qc_pilot`` (pilot QC before scaling) and ``qc_scale`` (QC over the merged
union, before training), declared in phases/steps/qc_gates.py. Their check is the QC summary's
``thresholds_passed``; their evidence for the LLM reviewer is the QC summary plus a fixed-seed
sample of kept and rejected items. Default policy ``review+human``; a config's
``gates.<name>.policy`` overrides it.
"""
from __future__ import annotations

from phases.steps.base_skill import BASE_SKILL_NODES
from phases.steps.config import expand_stage_config
from phases.steps.heldout import heldout
from phases.steps.merge import merge
from phases.steps.model import prepare_model
from phases.steps.pilot import pilot
from phases.steps.qc_gates import qc_pilot, qc_scale
from phases.steps.scale import scale

__all__ = ["DATA_NODES", "expand_stage_config", "qc_pilot", "qc_scale"]

DATA_NODES: list = [prepare_model, heldout, pilot, *BASE_SKILL_NODES, qc_pilot, scale, merge, qc_scale]
