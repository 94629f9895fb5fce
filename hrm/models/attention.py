"""Causal attention with RoPE and a fixed-size KV cache, at one or several pooled scales.

One module serves both uses:

- ``scales=(1,)``: ordinary causal multi-head attention (hybrid_pattern's ``A`` layers);
- ``scales=(1, 2, 4)``: hybrid_recursive's hierarchical attention. At scale ``s`` the keys and values
  are averages over the windows ``[w·s, (w+1)·s - 1]`` of positions *within a document* (a packed row
  restarts the windows at every document start, so a document packed after others is treated exactly as
  if it were fed alone); a query at position ``t`` may attend window ``w`` only when the window is
  complete, ``(w+1)·s - 1 <= t``, so a pooled key never summarises a future token. A pooled key's RoPE
  position is its window's last position. The scales' outputs are mixed with learned softmax weights and
  share one output projection. Each window is scored at its last position among all length positions
  (a mask keeps the aligned ones), so every scale costs as much as full attention: 3x for (1, 2, 4).

Decoding keeps the raw (pre-RoPE) keys and the values of every position in a buffer of
``model.max_cache_len`` positions plus a per-row write position, so a chunked prefill followed by
one-token steps computes the same thing as one full forward (jit-friendly: fixed shapes). Prompt plus
generated tokens must fit in ``max_cache_len``; writes past the end are clamped (and wrong).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from hrm.config import ModelConfig
from hrm.models.mamba import torch_default_init

NEG_INF = -1e30


class KVCache(NamedTuple):
    k: jax.Array     # (batch, max_cache_len, heads, head_dim): keys before RoPE
    v: jax.Array     # (batch, max_cache_len, heads, head_dim)
    pos: jax.Array   # (batch,) int32: positions written so far


def parse_scales(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in text.split(","))


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding of x (batch, length, heads, head_dim) at positions (batch, length)."""
    half = x.shape[-1] // 2
    freqs = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions.astype(jnp.float32)[..., None] * freqs                  # (b, l, half)
    cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1).astype(x.dtype)


def out_init(cfg: ModelConfig):
    """Output projections start small with depth, as Mamba's out_proj (GPT-2's rescaled residual init)."""
    if cfg.rescale_prenorm_residual:
        return nnx.initializers.variance_scaling(1 / (3 * cfg.n_layers), "fan_in", "uniform")
    return torch_default_init


def positions_in_segment(segment_ids: jax.Array) -> jax.Array:
    """(batch, length) int32: each position's offset from the start of its packed document."""
    t = jnp.arange(segment_ids.shape[1], dtype=jnp.int32)
    starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool),
                              segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    return t - jax.lax.cummax(jnp.where(starts, t, 0), axis=1)


def window_mean(x: jax.Array, s: int) -> jax.Array:
    """Mean of x (batch, length, ...) over the s positions ending at each position (zeros before 0)."""
    if s == 1:
        return x
    total = x.astype(jnp.float32)
    for i in range(1, s):
        total = total + jnp.pad(x, ((0, 0), (i, 0)) + ((0, 0),) * (x.ndim - 2))[:, :x.shape[1]]
    return (total / s).astype(x.dtype)


class MultiScaleAttention(nnx.Module):
    """Causal MHA with RoPE over the keys pooled at each of ``scales`` (see the module docstring)."""

    def __init__(self, cfg: ModelConfig, scales: tuple[int, ...] = (1,), *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.scales = tuple(scales)
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.d_model // cfg.n_heads
        dtype = jnp.dtype(cfg.dtype)
        linear = lambda init: nnx.Linear(cfg.d_model, cfg.d_model, use_bias=False, dtype=dtype,
                                         kernel_init=init, rngs=rngs)
        self.q_proj = linear(torch_default_init)
        self.k_proj = linear(torch_default_init)
        self.v_proj = linear(torch_default_init)
        self.out_proj = linear(out_init(cfg))
        if len(self.scales) > 1:
            self.scale_logits = nnx.Param(jnp.zeros((len(self.scales),), jnp.float32))

    def init_cache(self, batch: int) -> KVCache:
        shape = (batch, self.cfg.max_cache_len, self.n_heads, self.head_dim)
        dtype = jnp.dtype(self.cfg.dtype)
        return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch,), jnp.int32))

    def __call__(self, x: jax.Array, cache: KVCache | None = None, segment_ids: jax.Array | None = None):
        """x (batch, length, d_model) → (out (batch, length, d_model), cache).

        Without a cache the keys are this chunk's (positions 0..length-1) and ``segment_ids`` also keeps
        every query inside its own packed document. With a cache the chunk continues at ``cache.pos``
        (generation runs one document per row, so ``segment_ids`` is not used there).
        """
        b, l, d = x.shape
        h, dh = self.n_heads, self.head_dim
        q = self.q_proj(x).reshape(b, l, h, dh)
        k = self.k_proj(x).reshape(b, l, h, dh)
        v = self.v_proj(x).reshape(b, l, h, dh)
        if cache is None:
            start = jnp.zeros((b,), jnp.int32)
            keys, values, new_cache = k, v, None
        else:
            start = cache.pos
            write = jax.vmap(lambda buf, new, p: jax.lax.dynamic_update_slice(buf, new.astype(buf.dtype),
                                                                              (p, 0, 0)))
            keys, values = write(cache.k, k, start), write(cache.v, v, start)
            new_cache = KVCache(keys, values, start + l)
            segment_ids = None
        n_keys = keys.shape[1]
        q_pos = start[:, None] + jnp.arange(l, dtype=jnp.int32)[None]            # (b, l)
        q = rope(q, q_pos, self.cfg.rope_theta)
        k_pos = jnp.broadcast_to(jnp.arange(n_keys, dtype=jnp.int32), (b, n_keys))
        # position of every key inside its document (rows of a cache hold one document each)
        k_in_doc = k_pos if segment_ids is None else positions_in_segment(segment_ids)
        causal = k_pos[:, None, :] <= q_pos[:, :, None]                        # (b, q, k)
        if segment_ids is not None:
            causal = causal & (segment_ids[:, :, None] == segment_ids[:, None, :])

        outs = []
        for s in self.scales:
            # key j at scale s: the mean over the window [j - s + 1, j], usable only where that window is
            # one of the document's complete, aligned windows (j's position in its document ≡ s - 1 mod s)
            pooled_k, pooled_v = window_mean(keys, s), window_mean(values, s)
            pooled_k = rope(pooled_k, k_pos, self.cfg.rope_theta)
            mask = causal & ((k_in_doc + 1) % s == 0)[:, None, :]
            logits = jnp.einsum("bqhd,bkhd->bhqk", q, pooled_k,
                                preferred_element_type=jnp.float32) / math.sqrt(dh)
            logits = jnp.where(mask[:, None], logits, NEG_INF)
            probs = jax.nn.softmax(logits, axis=-1)
            # A query with no complete window yet (position in document < s - 1) gets nothing here.
            probs = probs * jnp.any(mask, axis=-1)[:, None, :, None]
            outs.append(jnp.einsum("bhqk,bkhd->bqhd", probs.astype(pooled_v.dtype), pooled_v))
        if len(outs) > 1:
            weights = jax.nn.softmax(self.scale_logits[...])
            out = sum(w.astype(o.dtype) * o for w, o in zip(weights, outs))
        else:
            out = outs[0]
        return self.out_proj(out.reshape(b, l, d)), new_cache


class MLP(nnx.Module):
    """d → mlp_ratio·d → GELU → d; the mixer signature of a cache-free layer."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(cfg.dtype)
        hidden = cfg.mlp_ratio * cfg.d_model
        self.fc1 = nnx.Linear(cfg.d_model, hidden, dtype=dtype, kernel_init=torch_default_init, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, cfg.d_model, dtype=dtype, kernel_init=out_init(cfg), rngs=rngs)

    def init_cache(self, batch: int):
        return None

    def __call__(self, x, cache=None, segment_ids=None):
        return self.fc2(jax.nn.gelu(self.fc1(x))), cache
