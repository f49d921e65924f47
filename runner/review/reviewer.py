"""`review()`: ask the configured reviewer about one gate, audit everything, fail closed.

Library module (no command); tested by `.venv/bin/python -m pytest tests/unit/ -k review`.

Contract of `review(request, config, audit_dir, *, reuse_audit=False, env=None)`:
- Never raises for reviewer problems; returns `ReviewOutcome(ok=False, error=...)` instead
  (missing key, network/HTTP errors after retries, timeouts, unparseable answers, command
  failures, an unwritable audit dir). `ok=True` means a verdict was parsed; GO/NO-GO/MODIFY
  is in `verdict.decision`.
- Files (atomic: temp in same dir, fsync, os.replace), named by the memo key:
  `audit_dir/<gate>-<memo_key[:12]>.request.md` (the exact request text) and
  `...response.json` (raw answer, parsed verdict, attempts log, tokens, cost, hashes).
  A repeat call with the same memo key (an explicit re-ask) writes `<gate>-<key12>-2.*`,
  `-3.*`, ...: audit files are never overwritten.
- Crash window (opt-in): with `reuse_audit=True`, if a response file with this memo key and a
  verdict already exists in audit_dir (the reviewer answered but the caller died before
  recording it), that verdict is returned with `from_cache=True` and nothing is called or
  billed. The state DB remains the primary memo; this only closes the gap before its commit.
  Pass it on ordinary asks (first ask, resume); leave it False for an explicit re-ask
  (`runner review GATE`), which must really call the reviewer again.
- The API key value never appears in any written file nor in `to_dict()`.
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from state.files import atomic_write_text

from .backends import BackendResult, call_command, call_openai
from .config import ReviewerConfig
from .prompt import PROMPT_VERSION, SYSTEM_PROMPT, full_prompt_text, prompt_hash
from .request import ReviewRequest, canonical_json, sha256_hex
from .secrets import scrub_obj, scrub_text
from .verdict import Verdict, VerdictParseError, parse_verdict

RESPONSE_FORMAT_VERSION = "review-response/1"


@dataclass
class ReviewOutcome:
    """Result of one `review()` call: what the lead records in the state DB.

    ok: a parseable verdict was obtained (True even for NO-GO). error: fail-closed reason.
    tokens_*: usage reported by the server (0 if none). cost_usd: None unless both prices set.
    attempts: backend calls made (0 when served from cache or failed before calling).
    latency_s: wall time of the whole call. from_cache: answered from an earlier response file.
    """

    ok: bool
    verdict: Verdict | None
    error: str | None
    backend: str
    model: str
    prompt_hash: str
    input_hash: str
    memo_key: str
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float | None = None
    attempts: int = 0
    latency_s: float = 0.0
    request_path: Path | None = None
    response_path: Path | None = None
    from_cache: bool = False
    reasoning_effort: str | None = None
    created_at: str = ""
    notes: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (paths as strings, verdict as a dict or None)."""
        return {
            "ok": self.ok,
            "verdict": self.verdict.to_dict() if self.verdict else None,
            "error": self.error,
            "backend": self.backend,
            "model": self.model,
            "reasoning_effort": self.reasoning_effort,
            "prompt_hash": self.prompt_hash,
            "input_hash": self.input_hash,
            "memo_key": self.memo_key,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "cost_usd": self.cost_usd,
            "attempts": self.attempts,
            "latency_s": self.latency_s,
            "request_path": str(self.request_path) if self.request_path else None,
            "response_path": str(self.response_path) if self.response_path else None,
            "from_cache": self.from_cache,
            "created_at": self.created_at,
            "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ReviewOutcome":
        """Inverse of `to_dict()` (for rows read back from the state DB)."""
        v = d.get("verdict")
        return cls(
            ok=bool(d["ok"]),
            verdict=Verdict.from_dict(v) if v else None,
            error=d.get("error"),
            backend=d["backend"],
            model=d["model"],
            prompt_hash=d["prompt_hash"],
            input_hash=d["input_hash"],
            memo_key=d["memo_key"],
            tokens_in=int(d.get("tokens_in", 0)),
            tokens_out=int(d.get("tokens_out", 0)),
            cost_usd=d.get("cost_usd"),
            attempts=int(d.get("attempts", 0)),
            latency_s=float(d.get("latency_s", 0.0)),
            request_path=Path(d["request_path"]) if d.get("request_path") else None,
            response_path=Path(d["response_path"]) if d.get("response_path") else None,
            from_cache=bool(d.get("from_cache", False)),
            reasoning_effort=d.get("reasoning_effort"),
            created_at=d.get("created_at", ""),
            notes=dict(d.get("notes") or {}),
        )


def memo_key(request: ReviewRequest, config: ReviewerConfig) -> str:
    """sha256 of (input_hash, prompt_hash, backend, model, reasoning_effort[, command argv])."""
    key: dict[str, Any] = {
        "input_hash": request.input_hash(),
        "prompt_hash": prompt_hash(config.max_request_chars),
        "backend": config.backend,
        "model": config.model,
        "reasoning_effort": config.reasoning_effort,
    }
    if config.backend == "command":
        key["command"] = list(config.command or [])
    return sha256_hex(canonical_json(key))


def cost_usd(config: ReviewerConfig, tokens_in: int, tokens_out: int) -> float | None:
    """USD for the tokens, or None unless both prices are configured."""
    if config.price_per_mtok_in is None or config.price_per_mtok_out is None:
        return None
    return round((tokens_in * config.price_per_mtok_in + tokens_out * config.price_per_mtok_out) / 1e6, 6)


def _safe_gate(gate: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.-]+", "_", gate).strip("._") or "gate"
    return s[:80]


def _stem_candidates(audit_dir: Path, gate: str, key: str) -> list[Path]:
    """Existing response files for this memo key, oldest first."""
    base = f"{_safe_gate(gate)}-{key[:12]}"
    found = []
    for p in audit_dir.glob(f"{base}*.response.json"):
        m = re.fullmatch(re.escape(base) + r"(?:-(\d+))?\.response\.json", p.name)
        if m:
            found.append((int(m.group(1) or 1), p))
    return [p for _, p in sorted(found)]


def _next_stem(audit_dir: Path, gate: str, key: str) -> str:
    base = f"{_safe_gate(gate)}-{key[:12]}"
    n = 1
    while True:
        stem = base if n == 1 else f"{base}-{n}"
        if not (audit_dir / f"{stem}.request.md").exists() and not (audit_dir / f"{stem}.response.json").exists():
            return stem
        n += 1


def load_cached(audit_dir: Path, gate: str, key: str) -> ReviewOutcome | None:
    """Latest ok outcome recorded in audit_dir for this memo key, or None."""
    if not audit_dir.is_dir():
        return None
    for path in reversed(_stem_candidates(audit_dir, gate, key)):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            out = ReviewOutcome.from_dict(data["outcome"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if out.ok and out.verdict is not None and out.memo_key == key:
            out.from_cache = True
            out.attempts = 0
            out.tokens_in = out.tokens_out = 0
            out.cost_usd = None if out.cost_usd is None else 0.0
            return out
    return None


def review(
    request: ReviewRequest,
    config: ReviewerConfig,
    audit_dir: Path,
    *,
    reuse_audit: bool = False,
    env: Mapping[str, str] | None = None,
) -> ReviewOutcome:
    """Ask the reviewer about `request` (see module docstring). `env` defaults to os.environ."""
    env = os.environ if env is None else env
    t0 = time.monotonic()
    audit_dir = Path(audit_dir)
    ih = request.input_hash()
    ph = prompt_hash(config.max_request_chars)
    key = memo_key(request, config)
    out = ReviewOutcome(
        ok=False, verdict=None, error=None, backend=config.backend, model=config.model,
        prompt_hash=ph, input_hash=ih, memo_key=key, reasoning_effort=config.reasoning_effort,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    out.notes["prompt_version"] = PROMPT_VERSION

    if reuse_audit:
        cached = load_cached(audit_dir, request.gate, key)
        if cached is not None:
            cached.latency_s = round(time.monotonic() - t0, 3)
            return cached

    api_key = ""
    if config.backend == "openai":
        api_key = env.get(config.api_key_env, "") or ""
    secrets = (api_key,) if api_key else ()

    try:
        user = scrub_text(request.render(config.max_request_chars), secrets)
    except Exception as e:  # noqa: BLE001 - bad evidence must fail closed, visibly
        out.error = f"could not render the review request: {type(e).__name__}: {scrub_text(str(e), secrets)}"
        out.latency_s = round(time.monotonic() - t0, 3)
        return out
    text = full_prompt_text(SYSTEM_PROMPT, user)
    stem = _next_stem(audit_dir, request.gate, key)
    req_path = audit_dir / f"{stem}.request.md"
    resp_path = audit_dir / f"{stem}.response.json"
    try:
        atomic_write_text(req_path, text)
        out.request_path = req_path
    except OSError as e:
        out.error = f"could not write the audit request file {req_path}: {e}; reviewer not called"
        out.latency_s = round(time.monotonic() - t0, 3)
        return out

    if config.backend == "openai" and not api_key:
        res = BackendResult(error=f"no API key: {config.api_key_env} is not set")
    elif config.backend == "openai":
        res = call_openai(config, SYSTEM_PROMPT, user, api_key)
    else:
        res = call_command(config, text, secrets)

    out.attempts = res.attempts
    out.tokens_in, out.tokens_out = res.tokens_in, res.tokens_out
    out.cost_usd = cost_usd(config, res.tokens_in, res.tokens_out)
    out.notes.update(scrub_obj(res.notes, secrets))
    if res.error is None:
        try:
            # The answer may quote a secret back; the verdict is stored and shown, so scrub it.
            out.verdict = Verdict.from_dict(scrub_obj(parse_verdict(res.text).to_dict(), secrets))
            out.ok = True
        except VerdictParseError as e:
            hint = " (answer was cut off: finish_reason=length)" if res.notes.get("finish_reason") == "length" else ""
            out.error = f"unparseable reviewer answer{hint}: {scrub_text(str(e), secrets)}"
    else:
        out.error = scrub_text(res.error, secrets)
    out.latency_s = round(time.monotonic() - t0, 3)
    out.response_path = resp_path

    record = {
        "format": RESPONSE_FORMAT_VERSION,
        "gate": request.gate,
        "run_id": request.run_id,
        "outcome": out.to_dict(),
        "config": config.to_dict(),
        "answer_text": res.text,
        "raw_response": res.raw,
        "attempt_log": res.log,
    }
    try:
        body = json.dumps(scrub_obj(record, secrets), sort_keys=True, ensure_ascii=False, indent=2, default=str)
        atomic_write_text(resp_path, scrub_text(body, secrets) + "\n")
    except OSError as e:
        out.response_path = None
        note = f"could not write the audit response file {resp_path}: {e}"
        if out.ok:
            # The verdict exists but is unaudited: refuse to let it pass a gate silently.
            out.ok = False
            out.error = note + f" (reviewer said {out.verdict.decision if out.verdict else '?'})"
        else:
            out.error = f"{out.error}; {note}"
    return out
