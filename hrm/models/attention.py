"""Causal attention with RoPE and a fixed-size KV cache, at one or several pooled scales.

One module serves both uses:

- ``scales=(1,)``: ordinary causal multi-head attention (hybrid_pattern's ``A`` layers);
- ``scales=(1, 2, 4)``: hybrid_recursive's hierarchical attention. At scale ``s`` the keys and values
  are averages over the windows ``[w·s, (w+1)·s - 1]`` of positions *within a document* (a packed row
  restarts the windows at every document start, so a document packed after others is treated exactly as
  if it were fed alone); a query at position ``t`` may attend window ``w`` only when the window is
  complete, ``(w+1)·s - 1 <= t``, so a pooled key never summarises a future token. A pooled key's RoPE
  position is its window's last position. The scales' outputs are mixed with learned softmax weights and
  share one output projection.

Each scale attends only its pooled keys: ``pool_windows`` gathers each document's complete windows into
``ceil(length / s)`` slots, and ``flash_attention`` (FlashAttention's blocked online softmax, in plain JAX)
scores query blocks against key blocks with causal and same-document masks built per block from positions
and segment ids. Scale ``s`` therefore costs ``1/s`` of full attention (1.75x for (1, 2, 4)) and no
(length x length) array exists, forward or backward.

Decoding keeps the raw (pre-RoPE) keys and the values of every position in a buffer of
``model.max_cache_len`` positions plus a per-row write position, so a chunked prefill followed by
one-token steps computes the same thing as one full forward (jit-friendly: fixed shapes). Prompt plus
generated tokens must fit in ``max_cache_len``; writes past the end are clamped (and wrong). The same
kernel runs over the buffer and skips its key blocks past the write position.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from hrm.config import ModelConfig
from hrm.models.mamba import torch_default_init
from hrm.models.segments import positions_in_segment

NEG_INF = -1e30
NEVER = jnp.iinfo(jnp.int32).max   # the position of a padding key: no query sees it
BLOCK_SIZE = 512                  # queries per flash_attention block


class KVCache(NamedTuple):
    k: jax.Array     # (batch, max_cache_len, heads, head_dim): keys before RoPE
    v: jax.Array     # (batch, max_cache_len, heads, head_dim)
    pos: jax.Array   # (batch,) int32: positions written so far


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


def pool_windows(keys: jax.Array, values: jax.Array, segment_ids: jax.Array, s: int):
    """Keys and values (batch, n, heads, head_dim) averaged over every complete window of ``s`` positions
    of each document, compacted to ``ceil(n / s)`` slots in position order.

    Returns the pooled keys and values, each slot's window-end position and its segment id (batch, slots).
    A document of m positions has ``m // s`` complete windows, so a row has at most ``n // s``; the slots
    after them get position ``NEVER``.
    """
    b, n = segment_ids.shape
    position = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
    if s == 1:
        return keys, values, position, segment_ids
    slots = -(-n // s)
    is_end = (positions_in_segment(segment_ids) + 1) % s == 0
    slot = jnp.where(is_end, jnp.cumsum(is_end, axis=1) - 1, slots)        # slot `slots` is dropped
    rows = jnp.arange(b)[:, None]
    ends = jnp.full((b, slots), NEVER, jnp.int32).at[rows, slot].set(position, mode="drop")
    window = jnp.clip(ends[:, :, None] - jnp.arange(s - 1, -1, -1), 0, n - 1).reshape(b, slots * s)

    def mean(x):
        gathered = jnp.take_along_axis(x, window[:, :, None, None], axis=1)
        return gathered.reshape(b, slots, s, *x.shape[2:]).astype(jnp.float32).mean(2).astype(x.dtype)

    return mean(keys), mean(values), ends, jnp.take_along_axis(segment_ids, jnp.minimum(ends, n - 1), axis=1)


def _block_scores(q, k, q_pos, k_pos, q_seg, k_seg):
    """fp32 logits (b, h, bq, bk) of a query block against a key block, and the mask (b, 1, bq, bk) of
    the pairs a query may see: the key is not in its future and is in its document."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) / math.sqrt(q.shape[-1])
    mask = (k_pos[:, None, :] <= q_pos[:, :, None]) & (k_seg[:, None, :] == q_seg[:, :, None])
    return logits, mask[:, None]


def _overlaps(q_pos, k_pos):
    """Whether any query of the block may see any key of the block; a block pair without one is skipped."""
    return jnp.min(k_pos) <= jnp.max(q_pos)


def _attend_query_block(q, q_pos, q_seg, k, v, k_pos, k_seg):
    """One query block (b, bq, h, d) over all key blocks (n_k, b, bk, ...) with the online softmax.

    Returns the output (b, bq, h, d) in v's dtype and the fp32 log-sum-exp (b, h, bq) of each query's
    logits (0 for a query that sees no key; its output is 0).
    """
    b, bq, h, d = q.shape

    def step(carry, block):
        k_j, v_j, k_pos_j, k_seg_j = block

        def attend(carry):
            m, total, acc = carry
            logits, mask = _block_scores(q, k_j, q_pos, k_pos_j, q_seg, k_seg_j)
            m_new = jnp.maximum(m, jnp.max(jnp.where(mask, logits, NEG_INF), axis=-1))
            p = jnp.where(mask, jnp.exp(logits - m_new[..., None]), 0.0)
            rescale = jnp.exp(m - m_new)
            pv = jnp.einsum("bhqk,bkhd->bhqd", p.astype(v_j.dtype), v_j, preferred_element_type=jnp.float32)
            return m_new, total * rescale + p.sum(-1), acc * rescale[..., None] + pv

        return jax.lax.cond(_overlaps(q_pos, k_pos_j), attend, lambda c: c, carry), None

    init = (jnp.full((b, h, bq), NEG_INF, jnp.float32), jnp.zeros((b, h, bq), jnp.float32),
            jnp.zeros((b, h, bq, d), jnp.float32))
    (m, total, acc), _ = jax.lax.scan(step, init, (k, v, k_pos, k_seg))
    seen = total > 0
    out = acc / jnp.where(seen, total, 1.0)[..., None]
    lse = jnp.where(seen, m + jnp.log(jnp.where(seen, total, 1.0)), 0.0)
    return jnp.swapaxes(out, 1, 2).astype(v.dtype), lse


def _flash_forward(q, k, v, q_pos, k_pos, q_seg, k_seg):
    return jax.lax.map(lambda block: _attend_query_block(*block, k, v, k_pos, k_seg), (q, q_pos, q_seg))


@jax.custom_vjp
def flash_attention(q, k, v, q_pos, k_pos, q_seg, k_seg):
    """Masked softmax attention over blocks, FlashAttention's algorithm (arXiv:2205.14135) in plain JAX.

    Inputs come split into blocks: q (n_q, b, bq, h, d), k and v (n_k, b, bk, h, d), positions and
    segment ids (n_q, b, bq) and (n_k, b, bk). A query sees the keys at positions <= its own in its
    segment; one that sees none outputs 0. Memory is O(blocks), never (length x length): the forward
    keeps a running max and sum per query (online softmax), the backward recomputes each block's
    probabilities from the saved log-sum-exp. Block pairs where no query sees any key are skipped.
    Logits, softmax and accumulators are fp32 whatever the inputs' dtype.
    """
    return _flash_forward(q, k, v, q_pos, k_pos, q_seg, k_seg)[0]


def _flash_fwd(q, k, v, q_pos, k_pos, q_seg, k_seg):
    out, lse = _flash_forward(q, k, v, q_pos, k_pos, q_seg, k_seg)
    return out, (q, k, v, q_pos, k_pos, q_seg, k_seg, out, lse)


def _flash_bwd(residuals, d_out):
    """FlashAttention-2's backward (arXiv:2307.08691, Algorithm 2): over key blocks, over query blocks,
    with dS = P (dP - rowsum(dO * O)); dq's contributions of a key block are added after its pass."""
    q, k, v, q_pos, k_pos, q_seg, k_seg, out, lse = residuals
    scale = 1 / math.sqrt(q.shape[-1])
    d_row = jnp.einsum("nbqhd,nbqhd->nbhq", d_out.astype(jnp.float32), out.astype(jnp.float32))

    def key_block(dq, block):
        k_j, v_j, k_pos_j, k_seg_j = block

        def query_block(carry, block):
            q_i, q_pos_i, q_seg_i, d_out_i, lse_i, d_row_i = block

            def grads(carry):
                dk, dv = carry
                logits, mask = _block_scores(q_i, k_j, q_pos_i, k_pos_j, q_seg_i, k_seg_j)
                p = jnp.where(mask, jnp.exp(logits - lse_i[..., None]), 0.0)
                dv = dv + jnp.einsum("bhqk,bqhd->bkhd", p.astype(d_out_i.dtype), d_out_i,
                                     preferred_element_type=jnp.float32)
                dp = jnp.einsum("bqhd,bkhd->bhqk", d_out_i, v_j, preferred_element_type=jnp.float32)
                ds = p * (dp - d_row_i[..., None]) * scale
                dk = dk + jnp.einsum("bhqk,bqhd->bkhd", ds.astype(q_i.dtype), q_i,
                                     preferred_element_type=jnp.float32)
                dq_i = jnp.einsum("bhqk,bkhd->bqhd", ds.astype(k_j.dtype), k_j, preferred_element_type=jnp.float32)
                return (dk, dv), dq_i

            skip = lambda carry: (carry, jnp.zeros(q_i.shape, jnp.float32))
            return jax.lax.cond(_overlaps(q_pos_i, k_pos_j), grads, skip, carry)

        zeros = jnp.zeros(k_j.shape, jnp.float32)
        (dk, dv), dq_parts = jax.lax.scan(query_block, (zeros, zeros), (q, q_pos, q_seg, d_out, lse, d_row))
        return dq + dq_parts, (dk, dv)

    dq, (dk, dv) = jax.lax.scan(key_block, jnp.zeros(q.shape, jnp.float32), (k, v, k_pos, k_seg))
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None, None, None


flash_attention.defvjp(_flash_fwd, _flash_bwd)


@functools.partial(jax.jit, static_argnames=("block_q", "block_k"))
def blocked_attention(q, k, v, q_pos, k_pos, q_seg, k_seg, block_q: int, block_k: int) -> jax.Array:
    """``flash_attention`` on (b, length, ...) arrays: queries in blocks of ``block_q``, keys in blocks of
    ``block_k`` (each at most its length), padded to whole blocks with keys no query sees. Jitted, so an
    eager forward compiles its loops once per shape."""
    block_q, block_k = min(block_q, q.shape[1]), min(block_k, k.shape[1])

    def split(x, block, fill):
        x = jnp.pad(x, [(0, 0), (0, -x.shape[1] % block)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)
        return jnp.moveaxis(x.reshape(x.shape[0], -1, block, *x.shape[2:]), 1, 0)

    out = flash_attention(split(q, block_q, 0), split(k, block_k, 0), split(v, block_k, 0),
                          split(q_pos, block_q, 0), split(k_pos, block_k, NEVER),
                          split(q_seg, block_q, 0), split(k_seg, block_k, 0))
    b, length = q.shape[:2]
    return jnp.moveaxis(out, 0, 1).reshape(b, -1, *out.shape[3:])[:, :length]


class MultiScaleAttention(nnx.Module):
    """Causal MHA with RoPE over the keys pooled at each of ``scales`` (see the module docstring).

    ``block_size``: the query block of ``flash_attention``; scale s takes key blocks of ``block_size // s``
    pooled keys, which span the same positions as a query block, so causal block skipping saves the same
    share at every scale.
    """

    def __init__(self, cfg: ModelConfig, scales: tuple[int, ...] = (1,), *, block_size: int = BLOCK_SIZE,
                 rngs: nnx.Rngs):
        self.cfg = cfg
        self.scales = tuple(scales)
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.d_model // cfg.n_heads
        self.block_size = block_size
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
        q_pos = start[:, None] + jnp.arange(l, dtype=jnp.int32)[None]            # (b, l)
        q = rope(q, q_pos, self.cfg.rope_theta)
        if segment_ids is None:                                                 # one document per row
            q_seg, k_seg = jnp.zeros((b, l), jnp.int32), jnp.zeros((b, keys.shape[1]), jnp.int32)
        else:
            q_seg = k_seg = segment_ids

        outs = []
        for s in self.scales:
            pooled_k, pooled_v, k_pos, pooled_seg = pool_windows(keys, values, k_seg, s)
            pooled_k = rope(pooled_k, k_pos, self.cfg.rope_theta)
            outs.append(blocked_attention(q, pooled_k, pooled_v, q_pos, k_pos, q_seg, pooled_seg,
                                          self.block_size, max(self.block_size // s, 1)))
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
