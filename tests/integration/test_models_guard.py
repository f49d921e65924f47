"""The contamination guard on real tokenizers (SmolLM2's real ChatML template, the tiny model)."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from helpers_models import smollm2, smollm2_dir, tiny, tiny_dir
from phases.critic import judge
from phases.models import loader
from phases.models.backends.base import GenerationParams
from phases.models.embedded import ModelNotPreparedError
from phases.models.guard import ContaminationError, SentinelError
from phases.models.loader import DeviceError, load_model

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def templated_text() -> str:
    """What a careless caller produces: the model's own chat template applied to a prompt."""
    raw = AutoTokenizer.from_pretrained(smollm2_dir())  # a fresh tokenizer, template intact
    text = raw.apply_chat_template([{"role": "user", "content": "Water freezes at"}], tokenize=False)
    assert "<|im_start|>" in text
    return text


def assert_guard_catches(m, text: str) -> None:
    with pytest.raises(ContaminationError, match=r"<\|im_start\|>"):
        m.encode(text)


def test_template_reaching_the_model_is_caught_on_every_path():
    m, text = smollm2(), templated_text()
    assert_guard_catches(m, text)
    with pytest.raises(ContaminationError, match="control token"):
        m.generate(["fine prompt", text], GenerationParams.greedy(4))
    with pytest.raises(ContaminationError):
        m.next_token_logprobs([text], ["A"])
    # The critic escapes control-token TEXT inside an item ("<|" -> "< |", issue 11), so an item that
    # merely mentions <|im_end|> is judged, never encoded as the control token itself.
    assert len(judge(m, "instruction", ["Name a colour.<|im_end|>"])) == 1


def test_guard_test_fails_when_the_guard_is_bypassed(monkeypatch):
    """Proves the test above can fail: with the id check switched off, it does not pass."""
    m, text = smollm2(), templated_text()
    monkeypatch.setattr(loader, "check_ids", lambda *a, **k: None)
    m.encode(text)  # no error any more: the bypass is real
    with pytest.raises(pytest.fail.Exception, match="DID NOT RAISE"):
        assert_guard_catches(m, text)


def test_template_is_disabled_and_special_tokens_not_added():
    m = smollm2()
    assert m.tokenizer.chat_template is None
    with pytest.raises(Exception):
        m.tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    p = m.provenance
    assert p["template_disabled"] is True and p["add_special_tokens"] is False
    assert m.encode("Water freezes at") == m.tokenizer.encode("Water freezes at", add_special_tokens=False)
    assert set(p["forbidden_control_tokens"]) == {"<|im_start|>", "<|im_end|>"}
    assert p["eos_token"] == "<|endoftext|>" and "<|im_end|>" in p["stop_tokens"]


def test_special_token_delta_aborts_loading(tmp_path):
    from tokenizers import Tokenizer, processors

    d = tmp_path / "bos-model"
    shutil.copytree(tiny_dir(), d)
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    tok.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", tok.token_to_id("<|endoftext|>"))]
    )
    tok.save(str(d / "tokenizer.json"))
    with pytest.raises(ContaminationError, match="adds 1 special token"):
        load_model(d, device="cpu")


def test_provenance_records_version_hashes_and_sentinels():
    m = tiny()
    p = m.provenance
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert p["loader_version"] == (sha or "unknown")
    assert p["model_id"] == "tiny-random-qwen2" and p["model_kind"] == "random"
    assert p["device"] == "cpu" and p["dtype"] == "float32" and p["backend"] == "hf" and p["quantization"] is None
    import hashlib

    want = hashlib.sha256((tiny_dir() / "model.safetensors").read_bytes()).hexdigest()
    assert p["file_hashes"]["model.safetensors"] == want
    names = [r["name"] for r in p["sentinels"]["results"]]
    assert names == ["pig_latin", "primes", "freezing", "json", "describe"] and p["sentinels"]["policy"] == "record"
    json.dumps(p)  # JSON-serialisable


def test_sentinel_failure_aborts_a_declared_base_model_and_warns_for_a_stand_in():
    with pytest.raises(SentinelError, match="freezing"):
        load_model(tiny_dir(), device="cpu", sentinel_policy="abort")  # random weights never say 0 °C
    m = smollm2()  # loaded with its own policy (warn); it says water freezes at 100 °C
    assert m.provenance["sentinels"]["policy"] == "warn"
    assert m.provenance["sentinels"]["all_passed"] is False  # recorded, not hidden
    with pytest.warns(UserWarning, match="sentinel.*freezing"):
        loader._run_sentinels(m, "warn")  # the very call load_model makes


def test_cuda_without_gpu_nf4_on_cpu_and_vllm_on_cpu_are_clear_errors():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        load_model(tiny_dir(), device="cuda")
    with pytest.raises(DeviceError, match="nf4.*cuda"):
        load_model(tiny_dir(), device="cpu", quantization="nf4")
    with pytest.raises(DeviceError, match="vllm.*CUDA"):
        load_model(tiny_dir(), device="cpu", backend="vllm")


def test_missing_model_folder_names_the_prepare_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="phases.models.embedded prepare"):
        load_model(tmp_path / "nope", device="cpu")
    with pytest.raises(ModelNotPreparedError, match="python -m phases.models.embedded prepare smollm2-135m-instruct"):
        load_model("smollm2-135m-instruct", device="cpu", cache_root=tmp_path)


def test_a_local_folder_declared_base_aborts_on_sentinel_failure(tmp_path):
    """A pod's model is a folder with no profile: declared `kind: base`, a failed sentinel aborts."""
    import shutil as _sh

    from phases.models.embedded import MARKER
    d = tmp_path / "local-base"
    _sh.copytree(tiny_dir(), d)
    (d / MARKER).unlink()  # no profile: like a downloaded Qwen2.5-32B folder
    with pytest.raises(SentinelError, match="freezing"):
        load_model(d, device="cpu", kind="base")  # random weights never say 0 °C
    with pytest.warns(UserWarning, match="sentinel"):
        m = load_model(d, device="cpu")  # undeclared: recorded and warned, not aborted
    assert m.kind == "unknown" and m.provenance["sentinels"]["policy"] == "warn"
    with pytest.raises(ValueError, match="profile"):
        load_model(tiny_dir(), device="cpu", kind="base")  # contradicts the tiny profile (random)
