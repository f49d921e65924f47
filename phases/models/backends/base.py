"""The backend interface: batched generation and next-token log-probs over guarded token ids.

Not runnable; imported by the backends and the loader. Torch-free.

Contract shared by every backend:
- Backends never tokenize text themselves: they call the guarded ``encode`` the loader gives
  them (``add_special_tokens=False`` plus the control-token check on every input).
- ``generate(prompts, params, seeds)``: one ``Generation`` per prompt, in input order. An empty
  prompt list returns ``[]``. ``seeds`` (one int per prompt) drive sampling per prompt, so a
  prompt's output depends on its own seed and text only, not on batch composition; ``None`` means
  seed ``i`` for prompt ``i``. Greedy decoding (``do_sample=False``) ignores seeds.
- ``next_token_logprobs(prompts, candidate_tokens)``: for each prompt, ``{candidate: log p}`` of
  the candidate being the very next token (natural log, full-vocabulary softmax, fp32). Each
  candidate must be exactly one token (else ``ValueError`` naming it).
- Over-long input: if ``len(prompt_ids) + max_new_tokens`` (generation) or ``len(prompt_ids)``
  (scoring) exceeds the model's context, the default (``truncation="error"``) raises
  ``PromptTooLongError`` naming the prompt index and the lengths; ``truncation="left"`` drops the
  oldest tokens so that it fits (documented lossy behaviour, for callers that ask for it).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

TRUNCATION_MODES = ("error", "left")
FINISH_REASONS = ("eos", "stop", "length")


class PromptTooLongError(ValueError):
    """A prompt does not fit the model's context window."""


@dataclass(frozen=True)
class GenerationParams:
    """Decoding settings. Defaults follow METHOD.md's response-generation contract.

    - ``max_new_tokens``: hard cap on generated tokens (>= 1).
    - ``temperature`` (> 0), ``top_p`` in (0, 1]: used only when ``do_sample``.
    - ``repetition_penalty``: HF/CTRL style over prompt + generated ids (1.0 = off); applies to
      greedy decoding too.
    - ``stop``: strings; generation ends when the decoded continuation contains one, and the
      returned text is cut before it (``finish_reason="stop"``).
    - ``truncation``: ``"error"`` (default) or ``"left"``; see the module docstring.
    """

    max_new_tokens: int = 80
    temperature: float = 0.4
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    do_sample: bool = True
    stop: tuple[str, ...] = ()
    truncation: str = "error"

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"GenerationParams.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.do_sample and not self.temperature > 0:
            raise ValueError(f"GenerationParams.temperature must be > 0 when sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"GenerationParams.top_p must be in (0, 1], got {self.top_p}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"GenerationParams.repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.truncation not in TRUNCATION_MODES:
            raise ValueError(f"GenerationParams.truncation must be one of {TRUNCATION_MODES}, got {self.truncation!r}")
        if isinstance(self.stop, str):  # a bare string would be iterated per character
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))

    @classmethod
    def greedy(cls, max_new_tokens: int = 80, **kw) -> "GenerationParams":
        return cls(max_new_tokens=max_new_tokens, do_sample=False, repetition_penalty=kw.pop("repetition_penalty", 1.0), **kw)


@dataclass(frozen=True)
class Generation:
    """One prompt's result.

    - ``text``: the decoded continuation, without the eos/stop token, cut before a stop string.
    - ``token_ids``: every generated id, including a final eos/stop-token id if one ended it.
    - ``n_tokens``: ``len(token_ids)``.
    - ``hit_token_limit``: ``max_new_tokens`` was reached without eos/stop.
    - ``finish_reason``: ``"eos"`` (eos or a stop token), ``"stop"`` (a stop string), ``"length"``.
    - ``prompt_tokens``: prompt length in tokens after any truncation.
    """

    text: str
    token_ids: tuple[int, ...]
    n_tokens: int
    hit_token_limit: bool
    finish_reason: str
    prompt_tokens: int = 0
    seed: int | None = None
    extra: dict = field(default_factory=dict, compare=False)


def check_prompts(prompts: Sequence[str]) -> list[str]:
    """Validate a prompt list: a sequence of ``str`` (a bare str is rejected, it is not a list)."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, got a single str")
    out = list(prompts)
    for i, p in enumerate(out):
        if not isinstance(p, str):
            raise TypeError(f"prompts[{i}] must be str, got {type(p).__name__}")
    return out


def resolve_seeds(n: int, seeds: Sequence[int] | None) -> list[int]:
    if seeds is None:
        return list(range(n))
    seeds = [int(s) for s in seeds]
    if len(seeds) != n:
        raise ValueError(f"got {len(seeds)} seeds for {n} prompts; pass one seed per prompt")
    return seeds


def fit_context(ids: list[int], index: int, budget: int, context: int, mode: str) -> list[int]:
    """Apply the over-long-prompt rule: ``budget`` is the room left for the prompt."""
    if len(ids) <= budget:
        return ids
    if mode == "left" and budget > 0:
        return ids[len(ids) - budget :]
    raise PromptTooLongError(
        f"prompt {index} has {len(ids)} tokens; with the requested room it needs "
        f"{len(ids) + (context - budget)} > the model context of {context} tokens. Shorten it, lower "
        f"max_new_tokens, or pass truncation='left' to drop its oldest tokens."
    )


class Backend(ABC):
    """A generation/scoring engine over one loaded model.

    ``encode`` is the loader's guarded encoder (text -> ids, raises on control tokens); ``decode``
    turns ids into text; ``max_context`` is the model's context length in tokens.
    """

    name: str = "abstract"

    def __init__(self, encode: Callable[[str], list[int]], decode: Callable[[Sequence[int]], str], max_context: int):
        self.encode = encode
        self.decode = decode
        self.max_context = int(max_context)

    @abstractmethod
    def generate(
        self, prompts: Sequence[str], params: GenerationParams, seeds: Sequence[int] | None = None
    ) -> list[Generation]:
        """See the module docstring."""

    @abstractmethod
    def next_token_logprobs(
        self, prompts: Sequence[str], candidate_tokens: Sequence[str], *, truncation: str = "error"
    ) -> list[dict[str, float]]:
        """See the module docstring."""

    def encode_rows(self, prompts: Sequence[str], room: int, truncation: str) -> list[list[int]]:
        """Guarded token ids per prompt, each fitted to the context minus ``room`` tokens.

        An empty prompt (0 tokens) raises ``ValueError``; an over-long one follows
        ``fit_context`` (``truncation`` "error" or "left").
        """
        rows = []
        for i, p in enumerate(prompts):
            ids = self.encode(p)
            if not ids:
                raise ValueError(f"prompt {i} is empty (0 tokens); there is nothing to condition on")
            rows.append(fit_context(ids, i, self.max_context - room, self.max_context, truncation))
        return rows

    def candidate_ids(self, candidate_tokens: Sequence[str]) -> list[int]:
        """Each candidate's single token id; ``ValueError`` naming any candidate that is not one token."""
        ids = []
        for c in candidate_tokens:
            enc = self.encode(c)
            if len(enc) != 1:
                raise ValueError(f"candidate token {c!r} encodes to {len(enc)} tokens {enc}; candidates must be single tokens")
            ids.append(enc[0])
        return ids
