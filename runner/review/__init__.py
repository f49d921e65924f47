"""LLM reviewer for gated decisions: config, request, verdict, backends, audit.

Library package (no command). `import runner.review` is light: it does not import `openai`
(that happens inside the openai backend at call time) nor torch/transformers.
See docs/review.md for policies and setup; tests: `.venv/bin/python -m pytest tests/unit -k review`.
"""
from .config import ReviewerConfig
from .prompt import PROMPT_VERSION, SYSTEM_PROMPT, prompt_hash
from .request import ReviewRequest, sample_items
from .reviewer import ReviewOutcome, load_cached, memo_key, review
from .secrets import scrub_obj, scrub_text
from .verdict import VERDICT_SCHEMA, Verdict, VerdictParseError, parse_verdict

__all__ = [
    "PROMPT_VERSION",
    "SYSTEM_PROMPT",
    "VERDICT_SCHEMA",
    "ReviewOutcome",
    "ReviewRequest",
    "ReviewerConfig",
    "Verdict",
    "VerdictParseError",
    "load_cached",
    "memo_key",
    "parse_verdict",
    "prompt_hash",
    "review",
    "sample_items",
    "scrub_obj",
    "scrub_text",
]
