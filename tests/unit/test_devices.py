"""The one device/quantization resolver (phases/models/devices.py).

Run: .venv/bin/pytest tests/unit/test_devices.py -q   (no torch import: CUDA presence is faked)
"""
from __future__ import annotations

import pytest

from phases.models import devices
from phases.models.devices import DeviceError, resolve_placement, resolve_quantization


@pytest.mark.parametrize("spelling", [None, "", "none"])
def test_every_spelling_of_no_quantization_is_none(spelling):
    assert resolve_quantization(spelling, "cuda") is None


def test_auto_means_nf4_on_cuda_and_none_on_cpu():
    assert resolve_quantization("auto", "cuda:1") == "nf4"
    assert resolve_quantization("auto", "cpu") is None
    assert resolve_quantization("nf4", "cpu") == "nf4"  # the loader refuses it on CPU, naming why


def test_placement_resolves_auto_device_and_names_the_field(monkeypatch):
    monkeypatch.setattr(devices, "cuda_available", lambda: False)
    assert resolve_placement("auto", "auto", "params.sft.") == ("cpu", None)
    monkeypatch.setattr(devices, "cuda_available", lambda: True)
    assert resolve_placement("auto", "auto", "params.sft.") == ("cuda", "nf4")
    with pytest.raises(DeviceError, match=r"params\.evaluate\.quantization = 'int8'"):
        resolve_placement("cpu", "int8", "params.evaluate.")
    with pytest.raises(DeviceError, match=r"params\.sft\.device must be"):
        resolve_placement("tpu", None, "params.sft.")


def test_loader_uses_the_same_resolver():
    from phases.models import loader

    assert loader.DeviceError is DeviceError and loader._resolve_device is devices.resolve_device
