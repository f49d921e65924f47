"""THE A/B critic: rubric prompts, next-token A/B scoring, both label orders combined.

Not runnable; call ``judge(scorer, rubric, items)``. Prompt building and combining are pure
Python (no torch import); only the scorer (a ``LoadedModel`` or any backend with
``next_token_logprobs``) touches a model.

Contract (METHOD.md "Prompt and label contracts"):
- Prompt: a short rubric (good letter, bad letter, "If unsure, choose <bad letter>"), a blank line,
  the item, a blank line, ``Output exactly one letter on the next line: A or B``, a newline and
  ``Label:`` (no trailing space: the model writes the space).
- Rubrics: ``instruction`` (item: the instruction) and ``pair`` (item: instruction + the FIRST
  PARAGRAPH of the response, i.e. text before the first blank line, stripped).
- Order ``"AB"``: A = good, B = bad. Order ``"BA"`` is the swapped rubric: B = good, A = bad,
  and "If unsure, choose A" (the unsure rule always points at the bad label).
- Scores: next-token log-probs (natural log) of ``A``/``" A"`` and ``B``/``" B"``; the better
  of each pair is that letter's score. One forward pass per (item, order), batched; never
  ``generate``.
- Per order: label = letter with the higher score (tie -> the bad letter); margin =
  |logp(A) - logp(B)|; confident = margin >= threshold (default 1.0).
- Combined: good/bad scores are the means over the two orders of the good-letter and
  bad-letter scores (a constant bias toward a position or letter cancels). The verdict is
  reported in canonical letters (A = good): ``label``, ``logp_a`` (= combined good),
  ``logp_b`` (= combined bad), ``margin``, ``confident``, ``is_good`` (= label A). ``keep`` is
  ``is_good and confident``: METHOD.md keeps only items judged good AND confident.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

DEFAULT_THRESHOLD = 1.0
ORDERS = ("AB", "BA")
CANDIDATES = ("A", " A", "B", " B")
ANSWER_LINE = "Output exactly one letter on the next line: A or B"


@dataclass(frozen=True)
class Rubric:
    """A rubric: what the critic judges, what counts as good and as bad, which fields it needs."""

    name: str
    task: str
    good: str
    bad: str
    fields: tuple[str, ...]


RUBRICS: dict[str, Rubric] = {
    "instruction": Rubric(
        name="instruction",
        task="Judge the instruction below.",
        good="clear, specific, achievable and safe",
        bad="vague, impossible, unsafe or nonsense",
        fields=("instruction",),
    ),
    "pair": Rubric(
        name="pair",
        task="Judge the response to the instruction below.",
        good="fulfils the instruction, is correct and well-formed, or is a brief refusal when the request is unsafe",
        bad="anything else",
        fields=("instruction", "response"),
    ),
}


class Scorer(Protocol):
    def next_token_logprobs(self, prompts: Sequence[str], candidate_tokens: Sequence[str]) -> list[dict[str, float]]: ...


@dataclass(frozen=True)
class OrderScore:
    """One label order's raw result, in that order's letters."""

    order: str
    logp_a: float
    logp_b: float
    label: str
    margin: float
    confident: bool
    is_good: bool


@dataclass(frozen=True)
class Verdict:
    """The combined verdict in canonical letters (A = good) plus both raw order scores."""

    is_good: bool
    label: str
    logp_a: float
    logp_b: float
    margin: float
    confident: bool
    ab: OrderScore
    ba: OrderScore

    @property
    def keep(self) -> bool:
        return self.is_good and self.confident

    def to_dict(self) -> dict:
        from dataclasses import asdict

        d = asdict(self)
        d["keep"] = self.keep
        return d


def first_paragraph(text: str) -> str:
    """Text before the first blank line (a line holding only whitespace), stripped."""
    lines = text.strip().splitlines()
    out = []
    for line in lines:
        if not line.strip():
            break
        out.append(line)
    return "\n".join(out).strip()


def _item_fields(rubric: Rubric, item: str | Mapping[str, str]) -> dict[str, str]:
    if isinstance(item, str):
        if rubric.fields != ("instruction",):
            raise ValueError(f"rubric {rubric.name!r} needs a mapping with fields {rubric.fields}, got a str")
        item = {"instruction": item}
    missing = [f for f in rubric.fields if not isinstance(item.get(f), str)]
    if missing:
        raise ValueError(f"rubric {rubric.name!r}: item lacks str field(s) {missing}: {dict(item)!r:.200}")
    return {f: item[f] for f in rubric.fields}


def build_critic_prompt(rubric: str | Rubric, item: str | Mapping[str, str], order: str = "AB") -> str:
    """The critic prompt for one item in one label order (see the module docstring)."""
    r = RUBRICS[rubric] if isinstance(rubric, str) else rubric
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    f = _item_fields(r, item)
    good, bad = ("A", "B") if order == "AB" else ("B", "A")
    by_letter = {good: r.good, bad: r.bad}
    head = f"{r.task}\nA = {by_letter['A']}.\nB = {by_letter['B']}.\nIf unsure, choose {bad}."
    body = f"Instruction: {f['instruction'].strip()}"
    if "response" in f:
        body += f"\nResponse: {first_paragraph(f['response'])}"
    return f"{head}\n\n{body}\n\n{ANSWER_LINE}\nLabel:"


def score_order(logprobs: Mapping[str, float], order: str, threshold: float = DEFAULT_THRESHOLD) -> OrderScore:
    """Turn one prompt's candidate log-probs into that order's raw score."""
    la = max(logprobs["A"], logprobs[" A"])
    lb = max(logprobs["B"], logprobs[" B"])
    bad = "B" if order == "AB" else "A"
    good = "A" if bad == "B" else "B"
    label = "A" if la > lb else "B" if lb > la else bad
    margin = abs(la - lb)
    return OrderScore(order, la, lb, label, margin, margin >= threshold, label == good)


def combine(ab: OrderScore, ba: OrderScore, threshold: float = DEFAULT_THRESHOLD) -> Verdict:
    """Average good-letter and bad-letter scores over both orders (see the module docstring)."""
    if (ab.order, ba.order) != ("AB", "BA"):
        raise ValueError(f"combine() needs the AB then the BA score, got {ab.order}, {ba.order}")
    good = (ab.logp_a + ba.logp_b) / 2
    bad = (ab.logp_b + ba.logp_a) / 2
    is_good = good > bad
    margin = abs(good - bad)
    return Verdict(is_good, "A" if is_good else "B", good, bad, margin, margin >= threshold, ab, ba)


def judge(
    scorer: Scorer,
    rubric: str | Rubric,
    items: Sequence[str | Mapping[str, str]],
    threshold: float = DEFAULT_THRESHOLD,
) -> list[Verdict]:
    """Score ``items`` with ``rubric`` in both orders in one batched call; one ``Verdict`` each.

    ``rubric``: a name in `RUBRICS`, or a `Rubric` built from data (e.g. one constitution
    principle, phases/stage6.py); the prompt contract is the same either way."""
    if not isinstance(rubric, Rubric) and rubric not in RUBRICS:
        raise KeyError(f"unknown critic rubric {rubric!r}; known: {sorted(RUBRICS)}")
    items = list(items)
    if not items:
        return []
    prompts = [build_critic_prompt(rubric, it, o) for it in items for o in ORDERS]
    lps = scorer.next_token_logprobs(prompts, list(CANDIDATES))
    out = []
    for k in range(len(items)):
        ab = score_order(lps[2 * k], "AB", threshold)
        ba = score_order(lps[2 * k + 1], "BA", threshold)
        out.append(combine(ab, ba, threshold))
    return out
