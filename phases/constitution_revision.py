"""Constitutional critique -> revision pairs: principle plan, prompts, acceptance rule.

Not runnable; the ``pairs`` step in ``phases/steps/preferences.py`` calls ``plan_principles``,
``critique_prompts``/``revision_prompts`` (builders in ``phases/prompts.py``) and ``accept_revision``
(on verdicts of the canonical A/B pair critic). Tests: ``.venv/bin/pytest tests/unit/test_pairs.py``.
Design: specs/preferences-dpo.md.

Contracts:
- ``plan_principles(n, per_item, seed)``: one global stream that visits the three categories
  round-robin (category order and each category's principles shuffled by ``seed``), so over
  the whole sample per-category counts differ by at most one (until a category must repeat:
  then it cycles again). An item never gets the same principle twice.
- Critique at temperature ``critique_temperature`` (default 0.25, METHOD.md 0.2-0.3), rewrite at
  ``revision_temperature`` (0.5). Both completions are cleaned with
  ``phases.cleaning.clean_response(text, end_marker=None)``.
- A revision makes a pair (revised = chosen, original = rejected) only when the pair critic
  judges the revision good AND confident and its signed score beats the original's by at least
  ``min_margin`` (``accept_revision``). Principle ids travel with the pair.
"""
from __future__ import annotations

import random
from collections import Counter
from typing import Sequence

from phases.constitution import CATEGORIES, Constitution, Principle, load_constitution
from phases.pairs import critic_score
from phases.prompts import critique_prompt, revision_prompt

__all__ = ["REVISION_DEFAULTS", "plan_principles", "principle_usage", "critique_prompts", "revision_prompts",
           "accept_revision"]

REVISION_DEFAULTS = {"fraction": 0.5, "principles_per_item": 1, "critique_temperature": 0.25,
                     "revision_temperature": 0.5, "critique_max_new_tokens": 64, "revision_max_new_tokens": 96,
                     "min_margin": 1.0}


def plan_principles(n_items: int, per_item: int, seed: int,
                    constitution: Constitution | None = None) -> list[list[Principle]]:
    """``n_items`` lists of ``per_item`` distinct principles, balanced across categories (see above)."""
    c = constitution or load_constitution()
    if isinstance(per_item, bool) or not isinstance(per_item, int) or not 1 <= per_item <= len(c.principles):
        raise ValueError(f"pairs.revision.principles_per_item = {per_item!r}: expected an int in [1, {len(c.principles)}]")
    rng = random.Random(seed)
    pools = {cat: [p for p in c.principles if p.category == cat] for cat in CATEGORIES}
    order = [cat for cat in CATEGORIES if pools[cat]]
    rng.shuffle(order)
    cursor = {cat: 0 for cat in order}
    for cat in order:
        rng.shuffle(pools[cat])

    def draw() -> Principle:
        nonlocal k
        cat = order[k % len(order)]
        k += 1
        p = pools[cat][cursor[cat] % len(pools[cat])]
        cursor[cat] += 1
        return p

    k = 0
    out = []
    for _ in range(n_items):
        got: list[Principle] = []
        tries = 0
        while len(got) < per_item:
            p = draw()
            tries += 1
            if p not in got:
                got.append(p)
            elif tries > 10 * len(c.principles):
                raise ValueError("could not draw distinct principles; lower principles_per_item")
        out.append(got)
    return out


def principle_usage(plan: Sequence[Sequence[Principle]]) -> dict:
    """``{"by_id": {id: n}, "by_category": {category: n}}`` over a plan."""
    ids = Counter(p.id for ps in plan for p in ps)
    cats = Counter(p.category for ps in plan for p in ps)
    return {"by_id": dict(sorted(ids.items())), "by_category": {c: cats.get(c, 0) for c in CATEGORIES}}


def critique_prompts(items: Sequence[dict], plan: Sequence[Sequence[Principle]]) -> list[str]:
    """One critique prompt per item (``instruction``, ``response``); several principles are joined by a space."""
    return [critique_prompt(it["instruction"], it["response"], " ".join(p.text for p in ps))
            for it, ps in zip(items, plan)]


def revision_prompts(items: Sequence[dict], plan: Sequence[Sequence[Principle]], critiques: Sequence[str]) -> list[str]:
    return [revision_prompt(it["instruction"], it["response"], " ".join(p.text for p in ps), cr)
            for it, ps, cr in zip(items, plan, critiques)]


def accept_revision(original_verdict: dict, revised_verdict: dict, min_margin: float) -> tuple[bool, float, str]:
    """(keep, margin, reason): keep when the revision is good+confident and beats the original by ``min_margin``."""
    m = critic_score(revised_verdict) - critic_score(original_verdict)
    if not (revised_verdict.get("is_good") and revised_verdict.get("confident")):
        return False, m, "revision not judged good and confident"
    if m < min_margin:
        return False, m, f"revision beats the original by {m:.3f} < min_margin {min_margin}"
    return True, m, "kept"
