"""Stage configs: include/merge, strict validation errors, seeds file checks, shipped stages.

Run: .venv/bin/pytest tests/unit/test_stage_config.py
"""

from pathlib import Path

import pytest

from phases.instructions import parse_instructions
from phases.prompts import instruction_generation_prompt, response_prompt
from phases.stage_config import ConfigError, DataError, load_seeds, load_stage

STAGES = Path(__file__).resolve().parents[2] / "phases" / "stages"

SEEDS = """
response_fewshot:
  - instruction: Name a color.
    response: Blue.
families:
  alpha: ["Write a poem about rain.", "List three fruits.", "Explain what a noun is."]
  beta: ["Name two rivers.", "Describe a cat.", "Summarize a fairy tale in one sentence."]
"""

BASE = """
stage: {name: base}
seeds_file: seeds.yaml
families:
  alpha: {description: first family}
  beta: {description: second family, weight: 2}
generation:
  responses: {temperature: 0.4, stop: ["###END###"]}
"""


def write(tmp_path, name, text):
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")
    return p


@pytest.fixture
def base(tmp_path):
    write(tmp_path, "seeds.yaml", SEEDS)
    return write(tmp_path, "base.yaml", BASE)


def test_shipped_stage1_and_demo_load():
    s1 = load_stage(STAGES / "stage1.yaml")
    demo = load_stage(STAGES / "demo.yaml")
    assert s1.generation.responses.max_new_tokens == 80 and s1.generation.responses.temperature == 0.4
    assert s1.generation.instructions.temperature == 0.7 and s1.instruction_generation.over_generation == 1.75
    assert s1.critics.threshold == 1.0 and s1.pilot.size == 150 and s1.scale.target_kept == 15000 and s1.heldout.size == 1000
    assert demo.pilot.size == 16 and demo.heldout.size == 16 and demo.generation.responses.max_new_tokens == 48
    assert demo.generation.responses.temperature == 0.4  # inherited through the merge
    assert demo.families.keys() == s1.families.keys() and len(s1.families) >= 10
    assert all(8 <= len(v) <= 12 for v in s1.seeds.values())
    assert s1.qc.thresholds().max_runaway_rate == 0.05
    d = demo.to_dict()
    assert d["pilot"] == {"size": 16} and d["seeds_sha256"] == s1.seeds_sha256 and "/" not in d["seeds_sha256"]
    assert not any(str(STAGES) in str(v) for v in d.values())  # no absolute paths in cache keys


def test_shipped_seeds_pass_the_parser_and_build_prompts():
    s1 = load_stage(STAGES / "stage1.yaml")
    for family, seeds in s1.seeds.items():
        prompt = instruction_generation_prompt(seeds, family=s1.families[family].description)
        parsed = parse_instructions(prompt.split("\n\n", 1)[1].rsplit("\n", 1)[0] + "\n")
        assert parsed.kept == seeds, (family, parsed.dropped)
    assert response_prompt("x", fewshot=s1.response_fewshot).count("###END###") == 3


def test_include_deep_merge_and_list_replace(tmp_path, base):
    child = write(tmp_path, "sub/child.yaml", """
include: ../base.yaml
stage: {name: child}
families:
  beta: {enabled: false}
generation:
  responses: {stop: ["\\n\\nInstruction:"]}
""")
    cfg = load_stage(child)
    assert cfg.stage.name == "child"
    assert cfg.families["beta"].weight == 2.0 and not cfg.families["beta"].enabled
    assert cfg.enabled_families == ["alpha"]
    assert cfg.generation.responses.stop == ["\n\nInstruction:"]  # list replaced, not appended
    assert cfg.generation.responses.temperature == 0.4 and cfg.generation.responses.max_new_tokens == 80
    assert cfg.generation.instructions.temperature == 0.7  # per-field default, not SamplingParams'
    assert cfg.to_dict()["seeds_file"] == "seeds.yaml"


def test_unknown_key_names_file_path_and_allowed(tmp_path, base):
    child = write(tmp_path, "child.yaml", "include: base.yaml\ngeneration:\n  responses:\n    temprature: 0.3\n")
    with pytest.raises(ConfigError) as e:
        load_stage(child)
    msg = str(e.value)
    assert str(child) in msg and "generation.responses.temprature = 0.3" in msg and "unknown key" in msg and "temperature" in msg


def test_wrong_type_and_range_name_the_key(tmp_path, base):
    cases = {
        "pilot:\n  size: lots\n": ("pilot.size = 'lots'", "an integer"),
        "pilot:\n  size: true\n": ("pilot.size = True", "an integer"),
        "generation:\n  responses:\n    top_p: 1.5\n": ("generation.responses.top_p = 1.5", "<= 1.0"),
        "prompts:\n  eval_arms: [raw, chat]\n": ("prompts.eval_arms.1 = 'chat'", "one of"),
        "families: []\n": ("families = []", "non-empty mapping"),
        "critics: 3\n": ("critics = 3", "a mapping with keys"),
    }
    for body, (where, expected) in cases.items():
        child = write(tmp_path, "child.yaml", "include: base.yaml\n" + body)
        with pytest.raises(ConfigError) as e:
            load_stage(child)
        assert where in str(e.value) and expected in str(e.value) and str(child) in str(e.value), str(e.value)


def test_error_names_the_included_file_when_the_bad_value_is_there(tmp_path, base):
    write(tmp_path, "base.yaml", BASE + "pilot: {size: -3}\n")
    child = write(tmp_path, "child.yaml", "include: base.yaml\nstage: {name: c}\n")
    with pytest.raises(ConfigError, match=r"base\.yaml:\d+: pilot\.size = -3"):
        load_stage(child)


def test_structure_errors(tmp_path, base):
    for body, match in [
        ("", "empty"),
        ("- a\n- b\n", "must be a mapping"),
        ("include: missing.yaml\n", r"missing\.yaml does not exist"),
        ("stage: {name: x}\nstage: {name: y}\n", "duplicate key"),
        ("stage: {name: x\n", r"bad\.yaml: malformed YAML"),
        ("stage: {name: x}\nfamilies: {a: {description: d}}\n", r"missing required key\(s\) \['seeds_file'\]"),
    ]:
        with pytest.raises(ConfigError, match=match):
            load_stage(write(tmp_path, "bad.yaml", body))
    write(tmp_path, "a.yaml", "include: b.yaml\n")
    write(tmp_path, "b.yaml", "include: a.yaml\n")
    with pytest.raises(ConfigError, match="include cycle"):
        load_stage(tmp_path / "a.yaml")


def test_seed_file_errors(tmp_path, base):
    for body, match in [
        ("", "seeds file is empty"),
        ("families: {}\n", "non-empty mapping"),
        ("families:\n  alpha: [a, b]\n", "at least 3"),
        ("families:\n  alpha: [Write a poem., '', x]\n", r"families\.alpha\.1 = ''"),
        ("families:\n  alpha: [Write a poem., Write a poem., x]\n", "duplicate seed"),
        ("extra: 1\nfamilies: {alpha: [a, b, c]}\n", "unknown key"),
        ("families: {alpha: [a, b, c]}\nresponse_fewshot: [{instruction: x}]\n", "response_fewshot.0"),
    ]:
        p = write(tmp_path, "seeds.yaml", body)
        with pytest.raises(DataError, match=match) as e:
            load_seeds(p)
        assert str(p) in str(e.value)
    write(tmp_path, "seeds.yaml", "families:\n  alpha: [a b c, d e f, g h i]\n")
    with pytest.raises(DataError, match=r"no seed instructions for enabled famil\(ies\) \['beta'\]"):
        load_stage(base)
    write(tmp_path, "seeds.yaml", SEEDS + "  gamma: [a b c, d e f, g h i]\n")
    with pytest.raises(DataError, match="not declared"):
        load_stage(base)
    write(tmp_path, "seeds.yaml", SEEDS.replace("Blue.", "'Blue. ###END###'"))
    with pytest.raises(DataError, match="end marker"):
        load_stage(base)
