"""Reviewer through the REAL openai client against a scripted local server on 127.0.0.1.

Run: .venv/bin/python -m pytest tests/unit/test_review_openai.py -q
Every timeout here is <= 2 s; the whole file runs in a few seconds.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.review import ReviewerConfig, ReviewRequest, SYSTEM_PROMPT, review, sample_items

try:
    from review_server import FakeReviewServer, http_error, reject_param, sleep_then, text_reply, verdict_reply
except ImportError:  # tests/ laid out as a package
    from tests.unit.review_server import (  # type: ignore[no-redef]
        FakeReviewServer, http_error, reject_param, sleep_then, text_reply, verdict_reply,
    )

REPO = Path(__file__).resolve().parents[2]
KEY = "sk-test-0123456789abcdefABCDEF"
# Not shaped like any known credential: only exact-value scrubbing can catch it.
PLAIN_KEY = "local-reviewer-key-7f3a9c1e5b2d4680"


def make_request(**over) -> ReviewRequest:
    items = [{"id": i, "instruction": f"instruction {i}", "response": f"response {i}"} for i in range(20)]
    kw = dict(
        gate="pilot_gate",
        run_id="run-1",
        criteria=["refusal rate < 5%", "no instruct-model contamination"],
        evidence={"qc_summary": {"n": 20, "refusal_rate": 0.01}, "manifests": {"model": "base-135m", "seed": 7}},
        samples=sample_items(items, 3, seed=0),
    )
    kw.update(over)
    return ReviewRequest(**kw)


def make_cfg(srv: FakeReviewServer, **over) -> ReviewerConfig:
    kw = dict(
        base_url=srv.base_url, model="fake-reviewer", timeout_s=1.0, max_retries=2,
        backoff_s=0.01, backoff_cap_s=0.05, price_per_mtok_in=1.25, price_per_mtok_out=10.0,
    )
    kw.update(over)
    return ReviewerConfig(**kw)


ENV = {"OPENAI_API_KEY": KEY}


def test_go_verdict_and_audit_files(tmp_path):
    with FakeReviewServer(script=[verdict_reply("GO", summary="looks fine")]) as srv:
        out = review(make_request(), make_cfg(srv), tmp_path, env=ENV)
    assert out.ok and out.error is None
    assert out.verdict.decision == "GO" and out.verdict.summary == "looks fine"
    assert out.attempts == 1 and srv.count == 1
    assert (out.tokens_in, out.tokens_out) == (1000, 200)
    assert out.cost_usd == pytest.approx((1000 * 1.25 + 200 * 10.0) / 1e6)
    assert out.request_path.name == f"pilot_gate-{out.memo_key[:12]}.request.md"
    assert out.response_path.name == f"pilot_gate-{out.memo_key[:12]}.response.json"

    sent = srv.requests[0]
    assert sent["authorization"] == f"Bearer {KEY}"
    body = sent["body"]
    assert body["model"] == "fake-reviewer"
    assert body["reasoning_effort"] == "medium"
    rf = body["response_format"]
    assert rf["type"] == "json_schema" and rf["json_schema"]["strict"] is True
    assert rf["json_schema"]["schema"]["properties"]["decision"]["enum"] == ["GO", "NO-GO", "MODIFY"]
    system, user = body["messages"][0], body["messages"][1]
    assert system["role"] == "system" and system["content"] == SYSTEM_PROMPT
    # The audit file is exactly what was sent.
    assert out.request_path.read_text(encoding="utf-8") == system["content"] + "\n\n---\n\n" + user["content"]
    assert "refusal rate < 5%" in user["content"]

    rec = json.loads(out.response_path.read_text(encoding="utf-8"))
    assert rec["outcome"]["verdict"]["decision"] == "GO"
    assert rec["outcome"]["memo_key"] == out.memo_key
    assert rec["raw_response"]["usage"]["prompt_tokens"] == 1000
    assert json.loads(json.dumps(out.to_dict()))["verdict"]["decision"] == "GO"
    assert not list(tmp_path.glob("*.tmp")), "temp files must not be left behind"


def test_nogo_verdict(tmp_path):
    script = [verdict_reply("NO-GO", reasons=["contaminated samples"], changes=["use the base model"])]
    with FakeReviewServer(script=script) as srv:
        out = review(make_request(), make_cfg(srv), tmp_path, env=ENV)
    assert out.ok and out.verdict.decision == "NO-GO"
    assert out.verdict.reasons == ["contaminated samples"]
    assert out.verdict.requested_changes == ["use the base model"]


def test_modify_verdict(tmp_path):
    script = [verdict_reply("MODIFY", changes=["raise n_pilot to 200", "report CIs"])]
    with FakeReviewServer(script=script) as srv:
        out = review(make_request(), make_cfg(srv), tmp_path, env=ENV)
    assert out.ok and out.verdict.decision == "MODIFY"
    assert out.verdict.requested_changes == ["raise n_pilot to 200", "report CIs"]


def test_http_500_then_success_is_retried(tmp_path):
    with FakeReviewServer(script=[http_error(500), verdict_reply("GO")]) as srv:
        out = review(make_request(), make_cfg(srv), tmp_path, env=ENV)
    assert out.ok and out.verdict.decision == "GO"
    assert out.attempts == 2 and srv.count == 2
    log = json.loads(out.response_path.read_text())["attempt_log"]
    assert [e.get("status") for e in log] == [500, None]
    assert log[0]["outcome"] == "transient; retrying" and log[0]["sleep_s"] <= 0.05


def test_429_is_retried(tmp_path):
    with FakeReviewServer(script=[http_error(429, "slow down"), verdict_reply("GO")]) as srv:
        out = review(make_request(), make_cfg(srv), tmp_path, env=ENV)
    assert out.ok and out.attempts == 2


def test_persistent_500_fails_closed(tmp_path):
    with FakeReviewServer(default=http_error(500, "overloaded")) as srv:
        out = review(make_request(), make_cfg(srv, max_retries=2), tmp_path, env=ENV)
    assert not out.ok and out.verdict is None
    assert out.attempts == 3 and srv.count == 3
    assert "after 3 attempt(s)" in out.error and "HTTP 500" in out.error
    rec = json.loads(out.response_path.read_text())
    assert rec["outcome"]["ok"] is False and rec["outcome"]["error"] == out.error


def test_client_error_is_not_retried(tmp_path):
    with FakeReviewServer(default=http_error(404, "model not found")) as srv:
        out = review(make_request(), make_cfg(srv), tmp_path, env=ENV)
    assert not out.ok and srv.count == 1
    assert "HTTP 404" in out.error and "model not found" in out.error


def test_timeout_fails_closed(tmp_path):
    with FakeReviewServer(default=sleep_then(1.5, verdict_reply("GO"))) as srv:
        t0 = time.monotonic()
        out = review(make_request(), make_cfg(srv, timeout_s=0.3, max_retries=1), tmp_path, env=ENV)
        elapsed = time.monotonic() - t0
    assert not out.ok and "timed out after 0.3 s" in out.error
    assert out.attempts == 2 and srv.count == 2
    assert elapsed < 1.4, f"timeouts must cut the wait short, took {elapsed:.2f}s"


def test_connection_refused_fails_closed(tmp_path):
    srv = FakeReviewServer().start()
    url = srv.base_url
    srv.close()  # nothing listens there any more
    cfg = ReviewerConfig(base_url=url, timeout_s=0.5, max_retries=1, backoff_s=0.01, backoff_cap_s=0.02)
    out = review(make_request(), cfg, tmp_path, env=ENV)
    assert not out.ok and "connection error" in out.error and out.attempts == 2


def test_garbage_answer_fails_closed(tmp_path):
    with FakeReviewServer(script=[text_reply("Honestly it looks great to me, ship it!")]) as srv:
        out = review(make_request(), make_cfg(srv), tmp_path, env=ENV)
    assert not out.ok and out.attempts == 1
    assert out.error.startswith("unparseable reviewer answer")
    rec = json.loads(out.response_path.read_text())
    assert rec["answer_text"] == "Honestly it looks great to me, ship it!"


def test_structured_output_rejected_falls_back_to_line_parse(tmp_path):
    answer = "Review done.\nDECISION: MODIFY\nSUMMARY: pilot too small\nREQUESTED CHANGES:\n- raise n to 200\n"
    with FakeReviewServer(script=[reject_param("response_format", text_reply(answer))]) as srv:
        out = review(make_request(), make_cfg(srv), tmp_path, env=ENV)
    assert out.ok, out.error
    assert out.verdict.decision == "MODIFY" and out.verdict.requested_changes == ["raise n to 200"]
    assert out.attempts == 2
    assert "response_format" in srv.requests[0]["body"]
    assert "response_format" not in srv.requests[1]["body"]
    assert out.notes["structured_output"] is False


def test_structured_output_rejected_falls_back_to_fenced_json(tmp_path):
    answer = 'Here is my verdict:\n```json\n{"decision": "NO-GO", "summary": "s", "reasons": ["r"], "requested_changes": []}\n```'
    with FakeReviewServer(script=[reject_param("response_format", text_reply(answer))]) as srv:
        out = review(make_request(), make_cfg(srv), tmp_path, env=ENV)
    assert out.ok and out.verdict.decision == "NO-GO" and out.verdict.reasons == ["r"]


def test_reasoning_effort_rejected_is_dropped(tmp_path):
    with FakeReviewServer(script=[reject_param("reasoning_effort", verdict_reply("GO"))]) as srv:
        out = review(make_request(), make_cfg(srv), tmp_path, env=ENV)
    assert out.ok and out.attempts == 2
    assert "reasoning_effort" not in srv.requests[1]["body"]
    assert "response_format" in srv.requests[1]["body"]


def test_reasoning_effort_none_is_not_sent(tmp_path):
    with FakeReviewServer() as srv:
        out = review(make_request(), make_cfg(srv, reasoning_effort=None), tmp_path, env=ENV)
    assert out.ok and "reasoning_effort" not in srv.requests[0]["body"]


def test_missing_key_fails_closed_without_network(tmp_path):
    with FakeReviewServer() as srv:
        out = review(make_request(), make_cfg(srv), tmp_path, env={})
        assert srv.count == 0
    assert not out.ok and out.error == "no API key: OPENAI_API_KEY is not set"
    assert out.attempts == 0
    assert out.request_path.exists() and out.response_path.exists()


def test_api_key_never_written_or_returned(tmp_path):
    env = {"REVIEW_KEY": PLAIN_KEY}
    evidence = {"qc_summary": {"n": 3}, "config": {"note": f"key is {PLAIN_KEY}", "api_key": PLAIN_KEY,
                                                   "other": "sk-leaked0123456789"}}
    script = [
        http_error(401, f"Incorrect API key provided: {PLAIN_KEY}"),
        text_reply(json.dumps({"decision": "GO", "summary": f"saw {PLAIN_KEY}", "reasons": [PLAIN_KEY],
                               "requested_changes": []})),
    ]
    outs = []
    with FakeReviewServer(script=script) as srv:
        for i in range(2):
            req = make_request(evidence=dict(evidence, round=i))
            outs.append(review(req, make_cfg(srv, api_key_env="REVIEW_KEY"), tmp_path, env=env))
        assert srv.requests[0]["authorization"] == f"Bearer {PLAIN_KEY}"  # the key was really used
    assert not outs[0].ok and "HTTP 401" in outs[0].error and outs[1].ok
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 4
    for p in files:
        data = p.read_bytes()
        assert PLAIN_KEY.encode() not in data, f"API key leaked into {p}"
        assert b"sk-leaked0123456789" not in data, f"sk- secret leaked into {p}"
    for o in outs:
        assert PLAIN_KEY not in json.dumps(o.to_dict())
    assert "[REDACTED]" in outs[0].request_path.read_text()


def test_recorded_answer_is_reused_and_plain_call_reasks(tmp_path):
    with FakeReviewServer(script=[verdict_reply("MODIFY", changes=["x"]), verdict_reply("GO")]) as srv:
        cfg = make_cfg(srv)
        first = review(make_request(), cfg, tmp_path, env=ENV, reuse_audit=True)
        again = review(make_request(), cfg, tmp_path, env=ENV, reuse_audit=True)
        assert srv.count == 1, "a repeat with the same inputs must not call (or bill) the reviewer"
        assert again.from_cache and again.verdict.decision == "MODIFY" and again.attempts == 0
        assert again.memo_key == first.memo_key and again.tokens_in == 0

        forced = review(make_request(), cfg, tmp_path, env=ENV)  # explicit re-ask
        assert srv.count == 2 and forced.verdict.decision == "GO" and not forced.from_cache
        assert forced.request_path.name == f"pilot_gate-{first.memo_key[:12]}-2.request.md"
        assert first.response_path.exists(), "an explicit re-ask must not overwrite the audit trail"

        changed = review(make_request(evidence={"qc_summary": {"n": 21}}), cfg, tmp_path, env=ENV, reuse_audit=True)
        assert srv.count == 3 and changed.memo_key != first.memo_key


def test_failed_review_is_not_cached(tmp_path):
    with FakeReviewServer() as srv:
        cfg = make_cfg(srv)
        assert not review(make_request(), cfg, tmp_path, env={}).ok
        out = review(make_request(), cfg, tmp_path, env=ENV, reuse_audit=True)
        assert out.ok and srv.count == 1 and not out.from_cache


def test_memo_key_depends_on_model_and_effort(tmp_path):
    from runner.review import memo_key

    req = make_request()
    base = ReviewerConfig()
    keys = {
        memo_key(req, base),
        memo_key(req, ReviewerConfig(model="other")),
        memo_key(req, ReviewerConfig(reasoning_effort="high")),
        memo_key(req, ReviewerConfig(max_request_chars=30000)),
    }
    assert len(keys) == 4
    assert memo_key(req, base) == memo_key(make_request(run_id="run-2"), base)
    assert memo_key(req, base) == memo_key(req, ReviewerConfig(timeout_s=5, max_retries=0))


def test_import_does_not_load_openai():
    code = "import sys, runner.review; bad = [m for m in ('openai', 'torch', 'transformers') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_unwritable_audit_dir_fails_closed_without_calling(tmp_path):
    blocker = tmp_path / "reviews"
    blocker.write_text("a file where the audit dir should be")
    with FakeReviewServer() as srv:
        out = review(make_request(), make_cfg(srv), blocker, env=ENV)
        assert srv.count == 0, "no audit trail, no review"
    assert not out.ok and "could not write the audit request file" in out.error


def test_outcome_round_trips_through_dict(tmp_path):
    from runner.review import ReviewOutcome

    with FakeReviewServer(script=[verdict_reply("MODIFY", changes=["c"])]) as srv:
        out = review(make_request(), make_cfg(srv), tmp_path, env=ENV)
    back = ReviewOutcome.from_dict(json.loads(json.dumps(out.to_dict())))
    assert back == out
