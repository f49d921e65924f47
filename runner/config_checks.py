"""Config checks that must fail at `runner validate`/`init`, not hours later at a gate.

Library module (no command); exercised by
`.venv/bin/python -m pytest tests/unit/test_runner_hardening.py -k "d6 or d10 or d11"`.

- The reviewer settings (top-level ``reviewer:`` merged with each ``gates.<name>.reviewer:``)
  are parsed by the same ``ReviewerConfig`` the gate uses, so unknown keys, bad values and a
  key pasted into the config (``api_key``) are refused before anything is stored.
- A password in ``reviewer.base_url`` (``https://user:secret@host``) is refused: the effective
  config is stored in ``runs.config_json``; credentials belong in the environment.
- ``backend: command`` needs its ``command[0]`` to resolve on PATH (or be an executable path)
  now, on the machine that validates; a reviewer installed later can be checked again with
  ``runner validate``.
- ``lease_ttl_s`` (and ``RUNNER_LEASE_TTL``) must be a number > 0: the heartbeat renews every
  ttl/3, so 0 busy-loops and a negative value expires every lease at once.
"""
from __future__ import annotations

import os
import shutil
from typing import Any, Optional
from urllib.parse import urlsplit

from runner.errors import ConfigError
from runner.review.config import ReviewerConfig


def _no_password(url: Any, where: str) -> None:
    if not isinstance(url, str):
        return
    try:
        parts = urlsplit(url)
        has_password = parts.password is not None
    except ValueError:
        return  # malformed URL: ReviewerConfig/openai report it with the value
    if has_password:
        # Never echo the URL: it holds the secret.
        raise ConfigError(f"{where}.base_url contains a password (user:password@host); it would be stored "
                          "in the run's config. Remove it and put the credential in the environment "
                          "(the variable named by reviewer.api_key_env, default OPENAI_API_KEY)")


def check_reviewers(cfg: dict, source: str) -> None:
    """Parse every reviewer block the run could use; raise ConfigError naming file and key."""
    top = cfg.get("reviewer")
    blocks: list[tuple[str, dict]] = []
    if isinstance(top, dict):
        blocks.append(("reviewer", dict(top)))
    for gname, g in (cfg.get("gates") or {}).items():
        if isinstance(g, dict) and "reviewer" in g:
            if not isinstance(g["reviewer"], dict):
                raise ConfigError(f"{source}: gates.{gname}.reviewer must be a mapping (see docs/review.md)")
            blocks.append((f"gates.{gname}.reviewer", {**(top or {}), **g["reviewer"]}))
    for where, block in blocks:
        _no_password(block.get("base_url"), f"{source}: {where}")
        try:
            # env={}: validate what the file says; the environment is read again at call time.
            rc = ReviewerConfig.from_mapping(block, env={})
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{source}: {where}: {e}") from None
        if rc.backend == "command" and rc.command:
            exe = rc.command[0]
            if shutil.which(exe) is None:
                raise ConfigError(f"{source}: {where}.command: {exe!r} not found on PATH (or not executable); "
                                  "install it, give its full path, or use backend: openai")


def check_lease_ttl(value: Any, where: str) -> Optional[float]:
    """None when unset; else a float > 0, or ConfigError naming ``where``."""
    if value is None:
        return None
    try:
        ttl = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} = {value!r} is not a number of seconds; use a number > 0 (default 60)") from None
    if isinstance(value, bool) or not ttl > 0 or ttl != ttl or ttl == float("inf"):
        raise ConfigError(f"{where} = {value!r}; it must be > 0 seconds (default 60): the heartbeat renews "
                          "the lease every ttl/3")
    return ttl


def env_lease_ttl() -> Optional[float]:
    raw = os.environ.get("RUNNER_LEASE_TTL")
    return None if raw in (None, "") else check_lease_ttl(raw, "RUNNER_LEASE_TTL")
