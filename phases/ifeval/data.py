"""The IFEval prompt set shipped with the project (541 prompts), loaded and verified.

Library module (no command). Tested by: .venv/bin/pytest tests/unit/test_ifeval.py -q

``load_prompts()`` reads ``phases/ifeval/data/input_data.jsonl`` (byte-exact copy of the
google-research file, see data/NOTICE.md), refuses it unless its sha256 is the pinned one, and
returns one ``IfevalPrompt`` per line, in file order, with every instruction's arguments
validated. ``load_prompts(path, expected_sha256=None)`` reads another file of the same format
without the hash check.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from state.files import sha256_file

from .registry import validate_kwargs

DATA_PATH = Path(__file__).resolve().parent / "data" / "input_data.jsonl"
DATA_SHA256 = "67ffeee0fcb87c317c5b08a2de85557b4a7e96ada6178aa645b4954fe4b53d49"
N_PROMPTS = 541
N_INSTRUCTIONS = 834


@dataclass(frozen=True)
class IfevalPrompt:
    """One IFEval prompt: ``key`` (int, unique), the ``prompt`` text sent to the model, and
    the parallel lists ``instruction_id_list`` / ``kwargs`` (validated argument dicts)."""

    key: int
    prompt: str
    instruction_id_list: tuple[str, ...]
    kwargs: tuple[dict, ...] = field(default_factory=tuple)


def parse_prompt(record: dict, where: str) -> IfevalPrompt:
    """Validate one JSON record (fields key, prompt, instruction_id_list, kwargs)."""
    for name in ("key", "prompt", "instruction_id_list", "kwargs"):
        if name not in record:
            raise ValueError(f"IFEval: {where} has no field {name!r}")
    key, prompt, ids, kwargs = (record["key"], record["prompt"], record["instruction_id_list"],
                                record["kwargs"])
    if not isinstance(key, int) or isinstance(key, bool):
        raise ValueError(f"IFEval: {where} field key must be an int, got {key!r}")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"IFEval: {where} (key {key}) field prompt must be a non-empty string")
    if not isinstance(ids, list) or not ids or not isinstance(kwargs, list) or len(ids) != len(kwargs):
        raise ValueError(f"IFEval: {where} (key {key}) needs non-empty lists instruction_id_list "
                         f"and kwargs of equal length, got {ids!r} / {kwargs!r}")
    checked = tuple(validate_kwargs(i, k, where=f"{where}, key {key}") for i, k in zip(ids, kwargs))
    return IfevalPrompt(key=key, prompt=prompt, instruction_id_list=tuple(ids), kwargs=checked)


def load_prompts(path: str | Path = DATA_PATH,
                 expected_sha256: str | None = DATA_SHA256) -> list[IfevalPrompt]:
    """Load and validate IFEval prompts from a JSONL file.

    Args:
        path: JSONL file, one prompt object per line; defaults to the bundled 541 prompts.
        expected_sha256: the file must hash to this (default: the pinned hash of the bundled
            file); pass None to skip the check for a file of your own.

    Raises:
        ValueError: hash mismatch, unreadable JSON, a bad record or a duplicate key; the
            message names the file and line.
    """
    path = Path(path)
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256:
            raise ValueError(
                f"IFEval: {path} has sha256 {actual}, expected {expected_sha256}; the prompt file "
                "is not the pinned IFEval release: restore it from git (or from "
                "shared/data/ifeval/input_data.jsonl)")
    prompts: list[IfevalPrompt] = []
    seen: set[int] = set()
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"IFEval: {where} is not valid JSON: {exc}") from exc
            if not isinstance(record, dict):
                raise ValueError(f"IFEval: {where} must be a JSON object")
            item = parse_prompt(record, where)
            if item.key in seen:
                raise ValueError(f"IFEval: {where} repeats key {item.key}")
            seen.add(item.key)
            prompts.append(item)
    if not prompts:
        raise ValueError(f"IFEval: {path} contains no prompts")
    return prompts
