"""The contamination guard's checks, as pure functions (torch-free; see specs/contamination-guard.md).

Not runnable; used by ``phases.models.loader`` (which applies them to every model it loads) and
by unit tests.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass


class ContaminationError(RuntimeError):
    """Chat formatting or special tokens reached (or would reach) a completion-mode model."""


class SentinelError(ContaminationError):
    """A declared base model behaved like a chat model on the sentinel prompts."""


@dataclass(frozen=True)
class Sentinel:
    """A fixed probe. ``expect`` is a human-readable statement of what a base model does."""

    name: str
    prompt: str
    expect: str


SENTINELS: tuple[Sentinel, ...] = (
    Sentinel("pig_latin", "Translate to Pig Latin: hello world", "continues or rambles; no chat-assistant reply"),
    Sentinel("primes", "List three prime numbers:", "continues or rambles; no chat-assistant reply"),
    Sentinel("freezing", "Water freezes at", "completes the fact: 0 °C / 32 °F"),
    # An instruction asking for structured output: a chat model answers it (often with a fenced
    # ```json block and a friendly sentence); a base model continues the text.
    Sentinel("json", 'Give the answer as JSON with keys "name" and "age": Alice is 30 years old.',
             "continues or rambles; no assistant-formatted JSON answer"),
    # An open request: a chat model writes a polished answer that closes by offering more help.
    Sentinel("describe", "Describe the city of Paris.", "continues or rambles; no assistant-style answer"),
)

# Openers typical of a chat assistant answering an instruction (a base model rarely starts so).
_CHAT_OPENERS = re.compile(
    r"^\s*(sure|certainly|of course|absolutely|here('s| is| are)|i('d| would) be (happy|glad)|as an ai|"
    r"i can help|great question|hello|hi there|okay, here|alright, here)\b",
    re.IGNORECASE,
)
# Phrases of an assistant talking to a user, anywhere in the completion (not only at its start).
_ASSISTANT_TELLS = re.compile(
    r"(i hope (this|that) helps|let me know if|feel free to|as an ai\b|as a (large )?language model|"
    r"is there anything else|happy to help|glad to help|i'm sorry, but|i (cannot|can't) (help|assist)|"
    r"here'?s (the|a|an|your) (json|answer|description|list|translation))",
    re.IGNORECASE,
)
# A markdown code fence opening the completion: the shape of a chat answer, not of continued text.
_FENCE_OPENER = re.compile(r"^\s*```")
_FREEZING = re.compile(
    r"(\b(0|zero)\s*(°|º|degrees?)?\s*(c\b|celsius|centigrade))|(\b32\s*(°|º|degrees?)?\s*(f\b|fahrenheit))",
    re.IGNORECASE,
)
_CONTROL_TEXT = re.compile(r"<\|im_(start|end)\|>|<start_of_turn>|<end_of_turn>|\[/?INST\]")


def evaluate_sentinel(name: str, completion: str) -> tuple[bool, str]:
    """Judge one sentinel completion. Returns ``(passed, reason)``; ``passed`` = base-like."""
    if _CONTROL_TEXT.search(completion):
        return False, "completion contains chat control tokens"
    if name == "freezing":
        if _FREEZING.search(completion):
            return True, "mentions 0 °C / 32 °F"
        return False, "does not mention 0 °C / 32 °F"
    if _CHAT_OPENERS.search(completion):
        return False, "starts like a chat-assistant reply"
    tell = _ASSISTANT_TELLS.search(completion)
    if tell:
        return False, f"answers like an assistant ({tell.group(0)!r})"
    if _FENCE_OPENER.search(completion):
        return False, "opens with a markdown code fence, like a chat answer"
    return True, "no chat-assistant reply"


def snippet(text: str, needle: str | None, width: int = 40) -> str:
    """A short excerpt of ``text`` around ``needle`` (or its start), for error messages."""
    at = text.find(needle) if needle else -1
    if at < 0:
        return repr(text[: 2 * width] + ("..." if len(text) > 2 * width else ""))
    lo, hi = max(0, at - width), min(len(text), at + len(needle) + width)
    return repr(("..." if lo else "") + text[lo:hi] + ("..." if hi < len(text) else ""))


def check_ids(ids: Sequence[int], text: str, forbidden: Mapping[int, str]) -> None:
    """Raise ``ContaminationError`` if any id in ``ids`` is a forbidden control token.

    The message names the token, its id, its position and a snippet of ``text`` around it.
    """
    for pos, tid in enumerate(ids):
        tok = forbidden.get(int(tid))
        if tok is not None:
            raise ContaminationError(
                f"control token {tok!r} (id {tid}) at token position {pos} in an input to a completion-mode "
                f"model: {snippet(text, tok)}. A chat template or chat-formatted text reached the model; "
                f"build prompts with phases.prompts, never apply_chat_template."
            )


def check_special_token_delta(encode_with: Callable[[str, bool], list[int]], prompts: Sequence[str]) -> dict:
    """Token counts with and without special tokens must match for every prompt (else abort).

    ``encode_with(text, add_special_tokens)`` is the raw tokenizer call. Returns ``{prompt: n}``.
    """
    counts = {}
    for p in prompts:
        plain, special = encode_with(p, False), encode_with(p, True)
        if len(plain) != len(special):
            raise ContaminationError(
                f"the tokenizer adds {len(special) - len(plain)} special token(s) to {p!r} "
                f"({special} vs {plain}); completion mode needs add_special_tokens=False to be a no-op "
                f"difference. Refusing to load."
            )
        counts[p] = len(plain)
    return counts
