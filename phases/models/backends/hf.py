"""Transformers backend: batched, left-padded generation and next-token scoring (CPU or CUDA).

Not runnable; built by ``phases.models.loader.load_model(..., backend="hf")``.

How it keeps batched == one-at-a-time (see backends/base.py for the shared contract):
- Left padding with an explicit attention mask *and* explicit position ids (real tokens of every
  row get positions 0..n-1 whatever the padding), so each row sees exactly what it would alone.
- Prompts are sorted by token length into buckets of ``batch_size`` (less padding) and results
  are put back in input order.
- The decoding loop is our own (not ``model.generate``): each row samples with its own
  ``torch.Generator`` seeded from its seed, by inverse-CDF on one uniform draw per step, so a
  row's tokens depend on its seed and its own logits only, never on which rows share its batch.
  Greedy is argmax. Repetition penalty (HF/CTRL rule) and top-p (smallest set whose mass
  reaches ``top_p``, ties broken by token id) are applied per row.
- Scoring runs ONE forward pass per bucket, computing logits only at the last position
  (``logits_to_keep=1``); log-softmax in fp32.
- On CUDA, scoring runs inside ``phases.models.attention.variable_shape_attention`` (SDPA without
  cuDNN's attention, which builds a graph per new input shape on the CPU: a plain critic call on
  shapes not seen before took 1.48x its repeated-shape time at 1.5B on the H200, 1.08x at 7B,
  while repeated shapes ran at most 2% slower without cuDNN; docs/performance.md "Issue 15, sixth run").
  Generation keeps PyTorch's pick: fastgen (the CUDA route) replays its decode graph on repeated
  shapes, where cuDNN's kernel was 3-5% faster.
Empty prompts (zero tokens) raise ``ValueError``: with no BOS there is nothing to condition on.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch

from phases.models.attention import variable_shape_attention
from phases.models.backends.base import (
    Backend,
    Generation,
    GenerationParams,
    check_prompts,
    resolve_seeds,
)


class HFBackend(Backend):
    name = "hf"
    # Fast paths (docs/performance.md): prefix-cached scoring (phases/models/prefix_cache.py) and
    # static-KV CUDA-graph decoding (backends/fastgen.py), same contract and, in fp32, the same
    # results. "auto": on CUDA for supported architectures, each call taking the path that
    # phases/models/fast_rules.py picks for the model and prompts; True: the fast paths wherever
    # supported (tests, benchmarks); False: off.
    fast_paths: bool | str = "auto"
    fast_compile = False  # also torch.compile the decode step's layers (first call per shape ~7 s)

    def __init__(
        self,
        model,
        encode: Callable[[str], list[int]],
        decode: Callable[[Sequence[int]], str],
        max_context: int,
        *,
        pad_id: int,
        stop_token_ids: Sequence[int],
        batch_size: int = 8,
    ):
        super().__init__(encode, decode, max_context)
        self.model = model
        self.pad_id = int(pad_id)
        self.stop_token_ids = frozenset(int(t) for t in stop_token_ids)
        self.eos_id = int(stop_token_ids[0]) if stop_token_ids else None
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        # transformers >= 5.2x renamed `past_key_values` to `cache`; older 5.x only know the former.
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    def _use_fast(self) -> bool:
        if self.fast_paths is False or (self.fast_paths == "auto" and self.device.type != "cuda"):
            return False
        from phases.models.backends.static_kv import unsupported_reason  # lazy: CUDA fast path, imports torch

        return unsupported_reason(self.model) is None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- helpers -----------------------------------------------------------------------------

    def _buckets(self, rows: list[list[int]]) -> list[list[int]]:
        order = sorted(range(len(rows)), key=lambda i: (len(rows[i]), i))
        return [order[k : k + self.batch_size] for k in range(0, len(order), self.batch_size)]

    def _pad(self, rows: list[list[int]]):
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[b, width - len(r) :] = 1
        # Explicit positions: padding must not shift the real tokens' positions.
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        dev = self.device
        return ids.to(dev), mask.to(dev), pos.to(dev)

    # -- scoring -----------------------------------------------------------------------------

    def _prefix_max_batch(self) -> int:
        # the prefix path's rows per forward: at least 64 (its fixed per-forward costs need a batch)
        return int(max(self.batch_size, 64))

    def critic_route(self, rows: Sequence[Sequence[int]]) -> str:
        """The path ``next_token_logprobs`` takes for these encoded rows: ``"prefix"`` or ``"plain"``.

        The faster path by a fixed rule (``phases/models/fast_rules.py``), never by timing: resumed
        data steps must give the same bytes. ``fast_paths`` False, or "auto" off CUDA or on an
        unsupported architecture: plain; True: prefix; "auto": ``fast_rules.critic_route`` with
        this backend's prefix batch. Benchmarks record this value as the route that ran.
        """
        if not rows or not self._use_fast():
            return "plain"
        if self.fast_paths is True:
            return "prefix"
        from phases.models import fast_rules  # lazy: its planning imports prefix_cache (torch)

        return fast_rules.critic_route(self.model, rows, max_batch=self._prefix_max_batch())

    def next_token_logprobs(
        self, prompts: Sequence[str], candidate_tokens: Sequence[str], *, truncation: str = "error"
    ) -> list[dict[str, float]]:
        with variable_shape_attention(str(self.device)):  # no cuDNN per-shape graphs (module docstring)
            return self._next_token_logprobs(prompts, candidate_tokens, truncation=truncation)

    @torch.no_grad()
    def _next_token_logprobs(
        self, prompts: Sequence[str], candidate_tokens: Sequence[str], *, truncation: str = "error"
    ) -> list[dict[str, float]]:
        prompts = check_prompts(prompts)
        if not prompts:
            return []
        cands = list(candidate_tokens)
        rows = self.encode_rows(prompts, 0, truncation)
        if self.critic_route(rows) == "prefix":
            from phases.models import prefix_cache  # lazy: CUDA fast path

            lps = prefix_cache.score_ids(self.model, rows, self.candidate_ids(cands), pad_id=self.pad_id,
                                         max_batch=self._prefix_max_batch())
            return [dict(zip(cands, lp)) for lp in lps]
        cand_ids = torch.tensor(self.candidate_ids(cands), dtype=torch.long)
        result: list[dict[str, float]] = [{} for _ in prompts]
        for bucket in self._buckets(rows):
            ids, mask, pos = self._pad([rows[i] for i in bucket])
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, logits_to_keep=1)
            logp = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
            picked = logp[:, cand_ids.to(logp.device)].cpu().tolist()
            for b, i in enumerate(bucket):
                result[i] = dict(zip(cands, picked[b]))
        return result

    # -- generation --------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self, prompts: Sequence[str], params: GenerationParams, seeds: Sequence[int] | None = None
    ) -> list[Generation]:
        prompts = check_prompts(prompts)
        seeds = resolve_seeds(len(prompts), seeds)
        if not prompts:
            return []
        if self._use_fast():
            from phases.models import fast_rules  # lazy: CUDA fast path
            from phases.models.backends import fastgen  # lazy: CUDA fast path

            if self.fast_paths is True or fast_rules.generation_route(self.model, len(prompts)) == "fast":
                return fastgen.generate(self, prompts, params, seeds, compile_step=self.fast_compile)
        rows = self.encode_rows(prompts, params.max_new_tokens, params.truncation)
        result: list[Generation | None] = [None] * len(prompts)
        for bucket in self._buckets(rows):
            gens = self._generate_bucket([rows[i] for i in bucket], params, [seeds[i] for i in bucket])
            for b, i in enumerate(bucket):
                result[i] = gens[b]
        return result  # type: ignore[return-value]

    def _next_tokens(self, logits: torch.Tensor, seen: torch.Tensor, params: GenerationParams, gens) -> list[int]:
        """One decoding step for every row at once; each row uses only its own logits and generator."""
        scores = logits
        if params.repetition_penalty != 1.0:
            penalised = torch.where(scores > 0, scores / params.repetition_penalty, scores * params.repetition_penalty)
            scores = torch.where(seen, penalised, scores)
        if not params.do_sample:
            return scores.argmax(dim=-1).tolist()
        probs = torch.softmax(scores / params.temperature, dim=-1)
        sorted_p, sorted_i = torch.sort(probs, dim=-1, descending=True, stable=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        keep = (sorted_p.cumsum(dim=-1) - sorted_p) < params.top_p
        cdf = (sorted_p * keep).double().cumsum(dim=-1)
        # One uniform per row from the row's own generator: inverse-CDF sampling.
        u = torch.tensor([torch.rand((), generator=g, dtype=torch.float64).item() for g in gens], dtype=torch.float64)
        u = u.to(cdf.device) * cdf[:, -1]
        j = torch.searchsorted(cdf, u[:, None]).squeeze(1)
        j = torch.minimum(j, keep.sum(dim=-1) - 1)
        return sorted_i.gather(1, j[:, None]).squeeze(1).tolist()

    def _generate_bucket(self, rows: list[list[int]], params: GenerationParams, seeds: list[int]) -> list[Generation]:
        model = self.model
        n = len(rows)
        ids, mask, pos = self._pad(rows)
        vocab = model.get_output_embeddings().weight.shape[0]
        seen = torch.zeros((n, vocab), dtype=torch.bool, device=ids.device)
        for b, r in enumerate(rows):
            seen[b, torch.tensor(r, device=ids.device)] = True
        gens = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        past = _cache_of(out)
        logits = out.logits[:, -1, :].float()
        next_pos = pos[:, -1] + 1
        generated: list[list[int]] = [[] for _ in range(n)]
        reasons: list[str | None] = [None] * n
        texts: list[str | None] = [None] * n
        for step in range(params.max_new_tokens):
            step_tokens = self._next_tokens(logits, seen, params, gens)
            for b in range(n):
                if reasons[b] is not None:
                    step_tokens[b] = self.pad_id  # finished rows are fed padding; their output is ignored
                    continue
                tok = step_tokens[b]
                generated[b].append(tok)
                seen[b, tok] = True
                if tok in self.stop_token_ids:
                    reasons[b] = "eos"
                elif params.stop:
                    text = self.decode(generated[b])
                    cut = _first_stop(text, params.stop)
                    if cut is not None:
                        reasons[b], texts[b] = "stop", text[:cut]
            if all(r is not None for r in reasons) or step == params.max_new_tokens - 1:
                break
            tok_t = torch.tensor(step_tokens, dtype=torch.long, device=ids.device)[:, None]
            mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=mask.device)], dim=1)
            out = model(
                input_ids=tok_t,
                attention_mask=mask,
                position_ids=next_pos[:, None],
                use_cache=True,
                **{self._cache_kw: past},
            )
            past = _cache_of(out)
            logits = out.logits[:, -1, :].float()
            next_pos = next_pos + 1
        results = []
        for b in range(n):
            reason = reasons[b] or "length"
            toks = generated[b]
            if texts[b] is not None:
                text = texts[b]
            else:
                body = toks[:-1] if reason == "eos" else toks
                text = self.decode(body)
            results.append(
                Generation(
                    text=text,
                    token_ids=tuple(toks),
                    n_tokens=len(toks),
                    hit_token_limit=reason == "length",
                    finish_reason=reason,
                    prompt_tokens=len(rows[b]),
                    seed=seeds[b],
                )
            )
        return results


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None
