"""Fixtures for the DPO tests: a deterministic SFT-like adapter on a model folder, and text pairs.

Used by tests/integration/test_dpo.py and tests/crash/dpo_job.py; not a test module.
"""
from __future__ import annotations

import json
from pathlib import Path

PAIRS = [{"instruction": f"Name thing number {i}.", "chosen": f"Thing {i} is a small red ball.",
          "rejected": "No. " * (i % 3 + 1) + "I will not."} for i in range(8)]
PARAMS = {"max_steps": 6, "save_steps": 2, "per_device_batch_size": 2, "grad_accum": 1, "lora_r": 4,
          "lora_alpha": 8, "max_seq_len": 128, "logging_steps": 1, "learning_rate": 1e-3, "ref_batch_size": 4}


def make_sft_adapter(model_dir: Path, out: Path) -> Path:
    """A LoRA adapter with non-zero random weights (seed 0) standing in for an SFT result."""
    import torch
    from peft import LoraConfig, get_peft_model

    from phases.models.loader import load_model

    if (out / "adapter_config.json").is_file():
        return out
    m = load_model(model_dir, device="cpu", dtype="float32", backend="hf", run_sentinels=False)
    torch.manual_seed(0)
    pm = get_peft_model(m.model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    pm.save_pretrained(str(out))
    (out / "cai_adapter.json").write_text(json.dumps({"base_model_id": m.model_id}))
    return out
