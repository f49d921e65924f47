"""params.sft.compile: the resolve rule (auto/layers/off by quantization and checkpointing) and its
validation in a stage config; no torch import. The compiled step itself (loss equal to the eager
step in fp32) is tests/integration/test_sft_fast_trainer.py::test_compiled_layers_train_like_eager.

Run: .venv/bin/pytest tests/unit/test_sft_compile.py -q
"""
from __future__ import annotations

from pathlib import Path

import pytest

from phases import sft_speed
from phases.sft_speed import resolve_compile
from runner.errors import ConfigError

DEMO = Path(__file__).resolve().parents[2] / "phases" / "stages" / "demo.yaml"


def test_unknown_value_names_the_key_and_choices():
    with pytest.raises(ConfigError, match=r"params\.sft\.compile = 'max'; allowed: auto, layers, off"):
        resolve_compile("max", "cuda", None, False)


def test_off_never_applies():
    c = resolve_compile("off", "cuda", None, False)
    assert not c.applied and c.requested == "off" and c.label == "not compiled"


def test_layers_applies_without_quantization_or_checkpointing_on_any_device():
    for dev in ("cuda", "cuda:1", "cpu"):
        c = resolve_compile("layers", dev, None, False)
        assert c.applied and c.record() == {"requested": "layers", "applied": True, "reason": c.reason, "layers": 0,
                                            "loss": False}


def test_label_and_record_say_whether_the_loss_was_compiled_too():
    c = resolve_compile("layers", "cuda", None, False)
    c.layers = 28
    assert c.label == "compiled layers (28)"
    c.loss = True  # phases/sft.py sets it for the fast trainer when COMPILE_LOSS is on
    assert c.label == "compiled layers (28) + loss" and c.record()["loss"] is True
    assert sft_speed.COMPILE_LOSS is True  # the measured default (bench_loss: 1.44-1.99x the eager loss)


def test_layers_refuses_nf4_and_checkpointing_saying_what_to_change():
    with pytest.raises(ConfigError, match=r"compile = 'layers' cannot apply: quantization nf4.*quantization: none"):
        resolve_compile("layers", "cuda", "nf4", False)
    with pytest.raises(ConfigError, match=r"cannot apply: gradient checkpointing.*gradient_checkpointing: off"):
        resolve_compile("layers", "cuda", None, True)


def test_auto_follows_the_measured_default_on_cuda_only(monkeypatch):
    monkeypatch.setattr(sft_speed, "AUTO_COMPILE", False)
    c = resolve_compile("auto", "cuda", None, False)
    assert not c.applied and "AUTO_COMPILE" in c.reason
    monkeypatch.setattr(sft_speed, "AUTO_COMPILE", True)
    assert resolve_compile("auto", "cuda", None, False).applied
    assert not resolve_compile("auto", "cpu", None, False).applied
    nf4 = resolve_compile("auto", "cuda", "nf4", False)  # auto never raises: it says why not
    assert not nf4.applied and "nf4" in nf4.reason
    assert not resolve_compile("auto", "cuda", None, True).applied


def test_stage_config_checks_compile_with_file_and_line(tmp_path):
    from runner.config import load_config

    from phases.pipeline import pipeline

    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"include: {DEMO}\nparams:\n  sft:\n    compile: always\n")
    with pytest.raises(ConfigError) as e:
        load_config(cfg, pipeline)
    assert f"{cfg}:4: params.sft.compile = 'always': expected one of" in str(e.value)


def test_compile_and_liger_exclude_each_other():
    """Liger's Triton kernels fail inside torch.compile (H200): layers + liger is refused, auto
    compile yields to an explicit liger, and kernels auto resolves to none where layers compile."""
    from phases.sft_speed import resolve_kernels

    with pytest.raises(ConfigError, match=r"compile = 'layers' cannot apply: params\.sft\.kernels is liger.*kernels: auto"):
        resolve_compile("layers", "cuda", None, False, kernels="liger")
    yielded = resolve_compile("auto", "cuda", None, False, kernels="liger")
    assert not yielded.applied and "liger" in yielded.reason
    k = resolve_kernels("auto", "cuda", "qwen2", import_error=lambda: None, compiled=True)
    assert k.applied == () and "Inductor fuses" in k.reason
    assert resolve_kernels("auto", "cuda", "qwen2", import_error=lambda: None, compiled=False).applied


def test_no_c_compiler_means_no_compiled_layers(monkeypatch):
    monkeypatch.setattr(sft_speed, "c_compiler", lambda: None)
    c = resolve_compile("auto", "cuda", None, False)
    assert not c.applied and "no C compiler" in c.reason
    with pytest.raises(ConfigError, match="no C compiler on PATH.*apt-get install gcc") as e:
        resolve_compile("layers", "cuda", None, False)
    assert "gradient_checkpointing" not in str(e.value)  # the hint names only a setting that would help
