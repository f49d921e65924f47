"""DPO on the tiny random Qwen2 (CPU, fp32): guarded encoding, the stored reference pass, TRL training.

Run: .venv/bin/pytest -m integration tests/integration/test_dpo.py -q   (about 30 s on 2 cores)
"""
from __future__ import annotations

import pytest

from dpo_fixtures import PAIRS, PARAMS, make_sft_adapter
from helpers_models import tiny_dir

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    from phases.dpo import load_policy

    sft = make_sft_adapter(tiny_dir(), tmp_path_factory.mktemp("sft") / "adapter")
    loaded, model, dev, q, gc = load_policy(str(tiny_dir()), sft, PARAMS, 5)
    return loaded, model, sft


def test_pairs_are_encoded_in_completion_mode_with_eos(policy):
    from phases.dpo import build_pair_examples
    from phases.prompts import response_prompt

    loaded, _, _ = policy
    ex, counts = build_pair_examples(loaded, PAIRS + [{"instruction": "x", "chosen": " ", "rejected": "y"}], 128)
    assert counts == {"pairs": 9, "kept": 8, "dropped_too_long": 0, "dropped_empty": 1}
    e = ex[0]
    assert e["prompt_ids"] == loaded.encode(response_prompt(PAIRS[0]["instruction"]))
    assert e["chosen_ids"] == loaded.encode(" " + PAIRS[0]["chosen"]) + [loaded.eos_token_id]
    assert loaded.tokenizer.chat_template is None
    lens = sorted(len(x["prompt_ids"]) + max(len(x["chosen_ids"]), len(x["rejected_ids"])) for x in ex)
    _, c = build_pair_examples(loaded, PAIRS, lens[3])  # never truncated: the longer ones are dropped
    assert c["kept"] == sum(n <= lens[3] for n in lens) and c["dropped_too_long"] == 8 - c["kept"] > 0
    from runner.errors import DataError

    with pytest.raises(DataError, match="no usable preference pair"):
        build_pair_examples(loaded, PAIRS, 5)


def test_reference_logps_batched_equal_one_at_a_time_fp32(policy):
    from phases.dpo import build_pair_examples, sequence_logps

    loaded, model, _ = policy
    ex, _ = build_pair_examples(loaded, PAIRS, 128)
    assert next(model.parameters()).dtype.is_floating_point and str(next(model.parameters()).dtype) == "torch.float32"
    batched = sequence_logps(model, ex, loaded.eos_token_id, batch_size=4)
    single = sequence_logps(model, ex, loaded.eos_token_id, batch_size=1)
    assert len(batched) == len(single) == 8
    for b, s in zip(batched, single):
        assert abs(b["ref_chosen_logps"] - s["ref_chosen_logps"]) <= 1e-5
        assert abs(b["ref_rejected_logps"] - s["ref_rejected_logps"]) <= 1e-5
    # lengths differ across the batch, so padding was exercised
    assert len({len(e["chosen_ids"]) + len(e["prompt_ids"]) for e in ex} | {len(e["rejected_ids"]) for e in ex}) > 1
    assert all(r["ref_chosen_logps"] < 0 for r in batched)


def test_stored_reference_matches_trl_policy_at_step_zero(policy, tmp_path):
    """TRL's first logged rewards are beta * (policy - stored reference): ~0 when our pass is right."""
    from phases.dpo import build_pair_examples, sequence_logps, train_dpo

    loaded, model, sft = policy
    ex, _ = build_pair_examples(loaded, PAIRS, 128)
    refs = sequence_logps(model, ex, loaded.eos_token_id, 4)
    ex = [{**e, **r} for e, r in zip(ex, refs)]
    params = {**PARAMS, "max_steps": 2, "save_steps": 100}
    events = []
    res = train_dpo(loaded, model, ex, PAIRS, params, tmp_path / "work", tmp_path / "out", 5, "cpu", None, False, sft,
                    lambda msg, **k: events.append(k.get("kind")))
    first = res["curve"][0]
    assert first["step"] == 1 and abs(first["rewards/chosen"]) < 1e-4 and abs(first["rewards/rejected"]) < 1e-4
    assert abs(first["loss"] - 0.6931) < 1e-3  # log 2: policy == reference
    assert events == ["dpo_started"] and res["metrics"]["global_step"] == 2
    assert res["attention"]["sdpa"] == "default" and "not CUDA" in res["attention"]["reason"]  # the manifest says
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()
    import json

    meta = json.loads((tmp_path / "out" / "adapter" / "cai_adapter.json").read_text())
    assert meta["stacked_on"] and meta["base_model_id"] == loaded.model_id


@pytest.mark.parametrize("algorithm,trainer", [("simpo", "CPOTrainer(simpo)"), ("orpo", "ORPOTrainer")])
def test_reference_free_options_train_through_trl(policy, tmp_path, algorithm, trainer):
    from phases.dpo import load_policy, train_dpo

    _, _, sft = policy
    params = {**PARAMS, "algorithm": algorithm, "max_steps": 2, "save_steps": 100}
    loaded, model, dev, q, gc = load_policy(str(tiny_dir()), sft, params, 5)
    res = train_dpo(loaded, model, [], PAIRS, params, tmp_path / "w", tmp_path / "o", 5, dev, q, gc, sft,
                    lambda msg, **k: None)
    assert res["trainer"].endswith(trainer) and res["metrics"]["global_step"] == 2
    assert loaded.tokenizer.pad_token_id == loaded.eos_token_id  # never a chat token as padding
    assert (tmp_path / "o" / "adapter" / "adapter_model.safetensors").is_file()
