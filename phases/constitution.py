"""Load and validate `constitution.yaml`; sample principles balanced across categories.

Imported by the critique/revision steps; not runnable on its own. Check the file with
`.venv/bin/python -c "from phases.constitution import load_constitution; load_constitution()"`.
Tests: `.venv/bin/pytest tests/unit/test_constitution.py`.

File format: ``{version: int, principles: [{id, category, text}, ...]}``; ids unique and
lowercase snake_case, categories from `CATEGORIES`, every category present, text non-empty.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from runner.config import read_yaml
from runner.errors import ConfigError

__all__ = ["CATEGORIES", "DEFAULT_PATH", "Principle", "Constitution", "load_constitution", "sample_principles"]

CATEGORIES: tuple[str, ...] = ("helpfulness", "harmlessness", "honesty")
DEFAULT_PATH = Path(__file__).resolve().parents[1] / "constitution.yaml"
_ID = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Principle:
    id: str
    category: str
    text: str


@dataclass(frozen=True)
class Constitution:
    version: int
    principles: tuple[Principle, ...]
    path: str

    def by_id(self, pid: str) -> Principle:
        for p in self.principles:
            if p.id == pid:
                return p
        raise KeyError(f"no principle {pid!r} in {self.path}; known ids: {[p.id for p in self.principles]}")


def load_constitution(path: str | Path | None = None) -> Constitution:
    """Load and validate the constitution (default: ``constitution.yaml`` at the repo root).

    Raises `ConfigError` naming the file, the entry and the problem.
    """
    p = Path(path) if path is not None else DEFAULT_PATH
    if not p.is_file():
        raise ConfigError(f"{p}: constitution file not found")
    data = read_yaml(p, ConfigError, "constitution file")  # the one strict reader: duplicate keys refused
    if not isinstance(data, dict) or set(data) != {"version", "principles"}:
        raise ConfigError(f"{p}: expected a mapping with exactly the keys 'version' and 'principles', got {data!r:.200}")
    version, items = data["version"], data["principles"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise ConfigError(f"{p}: version = {version!r}: expected an integer")
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{p}: principles = {items!r:.200}: expected a non-empty list")
    principles, seen = [], set()
    for i, item in enumerate(items):
        where = f"{p}: principles.{i}"
        if not isinstance(item, dict) or set(item) != {"id", "category", "text"}:
            raise ConfigError(f"{where} = {item!r}: expected a mapping with exactly 'id', 'category' and 'text'")
        pid, cat, text = item["id"], item["category"], item["text"]
        if not isinstance(pid, str) or not _ID.match(pid):
            raise ConfigError(f"{where}.id = {pid!r}: expected lowercase snake_case (letters, digits, _)")
        if pid in seen:
            raise ConfigError(f"{where}.id = {pid!r}: duplicate id; ids must be unique")
        if cat not in CATEGORIES:
            raise ConfigError(f"{where}.category = {cat!r}: expected one of {list(CATEGORIES)}")
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{where}.text = {text!r}: expected a non-empty string")
        seen.add(pid)
        principles.append(Principle(pid, cat, " ".join(text.split())))
    absent = [c for c in CATEGORIES if c not in {pr.category for pr in principles}]
    if absent:
        raise ConfigError(f"{p}: no principle in categor(ies) {absent}; every category needs at least one")
    return Constitution(version, tuple(principles), str(p))


def sample_principles(k: int, seed: int, constitution: Constitution | None = None) -> list[Principle]:
    """``k`` distinct principles, balanced across categories, deterministic for ``seed``.

    Balanced: categories are visited round-robin (in a seed-shuffled order), each yielding its
    principles in a seed-shuffled order, so per-category counts differ by at most one until a
    category runs out (then the others continue). ``1 <= k <= len(principles)`` else ValueError.
    """
    c = constitution or load_constitution()
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(c.principles):
        raise ValueError(f"k must be an int in [1, {len(c.principles)}], got {k!r}")
    rng = random.Random(seed)
    pools: dict[str, list[Principle]] = defaultdict(list)
    for pr in c.principles:
        pools[pr.category].append(pr)
    order = [cat for cat in CATEGORIES if pools[cat]]
    rng.shuffle(order)
    for cat in order:
        rng.shuffle(pools[cat])
    out: list[Principle] = []
    while len(out) < k:
        for cat in order:
            if pools[cat] and len(out) < k:
                out.append(pools[cat].pop())
    return out
