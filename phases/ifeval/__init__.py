"""IFEval (Zhou et al. 2023) as a built-in, offline, deterministic benchmark.

Library package (no command). Tests: .venv/bin/pytest tests/unit/test_ifeval.py -q
See README.md in this folder for sources, licences and the design decisions.

Public API:
    load_prompts(path=DATA_PATH, expected_sha256=DATA_SHA256) -> list[IfevalPrompt]
    score_responses(prompts, responses: {key: str}) -> dict   # four metrics + per prompt
    score_prompt(prompt, response) -> dict                    # one item (success = follow_all_strict)
    follows(instruction_id, kwargs, response) -> (strict, loose)
    check_instruction(instruction_id, response, kwargs) -> bool   # raw checker
    INSTRUCTION_IDS, METRICS
"""

from .data import DATA_PATH, DATA_SHA256, IfevalPrompt, load_prompts
from .registry import INSTRUCTION_IDS, check_instruction
from .scorer import METRICS, follows, loose_variants, score_prompt, score_responses

__all__ = [
    "DATA_PATH", "DATA_SHA256", "IfevalPrompt", "load_prompts",
    "INSTRUCTION_IDS", "check_instruction",
    "METRICS", "follows", "loose_variants", "score_prompt", "score_responses",
]
