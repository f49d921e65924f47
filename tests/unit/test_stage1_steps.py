"""Fast tests of the stage-1 pipeline's config hook and model-free step logic (no torch).

Run: .venv/bin/pytest tests/unit/test_stage1_steps.py -q
"""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from runner.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "phases" / "stages" / "demo.yaml"


def _write(tmp: Path, name: str, body: dict | str) -> Path:
    p = tmp / name
    p.write_text(body if isinstance(body, str) else yaml.safe_dump(body), encoding="utf-8")
    return p


def _cfg(tmp: Path, extra: dict) -> Path:
    return _write(tmp, "run.yaml", {"include": str(DEMO), **extra})


def _expand(path: Path) -> dict:
    from phases.steps.config import expand_stage_config
    from runner.config import load_yaml

    return expand_stage_config(load_yaml(path), path)


def test_demo_expands_into_per_step_params():
    out = _expand(DEMO)
    p = out["params"]
    assert out["pipeline"] == "phases.pipeline:pipeline" and out["seed"] == 1234
    assert p["pilot"]["generation"]["responses"]["max_new_tokens"] == 48
    assert p["pilot"]["size"] == 16 and p["heldout"]["heldout"] == {"size": 16, "seed": 1001, "max_family_rounds": 2}
    assert p["scale"]["scale"] == {"target_kept": 32, "shard_size": 24, "max_top_up_rounds": 2}
    assert p["merge"]["target_kept"] == 32
    assert "responses" not in p["heldout"] and "generation" not in p["heldout"]
    assert p["prepare_model"]["model"] == "qwen2.5-coder-0.5b-instruct"
    assert out["gates"]["qc_pilot"]["policy"] == "approve" and out["gates"]["sft_gate"]["policy"] == "approve"
    assert out["gates"]["dpo_gate"]["policy"] == "review"  # the demo's last gate: a reviewer or a human decides
    # candidates get the stage's instruction slice next to their own params
    assert p["candidates"]["n_prompts"] == 8 and p["candidates"]["families"] == p["heldout"]["families"]
    assert p["candidates"]["instructions"] == p["heldout"]["instructions"]
    assert p["candidates"]["leakage"] == p["pilot"]["leakage"]
    assert p["sft"]["require_qc_pass"] is False and p["pilot"]["critics"]["enforce"] is False
    assert "families" not in out and "generation" not in out  # stage keys became params


def test_response_params_change_only_pilot_and_later(tmp_path):
    base = _expand(DEMO)["params"]
    edited = _expand(_cfg(tmp_path, {"generation": {"responses": {"temperature": 0.3}}}))["params"]
    assert edited["pilot"] != base["pilot"]
    assert edited["heldout"] == base["heldout"]
    assert edited["prepare_model"] == base["prepare_model"]
    assert edited["merge"] == base["merge"]  # scale reads the pilot's final params from its output


def test_unknown_top_level_key_names_file_and_key(tmp_path):
    path = _cfg(tmp_path, {"genration": {"batch_size": 4}})
    with pytest.raises(ConfigError, match=r"run\.yaml.*genration"):
        _expand(path)


def test_unknown_nested_stage_key_names_dotted_key(tmp_path):
    path = _cfg(tmp_path, {"generation": {"responses": {"temprature": 0.3}}})
    with pytest.raises(ConfigError, match=r"run\.yaml:\d+: generation\.responses\.temprature"):
        _expand(path)


def test_wrong_type_names_dotted_key(tmp_path):
    path = _cfg(tmp_path, {"pilot": {"size": "ten"}})
    with pytest.raises(ConfigError, match=r"run\.yaml:\d+: pilot\.size = 'ten': expected an integer"):
        _expand(path)


def test_params_for_a_stage_fed_step_is_an_error(tmp_path):
    path = _cfg(tmp_path, {"params": {"pilot": {"size": 3}}})
    with pytest.raises(ConfigError, match=r"params\.pilot"):
        _expand(path)


def test_runner_checks_prepare_model_param_types(tmp_path):
    from phases.pipeline import pipeline
    from runner.config import load_config

    path = _cfg(tmp_path, {"params": {"prepare_model": {"device": 3}}})
    with pytest.raises(ConfigError, match=r"params\.prepare_model\.device = 3 has the wrong type"):
        load_config(path, pipeline)
    path = _cfg(tmp_path, {"params": {"prepare_model": {"devce": "cpu"}}})
    with pytest.raises(ConfigError, match=r"params\.prepare_model\.devce"):
        load_config(path, pipeline)


def test_empty_seeds_file_is_a_clear_error(tmp_path):
    seeds = _write(tmp_path, "seeds.yaml", "")
    path = _cfg(tmp_path, {"seeds_file": str(seeds)})
    with pytest.raises(DataError, match=r"seeds\.yaml: the seeds file is empty"):
        _expand(path)


def test_malformed_seeds_file_is_a_clear_error(tmp_path):
    seeds = _write(tmp_path, "seeds.yaml", "families: [not, a, mapping\n")
    path = _cfg(tmp_path, {"seeds_file": str(seeds)})
    with pytest.raises(DataError, match=r"seeds\.yaml: malformed YAML"):
        _expand(path)


def test_no_torch_on_the_config_path():
    """Validating a stage config imports no torch (checked in a fresh interpreter, so it never skips)."""
    import subprocess
    code = ("import sys; from runner.config import load_yaml; from phases.steps.config import expand_stage_config; "
            f"expand_stage_config(load_yaml({str(DEMO)!r}), {str(DEMO)!r}); "
            "sys.exit(1 if 'torch' in sys.modules or 'transformers' in sys.modules else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0, r.stderr or "torch or transformers was imported while expanding the stage config"


# ---- model-free step logic ----------------------------------------------------------------

class _Ledger:
    def run(self, items, batch_size, fn):
        out = []
        for i in range(0, len(items), batch_size):
            out += fn(list(items[i:i + batch_size]), SimpleNamespace(index=i // batch_size, seed=0))
        return out


class _Ctx:
    def ledger(self, name):
        return _Ledger()


class _EmptyModel:
    """Stands in for a model whose generations come back empty (the real path: integration tests)."""

    def generate(self, prompts, params, seeds):
        return [SimpleNamespace(text="", n_tokens=0, finish_reason="eos", token_ids=(), hit_token_limit=False)
                for _ in prompts]


def _step_params() -> dict:
    return _expand(DEMO)["params"]["pilot"]


def test_generation_that_returns_nothing_is_a_clear_error():
    from phases.steps.generation import collect_instructions

    p = _step_params()
    with pytest.raises(DataError, match="instruction generation returned nothing"):
        collect_instructions(_Ctx(), _EmptyModel(), p, p["generation"]["instructions"], seed_base=1, needed=5,
                             tag="t", id_prefix="x", max_rounds=2)


def test_prompt_specs_are_seeded_and_use_the_list_builder():
    from phases.steps.generation import prompt_spec

    p = _step_params()
    a, b = prompt_spec(p, 7, 3), prompt_spec(p, 7, 3)
    assert a == b and a["family"] in p["families"]
    assert a["prompt"].endswith(f"{len(a['examples']) + 1}.")
    assert prompt_spec(p, 7, 4) != a


def test_leakage_check_catches_a_planted_overlap():
    from phases.steps.generation import leakage_check

    held = [{"id": "ho-0001", "base_instruction": "Write a haiku about the first snow of winter."},
            {"id": "ho-0002", "base_instruction": "Name three rivers in Africa."}]
    cands = [{"id": "c0", "instruction": "Explain how a bicycle gear works."},
             {"id": "c1", "instruction": "write a haiku about the first snow of winter"},
             {"id": "c2", "instruction": "Name three rivers in South America."}]
    cfg = {"min_tokens": 13, "min_fraction": 0.6, "rouge_threshold": 0.7}
    clean, dropped, rep = leakage_check(cands, held, cfg)
    assert [c["id"] for c in clean] == ["c0"]
    assert rep["dropped_ids"] == ["c1", "c2"] and not rep["passed"]
    assert {d["drop_reason"] for d in dropped} == {"heldout_leak"}
    assert {(x["train_id"], x["heldout_id"], x["kind"]) for x in rep["pairs"]} == {
        ("c1", "ho-0001", "exact"), ("c2", "ho-0002", "rouge")}


def test_shard_plan_aligns_to_batches_and_covers_every_prompt():
    from phases.steps.scale import plan_shards

    final = {"prompts_used": 10, "kept": 12, "instructions_judged": 30}
    plan = plan_shards(final, target_kept=100, shard_size=20, batch_size=8)
    assert plan["n_prompts"] == 81  # ceil(88 / 1.2 * 1.1)
    assert plan["prompts_per_shard"] % 8 == 0
    ranges = [(s["start"], s["stop"]) for s in plan["shards"]]
    assert ranges[0][0] == 0 and ranges[-1][1] == plan["n_prompts"]
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    one = plan_shards(final, 100, 10_000, 8)
    assert one["n_prompts"] == plan["n_prompts"] and len(one["shards"]) == 1
    assert plan_shards({**final, "kept": 500}, 100, 20, 8)["shards"] == []


def test_heldout_constraints_are_valid_ifeval_and_quotas_balance():
    from phases.ifeval.registry import validate_kwargs
    from phases.steps.heldout import draw_constraint, quotas

    seen = set()
    for s in range(60):
        c = draw_constraint(s)
        validate_kwargs(c["instruction_id"], c["kwargs"])
        seen.add(c["name"])
        assert c == draw_constraint(s)
    assert len(seen) >= 5
    q = quotas({"a": {"weight": 1.0}, "b": {"weight": 1.0}, "c": {"weight": 2.0}, "z": {"weight": 0.0}}, 10)
    assert q == {"a": 3, "b": 2, "c": 5} or q == {"a": 2, "b": 3, "c": 5}
    assert sum(q.values()) == 10


@pytest.mark.parametrize("body, pattern", [
    ({"critics": {"enforce": False}}, r"critics\.enforce: false"),
    ({"params": {"sft": {"require_qc_pass": False}}}, r"params\.sft\.require_qc_pass: false"),
])
def test_demo_only_switches_refused_outside_a_demo(tmp_path, body, pattern):
    from runner.errors import ConfigError
    stage1 = REPO / "phases" / "stages" / "stage1.yaml"
    cfg = _write(tmp_path, "c.yaml", {"include": str(stage1), **body})
    with pytest.raises(ConfigError, match=pattern):
        _expand(cfg)
    out = _expand(_write(tmp_path, "d.yaml", {"include": str(stage1), "demo": True, **body}))
    assert out["demo"] is True


def test_scale_top_up_is_deterministic_continues_after_the_last_prompt_and_stops_at_its_cap():
    from phases.steps.scale import top_up_shards

    plan = {"remaining": 100, "prompts_per_shard": 8}
    done = [{"shard": 0, "start": 0, "stop": 8, "kept": 20}, {"shard": 1, "start": 8, "stop": 16, "kept": 20}]
    more = top_up_shards(plan, done, 1, max_rounds=2)
    # short 60 at 2.5 kept/prompt -> ceil(60 / 2.5 * 1.1) = 27 prompts after index 16, in shards of 8
    assert more == [{"shard": 2, "start": 16, "stop": 24}, {"shard": 3, "start": 24, "stop": 32},
                    {"shard": 4, "start": 32, "stop": 40}, {"shard": 5, "start": 40, "stop": 43}]
    assert top_up_shards(plan, done, 1, 2) == more
    assert top_up_shards(plan, done, 3, max_rounds=2) == []  # past the cap: nothing more
    assert top_up_shards(plan, [{**d, "kept": 50} for d in done], 1, 2) == []  # target met


def test_candidates_params_may_not_override_the_stage_slice(tmp_path):
    from runner.errors import ConfigError

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"include: {DEMO}\nparams:\n  candidates:\n    families: {{}}\n")
    with pytest.raises(ConfigError, match="params.candidates.families"):
        _expand(cfg)
