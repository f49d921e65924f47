"""The project's built-in pipeline: stage-1 data generation, SFT and evaluation, then preference pairs and DPO.

Run: ``runner run --config phases/stages/demo.yaml`` (demo, CPU) or
``runner run --config phases/stages/stage1.yaml`` (full size, GPU). The config names it as
``pipeline: phases.pipeline:pipeline``. Steps and files: specs/stage1-pipeline.md and, after
``sft_gate``, specs/preferences-dpo.md.
"""
from __future__ import annotations

from runner import Pipeline

from phases.steps.data import DATA_NODES, expand_stage_config
from phases.steps.preferences import PREFERENCE_NODES
from phases.steps.train_eval import TRAIN_EVAL_NODES

pipeline = Pipeline(
    "cai-stage1", DATA_NODES + TRAIN_EVAL_NODES + PREFERENCE_NODES, expand_config=expand_stage_config,
    goal="Stage 1 of constitutional bootstrapping: the base model generates and judges its own explicit "
         "instruction-following data (held-out set first, pilot, QC gate, sharded scale, merge), then "
         "SFT and a paired, deterministic evaluation on the held-out set; then best-of-N candidates from the SFT "
         "model, critic-ranked preference pairs with hard negatives and constitutional revisions, pair QC, DPO "
         "and a paired SFT-vs-DPO evaluation.")
