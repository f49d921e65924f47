"""params.sft.kernels: the resolve rule (auto/liger/none by device, importability, architecture)
and its validation in a stage config; no torch import.

Run: .venv/bin/pytest tests/unit/test_sft_kernels.py -q
"""
from __future__ import annotations

from pathlib import Path

import pytest

from phases.sft_speed import LIGER_KERNELS, resolve_kernels
from runner.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "phases" / "stages" / "demo.yaml"


def _importable():
    return None


def _missing():
    return "ModuleNotFoundError: No module named 'liger_kernel'"


def _never_called():
    raise AssertionError("liger_kernel's importability must not be probed off CUDA")


def test_auto_is_none_on_cpu_without_probing_liger():
    choice = resolve_kernels("auto", "cpu", "qwen2", import_error=_never_called)
    assert choice.applied == () and choice.label == "none" and "CUDA only" in choice.reason
    assert choice.record() == {"requested": "auto", "applied": [], "reason": choice.reason, "library": None}


def test_liger_on_cpu_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"params\.sft\.kernels = 'liger' cannot apply: device cpu"):
        resolve_kernels("liger", "cpu", import_error=_never_called)


def test_unknown_value_is_a_config_error_listing_the_choices():
    with pytest.raises(ConfigError, match=r"params\.sft\.kernels = 'triton'; allowed: auto, liger, none"):
        resolve_kernels("triton", "cuda")


def test_auto_on_cuda_applies_liger_rope_rms_norm_swiglu_for_qwen2_and_llama():
    for arch in ("qwen2", "llama"):
        choice = resolve_kernels("auto", "cuda:0", arch, import_error=_importable)
        assert choice.applied == LIGER_KERNELS == ("rope", "rms_norm", "swiglu")
        assert choice.label == "liger (rope, rms_norm, swiglu)" and choice.record()["library"] == "liger-kernel"


def test_auto_on_cuda_falls_back_to_none_with_the_reason_and_liger_refuses():
    missing = resolve_kernels("auto", "cuda", "qwen2", import_error=_missing)
    assert missing.applied == () and "not importable" in missing.reason and "No module named" in missing.reason
    other_arch = resolve_kernels("auto", "cuda", "gpt2", import_error=_importable)
    assert other_arch.applied == () and "'gpt2'" in other_arch.reason
    with pytest.raises(ConfigError, match="not importable"):
        resolve_kernels("liger", "cuda", "qwen2", import_error=_missing)
    with pytest.raises(ConfigError, match="'gpt2' is not one"):
        resolve_kernels("liger", "cuda", "gpt2", import_error=_importable)


def test_none_never_applies():
    choice = resolve_kernels("none", "cuda", "qwen2", import_error=_importable)
    assert choice.applied == () and choice.requested == "none"


def test_stage_config_checks_kernels_with_file_and_line(tmp_path):
    from runner.config import load_config

    from phases.pipeline import pipeline

    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"include: {DEMO}\nparams:\n  sft:\n    kernels: fused\n")
    with pytest.raises(ConfigError) as e:
        load_config(cfg, pipeline)
    assert f"{cfg}:4: params.sft.kernels = 'fused': expected one of" in str(e.value)
    ok = tmp_path / "ok.yaml"
    ok.write_text(f"include: {DEMO}\nparams:\n  sft:\n    kernels: none\n    trainer: fast\n")
    load_config(ok, pipeline)  # both accepted (trainer: fast was refused by the stage check before)


def test_liger_patch_restore_rebinds_every_changed_name_once():
    """What run_sft calls after training: the modeling module's names Liger rebound are put back."""
    import types

    from phases.sft_speed import LigerPatch

    mod = types.ModuleType("modeling_fake")
    rope, norm = object(), object()
    mod.apply_rotary_pos_emb, mod.RMSNorm = rope, norm
    patch = LigerPatch(mod, dict(vars(mod)))
    mod.apply_rotary_pos_emb, mod.RMSNorm = "liger rope", "LigerRMSNorm"  # what Liger's apply_* does
    patch.restore()
    assert mod.apply_rotary_pos_emb is rope and mod.RMSNorm is norm
    mod.RMSNorm = "patched again later"
    patch.restore()  # idempotent: a second call changes nothing
    assert mod.RMSNorm == "patched again later"
