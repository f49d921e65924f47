"""Reviewer configuration: which backend, model, server, timeouts, retries and prices.

Library module (no command); tested by `.venv/bin/python -m pytest tests/unit/test_review_config.py`.

Precedence in `ReviewerConfig.from_mapping(d, env)`: a key given in the mapping wins; else the
environment (`CAI_REVIEW_BACKEND`, `CAI_REVIEW_MODEL`, `OPENAI_BASE_URL`,
`CAI_REVIEW_REASONING_EFFORT`); else the dataclass default. The API key itself is never part
of the config: `api_key_env` names the environment variable that holds it, and it is read only
at call time.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shlex
from dataclasses import dataclass
from typing import Any, Mapping

BACKENDS = ("openai", "command")
REASONING_EFFORTS = ("minimal", "low", "medium", "high", "xhigh", "none")

_ENV_KEYS = {
    "backend": "CAI_REVIEW_BACKEND",
    "model": "CAI_REVIEW_MODEL",
    "base_url": "OPENAI_BASE_URL",
    "reasoning_effort": "CAI_REVIEW_REASONING_EFFORT",
}
_KEY_PREFIX = re.compile(r"^(sk-|hf_|gh[pousr]_|github_pat_|AKIA)")


def _looks_like_key(name: str) -> bool:
    # Env var names are short and mostly upper case; keys are long mixed-case/digit strings.
    mixed = any(c.islower() for c in name) and any(c.isdigit() for c in name)
    return bool(_KEY_PREFIX.match(name)) or (len(name) >= 32 and mixed)


@dataclass
class ReviewerConfig:
    """How to reach the reviewer. Times in seconds; prices in USD per million tokens.

    backend: "openai" (any OpenAI-compatible Chat Completions server) or "command" (a CLI
      that reads the request on stdin and prints the verdict on stdout).
    reasoning_effort: sent only when not None; dropped automatically if the server rejects it.
    max_retries: extra attempts on transient errors (429, 5xx, connection errors, timeouts);
      0 means one attempt. backoff_s: base of the exponential backoff (with jitter, capped at
      backoff_cap_s).
    command: argv list for backend "command" (a string is split with shlex; no shell is used).
    max_request_chars: bound on the rendered request text (system prompt excluded).
    price_per_mtok_in/out: when both set, cost_usd is computed from usage tokens.
    """

    backend: str = "openai"
    model: str = "gpt-5"
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    reasoning_effort: str | None = "medium"
    timeout_s: float = 120.0
    max_retries: int = 3
    backoff_s: float = 2.0
    backoff_cap_s: float = 60.0
    command: list[str] | None = None
    max_request_chars: int = 60000
    max_output_tokens: int | None = None
    price_per_mtok_in: float | None = None
    price_per_mtok_out: float | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the field, the value and the fix."""
        if self.backend not in BACKENDS:
            raise ValueError(f"reviewer.backend must be one of {BACKENDS}; got {self.backend!r}")
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(f"reviewer.model must be a non-empty string; got {self.model!r}")
        if not isinstance(self.api_key_env, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env):
            # Never echo the value: someone may have pasted the key itself here.
            raise ValueError(
                "reviewer.api_key_env must be the NAME of an environment variable "
                "(e.g. OPENAI_API_KEY), not the key itself"
            )
        if _looks_like_key(self.api_key_env):
            raise ValueError(
                "reviewer.api_key_env looks like a secret key, not a variable name; put the key in "
                "the environment (export OPENAI_API_KEY=...) and name the variable here"
            )
        if self.reasoning_effort is not None and self.reasoning_effort not in REASONING_EFFORTS:
            raise ValueError(
                f"reviewer.reasoning_effort must be null or one of {REASONING_EFFORTS}; "
                f"got {self.reasoning_effort!r}"
            )
        for name in ("timeout_s", "backoff_s", "backoff_cap_s"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"reviewer.{name} must be a positive number of seconds; got {v!r}")
        if not isinstance(self.max_retries, int) or isinstance(self.max_retries, bool) or self.max_retries < 0:
            raise ValueError(f"reviewer.max_retries must be an integer >= 0; got {self.max_retries!r}")
        if not isinstance(self.max_request_chars, int) or self.max_request_chars < 1000:
            raise ValueError(
                f"reviewer.max_request_chars must be an integer >= 1000; got {self.max_request_chars!r}"
            )
        if self.max_output_tokens is not None and (
            not isinstance(self.max_output_tokens, int) or self.max_output_tokens <= 0
        ):
            raise ValueError(
                f"reviewer.max_output_tokens must be null or a positive integer; got {self.max_output_tokens!r}"
            )
        for name in ("price_per_mtok_in", "price_per_mtok_out"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0):
                raise ValueError(f"reviewer.{name} must be null or a number >= 0 (USD per 1M tokens); got {v!r}")
        if self.command is not None:
            if not isinstance(self.command, list) or not self.command or not all(
                isinstance(a, str) and a for a in self.command
            ):
                raise ValueError(
                    f"reviewer.command must be a non-empty list of strings, e.g. [codex, exec, '-']; "
                    f"got {self.command!r}"
                )
        if self.backend == "command" and not self.command:
            raise ValueError(
                "reviewer.backend is 'command' but reviewer.command is not set; "
                "give the argv, e.g. command: [codex, exec, '-']"
            )

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any] | None, env: Mapping[str, str] = os.environ) -> "ReviewerConfig":
        """Build from a config mapping (e.g. the `reviewer:` block of a stage YAML) plus env.

        Unknown keys raise ValueError naming them. `api_key`/`key` keys are refused outright:
        the key belongs in the environment.
        """
        d = dict(d or {})
        names = {f.name for f in dataclasses.fields(cls)}
        for bad in ("api_key", "key", "openai_api_key"):
            if bad in d:
                raise ValueError(
                    f"reviewer config must not contain {bad!r}: put the key in the environment "
                    "and name the variable with api_key_env (default OPENAI_API_KEY)"
                )
        unknown = sorted(set(d) - names, key=str)
        if unknown:
            raise ValueError(
                f"unknown reviewer config key(s): {', '.join(map(str, unknown))}; "
                f"known keys: {', '.join(sorted(names))}"
            )
        for fname, var in _ENV_KEYS.items():
            if fname not in d and env.get(var):
                d[fname] = env[var]
        if isinstance(d.get("command"), str):
            d["command"] = shlex.split(d["command"])
        if isinstance(d.get("reasoning_effort"), str) and d["reasoning_effort"].strip().lower() in ("", "null", "off"):
            d["reasoning_effort"] = None
        for fname in ("timeout_s", "backoff_s", "backoff_cap_s", "price_per_mtok_in", "price_per_mtok_out"):
            if isinstance(d.get(fname), str):
                d[fname] = _num(fname, d[fname], float)
        for fname in ("max_retries", "max_request_chars", "max_output_tokens"):
            if isinstance(d.get(fname), str):
                d[fname] = _num(fname, d[fname], int)
        if isinstance(d.get("base_url"), str) and not d["base_url"].strip():
            d["base_url"] = None
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the config (holds no secret: only the variable's name)."""
        return dataclasses.asdict(self)


def _num(name: str, value: str, typ: type) -> Any:
    try:
        return typ(value)
    except ValueError:
        raise ValueError(f"reviewer.{name} must be a number; got {value!r}") from None
