"""The shared method pieces and their content versions (what enters a step's cache key).

Not runnable; steps declare the pieces they use: ``@step(..., uses=[CRITIC_PAIR, CLEANING,
builder_param("response_builder")])``. The runner resolves the versions at every resume
(`runner.pipeline.piece_versions`) and adds them to the step's cache key, so editing a critic
rubric, a prompt builder, the cleaning rules, the instruction parser, dedup, QC or the IFEval
checkers re-runs exactly the steps that use that piece (and, through their changed outputs,
their descendants), never anything upstream. Nobody bumps a ``version=`` by hand for that.

A piece's version is the first 16 hex digits of the sha256 of its content: the rubric's text
(`phases.critic.RUBRICS` entry) plus the source of the code that turns it into prompts and
verdicts; a prompt builder's source plus the constants it formats; a module's source for rule
sets (cleaning, instruction parsing, dedup, QC, IFEval checkers, statistics). Source is read
(`inspect.getsource`) once per process, when this module is imported, so a version describes
the code the process runs even if the file is edited later; any edit, including a comment or
docstring in that code, is a new version for the next process: a false re-run costs compute, a
missed one costs a wrong result. Data parts (rubric entries, constants) are read live.

Add a piece: a `Piece(name, content)` here (content: a zero-argument callable returning the
parts to hash; functions, classes and modules are hashed by source, data by canonical JSON),
then name it in the ``uses=`` of every step that calls it. Tests: tests/unit/test_pieces.py.
"""
from __future__ import annotations

import dataclasses
import enum
import hashlib
import inspect
import json
import re
import types
from dataclasses import dataclass
from typing import Any, Callable

from phases import cleaning, critic, dedup, instructions, prompts, qc, stats
from phases.ifeval import checkers_content, checkers_format, registry, scorer

VERSION_CHARS = 16


# Source text per code object, read once per process: the version must describe the code this
# process runs, not a file edited on disk after it was imported (that edit is a new version for
# the next process). Values keep the object alive, so an id is never reused while cached.
_SOURCES: dict[int, tuple[Any, str]] = {}


def _source(x: Any) -> str:
    hit = _SOURCES.get(id(x))
    if hit is None or hit[0] is not x:
        hit = _SOURCES[id(x)] = (x, inspect.getsource(x))
    return hit[1]


def _part(x: Any) -> Any:
    """One JSON-able, content-only rendering of a part (source for code, values for data)."""
    if isinstance(x, (types.FunctionType, types.ModuleType, type)):
        return {"source": _source(x)}
    if isinstance(x, re.Pattern):
        return {"regex": x.pattern, "flags": int(x.flags)}
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: _part(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, enum.Enum):
        return _part(x.value)
    if isinstance(x, dict):
        return {str(k): _part(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set, frozenset)):
        items = [_part(v) for v in x]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True)) if isinstance(x, (set, frozenset)) else items
    if x is None or isinstance(x, (str, int, float, bool)):
        return x
    raise TypeError(f"piece part {x!r} ({type(x).__name__}) cannot be hashed: use a function, class, module, "
                    "dataclass, regex or JSON-like data")


def content_version(*parts: Any) -> str:
    """The version of some content: sha256 over the parts' canonical rendering, 16 hex digits."""
    blob = json.dumps([_part(p) for p in parts], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:VERSION_CHARS]


@dataclass(frozen=True)
class Piece:
    """A named shared piece. ``content()`` returns what defines it; ``version`` hashes that now
    (not at import), so a test or a resume after an edit sees the new content."""

    name: str
    content: Callable[[], tuple]
    description: str = ""

    @property
    def version(self) -> str:
        return content_version(self.name, *self.content())


# The critic's prompt/scoring code, shared by every rubric. first_paragraph is the pair critic's
# view of a response (it lives in phases.cleaning).
def _critic_code() -> tuple:
    return (critic.build_critic_prompt, critic._item_fields, critic.score_order, critic.combine, critic.judge,
            critic.ANSWER_LINE, critic.CANDIDATES, critic.ORDERS, critic.Rubric)


CRITIC_INSTRUCTION = Piece("critic.instruction", lambda: (critic.RUBRICS["instruction"], *_critic_code()),
                           "the instruction critic's rubric and the A/B critic code")
CRITIC_PAIR = Piece("critic.pair", lambda: (critic.RUBRICS["pair"], cleaning.first_paragraph, *_critic_code()),
                    "the pair critic's rubric, first_paragraph and the A/B critic code")

CRITIC_TASK = Piece("critic.task", lambda: (critic.RUBRICS["task"], cleaning.first_paragraph, *_critic_code()),
                    "the task-completion critic's rubric, first_paragraph and the A/B critic code")
CRITIC_REFUSAL = Piece("critic.refusal", lambda: (critic.RUBRICS["refusal"], cleaning.first_paragraph,
                                                  *_critic_code()),
                       "the refusal critic's rubric, first_paragraph and the A/B critic code")
CRITIC_REQUEST_SAFETY = Piece("critic.request_safety", lambda: (critic.RUBRICS["request_safety"], *_critic_code()),
                              "the request-safety critic's rubric (should a request be declined?) and the A/B "
                              "critic code")

# Per builder: its source, the helpers it calls and the constants it formats.
_BUILDER_PARTS: dict[str, Callable[[], tuple]] = {
    "instruction_response": lambda: (prompts.response_prompt, prompts._clean_instruction, prompts.END_MARKER),
    "numbered_list": lambda: (prompts.instruction_generation_prompt, prompts._clean_instruction,
                              prompts.DEFAULT_LIST_HEADER),
    "raw": lambda: (prompts.raw_prompt, prompts._clean_instruction),
    "urial": lambda: (prompts.urial_prompt, prompts._clean_instruction, prompts.URIAL_PREAMBLE,
                      prompts.URIAL_EXAMPLES, prompts.URIAL_END_MARKER),
}


def builder_piece(name: str) -> Piece:
    """The piece of the prompt builder registered as ``name`` in `phases.prompts.BUILDERS`."""
    canonical = prompts.canonical_builder_name(name)
    if canonical not in _BUILDER_PARTS:
        raise KeyError(f"prompt builder {name!r} has no piece in phases/pieces.py; known: {sorted(_BUILDER_PARTS)}. "
                       "Add its parts to _BUILDER_PARTS when you add a builder to phases.prompts.BUILDERS")
    return Piece(f"prompt.{canonical}", _BUILDER_PARTS[canonical], f"prompt builder {canonical!r}")


# Evaluation arms that are a builder under another name: "fewshot" is the instruction_response
# framing after few-shot examples (the examples travel in params); "<framing>@bf16" is <framing>.
ARM_BUILDERS: dict[str, str] = {"fewshot": "instruction_response"}


def arm_builder(name: str) -> str:
    """The prompt builder an evaluation arm (or a plain builder name) uses."""
    base = name.split("@", 1)[0]
    return ARM_BUILDERS.get(base, base)


def builder_param(*keys: str) -> Callable[[dict], dict]:
    """A ``uses`` entry for builders chosen by params: ``builder_param("response_builder")``
    resolves ``params["response_builder"]`` to that builder's piece version; a list value (e.g.
    evaluate's ``arms``) resolves each name. An empty value means "no builder" and adds nothing."""
    def resolve(params: dict) -> dict:
        out = {}
        for k in keys:
            value = params.get(k)
            for name in (value if isinstance(value, (list, tuple)) else [value]):
                if name:
                    piece = builder_piece(arm_builder(name))
                    out[piece.name] = piece.version
        return out
    resolve.__name__ = f"builder_param({', '.join(keys)})"
    return resolve


CLEANING = Piece("cleaning", lambda: (cleaning,), "response cleaning, runaway patterns, marker leakage")
INSTRUCTION_PARSING = Piece("instructions", lambda: (instructions,), "numbered-list parsing and filters")
DEDUP = Piece("dedup", lambda: (dedup,), "exact/near dedup and the held-out leakage check")
QC = Piece("qc", lambda: (qc,), "QC summary, thresholds' evaluation and retry plans")
IFEVAL = Piece("ifeval", lambda: (registry, checkers_content, checkers_format, scorer),
               "the IFEval checkers and scorer")
STATS = Piece("stats", lambda: (stats,), "paired statistics (Wilson, McNemar, BH, bootstrap)")

PIECES: dict[str, Piece] = {p.name: p for p in (CRITIC_INSTRUCTION, CRITIC_PAIR, CRITIC_TASK, CRITIC_REFUSAL,
                                                CLEANING, INSTRUCTION_PARSING, DEDUP, QC, IFEVAL, STATS)}
PIECES.update({builder_piece(n).name: builder_piece(n) for n in _BUILDER_PARTS})


def versions() -> dict[str, str]:
    """Every piece's current version (for manifests and `tests/unit/test_pieces.py`)."""
    return {name: p.version for name, p in sorted(PIECES.items())}


versions()  # read every piece's source now, next to the import of the code it describes
