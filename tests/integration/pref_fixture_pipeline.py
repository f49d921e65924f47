"""A test pipeline: the SFT fixture's data steps, the real SFT/eval nodes, then the real preference/DPO nodes.

Used by tests/integration/test_preferences_pipeline.py through the CLI
(``PYTHONPATH=tests/integration python -m runner run --config CFG``, pipeline
``pref_fixture_pipeline:pipeline``). Not for production runs.
"""
from __future__ import annotations

from sft_fixture_pipeline import heldout, merge, prepare_model

from phases.steps.preferences import PREFERENCE_NODES
from phases.steps.train_eval import TRAIN_EVAL_NODES
from runner import Pipeline, gate

pipeline = Pipeline("pref-fixture", [prepare_model, heldout, merge, gate("qc_scale", policy="auto"), *TRAIN_EVAL_NODES,
                                     *PREFERENCE_NODES],
                    goal="Test the preference and DPO nodes on fixture data.")
