"""Review requests: fixed-seed sampling, deterministic bounded rendering, hashing, scrubbing; config.

Run: .venv/bin/python -m pytest tests/unit/test_review_request.py -q
"""
from __future__ import annotations

import pytest

from runner.review import ReviewerConfig, ReviewRequest, sample_items, scrub_obj, scrub_text


def test_sample_items_fixed_seed_keeps_order():
    items = list(range(100))
    a = sample_items(items, 10, seed=3)
    assert a == sample_items(items, 10, seed=3)
    assert a != sample_items(items, 10, seed=4)
    assert a == sorted(a) and len(set(a)) == 10
    assert sample_items(items[:5], 10, seed=1) == items[:5]
    assert sample_items(items, 0, seed=1) == []


def big_request(n_samples=40) -> ReviewRequest:
    return ReviewRequest(
        gate="scale_gate",
        run_id="r",
        criteria=["criterion A", "criterion B"],
        evidence={"qc": {"long": "x" * 50_000, "many": list(range(3000)), "rate": 0.5}},
        samples=[{"id": i, "text": "y" * 2000} for i in range(n_samples)],
    )


@pytest.mark.parametrize("bound", [1000, 5000, 20_000, 60_000])
def test_render_is_bounded_and_deterministic(bound):
    req = big_request()
    text = req.render(bound)
    assert len(text) <= bound
    assert text == big_request().render(bound)
    assert text.rstrip().endswith("empty unless the decision is MODIFY or NO-GO).")
    if bound >= 5000:
        assert "criterion A" in text and "criterion B" in text


def test_render_small_request_is_whole():
    req = ReviewRequest(gate="g", run_id="r", criteria="one criterion", evidence={"a": {"b": 1}}, samples=[{"s": 1}])
    text = req.render(60_000)
    assert "one criterion" in text and '"b": 1' in text and "### Sample 1" in text and "omitted" not in text


def test_render_marks_what_was_shortened():
    text = big_request().render(20_000)
    assert "…[+" in text  # strings/lists shortened visibly


def test_input_hash_covers_inputs_not_run_id():
    a = big_request(3)
    b = big_request(3)
    b.run_id = "another-run"
    assert a.input_hash() == b.input_hash()
    b.criteria = ["criterion A"]
    assert a.input_hash() != b.input_hash()
    c = big_request(3)
    c.samples[0]["text"] = "z"
    assert a.input_hash() != c.input_hash()


def test_render_scrubs_secrets():
    req = ReviewRequest(gate="g", run_id="r", criteria=["c"],
                        evidence={"cfg": {"api_key": "abc123456789", "url": "https://u:hunter22@host/x",
                                          "note": "token sk-abcdefghijklmnop", "max_new_tokens": 64,
                                          "eos_token": "<|endoftext|>"}},
                        samples=[])
    text = req.render(10_000)
    for secret in ("abc123456789", "hunter22", "sk-abcdefghijklmnop"):
        assert secret not in text
    assert '"max_new_tokens": 64' in text and "<|endoftext|>" in text


def test_scrub_text_exact_value_and_patterns():
    assert scrub_text("k=verysecretvalue1", ["verysecretvalue1"]) == "k=[REDACTED]"
    assert scrub_text("Authorization: Bearer abcdefgh12345") == "Authorization: Bearer [REDACTED]"
    assert scrub_text("short", ["abc"]) == "short"  # too-short values are not scrubbed
    assert scrub_obj({"x": ["a sk-1234567890ab b"]}) == {"x": ["a [REDACTED] b"]}


def test_config_from_mapping_env_and_precedence():
    env = {"CAI_REVIEW_MODEL": "env-model", "OPENAI_BASE_URL": "http://127.0.0.1:8000/v1"}
    c = ReviewerConfig.from_mapping({}, env=env)
    assert c.model == "env-model" and c.base_url == "http://127.0.0.1:8000/v1"
    c = ReviewerConfig.from_mapping({"model": "cfg-model", "timeout_s": "30", "reasoning_effort": None}, env=env)
    assert c.model == "cfg-model" and c.timeout_s == 30.0 and c.reasoning_effort is None
    assert ReviewerConfig.from_mapping(None, env={}).model == "gpt-5"


@pytest.mark.parametrize(
    "mapping, match",
    [
        ({"modle": "x"}, "unknown reviewer config key.*modle"),
        ({"api_key": "sk-whatever"}, "must not contain 'api_key'"),
        ({"api_key_env": "sk-abcdef0123456789"}, "NAME of an environment variable"),
        ({"backend": "anthropic"}, "backend"),
        ({"backend": "command"}, "reviewer.command is not set"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"max_retries": -1}, "max_retries"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
    ],
)
def test_config_rejects_bad_values(mapping, match):
    with pytest.raises(ValueError, match=match):
        ReviewerConfig.from_mapping(mapping, env={})


def test_config_error_never_echoes_a_pasted_key():
    with pytest.raises(ValueError) as e:
        ReviewerConfig.from_mapping({"api_key_env": "sk-abcdef0123456789"}, env={})
    assert "sk-abcdef0123456789" not in str(e.value)
