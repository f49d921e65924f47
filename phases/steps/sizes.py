"""Work units of the stage-1 GPU steps, for the cost ledger's projections (runner/costs.py).

Each function is ``fn(inputs: {step: output dir}, params) -> number``, passed as
``@step(gpu=True, size=...)``. The budget check projects a step's GPU-seconds as its units x the
GPU-seconds per unit measured on its earlier attempts in the run, so a unit only has to scale
with the work (items generated, examples trained on, items evaluated), not be exact.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping


def _lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def heldout_items(inputs: Mapping[str, Path], params: Mapping[str, Any]) -> float:
    return float((params.get("heldout") or {}).get("size", 0))


def pilot_items(inputs: Mapping[str, Path], params: Mapping[str, Any]) -> float:
    return float(params["size"])


def scale_items(inputs: Mapping[str, Path], params: Mapping[str, Any]) -> float:
    return float((params.get("scale") or {}).get("target_kept", 0))


def sft_examples(inputs: Mapping[str, Path], params: Mapping[str, Any]) -> float:
    """Optimizer steps when ``max_steps`` caps training, else the training records (x epochs)."""
    if int(params.get("max_steps") or 0) > 0:
        return float(params["max_steps"])
    return _lines(Path(inputs["merge"]) / "sft.jsonl") * float(params.get("epochs") or 1)


def eval_items(inputs: Mapping[str, Path], params: Mapping[str, Any]) -> float:
    return float(_lines(Path(inputs["heldout"]) / "heldout.jsonl"))


def base_skill_items(inputs: Mapping[str, Path], params: Mapping[str, Any]) -> float:
    """Held-out items judged (capped by ``max_items``) x base arms."""
    n = _lines(Path(inputs["heldout"]) / "heldout.jsonl")
    cap = int(params.get("max_items") or 0)
    return float((min(n, cap) if cap > 0 else n) * max(1, len(params.get("arms") or [])))
