"""The critic route rule as a pure function (phases/models/fast_rules.critic_route_for): its
boundaries, and that it is a function of its three inputs only (no torch, no timing).

Run: .venv/bin/pytest tests/unit/test_fast_rules_rule.py -q
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from phases.models import fast_rules as fr

BIG, SMALL = 7_615_616_512, 494_032_768  # Qwen2.5-7B / -0.5B parameter counts (the benchmark's models)


def test_the_rule_module_imports_no_torch():
    # the rule must stay importable where torch is not (runner status, the unit tier)
    code = "import sys, phases.models.fast_rules; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("rows", [1, 64, 127, 128, 512])
def test_models_of_one_billion_parameters_and_up_take_the_prefix_path_at_any_batch(rows):
    assert fr.critic_route_for(BIG, 0.4, rows) == "prefix"
    assert fr.critic_route_for(fr.PREFIX_MIN_PARAMS, 0.4, rows) == "prefix"  # inclusive


def test_small_models_take_the_plain_path_at_every_batch():
    # third H200 run: 0.5B instr80 ran 0.94x plain at 64 rows per forward and 0.58x at 128
    # (benchmarks/results/h200-2026-12-01c/critic/table.md), so below 1 B: plain at any batch
    assert fr.PREFIX_SMALL_MIN_ROWS == float("inf")
    for rows in (1, 64, 128, 256, 4096):
        assert fr.critic_route_for(SMALL, 0.41, rows) == "plain"
    # just under one billion is "small"
    assert fr.critic_route_for(fr.PREFIX_MIN_PARAMS - 1, 0.41, 512) == "plain"


def test_the_batch_term_still_works_where_the_constant_is_finite(monkeypatch):
    monkeypatch.setattr(fr, "PREFIX_SMALL_MIN_ROWS", 128)
    assert fr.critic_route_for(SMALL, 0.41, 127.9) == "plain"
    assert fr.critic_route_for(SMALL, 0.41, 128) == "prefix"  # inclusive


@pytest.mark.parametrize("n_params,rows", [(BIG, 64), (BIG, 256)])
def test_too_little_shared_prefix_is_plain_at_any_size_and_batch(n_params, rows):
    assert fr.critic_route_for(n_params, 0.0, rows) == "plain"
    assert fr.critic_route_for(n_params, fr.PREFIX_MIN_SAVED_FRACTION - 1e-9, rows) == "plain"
    assert fr.critic_route_for(n_params, fr.PREFIX_MIN_SAVED_FRACTION, rows) == "prefix"  # inclusive
