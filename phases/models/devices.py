"""THE device and quantization resolver: what ``"auto"`` means, and the spellings of "none".

Not runnable; the canonical loader (`phases.models.loader.load_model`), SFT (`phases.sft`) and
the evaluation step call it, so every phase reads a device/quantization setting the same way.
Tests: tests/unit/test_devices.py.

- device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (CUDA when torch sees a GPU, else
  CPU). Asking for CUDA without a GPU is a `DeviceError` naming the torch build.
- quantization: ``"nf4"`` (4-bit, bitsandbytes, CUDA only), no quantization (``None``, ``""``
  or ``"none"``: three spellings found in configs, one meaning, returned as ``None``) or
  ``"auto"`` (nf4 on CUDA, like QLoRA training; none on CPU).
"""
from __future__ import annotations

from typing import Any

DEVICES = ("cpu", "cuda", "auto")  # plus "cuda:N"
QUANTIZATIONS = ("auto", "none", "nf4")
NO_QUANTIZATION = (None, "", "none")


class DeviceError(ValueError):
    """The requested device/quantization/backend cannot be used on this machine."""


def cuda_available() -> bool:
    import torch  # lazy: heavy, and only the model-loading paths need it

    return bool(torch.cuda.is_available())


def resolve_device(device: str, where: str = "device") -> str:
    """``"auto"`` -> ``"cuda"`` or ``"cpu"``; an explicit CUDA device must exist."""
    if not isinstance(device, str) or (device not in DEVICES and not device.startswith("cuda:")):
        raise DeviceError(f"{where} must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}")
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device.startswith("cuda") and not cuda_available():
        import torch  # lazy: see cuda_available

        raise DeviceError(
            f"{where}={device!r} was requested but no CUDA GPU is available here (torch {torch.__version__}, "
            f"cuda build: {torch.version.cuda}). Use 'cpu' or 'auto', or run on a GPU machine."
        )
    return device


def resolve_quantization(quantization: Any, device: str, where: str = "quantization") -> str | None:
    """The quantization for a RESOLVED ``device``: ``"nf4"`` or ``None`` (see the module docstring)."""
    if quantization in NO_QUANTIZATION:
        return None
    if quantization == "auto":
        return "nf4" if device.startswith("cuda") else None
    if quantization == "nf4":
        return "nf4"
    raise DeviceError(f"{where} = {quantization!r}; allowed: auto, none (or empty), nf4")


def resolve_placement(device: str, quantization: Any, where: str = "") -> tuple[str, str | None]:
    """``(device, quantization)`` resolved together; ``where`` prefixes errors (e.g. ``params.sft.``)."""
    dev = resolve_device(device, f"{where}device")
    return dev, resolve_quantization(quantization, dev, f"{where}quantization")
