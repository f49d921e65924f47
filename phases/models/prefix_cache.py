"""Shared-prefix next-token scoring: the critic's rubric is run through the model once per group,
its KV cache reused for every item of the group (both label orders have their own group).

Not runnable; call ``next_token_logprobs(backend, prompts, candidate_tokens)`` with an
``HFBackend`` (same contract as ``HFBackend.next_token_logprobs``, backends/base.py), or
``score_ids`` with token ids.

How:
- Prompts are encoded with the backend's guarded encoder. ``shared_prefix_groups`` splits them
  into groups by common token prefix, like a shallow trie: the longest common prefix (LCP) of all
  rows, then, while a split yields at most ``max_parts`` groups (the critic's two orders give
  two), one group per next token, each with its own longer LCP. A split is taken only if every
  part keeps >= 2 rows and the extra shared tokens save >= 2 tokens per row on average, so it
  stops where it would fragment the batch (items differ right after the rubric). Prefixes are token-exact, so
  tokenizer merges across the rubric/item boundary are respected; a prefix always leaves at least
  one token of every row outside it (its last position gives the logits).
- Per group: one forward of the prefix at batch 1 gives its K/V; then the suffixes, sorted by
  length and cut into batches of at most ``max_batch`` rows and ``max_tokens`` padded suffix
  tokens, run after that K/V broadcast over the batch (``static_kv.forward_prefixed``). Suffixes
  are RIGHT-padded and attention is causal aligned bottom-right, so no real token sees a pad, no
  mask is built and the flash kernel runs; real tokens keep positions ``P, P+1, ...`` and the
  logits are read at each row's last real token, so each row computes what the uncached forward
  computes (to float rounding: tests check 1e-4 in fp32 on CPU).
- Logits only for the last position; log-softmax in fp32, like the plain path.
Groups whose prefix is shorter than ``min_prefix`` tokens are scored with an empty prefix
(plain batched forward through the same code).
- A prefix's K/V is memoised per model (LRU of 8, keyed by the prefix ids, dtype, device and the
  parameters' in-place version counters), so repeated calls with the same rubric compute it once.
When it pays (measured on an H100, docs/performance.md): FLOP-bound models (7B and up) gain up to
``total / (total - prefix)`` tokens; small models (0.5B) are launch-bound and gain nothing.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import torch

from phases.models.backends import static_kv
from phases.models.backends.base import check_prompts


def _lcp(rows: Sequence[Sequence[int]], idx: Sequence[int], start: int) -> int:
    """Length of the common prefix of ``rows[i] for i in idx`` (known to share ``[:start]``)."""
    first = rows[idx[0]]
    cap = min(len(rows[i]) for i in idx) - 1  # keep >= 1 token of every row outside the prefix
    k = start
    while k < cap and all(rows[i][k] == first[k] for i in idx):
        k += 1
    return max(min(k, cap), 0)


def shared_prefix_groups(rows: Sequence[Sequence[int]], *, max_parts: int = 4, max_depth: int = 3) -> list[tuple[int, list[int]]]:
    """``[(prefix_len, row indices)]`` covering every row once; see the module docstring."""

    def split(idx: list[int], start: int, depth: int) -> list[tuple[int, list[int]]]:
        p = _lcp(rows, idx, start)
        if len(idx) == 1 or depth >= max_depth:
            return [(p, idx)]
        parts: dict[int, list[int]] = {}
        for i in idx:
            if len(rows[i]) - 1 <= p:  # this row cannot extend the prefix
                return [(p, idx)]
            parts.setdefault(rows[i][p], []).append(i)
        if len(parts) == 1 or len(parts) > max_parts or min(len(v) for v in parts.values()) < 2:
            return [(p, idx)]
        subs = [split(part, p, depth + 1) for part in parts.values()]
        # Worth it only if the extra shared tokens save at least 2 tokens per row on average
        # (each group's prefix is computed once; fragments cost batching efficiency).
        gain = sum((len(i) - 1) * (q - p) for sub in subs for q, i in sub)
        if gain < 2 * len(idx):
            return [(p, idx)]
        return [g for sub in subs for g in sub]

    if not rows:
        return []
    return split(list(range(len(rows))), 0, 0)


MAX_MEMO_PREFIXES = 8
_MEMO: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _weights_key(model) -> tuple:
    # Any in-place update of a parameter (an optimizer step, .float(), a load) changes this key.
    p = next(model.parameters())
    return (p.dtype, str(p.device), sum(q._version for q in model.parameters()))


def _prefix_kv(model, prefix: tuple[int, ...], dev):
    """The prefix's per-layer K/V, memoised per model (LRU, ``MAX_MEMO_PREFIXES``): the critic's
    rubric is computed once per run, not once per call. Returns ``(kv, computed_now)``."""
    memo = _MEMO.setdefault(model, {})
    key = (_weights_key(model), prefix)
    if key in memo:
        memo[key] = memo.pop(key)
        return memo[key], False
    ids = torch.tensor([list(prefix)], dtype=torch.long, device=dev)
    _, kv = static_kv.forward_prefixed(model, None, ids, torch.arange(len(prefix), device=dev)[None], None, return_kv=True)
    while len(memo) >= MAX_MEMO_PREFIXES:
        memo.pop(next(iter(memo)))
    memo[key] = kv
    return kv, True


def clear_prefix_memo(model=None) -> None:
    """Drop memoised prefix K/V (of one model, or all)."""
    if model is None:
        _MEMO.clear()
    else:
        _MEMO.pop(model, None)


def _chunks(rows: Sequence[Sequence[int]], idx: Sequence[int], plen: int, max_batch: int, max_tokens: int) -> list[list[int]]:
    """One group's rows cut into forwards: greedy over the length-sorted rows (the last row of a
    chunk is its widest), at most ``max_batch`` rows and ``max_tokens`` padded suffix tokens each."""
    idx = sorted(idx, key=lambda i: (len(rows[i]), i))
    out, k = [], 0
    while k < len(idx):
        j = k + 1
        while j < len(idx) and j - k < max_batch and (j + 1 - k) * (len(rows[idx[j]]) - plen) <= max_tokens:
            j += 1
        out.append(idx[k:j])
        k = j
    return out


def plan_forwards(rows: Sequence[Sequence[int]], *, max_batch: int = 64, max_tokens: int = 32768,
                  min_prefix: int = 8) -> list[tuple[int, list[int]]]:
    """The suffix forwards ``score_ids`` runs for ``rows`` with these settings, in its order:
    ``[(prefix_len, row indices)]``, one entry per forward (prefix K/V computations not counted).
    Pure (no torch work): ``phases/models/fast_rules.py`` reads the rows per forward from it."""
    plan = []
    for plen, idx in shared_prefix_groups(rows):
        plen = plen if plen >= min_prefix else 0
        plan += [(plen, chunk) for chunk in _chunks(rows, idx, plen, max_batch, max_tokens)]
    return plan


@torch.no_grad()
def score_ids(model, rows: Sequence[Sequence[int]], cand_ids: Sequence[int], *, pad_id: int = 0,
              max_batch: int = 64, max_tokens: int = 32768, min_prefix: int = 8, stats: dict | None = None) -> list[list[float]]:
    """Per row, the fp32 log-probs of ``cand_ids`` as the next token after the row's ids."""
    reason = static_kv.unsupported_reason(model)
    if reason:
        raise ValueError(f"prefix-cached scoring cannot run this model: {reason}; use backend.next_token_logprobs")
    dev = next(model.parameters()).device
    cands = torch.tensor(list(cand_ids), dtype=torch.long, device=dev)
    out: list[list[float] | None] = [None] * len(rows)
    groups = shared_prefix_groups(rows)
    n_prefix_tokens = n_suffix_tokens = n_padded = 0
    forwards: list[int] = []  # rows of each suffix forward, in order
    for plen, idx in groups:
        if plen < min_prefix:
            plen = 0
        prefix = None
        if plen:
            prefix, fresh = _prefix_kv(model, tuple(rows[idx[0]][:plen]), dev)
            n_prefix_tokens += plen if fresh else 0
        for chunk in _chunks(rows, idx, plen, max_batch, max_tokens):
            sfx = [rows[i][plen:] for i in chunk]
            n, W = len(chunk), max(len(s) for s in sfx)
            ids = torch.full((n, W), pad_id, dtype=torch.long)
            for b, s in enumerate(sfx):
                ids[b, : len(s)] = torch.tensor(s, dtype=torch.long)
            pos = (torch.arange(W) + plen).expand(n, W)
            last = torch.tensor([len(s) - 1 for s in sfx], dtype=torch.long)
            logits = static_kv.forward_prefixed(model, prefix, ids.to(dev), pos.to(dev), last.to(dev))
            picked = torch.log_softmax(logits, dim=-1)[:, cands].cpu().tolist()
            for b, i in enumerate(chunk):
                out[i] = picked[b]
            n_suffix_tokens += sum(len(s) for s in sfx)
            n_padded += n * W
            forwards.append(n)
    if stats is not None:
        stats.update(groups=[(p, len(i)) for p, i in groups], prefix_tokens=n_prefix_tokens,
                     suffix_tokens=n_suffix_tokens, padded_suffix_tokens=n_padded, forward_rows=forwards)
    return out  # type: ignore[return-value]


def next_token_logprobs(backend, prompts: Sequence[str], candidate_tokens: Sequence[str], *, truncation: str = "error",
                        max_batch: int | None = None, max_tokens: int = 32768) -> list[dict[str, float]]:
    """``HFBackend.next_token_logprobs`` through the shared-prefix cache (same contract)."""
    prompts = check_prompts(prompts)
    if not prompts:
        return []
    cands = list(candidate_tokens)
    cand_ids = backend.candidate_ids(cands)
    rows = backend.encode_rows(prompts, 0, truncation)
    lps = score_ids(backend.model, rows, cand_ids, pad_id=backend.pad_id,
                    max_batch=int(max_batch or max(backend.batch_size, 64)), max_tokens=max_tokens)
    return [dict(zip(cands, lp)) for lp in lps]
