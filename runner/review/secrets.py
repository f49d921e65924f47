"""Secret scrubbing for everything the reviewer writes or returns.

Library module (no command); tested by `.venv/bin/python -m pytest tests/unit/test_review_request.py`.

Contract:
- `scrub_text(s, extra)` replaces every exact occurrence of each value in `extra` (the live
  API key) and anything shaped like a well-known credential (`sk-...`, `hf_...`, `ghp_...`,
  `github_pat_...`, AWS `AKIA...`, `Bearer <token>`, URL userinfo passwords) with `[REDACTED]`.
- `scrub_obj(obj, extra)` does the same recursively through dicts/lists/tuples; additionally
  the string VALUE of a dict key whose name says it holds a credential (api_key, secret,
  password, access_token, ...) is redacted whole. Keys such as `max_new_tokens` or
  `tokens_in` are not credentials and are kept.
- Values in `extra` shorter than 8 characters are ignored (replacing "abc" everywhere would
  mangle evidence and protects nothing).
- `secret_env_values(environ)`: the values of environment variables whose NAME says they hold a
  credential (KEY, TOKEN, SECRET, PASSWORD), >= 8 characters, longest first: the usual `extra`.

This is the project's one scrubber: the reviewer and the agent briefing (`runner/brief.py`)
both use it.
"""
from __future__ import annotations

import os
import re
from typing import Any, Iterable, Mapping, Optional

REDACTED = "[REDACTED]"

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"sk-[A-Za-z0-9_\-]{8,}"), REDACTED),
    (re.compile(r"\bhf_[A-Za-z0-9]{20,}"), REDACTED),
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}"), REDACTED),
    (re.compile(r"\bgithub_pat_[A-Za-z0-9_]{20,}"), REDACTED),
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), REDACTED),
    (re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=\-]{8,}"), r"\g<1>" + REDACTED),
    (re.compile(r"(?i)(\b[a-z][a-z0-9+.\-]*://[^/\s:@]+:)[^/\s@]+(@)"), r"\g<1>" + REDACTED + r"\g<2>"),
]

_SECRET_KEY_RE = re.compile(
    r"(?i)(api[_\-]?key|secret|passw(or)?d|passwd|credential|bearer|private[_\-]?key|^token$"
    r"|(hf|api|auth|access|refresh|id|session|github|gh)[_\-]?token)"
)
# Counts and generation params that merely mention tokens are not secrets (nor are tokenizer
# fields like eos_token, which the pattern above does not match).
_NOT_SECRET_KEY_RE = re.compile(r"(?i)(tokens?_(in|out|count|used)|num_tokens|max_(new_)?tokens|n_tokens|_env$|_name$)")


SECRET_ENV_NAME_RE = re.compile(r"KEY|TOKEN|SECRET|PASSWORD", re.I)


def secret_env_values(environ: Optional[Mapping[str, str]] = None) -> list[str]:
    """Values of env vars whose names say they hold a credential (longest first)."""
    env = os.environ if environ is None else environ
    vals = {v for k, v in env.items() if SECRET_ENV_NAME_RE.search(k) and v and len(v) >= 8}
    return sorted(vals, key=len, reverse=True)


def scrub_text(s: str, extra: Iterable[str] = ()) -> str:
    """Return s with secrets replaced by [REDACTED] (see module docstring)."""
    for value in extra:
        if value and len(value) >= 8:
            s = s.replace(value, REDACTED)
    for pattern, repl in _PATTERNS:
        s = pattern.sub(repl, s)
    return s


def is_secret_key(name: str) -> bool:
    """True when a mapping key's name says its value is a credential."""
    return bool(_SECRET_KEY_RE.search(name)) and not _NOT_SECRET_KEY_RE.search(name)


def scrub_obj(obj: Any, extra: Iterable[str] = ()) -> Any:
    """Recursively scrub strings (and dict keys) in JSON-like data; other leaves unchanged."""
    extra = tuple(extra)
    if isinstance(obj, str):
        return scrub_text(obj, extra)
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            key = scrub_text(k, extra) if isinstance(k, str) else k
            if isinstance(k, str) and isinstance(v, str) and v and is_secret_key(k):
                out[key] = REDACTED
            else:
                out[key] = scrub_obj(v, extra)
        return out
    if isinstance(obj, (list, tuple)):
        return [scrub_obj(v, extra) for v in obj]
    return obj
