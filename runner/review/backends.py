"""Reviewer backends: an OpenAI-compatible Chat Completions server, or a local CLI command.

Library module (no command); exercised by `.venv/bin/python -m pytest tests/unit/test_review_openai.py
tests/unit/test_review_command.py`.

Both return a `BackendResult` and never raise for reviewer problems: `error` is set instead.
- `call_openai`: imports `openai` lazily (keeps `runner status` fast). The SDK's own retries are
  off (`max_retries=0`); this module retries transient failures (HTTP 408/409/429/5xx,
  connection errors, timeouts) up to `config.max_retries` extra times, sleeping
  min(backoff_cap_s, backoff_s * 2**k) * U(0.5, 1) (or the server's Retry-After, capped), and
  logs every attempt. A 400/422 that names response_format/json_schema is answered by one
  retry without structured output; one that names reasoning_effort, by one retry without it.
  Those fallbacks do not use up the transient-retry allowance.
- `call_command`: runs `config.command` (argv, no shell) in its own process group with the
  request on stdin; on timeout the whole group gets SIGKILL. Non-zero exit fails closed.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .config import ReviewerConfig
from .secrets import scrub_text
from .verdict import RESPONSE_FORMAT

MAX_CAPTURE_CHARS = 200_000  # per stream, for the audit file
_ERR_CHARS = 600


@dataclass
class BackendResult:
    """What one backend call produced. `text` is the answer when `error` is None."""

    text: str | None = None
    error: str | None = None
    attempts: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    raw: Any = None
    log: list[dict] = field(default_factory=list)
    notes: dict = field(default_factory=dict)


def _short(msg: str, secrets: tuple[str, ...]) -> str:
    msg = scrub_text(" ".join(str(msg).split()), secrets)
    return msg if len(msg) <= _ERR_CHARS else msg[:_ERR_CHARS] + "…"


def _mentions(msg: str, words: tuple[str, ...]) -> bool:
    low = msg.lower()
    return any(w in low for w in words)


def _retry_after(exc: Any) -> float | None:
    try:
        value = exc.response.headers.get("retry-after")
        return float(value) if value is not None else None
    except (AttributeError, TypeError, ValueError):
        return None


def backoff_delay(cfg: ReviewerConfig, k: int, rng: Callable[[], float] = random.random) -> float:
    """Seconds to sleep before transient retry number k+1 (k = 0, 1, ...)."""
    return min(cfg.backoff_cap_s, cfg.backoff_s * (2**k)) * (0.5 + 0.5 * rng())


def _dump(resp: Any) -> Any:
    for fn in ("model_dump", "to_dict"):
        if hasattr(resp, fn):
            try:
                return getattr(resp, fn)(mode="json") if fn == "model_dump" else getattr(resp, fn)()
            except Exception:  # noqa: BLE001 - audit dump is best effort
                continue
    return repr(resp)


def call_openai(
    cfg: ReviewerConfig,
    system: str,
    user: str,
    api_key: str,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> BackendResult:
    """One review through the Chat Completions API (see module docstring)."""
    secrets = (api_key,)
    res = BackendResult()
    try:
        import openai  # lazy: ~0.5 s import, needed only when a review is actually asked
    except ImportError as e:
        res.error = f"openai package not importable ({e}); install it or use the command backend"
        return res

    params: dict[str, Any] = {
        "model": cfg.model,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
        "response_format": RESPONSE_FORMAT,
    }
    if cfg.reasoning_effort is not None:
        params["reasoning_effort"] = cfg.reasoning_effort
    if cfg.max_output_tokens is not None:
        params["max_completion_tokens"] = cfg.max_output_tokens

    kwargs: dict[str, Any] = {"api_key": api_key, "timeout": cfg.timeout_s, "max_retries": 0}
    if cfg.base_url:
        kwargs["base_url"] = cfg.base_url
    try:
        client = openai.OpenAI(**kwargs)
    except Exception as e:  # noqa: BLE001 - e.g. a malformed base_url
        res.error = f"could not create the OpenAI client: {_short(str(e), secrets)}"
        return res
    res.notes["base_url"] = scrub_text(str(client.base_url), secrets)

    transient_failures = 0
    try:
        while True:
            res.attempts += 1
            t0 = time.monotonic()
            entry: dict[str, Any] = {
                "attempt": res.attempts,
                "structured_output": "response_format" in params,
                "reasoning_effort": params.get("reasoning_effort"),
            }
            res.log.append(entry)
            transient: str | None = None
            retry_after: float | None = None
            try:
                resp = client.chat.completions.create(**params)
            except openai.APIStatusError as e:
                status = int(getattr(e, "status_code", 0) or 0)
                msg = _short(getattr(e, "message", None) or str(e), secrets)
                entry.update(status=status, error=msg, seconds=round(time.monotonic() - t0, 3))
                if status in (400, 422) and "response_format" in params and _mentions(
                    msg, ("response_format", "json_schema", "structured", "guided")
                ):
                    entry["outcome"] = "structured output rejected; retrying without it"
                    params.pop("response_format")
                    continue
                if status in (400, 422) and "reasoning_effort" in params and _mentions(msg, ("reasoning",)):
                    entry["outcome"] = "reasoning_effort rejected; retrying without it"
                    params.pop("reasoning_effort")
                    continue
                if status in (408, 409, 429) or status >= 500:
                    transient = f"HTTP {status}: {msg}"
                    retry_after = _retry_after(e)
                else:
                    entry["outcome"] = "fatal"
                    res.error = f"reviewer server answered HTTP {status}: {msg}"
                    return res
            except openai.APITimeoutError:
                entry.update(error="timeout", seconds=round(time.monotonic() - t0, 3))
                transient = f"timed out after {cfg.timeout_s:g} s"
            except openai.APIConnectionError as e:
                cause = e.__cause__ or e
                msg = _short(f"{type(cause).__name__}: {cause}", secrets)
                entry.update(error=msg, seconds=round(time.monotonic() - t0, 3))
                transient = f"connection error: {msg}"
            except openai.OpenAIError as e:
                msg = _short(f"{type(e).__name__}: {e}", secrets)
                entry.update(outcome="fatal", error=msg, seconds=round(time.monotonic() - t0, 3))
                res.error = f"reviewer call failed: {msg}"
                return res
            else:
                entry.update(outcome="answered", seconds=round(time.monotonic() - t0, 3))
                _take_answer(res, resp, secrets)
                res.notes["structured_output"] = "response_format" in params
                res.notes["reasoning_effort_sent"] = params.get("reasoning_effort")
                return res

            # Transient failure: retry with backoff, or give up (fail closed).
            if transient_failures >= cfg.max_retries:
                entry["outcome"] = "transient; giving up"
                res.error = (
                    f"reviewer unreachable after {res.attempts} attempt(s) "
                    f"({cfg.max_retries} retries): last error: {transient}"
                )
                return res
            delay = backoff_delay(cfg, transient_failures)
            if retry_after is not None:
                delay = min(cfg.backoff_cap_s, max(delay, retry_after))
            entry.update(outcome="transient; retrying", sleep_s=round(delay, 3))
            transient_failures += 1
            sleep(delay)
    finally:
        try:
            client.close()
        except Exception:  # noqa: BLE001
            pass


def _take_answer(res: BackendResult, resp: Any, secrets: tuple[str, ...]) -> None:
    res.raw = _dump(resp)
    usage = getattr(resp, "usage", None)
    if usage is not None:
        res.tokens_in = int(getattr(usage, "prompt_tokens", 0) or 0)
        res.tokens_out = int(getattr(usage, "completion_tokens", 0) or 0)
    choices = getattr(resp, "choices", None) or []
    if not choices:
        res.error = "reviewer server returned no choices"
        return
    choice = choices[0]
    msg = getattr(choice, "message", None)
    res.notes["finish_reason"] = getattr(choice, "finish_reason", None)
    content = getattr(msg, "content", None) if msg is not None else None
    refusal = getattr(msg, "refusal", None) if msg is not None else None
    if not content and refusal:
        res.error = f"reviewer refused: {_short(refusal, secrets)}"
        return
    res.text = content or ""


def _kill_group(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            p.kill()
        except ProcessLookupError:
            pass


def _cap(b: bytes | None, secrets: tuple[str, ...]) -> str:
    s = (b or b"").decode("utf-8", errors="replace")
    if len(s) > MAX_CAPTURE_CHARS:
        s = s[:MAX_CAPTURE_CHARS] + f"…[+{len(s) - MAX_CAPTURE_CHARS} chars]"
    return scrub_text(s, secrets)


def call_command(cfg: ReviewerConfig, stdin_text: str, secrets: tuple[str, ...] = ()) -> BackendResult:
    """Run cfg.command with stdin_text on stdin; the answer is its stdout (see module docstring)."""
    res = BackendResult(attempts=1)
    argv = list(cfg.command or [])
    res.notes["command"] = argv
    t0 = time.monotonic()
    try:
        p = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # own process group, so a timeout kills its children too
        )
    except FileNotFoundError:
        res.error = f"reviewer command not found: {argv[0]!r} (is it installed and on PATH?)"
        return res
    except OSError as e:
        res.error = f"could not start reviewer command {argv[0]!r}: {_short(str(e), secrets)}"
        return res
    try:
        out, err = p.communicate(stdin_text.encode("utf-8"), timeout=cfg.timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(p)
        try:
            out, err = p.communicate(timeout=5)
        except subprocess.TimeoutExpired:  # a grandchild escaped the group and holds the pipes
            for f in (p.stdout, p.stderr):
                if f is not None:
                    f.close()
            p.wait()
            out, err = b"", b""
        res.raw = {"returncode": p.returncode, "stdout": _cap(out, secrets), "stderr": _cap(err, secrets)}
        res.log.append({"attempt": 1, "outcome": "timeout; process group killed",
                        "seconds": round(time.monotonic() - t0, 3)})
        res.error = f"reviewer command timed out after {cfg.timeout_s:g} s (process group killed)"
        return res
    stdout, stderr = _cap(out, secrets), _cap(err, secrets)
    res.raw = {"returncode": p.returncode, "stdout": stdout, "stderr": stderr}
    res.log.append({"attempt": 1, "returncode": p.returncode, "seconds": round(time.monotonic() - t0, 3)})
    if p.returncode != 0:
        how = f"was killed by signal {-p.returncode}" if p.returncode < 0 else f"exited with status {p.returncode}"
        tail = _short(stderr[-_ERR_CHARS:], secrets) if stderr.strip() else "(no stderr)"
        res.error = f"reviewer command {how}: {tail}"
        return res
    res.text = stdout
    return res
