"""Stages as data: every stage file validates, its shared parts come from includes, and no code
path reads a stage's name.

Run: .venv/bin/pytest tests/unit/test_stages_yaml.py -q
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import yaml

from helpers_runner import cli
from phases.stage_config import RUNNER_KEYS as STAGE_RUNNER_KEYS
from runner.config import load_config
from runner.errors import ConfigError
from runner.pipeline import load_pipeline

REPO = Path(__file__).resolve().parents[2]
STAGES = REPO / "phases" / "stages"
FILES = ["stage2.yaml", "stage3.yaml", "stage4.yaml", "stage5.yaml", "stage6.yaml", "multiturn.yaml",
         "demo-multiturn.yaml"]


def _expanded(path: Path) -> dict:
    from runner.config import load_yaml

    raw = load_yaml(path)
    return load_config(path, load_pipeline(raw["pipeline"]))


@pytest.mark.parametrize("name", FILES)
def test_runner_validate_passes(name, tmp_path):
    p = cli(tmp_path, "validate", "--config", STAGES / name, check=0)
    assert p.stdout.startswith("OK: pipeline"), p.stdout


@pytest.mark.parametrize("name", ["gpu_vllm_stage1.yaml", "gpu_vllm_stage1_smollm2.yaml"])
def test_the_gpu_benchmark_stage_configs_validate(name, tmp_path):
    """The configs benchmarks/gpu_vllm.sh runs on the lent GPU stay valid as the stages change;
    the test-model one trains and evaluates unquantized (no bitsandbytes is carried there)."""
    cfg = REPO / "benchmarks" / name
    p = cli(tmp_path, "validate", "--config", cfg, check=0)
    assert p.stdout.startswith("OK: pipeline"), p.stdout
    if name.endswith("smollm2.yaml"):
        params = _expanded(cfg)["params"]
        assert params["prepare_model"]["backend"] == "vllm" and params["prepare_model"]["model"] == "smollm2-135m-instruct"
        assert all(params[k]["quantization"] == "none" for k in ("sft", "evaluate", "base_skill", "dpo", "evaluate_dpo"))


@pytest.mark.parametrize("name", ["stage2.yaml", "stage3.yaml", "stage4.yaml", "stage5.yaml", "stage6.yaml"])
def test_later_stages_share_stage1_through_includes(name):
    from phases.stage_config import load_stage

    st = load_stage(STAGES / name, ignore_keys=STAGE_RUNNER_KEYS | {"constitution"})
    s1 = load_stage(STAGES / "stage1.yaml")
    assert st.stage.name == name[:-5]
    # own families only; stage 1's are declared but switched off by shared.yaml
    assert set(st.enabled_families).isdisjoint(s1.enabled_families) and st.enabled_families
    assert st.prompts.response_builder == s1.prompts.response_builder and st.qc == s1.qc and st.critics == s1.critics
    assert str(STAGES / "stage1.yaml") in st.source_files and str(STAGES / "shared.yaml") in st.source_files
    assert st.checks, "each later stage picks its held-out checks from the registry"
    assert st.heldout.seed != s1.heldout.seed


def _rename(src: Path, tmp: Path, new: str) -> Path:
    out = tmp / f"renamed-{src.name}"
    out.write_text(yaml.safe_dump({"include": str(src), "stage": {"name": new}}))
    return out


def _strip_names(obj, names: set):
    if isinstance(obj, dict):
        return {k: _strip_names(v, names) for k, v in obj.items() if k not in ("stage_name", "stage")}
    if isinstance(obj, list):
        return [_strip_names(v, names) for v in obj]
    return obj


@pytest.mark.parametrize("name", FILES)
def test_no_code_path_reads_the_stage_name(name, tmp_path):
    """Renaming a stage changes nothing but the name itself: same pipeline, same steps, same params."""
    a = _expanded(STAGES / name)
    b = _expanded(_rename(STAGES / name, tmp_path, "zz-renamed-stage"))
    assert b["stage"]["name"] == "zz-renamed-stage"
    names = {a["stage"]["name"], "zz-renamed-stage"}
    assert json.dumps(_strip_names(a, names), sort_keys=True) == json.dumps(_strip_names(b, names), sort_keys=True)
    # the only params that carry it are labels for manifests
    for step, params in b["params"].items():
        for k, v in params.items():
            if v == "zz-renamed-stage":
                assert k == "stage_name", (step, k)


def _stage_names() -> set:
    from phases.stage_config import load_stage

    names = set()
    for f in sorted(STAGES.glob("*.yaml")):
        if f.name in ("shared.yaml", "base.yaml"):
            continue
        names.add(load_stage(f, ignore_keys=STAGE_RUNNER_KEYS | {"constitution", "multiturn", "from"}).stage.name)
    return names


def test_no_source_file_compares_against_a_stage_name():
    """No ``==``/``in``/``!=`` against any stage's name in phases/ or runner/ (a branch on the name)."""
    STAGE_NAMES = _stage_names()
    assert {"stage1", "stage2", "stage6", "multiturn", "multiturn-demo"} <= STAGE_NAMES
    hits = []
    for root in ("phases", "runner"):
        for f in sorted((REPO / root).rglob("*.py")):
            tree = ast.parse(f.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Compare):
                    for sub in [node.left, *node.comparators]:
                        if isinstance(sub, ast.Constant) and sub.value in STAGE_NAMES:
                            hits.append(f"{f.relative_to(REPO)}:{node.lineno}")
                        if isinstance(sub, (ast.Tuple, ast.List, ast.Set)) and any(
                                isinstance(e, ast.Constant) and e.value in STAGE_NAMES for e in sub.elts):
                            hits.append(f"{f.relative_to(REPO)}:{node.lineno}")
    assert not hits, f"code branches on a stage's name: {hits}"


def test_toy_stage_is_yaml_only(tmp_path):
    """A new stage of an existing kind: a YAML file and a seeds file, no Python."""
    seeds = tmp_path / "toy_seeds.yaml"
    seeds.write_text(yaml.safe_dump({"families": {"riddles": ["What has keys but no locks?", "What has hands but cannot clap?",
                                                               "What gets wetter as it dries?"]}}))
    toy = tmp_path / "toy.yaml"
    toy.write_text(yaml.safe_dump({
        "include": str(STAGES / "shared.yaml"), "stage": {"name": "toy", "description": "riddles"},
        "seeds_file": "toy_seeds.yaml", "families": {"riddles": {"description": "Answer a riddle."}},
        "checks": [{"name": "max_words", "args": {"choices": [12]}}, {"name": "lowercase"}]}))
    cfg = _expanded(toy)
    assert cfg["params"]["heldout"]["families"] == {"riddles": {"description": "Answer a riddle.", "enabled": True,
                                                                "refusal_expected": False, "weight": 1.0}}
    assert [c["name"] for c in cfg["params"]["heldout"]["checks"]] == ["max_words", "lowercase"]


@pytest.mark.parametrize("bad, msg", [
    ({"checks": [{"name": "recall", "args": {"facts": ["x"]}}]}, "memory check cannot score"),
    ({"checks": [{"name": "max_words", "args": {"choices": "ten"}}]}, "expected list"),
    ({"constitution": {"principles_per_item": 99}}, "principles_per_item"),
])
def test_bad_stage_data_names_file_and_key(bad, msg, tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump({"include": str(STAGES / "stage6.yaml"), **bad}))
    with pytest.raises(ConfigError, match=msg) as e:
        _expanded(f)
    assert "bad.yaml" in str(e.value) or "stage6.yaml" in str(e.value)
