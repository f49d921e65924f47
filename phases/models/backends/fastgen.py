"""Fast batched generation for the transformers backend: static KV cache, vectorised decoding,
one CUDA graph per decode step.

Not runnable; call ``generate(backend, prompts, params, seeds)`` with an ``HFBackend`` (or build the
backend with ``fast=True`` where it is wired in). Same contract and same results as
``HFBackend.generate`` (backends/base.py):

- Greedy tokens are identical to the plain path's (same arithmetic per row; checked on CPU by
  tests/integration/test_fast_paths.py, and reported on the GPU by benchmarks/bench_generation.py).
- Sampling uses the same per-row recipe: repetition penalty over prompt + generated ids, softmax
  at ``temperature``, top-p over a stable descending sort, inverse-CDF with one float64 uniform per
  step drawn from ``torch.Generator().manual_seed(seed)``. All uniforms of a row are drawn up front
  (``torch.rand(max_new_tokens)``; the same stream as the plain path's one-per-step draws), so a
  row depends on its own seed and logits only, never on its batch.
- Finished rows keep decoding until the batch ends (their extra tokens are discarded), so the
  step has a fixed shape; the batch stops early once every row has produced a stop token
  (checked every ``check_every`` steps, one host sync each).
- Stop strings and stop tokens are applied afterwards, token by token, by exactly the plain
  path's rule (stop token first, then the earliest stop string in the decoded continuation).

Speed: on CUDA each decode step (forward over the static cache, logit processing, writing the
token, advancing positions) is captured as a CUDA graph and replayed, so the host issues one
launch per step instead of ~20 per layer plus a per-row ``.item()`` loop. Graphs and their static
buffers are kept on the backend per decode shape (rows, cache length rounded up to 64, max new
tokens, sampling settings; at most 4 shapes), so capture is paid once per shape, not per bucket.
On CPU (tests) the same step runs eagerly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from phases.models.backends import static_kv
from phases.models.backends.base import Generation, GenerationParams, check_prompts, resolve_seeds


def process_rows(logits: torch.Tensor, seen: torch.Tensor, params: GenerationParams, u: torch.Tensor | None) -> torch.Tensor:
    """Next token per row, ``(n,)`` long: the same arithmetic as ``HFBackend._next_tokens``.

    ``logits`` fp32 ``(n, V)``; ``seen`` bool ``(n, V)``; ``u`` float64 ``(n,)`` uniforms in [0, 1)
    (ignored for greedy).
    """
    scores = logits
    if params.repetition_penalty != 1.0:
        penalised = torch.where(scores > 0, scores / params.repetition_penalty, scores * params.repetition_penalty)
        scores = torch.where(seen, penalised, scores)
    if not params.do_sample:
        return torch.argmax(scores, dim=-1)
    probs = torch.softmax(scores / params.temperature, dim=-1)
    sorted_p, sorted_i = torch.sort(probs, dim=-1, descending=True, stable=True)
    keep = (sorted_p.cumsum(dim=-1) - sorted_p) < params.top_p
    cdf = (sorted_p * keep).double().cumsum(dim=-1)
    target = u * cdf[:, -1]
    j = torch.searchsorted(cdf, target[:, None]).squeeze(1)
    j = torch.minimum(j, keep.sum(dim=-1) - 1)
    return sorted_i.gather(1, j[:, None]).squeeze(1)


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None


def _finish_row(backend, toks: list[int], params: GenerationParams, prompt_len: int, seed: int) -> Generation:
    """Apply the plain path's per-token stopping rule to a row's raw tokens."""
    generated: list[int] = []
    reason, text = None, None
    for tok in toks[: params.max_new_tokens]:
        generated.append(tok)
        if tok in backend.stop_token_ids:
            reason = "eos"
            break
        if params.stop:
            t = backend.decode(generated)
            cut = _first_stop(t, params.stop)
            if cut is not None:
                reason, text = "stop", t[:cut]
                break
    reason = reason or "length"
    if text is None:
        text = backend.decode(generated[:-1] if reason == "eos" else generated)
    return Generation(
        text=text,
        token_ids=tuple(generated),
        n_tokens=len(generated),
        hit_token_limit=reason == "length",
        finish_reason=reason,
        prompt_tokens=prompt_len,
        seed=seed,
    )


class _Bucket:
    """Static buffers of one decode shape ``(n rows, cache length L, M new tokens, params)``.

    The captured step reads and writes only these tensors, so a later bucket of the same shape
    refills them in place (``load``) and replays the same graph: capture (~1 eager step plus
    instantiation) is paid once per shape, not per bucket. Prompts of any width ``W <= L - M`` fit.
    """

    def __init__(self, model, n: int, L: int, params: GenerationParams, stop_ids: Sequence[int], dev, compile_step: bool = False):
        M = params.max_new_tokens
        self.layer_fn = static_kv.compiled_layer_step() if compile_step else None
        self.model, self.params, self.n, self.M, self.dev = model, params, n, M, dev
        self.kv = static_kv.StaticKV(model, n, L)
        vocab = model.get_output_embeddings().weight.shape[0]
        self.seen = torch.zeros((n, vocab), dtype=torch.bool, device=dev)
        self.U = torch.zeros((n, M), dtype=torch.float64, device=dev) if params.do_sample else None
        self.out = torch.zeros((n, M), dtype=torch.long, device=dev)
        self.tok = torch.zeros((n,), dtype=torch.long, device=dev)
        self.pos = torch.zeros((n, 1), dtype=torch.long, device=dev)
        self.slot = torch.zeros((1,), dtype=torch.long, device=dev)
        self.step = torch.zeros((1,), dtype=torch.long, device=dev)
        stops = sorted(stop_ids)
        self.stop_ids = torch.tensor(stops, dtype=torch.long, device=dev) if stops else None
        self.finished = torch.zeros((n,), dtype=torch.bool, device=dev)
        self.graph = None
        self.graph_error = None

    def load(self, rows: list[list[int]], seeds: list[int], pad_id: int) -> None:
        """Refill every buffer for ``rows`` (exactly ``n`` of them) and run the prefill."""
        n, dev, kv = self.n, self.dev, self.kv
        width = max(len(r) for r in rows)
        ids = torch.full((n, width), pad_id, dtype=torch.long)
        valid = torch.zeros((n, width), dtype=torch.bool)
        for b, r in enumerate(rows):
            ids[b, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            valid[b, width - len(r) :] = True
        pos = (valid.long().cumsum(-1) - 1).clamp(min=0)
        ids, valid, pos = ids.to(dev), valid.to(dev), pos.to(dev)
        self.seen.zero_()
        # Pads point at the row's last token (always real under left padding), so a pad id that
        # is also a real prompt token can never be written False over True.
        self.seen.scatter_(1, torch.where(valid, ids, ids[:, -1:]), True)
        if self.U is not None:
            U = torch.stack([torch.rand(self.M, generator=torch.Generator(device="cpu").manual_seed(s), dtype=torch.float64) for s in seeds])
            self.U.copy_(U)
        self.out.zero_()
        self.finished.zero_()
        self.step.zero_()
        self.pos.copy_(pos[:, -1:] + 1)
        self.slot.fill_(width)
        # Stale K/V from an earlier bucket stays in the buffers but is never valid, so never seen.
        kv.key_valid.zero_()
        kv.key_valid[:, :width] = valid
        logits = static_kv.forward(self.model, kv, ids, pos, torch.arange(width, device=dev))
        self._emit(logits)

    def _emit(self, logits: torch.Tensor) -> None:
        u = self.U.index_select(1, self.step).squeeze(1) if self.U is not None else None
        t = process_rows(logits, self.seen, self.params, u)
        self.out.index_copy_(1, self.step, t[:, None])
        self.seen.scatter_(1, t[:, None], True)
        if self.stop_ids is not None:
            self.finished |= torch.isin(t, self.stop_ids)
        self.tok.copy_(t)
        self.step.add_(1)

    def decode_step(self) -> None:
        self.kv.key_valid.index_fill_(1, self.slot, True)
        logits = static_kv.forward(self.model, self.kv, self.tok[:, None], self.pos, self.slot, layer_fn=self.layer_fn)
        self._emit(logits)
        self.pos.add_(1)
        self.slot.add_(1)

    def capture(self) -> None:
        """Capture one decode step. Call right after ``load``: it first runs 2 real steps eagerly
        on a side stream (warming cuBLAS and the allocator; capture itself runs nothing)."""
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                self.decode_step()
        torch.cuda.current_stream().wait_stream(s)
        try:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                self.decode_step()
            self.graph = g
        except Exception as e:  # an op that cannot be captured: stay eager (still vectorised)
            self.graph_error = f"{type(e).__name__}: {e}"[:300]
            self.layer_fn = None  # and uncompiled, in case compilation under capture was the cause


CACHE_ATTR = "_fastgen_buckets"
MAX_CACHED_SHAPES = 4
LENGTH_QUANTUM = 64  # cache lengths are rounded up to this, so buckets of similar width share a graph


def _bucket_for(backend, n: int, width: int, params: GenerationParams, use_graph: bool, compile_step: bool) -> _Bucket:
    L = -(-(width + params.max_new_tokens) // LENGTH_QUANTUM) * LENGTH_QUANTUM
    dtype = next(backend.model.parameters()).dtype
    key = (n, L, params.max_new_tokens, params.do_sample, params.temperature, params.top_p, params.repetition_penalty,
           use_graph, compile_step, dtype)
    cache = backend.__dict__.setdefault(CACHE_ATTR, {})
    if key in cache:
        cache[key] = cache.pop(key)  # most recently used last
        return cache[key]
    while len(cache) >= MAX_CACHED_SHAPES:
        cache.pop(next(iter(cache)))
    b = _Bucket(backend.model, n, L, params, backend.stop_token_ids, backend.device, compile_step)
    cache[key] = b
    return b


@torch.no_grad()
def generate_bucket(backend, rows: list[list[int]], params: GenerationParams, seeds: list[int], *, n: int | None = None,
                    use_graph: bool | None = None, compile_step: bool = False, check_every: int = 8,
                    stats: dict | None = None) -> list[Generation]:
    """Decode one bucket of encoded prompts; see the module docstring.

    ``n`` (>= len(rows)) is the batch shape: missing rows are filled with copies of the last
    one and discarded, so a short final bucket reuses the full-size graph.
    """
    k = len(rows)
    n = max(int(n or k), k)
    full = rows + [rows[-1]] * (n - k)
    full_seeds = list(seeds) + [seeds[-1]] * (n - k)
    on_cuda = torch.device(backend.device).type == "cuda"
    use_graph = on_cuda if use_graph is None else (use_graph and on_cuda)
    st = _bucket_for(backend, n, max(len(r) for r in full), params, use_graph, compile_step)
    st.load(full, full_seeds, backend.pad_id)
    remaining = params.max_new_tokens - 1
    fresh = use_graph and st.graph is None and st.graph_error is None and remaining > 2
    if fresh:
        st.capture()
        remaining -= 2
    done = 0
    while done < remaining:
        if st.graph is not None:
            st.graph.replay()
        else:
            st.decode_step()
        done += 1
        if st.stop_ids is not None and done % check_every == 0 and bool(st.finished.all()):
            break
    if stats is not None:
        stats.update(graph=st.graph is not None, captured_now=fresh, graph_error=st.graph_error, kv_bytes=st.kv.nbytes())
    out = st.out.cpu().tolist()
    return [_finish_row(backend, out[b], params, len(rows[b]), seeds[b]) for b in range(k)]


def generate(backend, prompts: Sequence[str], params: GenerationParams, seeds: Sequence[int] | None = None, *,
             batch_size: int | None = None, use_graph: bool | None = None, compile_step: bool = False) -> list[Generation]:
    """``HFBackend.generate`` with the fast decode loop (same contract, same order of results).

    ``batch_size`` defaults to the backend's; prompts are sorted by token length into buckets.
    ``compile_step=True`` runs the decode step's layers through ``torch.compile`` (fewer, fused
    kernels; the first call per shape pays the compilation, tens of seconds).
    """
    prompts = check_prompts(prompts)
    seeds = resolve_seeds(len(prompts), seeds)
    if not prompts:
        return []
    reason = static_kv.unsupported_reason(backend.model)
    if reason:
        raise ValueError(f"fast generation cannot run this model: {reason}; use the plain backend.generate")
    bs = int(batch_size or backend.batch_size)
    rows = backend.encode_rows(prompts, params.max_new_tokens, params.truncation)
    order = sorted(range(len(rows)), key=lambda i: (len(rows[i]), i))
    result: list[Generation | None] = [None] * len(prompts)
    for k in range(0, len(order), bs):
        bucket = order[k : k + bs]
        # A short last bucket is padded up to the full shape (reusing its graph) unless it is tiny.
        n = bs if 2 * len(bucket) >= bs else len(bucket)
        gens = generate_bucket(backend, [rows[i] for i in bucket], params, [seeds[i] for i in bucket], n=n, use_graph=use_graph,
                               compile_step=compile_step)
        for b, i in enumerate(bucket):
            result[i] = gens[b]
    return result  # type: ignore[return-value]
