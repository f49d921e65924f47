"""IFEval scoring: strict and loose following per instruction, and the four standard metrics.

Library module (no command). Tested by: .venv/bin/pytest tests/unit/test_ifeval.py -q

Rules (as in google-research ``evaluation_lib.py``):
- strict: an instruction is followed iff the response is not blank (``response.strip()``)
  and its checker passes on the response as given.
- loose: followed iff the checker passes on at least one non-blank variant among: the
  response; the response without its first line; without its last line; without both
  (lines split on "\\n", each cut variant then ``.strip()``-ed); and each of those four with
  every ``*`` removed. This forgives a preamble line ("Sure, here it is:"), a closing line and
  markdown emphasis.
- a prompt is followed iff all its instructions are followed.
- prompt_level_*_acc = followed prompts / prompts; inst_level_*_acc = followed instruction
  instances / instruction instances (an instruction id listed twice in a prompt counts twice).
"""

from __future__ import annotations

from typing import Iterable, Mapping

from .data import IfevalPrompt, parse_prompt
from .registry import INSTRUCTIONS, validate_kwargs

METRICS = ("prompt_level_strict_acc", "inst_level_strict_acc",
           "prompt_level_loose_acc", "inst_level_loose_acc")


def loose_variants(response: str) -> list[str]:
    """The 8 response variants of the loose metric, in the reference's order."""
    lines = response.split("\n")
    remove_first = "\n".join(lines[1:]).strip()
    remove_last = "\n".join(lines[:-1]).strip()
    remove_both = "\n".join(lines[1:-1]).strip()
    return [response, response.replace("*", ""),
            remove_first, remove_last, remove_both,
            remove_first.replace("*", ""), remove_last.replace("*", ""),
            remove_both.replace("*", "")]


def follows(instruction_id: str, kwargs: dict | None, response: str) -> tuple[bool, bool]:
    """(strict, loose) following of one instruction by one response. Arguments are validated."""
    if not isinstance(response, str):
        raise ValueError(f"IFEval: response must be a str, got {type(response).__name__}")
    args = validate_kwargs(instruction_id, kwargs)  # raises for an unknown id
    checker = INSTRUCTIONS[instruction_id][0]
    strict = bool(response.strip()) and bool(checker(response, **args))
    if strict:
        return True, True  # the unmodified response is the first loose variant
    loose = any(v.strip() and checker(v, **args) for v in loose_variants(response)[1:])
    return False, bool(loose)


def score_prompt(prompt: IfevalPrompt, response: str) -> dict:
    """Per-prompt result: ``{"key", "instruction_id_list", "strict": [bool...],
    "loose": [bool...], "follow_all_strict", "follow_all_loose", "failed_strict": [ids],
    "failed_loose": [ids]}`` (lists parallel to ``instruction_id_list``)."""
    strict, loose = [], []
    for iid, kw in zip(prompt.instruction_id_list, prompt.kwargs):
        s, lo = follows(iid, kw, response)
        strict.append(s)
        loose.append(lo)
    ids = list(prompt.instruction_id_list)
    return {
        "key": prompt.key,
        "instruction_id_list": ids,
        "strict": strict,
        "loose": loose,
        "follow_all_strict": all(strict),
        "follow_all_loose": all(loose),
        "failed_strict": [i for i, ok in zip(ids, strict) if not ok],
        "failed_loose": [i for i, ok in zip(ids, loose) if not ok],
    }


def _as_prompt(p: IfevalPrompt | Mapping, index: int) -> IfevalPrompt:
    if isinstance(p, IfevalPrompt):
        return p
    if isinstance(p, Mapping):
        return parse_prompt(dict(p), where=f"prompts[{index}]")
    raise ValueError(f"IFEval: prompts[{index}] must be an IfevalPrompt or a dict, got {p!r}")


def score_responses(prompts: Iterable[IfevalPrompt | Mapping],
                    responses: Mapping[int, str]) -> dict:
    """Score one response per prompt with the four IFEval metrics.

    Args:
        prompts: the prompts to score (``load_prompts()`` output or dicts of the JSONL format);
            at least one; keys unique. To score a subset, pass only that subset.
        responses: prompt key -> response text (the completion only, not the prompt). Every
            prompt must have a response and every response key must be a prompt key. An empty
            or whitespace-only response is allowed and follows no instruction.

    Returns:
        {"metrics": {name: float for name in METRICS},
         "counts": {"prompts", "instructions", "prompt_level_strict", "inst_level_strict",
                    "prompt_level_loose", "inst_level_loose"},
         "per_instruction": {instruction_id: {"n", "strict", "loose"}}   # accuracies, sorted ids
         "per_prompt": [score_prompt(...) for each prompt, input order]}

    Raises:
        ValueError: no prompts, duplicate keys, missing/extra responses, non-str responses,
            malformed prompts.
    """
    plist = [_as_prompt(p, i) for i, p in enumerate(prompts)]
    if not plist:
        raise ValueError("IFEval: no prompts to score")
    keys = [p.key for p in plist]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"IFEval: duplicate prompt keys {dup[:10]}")
    if not isinstance(responses, Mapping):
        raise ValueError("IFEval: responses must be a dict {prompt key: response text}")
    missing = [k for k in keys if k not in responses]
    extra = sorted(set(responses) - set(keys), key=str)
    if missing or extra:
        raise ValueError(
            f"IFEval: responses do not match prompts: {len(missing)} prompt(s) without a response "
            f"(first keys {missing[:10]}), {len(extra)} response key(s) not among the prompts "
            f"(first {extra[:10]}); pass exactly one response per prompt")
    for k in keys:
        if not isinstance(responses[k], str):
            raise ValueError(f"IFEval: response for key {k} must be a str, got "
                             f"{type(responses[k]).__name__}")

    per_prompt = [score_prompt(p, responses[p.key]) for p in plist]
    n_prompts = len(per_prompt)
    n_inst = sum(len(r["strict"]) for r in per_prompt)
    counts = {
        "prompts": n_prompts,
        "instructions": n_inst,
        "prompt_level_strict": sum(r["follow_all_strict"] for r in per_prompt),
        "inst_level_strict": sum(sum(r["strict"]) for r in per_prompt),
        "prompt_level_loose": sum(r["follow_all_loose"] for r in per_prompt),
        "inst_level_loose": sum(sum(r["loose"]) for r in per_prompt),
    }
    metrics = {
        "prompt_level_strict_acc": counts["prompt_level_strict"] / n_prompts,
        "inst_level_strict_acc": counts["inst_level_strict"] / n_inst,
        "prompt_level_loose_acc": counts["prompt_level_loose"] / n_prompts,
        "inst_level_loose_acc": counts["inst_level_loose"] / n_inst,
    }
    tally: dict[str, list[int]] = {}
    for r in per_prompt:
        for iid, s, lo in zip(r["instruction_id_list"], r["strict"], r["loose"]):
            t = tally.setdefault(iid, [0, 0, 0])
            t[0] += 1
            t[1] += s
            t[2] += lo
    per_instruction = {iid: {"n": t[0], "strict": t[1] / t[0], "loose": t[2] / t[0]}
                       for iid, t in sorted(tally.items())}
    return {"metrics": metrics, "counts": counts, "per_instruction": per_instruction,
            "per_prompt": per_prompt}
