"""Exact and near-duplicate removal (ROUGE-L, as in Self-Instruct) and the held-out leakage check.

Imported by the instruction-generation and dataset steps; not runnable on its own. Tests:
`.venv/bin/pytest tests/unit/test_dedup.py`.

Tokens: `tokenize` lowercases, applies NFKC and splits on anything that is not a letter or
digit (``re.findall(r"[^\\W_]+")``), like the default tokenizer of the ``rouge_score`` package
that Self-Instruct used (without stemming). Exact-match keys (`normalize_key`) are those
tokens joined by one space, so case, punctuation and whitespace differences are "exact" dups.

Near-duplicates (`dedup`): ROUGE-L F1 between token sequences a, b is
``2 * LCS(a, b) / (len(a) + len(b))`` (P and R as in rouge_score, so F is symmetric). A text is
dropped when its F1 with an earlier *kept* text (or with any text of ``against``) is >=
``threshold`` (default 0.7). Greedy in input order, so output is deterministic and keeps the
first occurrence.

Efficiency (exact, no missed pairs): F1 >= t requires LCS >= t/2 (m+n), and LCS <= min(m,n), so
the lengths satisfy n >= m * t / (2 - t) and the multiset overlap of the two token bags is at
least ``o(m) = ceil(t/2 * (m + m*t/(2-t)))``. Standard prefix filtering (Chaudhuri et al. 2006;
Bayardo et al. 2007) then says the first ``m - o(m) + 1`` tokens of each bag, ordered by global
rarity, must share a token. We index kept texts by their prefix tokens only (rare tokens, short
posting lists), collect candidates, prune by length, and verify with a bit-parallel LCS
(Hyyrö 2004; O(n) big-int operations per pair). Cost: O(N * L log L) to build, plus
O(C * L) verification for C candidate pairs; C is small in practice because prefixes hold the
rarest tokens. 30k short instructions run in seconds on one core.

Leakage (`leakage_report`): a training text leaks a held-out text when (exact) their
`normalize_key`s are equal, or (substring) their longest common *contiguous* token substring
is >= ``min_tokens`` (13) and >= ``min_fraction`` (0.6) of the shorter text's token count
(METHOD.md), or (rouge) their ROUGE-L F1 >= ``rouge_threshold`` (0.7; our addition, because
held-out instructions are often shorter than 13 tokens and the substring rule alone can never
flag them; set ``rouge_threshold=None`` to disable). Candidates for the substring rule come
from shared ``min_tokens``-grams (necessary for a >= min_tokens common substring).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

__all__ = [
    "tokenize",
    "normalize_key",
    "lcs_length",
    "rouge_l_f1",
    "longest_common_substring",
    "DedupResult",
    "exact_dedup",
    "dedup",
    "leakage_report",
]

_TOKEN = re.compile(r"[^\W_]+")


def tokenize(text: str) -> list[str]:
    """Lowercased NFKC word tokens (letters/digits runs); punctuation and whitespace dropped."""
    return _TOKEN.findall(unicodedata.normalize("NFKC", text).lower())


def normalize_key(text: str) -> str:
    """Exact-duplicate key: `tokenize` joined by single spaces ("" for a text with no tokens)."""
    return " ".join(tokenize(text))


def _match_masks(a: Sequence[str]) -> dict[str, int]:
    masks: dict[str, int] = defaultdict(int)
    for i, tok in enumerate(a):
        masks[tok] |= 1 << i
    return masks


def _lcs_with_masks(masks: dict[str, int], m: int, b: Sequence[str]) -> int:
    # Bit-parallel LCS (Hyyro 2004): zero bits of v count matched positions of a.
    full = (1 << m) - 1
    v = full
    for tok in b:
        u = v & masks.get(tok, 0)
        v = ((v + u) | (v - u)) & full
    return m - bin(v).count("1")


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common (not necessarily contiguous) subsequence of two token lists."""
    if not a or not b:
        return 0
    return _lcs_with_masks(_match_masks(a), len(a), b)


def rouge_l_f1(a: Sequence[str] | str, b: Sequence[str] | str) -> float:
    """ROUGE-L F1 = 2*LCS/(len(a)+len(b)); strings are tokenized with `tokenize`. 0.0 if either is empty."""
    ta = tokenize(a) if isinstance(a, str) else list(a)
    tb = tokenize(b) if isinstance(b, str) else list(b)
    if not ta or not tb:
        return 0.0
    return 2.0 * lcs_length(ta, tb) / (len(ta) + len(tb))


def longest_common_substring(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common contiguous run of tokens. O(len(a) * len(b))."""
    best = 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            if x == y:
                cur[j] = prev[j - 1] + 1
                if cur[j] > best:
                    best = cur[j]
        prev = cur
    return best


@dataclass
class DedupResult:
    """Outcome of `dedup`/`exact_dedup`.

    kept: indices into the input, ascending. dropped: one dict per dropped input, ascending by
    index: ``{"index", "reason": "empty"|"exact"|"near", "match": index of the kept input or
    None, "match_against": index into ``against`` or None, "score": ROUGE-L F1 (1.0 for exact)}``.
    """

    kept: list[int] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        c = Counter(d["reason"] for d in self.dropped)
        return {"kept": len(self.kept), "dropped": len(self.dropped), **{f"dropped_{k}": c[k] for k in ("empty", "exact", "near")}}


def exact_dedup(texts: Sequence[str]) -> DedupResult:
    """Drop texts whose `normalize_key` is empty or equals an earlier text's key (first kept)."""
    seen: dict[str, int] = {}
    result = DedupResult()
    for i, text in enumerate(texts):
        key = normalize_key(text)
        if not key:
            result.dropped.append({"index": i, "reason": "empty", "match": None, "match_against": None, "score": 0.0})
        elif key in seen:
            result.dropped.append({"index": i, "reason": "exact", "match": seen[key], "match_against": None, "score": 1.0})
        else:
            seen[key] = i
            result.kept.append(i)
    return result


class _PrefixIndex:
    """Kept texts indexed by their rarest tokens, for exact ROUGE-L >= t candidate search."""

    def __init__(self, threshold: float, df: Counter):
        self.t = threshold
        self.df = df
        self.postings: dict[str, list[int]] = defaultdict(list)
        # Parallel lists (faster than tuples in the hot loop of best_match).
        self.lens: list[int] = []
        self.masks: list[dict[str, int]] = []
        self.bags: list[frozenset[str]] = []
        self.payloads: list[object] = []

    @staticmethod
    def _bag(tokens: list[str]) -> list[str]:
        # Multiset tokens become (token, occurrence) so set overlap counts repeats correctly.
        seen: Counter = Counter()
        bag = []
        for tok in tokens:
            bag.append(f"{tok}\x00{seen[tok]}")
            seen[tok] += 1
        return bag

    def _prefix(self, bag: list[str]) -> list[str]:
        df = self.df
        ordered = sorted(bag, key=lambda k: (df[k], k))
        m = len(bag)
        n_min = m * self.t / (2.0 - self.t)
        overlap = max(1, math.ceil(self.t / 2.0 * (m + n_min) - 1e-9))
        return ordered[: max(1, m - overlap + 1)]

    def add(self, tokens: list[str], payload: object) -> None:
        pos = len(self.lens)
        bag = self._bag(tokens)
        self.lens.append(len(tokens))
        self.masks.append(_match_masks(tokens))
        self.bags.append(frozenset(bag))
        self.payloads.append(payload)
        for key in self._prefix(bag):
            self.postings[key].append(pos)

    def best_match(self, tokens: list[str]) -> tuple[object, float] | None:
        """The earliest-added item with the highest F1 >= t, or None."""
        m = len(tokens)
        t = self.t
        lo, hi = m * t / (2.0 - t) - 1e-9, m * (2.0 - t) / t + 1e-9
        bag = self._bag(tokens)
        bagset = frozenset(bag)
        empty: list[int] = []
        cands = sorted(set().union(*(self.postings.get(key, empty) for key in self._prefix(bag))))
        lens, bags, half_t = self.lens, self.bags, t / 2.0
        best: tuple[object, float] | None = None
        for pos in cands:
            n = lens[pos]
            if n < lo or n > hi:
                continue
            # LCS <= bag overlap: a C-speed set intersection prunes most candidates before LCS.
            if len(bagset & bags[pos]) < half_t * (m + n) - 1e-9:
                continue
            f1 = 2.0 * _lcs_with_masks(self.masks[pos], n, tokens) / (m + n)
            if f1 >= t and (best is None or f1 > best[1]):
                best = (self.payloads[pos], f1)
        return best


def _doc_freq(token_lists: Iterable[list[str]]) -> Counter:
    df: Counter = Counter()
    for tokens in token_lists:
        seen: Counter = Counter()
        for tok in tokens:
            df[f"{tok}\x00{seen[tok]}"] += 1
            seen[tok] += 1
    return df


def dedup(texts: Sequence[str], threshold: float = 0.7, against: Sequence[str] = ()) -> DedupResult:
    """Exact then near-duplicate removal (ROUGE-L F1 >= ``threshold``), greedy in input order.

    ``against``: an existing pool (e.g. seed instructions or an earlier accepted set); a text
    too close to any of them is dropped too (``match_against`` says which). Texts with no tokens
    are dropped as ``"empty"``. ``threshold`` must be in (0, 1].
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"dedup threshold must be in (0, 1], got {threshold!r}")
    toks = [tokenize(t) for t in texts]
    pool = [tokenize(t) for t in against]
    index = _PrefixIndex(threshold, _doc_freq(toks + pool))
    exact: dict[str, tuple[str, int]] = {}
    for j, tokens in enumerate(pool):
        if tokens:
            exact.setdefault(" ".join(tokens), ("against", j))
            index.add(tokens, ("against", j))
    result = DedupResult()
    for i, tokens in enumerate(toks):
        key = " ".join(tokens)
        entry = {"index": i, "match": None, "match_against": None}
        if not tokens:
            result.dropped.append({**entry, "reason": "empty", "score": 0.0})
            continue
        hit = exact.get(key)
        if hit is not None:
            kind, j = hit
            result.dropped.append({**entry, "reason": "exact", "score": 1.0, ("match" if kind == "kept" else "match_against"): j})
            continue
        near = index.best_match(tokens)
        if near is not None:
            (kind, j), score = near
            result.dropped.append({**entry, "reason": "near", "score": round(score, 6), ("match" if kind == "kept" else "match_against"): j})
            continue
        exact[key] = ("kept", i)
        index.add(tokens, ("kept", i))
        result.kept.append(i)
    return result


def _ngrams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def leakage_report(
    train: Sequence[str],
    heldout: Sequence[str],
    min_tokens: int = 13,
    min_fraction: float = 0.6,
    rouge_threshold: float | None = 0.7,
    max_pairs: int = 200,
) -> dict:
    """Check that no training text overlaps a held-out text (rules in the module docstring).

    Returns a JSON-ready dict for manifests::

        {"method": {...parameters...}, "n_train", "n_heldout",
         "counts": {"exact", "substring", "rouge", "offending_train", "offending_heldout"},
         "passed": bool (no offending pair),
         "offending_train_indices": [...ascending],   # drop these from the training set
         "pairs": [{"train_index", "heldout_index", "kind", "common_substring_tokens",
                    "fraction_of_shorter", "rouge_l"}, ...],   # sorted, at most max_pairs
         "pairs_truncated": bool}

    Each (train, held-out) pair is reported once with its strongest kind (exact > substring >
    rouge); ``counts`` count pairs by kind.
    """
    if min_tokens < 1 or not 0.0 < min_fraction <= 1.0:
        raise ValueError(f"leakage_report needs min_tokens >= 1 and 0 < min_fraction <= 1, got {min_tokens}, {min_fraction}")
    tr = [tokenize(t) for t in train]
    ho = [tokenize(t) for t in heldout]
    pairs: dict[tuple[int, int], dict] = {}

    def add(i: int, j: int, kind: str) -> None:
        if (i, j) in pairs:
            return
        lcsub = longest_common_substring(tr[i], ho[j])
        shorter = max(1, min(len(tr[i]), len(ho[j])))
        pairs[(i, j)] = {
            "train_index": i,
            "heldout_index": j,
            "kind": kind,
            "common_substring_tokens": lcsub,
            "fraction_of_shorter": round(lcsub / shorter, 6),
            "rouge_l": round(rouge_l_f1(tr[i], ho[j]), 6),
        }

    by_key: dict[str, list[int]] = defaultdict(list)
    for j, tokens in enumerate(ho):
        if tokens:
            by_key[" ".join(tokens)].append(j)
    for i, tokens in enumerate(tr):
        for j in by_key.get(" ".join(tokens), ()) if tokens else ():
            add(i, j, "exact")

    grams: dict[tuple[str, ...], set[int]] = defaultdict(set)
    for j, tokens in enumerate(ho):
        for g in _ngrams(tokens, min_tokens):
            grams[g].add(j)
    for i, tokens in enumerate(tr):
        cands = set().union(*(grams.get(g, ()) for g in _ngrams(tokens, min_tokens))) if len(tokens) >= min_tokens else set()
        for j in sorted(cands):
            if (i, j) in pairs:
                continue
            lcsub = longest_common_substring(tokens, ho[j])
            if lcsub >= min_tokens and lcsub >= min_fraction * min(len(tokens), len(ho[j])):
                add(i, j, "substring")

    if rouge_threshold is not None:
        index = _PrefixIndex(rouge_threshold, _doc_freq(tr + ho))
        for j, tokens in enumerate(ho):
            if tokens:
                index.add(tokens, j)
        # One best held-out match per training text is enough to flag it; add() keeps an
        # already-recorded stronger kind for the same pair.
        for i, tokens in enumerate(tr):
            near = index.best_match(tokens) if tokens else None
            if near is not None:
                add(i, near[0], "rouge")

    ordered = [pairs[k] for k in sorted(pairs)]
    kinds = Counter(p["kind"] for p in ordered)
    offending_train = sorted({p["train_index"] for p in ordered})
    return {
        "method": {
            "tokenizer": "nfkc-lower-alnum",
            "min_tokens": min_tokens,
            "min_fraction": min_fraction,
            "rouge_threshold": rouge_threshold,
        },
        "n_train": len(train),
        "n_heldout": len(heldout),
        "counts": {
            "exact": kinds["exact"],
            "substring": kinds["substring"],
            "rouge": kinds["rouge"],
            "offending_train": len(offending_train),
            "offending_heldout": len({p["heldout_index"] for p in ordered}),
        },
        "passed": not ordered,
        "offending_train_indices": offending_train,
        "pairs": ordered[:max_pairs],
        "pairs_truncated": len(ordered) > max_pairs,
    }
