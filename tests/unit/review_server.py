"""A scripted, local OpenAI-compatible HTTP server for reviewer tests (127.0.0.1 only).

Not a test module itself (no test_ prefix). Tests import it and run the REAL `openai` client
against it, so no traffic leaves the machine.

Usage:

    from review_server import FakeReviewServer, verdict_reply, text_reply, http_error, sleep_then
    # (if tests/ is a package: from tests.unit.review_server import ...)

    with FakeReviewServer(script=[http_error(500), verdict_reply("GO")]) as srv:
        cfg = ReviewerConfig(base_url=srv.base_url, timeout_s=1, backoff_s=0.01, ...)
        out = review(req, cfg, tmp_path / "reviews", env={"OPENAI_API_KEY": "sk-test-..."})
        assert srv.count == 2               # POSTs received
        srv.requests[-1]["body"]            # parsed JSON body of the last request
        srv.requests[-1]["authorization"]   # its Authorization header

Behaviours are callables `(body: dict) -> (status, payload, delay_s)`; each request pops the
next one from `script`; when the script is empty, `default` answers (GO unless changed).
Ready-made behaviours:
- `verdict_reply(decision, summary=..., reasons=..., changes=..., usage=(in, out))`: 200 with
  the verdict as JSON content.
- `text_reply(text, usage=...)`: 200 with arbitrary content (garbage, DECISION lines, ...).
- `http_error(status, message)`: an OpenAI-style error body with that status.
- `sleep_then(seconds, behaviour)`: waits (interruptible at shutdown) then behaves.
- `reject_param(name, then)`: 400 naming `name` if the body contains that key, else `then`;
  e.g. `reject_param("response_format", text_reply("DECISION: GO"))` mimics a server
  without structured output. The rejection does not consume the `then` behaviour.
Only POST /v1/chat/completions is served (other paths: 404). Listens on an ephemeral port.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

Behaviour = Callable[[dict], "tuple[int, dict, float]"]
_KEEP = "_fake_keep_behaviour"  # payload marker: do not pop this behaviour from the script


def _completion(content: str, usage: tuple[int, int], model: str = "fake-reviewer") -> dict:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": usage[0] + usage[1],
        },
    }


def text_reply(text: str, usage: tuple[int, int] = (100, 20)) -> Behaviour:
    def b(body: dict) -> tuple[int, dict, float]:
        return 200, _completion(text, usage, body.get("model", "fake")), 0.0

    return b


def verdict_reply(
    decision: str,
    summary: str = "fake summary",
    reasons: list[str] | None = None,
    changes: list[str] | None = None,
    usage: tuple[int, int] = (1000, 200),
) -> Behaviour:
    content = json.dumps(
        {
            "decision": decision,
            "summary": summary,
            "reasons": reasons if reasons is not None else ["fake reason"],
            "requested_changes": changes if changes is not None else [],
        }
    )
    return text_reply(content, usage)


def http_error(status: int, message: str = "scripted failure") -> Behaviour:
    def b(body: dict) -> tuple[int, dict, float]:
        return status, {"error": {"message": message, "type": "fake_error", "code": status}}, 0.0

    return b


def sleep_then(seconds: float, then: Behaviour) -> Behaviour:
    def b(body: dict) -> tuple[int, dict, float]:
        status, payload, _ = then(body)
        return status, payload, seconds

    return b


def reject_param(name: str, then: Behaviour) -> Behaviour:
    """400 naming `name` when the request carries it; otherwise `then` (see module docstring)."""

    def b(body: dict) -> tuple[int, dict, float]:
        if name in body:
            status, payload, delay = http_error(
                400, f"Unsupported parameter: '{name}' is not supported with this model."
            )(body)
            return status, {**payload, _KEEP: True}, delay
        return then(body)

    return b


class FakeReviewServer:
    """Threaded HTTP server on 127.0.0.1:<ephemeral>; use as a context manager."""

    def __init__(self, script: list[Behaviour] | None = None, default: Behaviour | None = None):
        self.script: list[Behaviour] = list(script or [])
        self.default: Behaviour = default or verdict_reply("GO")
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {"_unparseable": raw.decode("utf-8", "replace")}
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                with server._lock:
                    server.requests.append(
                        {"path": self.path, "body": body, "authorization": self.headers.get("Authorization")}
                    )
                    behaviour = server.script[0] if server.script else server.default
                    status, payload, delay = behaviour(body)
                    keep = bool(payload.pop(_KEEP, False))
                    if server.script and not keep:
                        server.script.pop(0)
                if delay and server._stop.wait(delay):
                    return  # shutting down: drop the connection
                self._send(status, payload)

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def start(self) -> "FakeReviewServer":
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=2)

    def __enter__(self) -> "FakeReviewServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()
