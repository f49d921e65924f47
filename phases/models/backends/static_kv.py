"""A forward pass of a loaded HF Qwen2/Llama-family causal LM over a preallocated (static) KV cache.

Not runnable; used by ``fastgen`` (CUDA-graph decoding) and ``phases.models.prefix_cache``
(shared-prefix critic scoring). Torch is imported here (never on the ``runner status`` path).

Why it exists: the transformers forward grows a ``DynamicCache`` by concatenation every step and
rebuilds masks in Python, which costs more than the arithmetic for small decode steps, and cannot
be captured in a CUDA graph. Here the cache has a fixed shape ``(batch, kv_heads, length, head_dim)``
per layer, writes go to slot indices held in a device tensor, and the mask comes from a device
bitmap, so one decode step has fixed shapes and no host synchronisation.

Numerics: every sub-module except attention is the model's own (embedding, rotary embedding,
RMSNorms, q/k/v/o projections, MLP, final norm, lm_head), so the weights and their rounding are the
transformers ones; attention is ``scaled_dot_product_attention`` with the module's own scaling.
On CPU in float32 the log-probs match the transformers forward to ~1e-6.

Contract of ``forward``:
- ``ids``, ``pos``: ``(n, t)`` long; ``pos`` are the real RoPE positions (pads may hold anything).
- ``slots``: ``(t,)`` long device tensor, the cache columns these ``t`` tokens are written to
  (increasing). Query ``i`` may see key column ``j`` iff ``kv.key_valid[b, j]`` and
  ``j <= slots[i]``; it always sees itself (so pad rows stay finite; real rows never see a pad,
  because callers leave pad columns invalid).
- The caller sets ``kv.key_valid`` for the columns being written before calling.
- Returns fp32 logits of the LAST query position only, shape ``(n, vocab)``.

Supported: decoder-only models whose layers have ``self_attn.{q,k,v,o}_proj`` and no q/k norms and
no active sliding window (Qwen2, Qwen2.5, Llama, SmolLM2). ``unsupported_reason(model)`` says why
not otherwise; callers then keep the plain transformers path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SUPPORTED_TYPES = ("qwen2", "llama")


def unsupported_reason(model) -> str | None:
    """``None`` if ``forward`` can run this model, else a one-line reason."""
    cfg = getattr(model, "config", None)
    mtype = getattr(cfg, "model_type", None)
    if mtype not in SUPPORTED_TYPES:
        return f"model_type {mtype!r} is not one of {SUPPORTED_TYPES}"
    if getattr(cfg, "use_sliding_window", False):
        return "sliding-window attention is enabled"
    if getattr(model, "quantization_method", None) or getattr(cfg, "quantization_config", None):
        return "quantized weights (bitsandbytes) keep the transformers path"
    try:
        layer = model.get_decoder().layers[0]
        attn = layer.self_attn
    except (AttributeError, IndexError):
        return "no get_decoder().layers[0].self_attn"
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        if not hasattr(attn, name):
            return f"attention has no {name}"
    if hasattr(attn, "q_norm") or hasattr(attn, "k_norm"):
        return "attention has q/k norms"
    return None


class StaticKV:
    """Per-layer K/V buffers ``(batch, kv_heads, length, head_dim)`` plus a key-valid bitmap."""

    def __init__(self, model, batch: int, length: int):
        cfg = model.config
        p = next(model.parameters())
        # Rounded up to a multiple of 8: the fused attention kernels want an aligned mask row;
        # the extra columns stay invalid.
        self.batch, self.length = int(batch), -(-int(length) // 8) * 8
        self.n_heads = int(cfg.num_attention_heads)
        self.n_kv = int(getattr(cfg, "num_key_value_heads", None) or self.n_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads)
        n_layers = len(model.get_decoder().layers)
        shape = (self.batch, self.n_kv, self.length, self.head_dim)
        self.k = [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in range(n_layers)]
        self.key_valid = torch.zeros((self.batch, self.length), dtype=torch.bool, device=p.device)
        self.cols = torch.arange(self.length, device=p.device)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def forward(model, kv: StaticKV, ids: torch.Tensor, pos: torch.Tensor, slots: torch.Tensor, layer_fn=None) -> torch.Tensor:
    """See the module docstring. Runs under the caller's ``no_grad``/graph capture.
    ``layer_fn``: a drop-in for ``layer_step`` (e.g. ``compiled_layer_step()``)."""
    dec = model.get_decoder()
    n, t = ids.shape
    H, KVH, hd = kv.n_heads, kv.n_kv, kv.head_dim
    g = H // KVH
    h = dec.embed_tokens(ids)
    cos, sin = dec.rotary_emb(h, pos)
    cos, sin = cos[:, None], sin[:, None]  # (n, 1, t, hd)
    cols = kv.cols
    # (n, 1, t, L): valid keys at or before the query's slot, plus the query itself.
    allowed = (kv.key_valid[:, None, None, :] & (cols[None, None, None, :] <= slots[None, None, :, None])) | (
        cols[None, None, None, :] == slots[None, None, :, None]
    )
    # Grouped-query attention without copying K/V: fold the g query heads that share a KV head
    # into the query-length axis, so K/V keep KVH heads (HF's repeat_kv order: head = kv*g + r).
    allowed = allowed[:, :, None].expand(n, 1, g, t, kv.length).reshape(n, 1, g * t, kv.length)
    step = layer_fn or layer_step
    for i, layer in enumerate(dec.layers):
        h = step(layer, h, cos, sin, kv.k[i], kv.v[i], slots, allowed, H, KVH, hd)
    last = dec.norm(h[:, -1:, :])
    return model.get_output_embeddings()(last)[:, -1, :].float()


def _qkv(layer, h, cos, sin, H: int, KVH: int, hd: int):
    """The layer's normed q/k/v projections, shaped (n, heads, t, hd), with RoPE applied to q and k."""
    n, t, _ = h.shape
    attn = layer.self_attn
    x = layer.input_layernorm(h)
    q = attn.q_proj(x).view(n, t, H, hd).transpose(1, 2)
    k = attn.k_proj(x).view(n, t, KVH, hd).transpose(1, 2)
    v = attn.v_proj(x).view(n, t, KVH, hd).transpose(1, 2)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin, v


def layer_step(layer, h, cos, sin, kc, vc, slots, allowed, H: int, KVH: int, hd: int):
    """One decoder layer over the static cache ``kc``/``vc`` of that layer (written in place).

    A free function of plain arguments so that ``torch.compile`` can compile it once and reuse
    the result for every layer (``compiled_layer_step``)."""
    n, t, _ = h.shape
    g = H // KVH
    attn = layer.self_attn
    q, k, v = _qkv(layer, h, cos, sin, H, KVH, hd)
    kc.index_copy_(2, slots, k)
    vc.index_copy_(2, slots, v)
    qg = q.reshape(n, KVH, g * t, hd)
    o = F.scaled_dot_product_attention(qg, kc, vc, attn_mask=allowed, scale=attn.scaling)
    o = o.reshape(n, H, t, hd).transpose(1, 2).reshape(n, t, H * hd)
    h = h + attn.o_proj(o)
    return h + layer.mlp(layer.post_attention_layernorm(h))


_COMPILED = None


def compiled_layer_step():
    """``layer_step`` through ``torch.compile`` (one compilation shared by all layers and models;
    the element-wise chains of RMSNorm, RoPE and SwiGLU fuse into a few kernels)."""
    global _COMPILED
    if _COMPILED is None:
        import torch._dynamo

        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        _COMPILED = torch.compile(layer_step, dynamic=None, fullgraph=False)
    return _COMPILED


def forward_prefixed(model, prefix: list[tuple[torch.Tensor, torch.Tensor]] | None, ids: torch.Tensor, pos: torch.Tensor,
                     last: torch.Tensor | None, *, return_kv: bool = False):
    """Prefill-style forward of right-padded rows after a shared prefix (the critic's fast path).

    - ``prefix``: per layer ``(k, v)`` of shape ``(1, kv_heads, P, head_dim)`` (post-RoPE), shared
      by every row, or ``None`` (P = 0).
    - ``ids``, ``pos``: ``(n, W)``; rows are RIGHT-padded, so under causal attention no real token
      ever sees a pad and no mask is needed: attention is causal aligned to the bottom-right
      (query ``i`` sees the prefix and suffix tokens ``<= i``), which the flash / memory-efficient
      kernels run directly.
    - ``last``: ``(n,)`` index of each row's last real token; returns its fp32 logits ``(n, vocab)``
      (``None``: no logits, e.g. when only the prefix KV is wanted).
    - ``return_kv``: also return this call's per-layer ``(k, v)`` (for building a prefix).
    """
    from torch.nn.attention.bias import causal_lower_right

    dec = model.get_decoder()
    cfg = model.config
    n, t = ids.shape
    H = int(cfg.num_attention_heads)
    KVH = int(getattr(cfg, "num_key_value_heads", None) or H)
    hd = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // H)
    g = H // KVH
    P = 0 if prefix is None else prefix[0][0].shape[2]
    h = dec.embed_tokens(ids)
    cos, sin = dec.rotary_emb(h, pos)
    cos, sin = cos[:, None], sin[:, None]
    bias = causal_lower_right(t, P + t) if P else None
    kvs = []
    for i, layer in enumerate(dec.layers):
        attn = layer.self_attn
        q, k, v = _qkv(layer, h, cos, sin, H, KVH, hd)
        if return_kv:
            kvs.append((k, v))
        if P:
            pk, pv = prefix[i]
            k = torch.cat([pk.expand(n, -1, -1, -1), k], dim=2)
            v = torch.cat([pv.expand(n, -1, -1, -1), v], dim=2)
        if g > 1:  # HF's repeat_kv order: query head kv*g + r uses kv head kv
            k = k[:, :, None].expand(n, KVH, g, P + t, hd).reshape(n, H, P + t, hd)
            v = v[:, :, None].expand(n, KVH, g, P + t, hd).reshape(n, H, P + t, hd)
        if bias is None:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=attn.scaling)
        else:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=attn.scaling)
        h = h + attn.o_proj(o.transpose(1, 2).reshape(n, t, H * hd))
        h = h + layer.mlp(layer.post_attention_layernorm(h))
    logits = None
    if last is not None:
        sel = h[torch.arange(n, device=h.device), last][:, None]
        logits = model.get_output_embeddings()(dec.norm(sel))[:, -1, :].float()
    return (logits, kvs) if return_kv else logits
