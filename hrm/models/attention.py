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

Decoding keeps, per scale, a buffer of pooled keys (RoPE applied once, at the window's end) and values,
one slot per window, plus the raw keys and values of the last ``max(scales) - 1`` positions and a per-row
write position. A chunk of l new positions writes its l scale-1 keys and the pooled keys of the windows it
completes (each window once, when it completes) and attends over the buffers with ``cached_attention``,
whose loop over key blocks stops at the current position. A chunked prefill followed by one-token steps
computes what one full forward does. The buffer holds ``length`` positions
(``init_cache(batch, length)``, default ``model.max_cache_len``); ``resize_kv_caches`` grows it, and
``hrm.inference`` sizes it to the request and refuses what does not fit, never writing past its end.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from hrm.config import ModelConfig
from hrm.models.params import linear, no_decay, out_init, torch_default_init
from hrm.models.segments import last_real, positions_in_segment

NEG_INF = -1e30
NEVER = jnp.iinfo(jnp.int32).max  # the position of a padding key: no query sees it
BLOCK_SIZE = 512  # queries per flash_attention block


class KVCache(NamedTuple):
    keys: dict  # scale s -> (batch, ceil(length / s), heads, head_dim): pooled keys, RoPE applied
    values: dict  # scale s -> (batch, ceil(length / s), heads, head_dim): pooled values
    recent: jax.Array  # (batch, max(scales) - 1, heads, 2 * head_dim): raw keys and values of the last positions
    pos: jax.Array  # (batch,) int32: positions written so far


def kv_slots(length: int, s: int) -> int:
    """Pooled slots of scale ``s`` in a buffer of ``length`` positions (one per window)."""
    return -(-length // s)


def _is_kv(x) -> bool:
    return isinstance(x, KVCache)


def kv_caches(cache) -> list[KVCache]:
    """The KVCaches in a model's decode cache tree, in tree order; none for a pure SSM's cache."""
    return [x for x in jax.tree.leaves(cache, is_leaf=_is_kv) if _is_kv(x)]


def map_kv_caches(fn, cache):
    """``cache`` (a model's decode cache tree) with ``fn`` applied to each of its KVCaches; the rest as it is."""
    return jax.tree.map(lambda x: fn(x) if _is_kv(x) else x, cache, is_leaf=_is_kv)


def resize_kv_caches(cache, length: int):
    """``cache`` (any model's decode cache) with every KVCache's buffers grown (or cut) to ``length``
    positions; slots past a row's position are never read, so growing leaves every result unchanged."""

    def fit(buffers: dict) -> dict:
        out = {}
        for s, buffer in buffers.items():
            slots = kv_slots(length, s)  # buffers are (batch, [layer,] slots, heads, head_dim)
            pad = [(0, 0)] * (buffer.ndim - 3) + [(0, max(slots - buffer.shape[-3], 0)), (0, 0), (0, 0)]
            out[s] = jnp.pad(buffer[..., :slots, :, :], pad)
        return out

    return map_kv_caches(lambda kv: kv._replace(keys=fit(kv.keys), values=fit(kv.values)), cache)


def park_rows(cache, idle):
    """``cache`` with the rows where ``idle`` (batch,) is true set back to position 0: a batch's cached attention
    reads keys up to its furthest row (``cached_attention``), so a free serving slot that kept counting would
    make every row read the whole buffer. A parked row's keys and values are garbage until it is replaced."""
    rows = lambda pos: idle.reshape(idle.shape + (1,) * (pos.ndim - 1))  # pos (batch,) or (batch, layer)
    return map_kv_caches(lambda kv: kv._replace(pos=jnp.where(rows(kv.pos), 0, kv.pos)), cache)


def kv_cache_length(cache) -> int | None:
    """The positions the KV buffers of a model's decode cache hold; None for a cache without attention."""
    kvs = kv_caches(cache)
    return min(buffer.shape[-3] * s for s, buffer in kvs[0].keys.items()) if kvs else None


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding of x (batch, length, heads, head_dim) at positions (batch, length)."""
    half = x.shape[-1] // 2
    freqs = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions.astype(jnp.float32)[..., None] * freqs  # (b, l, half)
    cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1).astype(x.dtype)


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
    slot = jnp.where(is_end, jnp.cumsum(is_end, axis=1) - 1, slots)  # slot `slots` is dropped
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


def _online_softmax_init(b: int, h: int, l: int, d: int):
    """The running (max, sum, weighted values) of ``l`` queries before any key: fp32 (b, h, l[, d])."""
    return (
        jnp.full((b, h, l), NEG_INF, jnp.float32),
        jnp.zeros((b, h, l), jnp.float32),
        jnp.zeros((b, h, l, d), jnp.float32),
    )


def _online_softmax_update(carry, logits, mask, v_j):
    """The online softmax's step over one key block (FlashAttention): fold the block's masked ``logits``
    (b, h, l, bk) and values ``v_j`` (b, bk, h, d) into the running max, sum and weighted values."""
    m, total, acc = carry
    m_new = jnp.maximum(m, jnp.max(jnp.where(mask, logits, NEG_INF), axis=-1))
    p = jnp.where(mask, jnp.exp(logits - m_new[..., None]), 0.0)
    rescale = jnp.exp(m - m_new)
    pv = jnp.einsum("bhqk,bkhd->bhqd", p.astype(v_j.dtype), v_j, preferred_element_type=jnp.float32)
    return m_new, total * rescale + p.sum(-1), acc * rescale[..., None] + pv


def _online_softmax_output(total, acc):
    """The attention output (b, h, l, d) fp32 from the running sum and weighted values (0 where no key was seen)."""
    return acc / jnp.where(total > 0, total, 1.0)[..., None]


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
            logits, mask = _block_scores(q, k_j, q_pos, k_pos_j, q_seg, k_seg_j)
            return _online_softmax_update(carry, logits, mask, v_j)

        return jax.lax.cond(_overlaps(q_pos, k_pos_j), attend, lambda c: c, carry), None

    (m, total, acc), _ = jax.lax.scan(step, _online_softmax_init(b, h, bq, d), (k, v, k_pos, k_seg))
    seen = total > 0
    out = _online_softmax_output(total, acc)
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
                dv = dv + jnp.einsum(
                    "bhqk,bqhd->bkhd", p.astype(d_out_i.dtype), d_out_i, preferred_element_type=jnp.float32
                )
                dp = jnp.einsum("bqhd,bkhd->bhqk", d_out_i, v_j, preferred_element_type=jnp.float32)
                ds = p * (dp - d_row_i[..., None]) * scale
                dk = dk + jnp.einsum("bhqk,bqhd->bkhd", ds.astype(q_i.dtype), q_i, preferred_element_type=jnp.float32)
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

    out = flash_attention(
        split(q, block_q, 0),
        split(k, block_k, 0),
        split(v, block_k, 0),
        split(q_pos, block_q, 0),
        split(k_pos, block_k, NEVER),
        split(q_seg, block_q, 0),
        split(k_seg, block_k, 0),
    )
    b, length = q.shape[:2]
    return jnp.moveaxis(out, 0, 1).reshape(b, -1, *out.shape[3:])[:, :length]


def cached_attention(q, k, v, q_pos, s: int, block_k: int) -> jax.Array:
    """Queries q (b, l, h, d) at positions q_pos (b, l) over a decode cache's buffers k, v (b, n, h, d) of
    scale ``s`` (slot j holds the window ending at (j + 1)·s - 1). The online softmax of ``flash_attention``
    over key blocks, in a ``while_loop`` that stops at the first block past the last query position, so a
    step reads O(current length) of the buffer, never all of it. Returns (b, l, h, d) in v's dtype."""
    b, l, h, d = q.shape
    n = k.shape[1]
    block = math.gcd(n, block_k)  # a power of two dividing the buffer: no padding copy
    last = jnp.max(q_pos)
    zeros_q, zeros_k = jnp.zeros((b, l), jnp.int32), jnp.zeros((b, block), jnp.int32)

    def block_positions(i):
        return jnp.broadcast_to((i * block + jnp.arange(block, dtype=jnp.int32) + 1) * s - 1, (b, block))

    def more(carry):
        i = carry[0]
        return (i < n // block) & ((i * block + 1) * s - 1 <= last)

    def attend(carry):
        i, *softmax = carry
        k_j = jax.lax.dynamic_slice_in_dim(k, i * block, block, axis=1)
        v_j = jax.lax.dynamic_slice_in_dim(v, i * block, block, axis=1)
        logits, mask = _block_scores(q, k_j, q_pos, block_positions(i), zeros_q, zeros_k)
        return i + 1, *_online_softmax_update(softmax, logits, mask, v_j)

    init = (jnp.zeros((), jnp.int32), *_online_softmax_init(b, h, l, d))
    _, _, total, acc = jax.lax.while_loop(more, attend, init)
    out = _online_softmax_output(total, acc)
    return jnp.swapaxes(out, 1, 2).astype(v.dtype)


class MultiScaleAttention(nnx.Module):
    """Causal MHA with RoPE over the keys pooled at each of ``scales`` (see the module docstring).

    ``block_size``: the query block of ``flash_attention``; scale s takes key blocks of ``block_size // s``
    pooled keys, which span the same positions as a query block, so causal block skipping saves the same
    share at every scale.
    """

    def __init__(
        self, cfg: ModelConfig, scales: tuple[int, ...] = (1,), *, block_size: int = BLOCK_SIZE, rngs: nnx.Rngs
    ):
        self.cfg = cfg
        self.scales = tuple(scales)
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.d_model // cfg.n_heads
        self.block_size = block_size
        dtype = jnp.dtype(cfg.dtype)
        dense = lambda init: linear(cfg.d_model, cfg.d_model, use_bias=False, dtype=dtype, kernel_init=init, rngs=rngs)
        self.q_proj = dense(torch_default_init)
        self.k_proj = dense(torch_default_init)
        self.v_proj = dense(torch_default_init)
        self.out_proj = dense(out_init(cfg))
        if len(self.scales) > 1:
            self.scale_logits = no_decay(jnp.zeros((len(self.scales),), jnp.float32))

    def init_cache(self, batch: int, length: int | None = None) -> KVCache:
        """An empty cache of ``length`` positions (default ``model.max_cache_len``)."""
        length = self.cfg.max_cache_len if length is None else length
        dtype = jnp.dtype(self.cfg.dtype)
        buffer = lambda s: jnp.zeros((batch, kv_slots(length, s), self.n_heads, self.head_dim), dtype)
        return KVCache(
            {s: buffer(s) for s in self.scales},
            {s: buffer(s) for s in self.scales},
            jnp.zeros((batch, max(self.scales) - 1, self.n_heads, 2 * self.head_dim), dtype),
            jnp.zeros((batch,), jnp.int32),
        )

    def __call__(
        self,
        x: jax.Array,
        cache: KVCache | None = None,
        segment_ids: jax.Array | None = None,
        lengths: jax.Array | None = None,
    ):
        """x (batch, length, d_model) → (out (batch, length, d_model), cache).

        Without a cache the keys are this chunk's (positions 0..length-1) and ``segment_ids`` also keeps
        every query inside its own packed document. With a cache the chunk continues at ``cache.pos``
        (generation runs one document per row, so ``segment_ids`` is not used there), and ``lengths`` (batch,)
        says how many leading positions of each row are real (a right-padded batched prefill): the row's
        position advances by that many. Padding writes keys only past the row's position, where no query
        looks until decoding overwrites them (a slot is written when its window completes).
        """
        b, l, d = x.shape
        h, dh = self.n_heads, self.head_dim
        q = self.q_proj(x).reshape(b, l, h, dh)
        k = self.k_proj(x).reshape(b, l, h, dh)
        v = self.v_proj(x).reshape(b, l, h, dh)
        start = jnp.zeros((b,), jnp.int32) if cache is None else cache.pos
        q_pos = start[:, None] + jnp.arange(l, dtype=jnp.int32)[None]  # (b, l)
        q = rope(q, q_pos, self.cfg.rope_theta)
        if cache is None:
            q_seg = k_seg = jnp.zeros((b, l), jnp.int32) if segment_ids is None else segment_ids
            outs = []
            for s in self.scales:
                pooled_k, pooled_v, k_pos, pooled_seg = pool_windows(k, v, k_seg, s)
                pooled_k = rope(pooled_k, k_pos, self.cfg.rope_theta)
                outs.append(
                    blocked_attention(
                        q,
                        pooled_k,
                        pooled_v,
                        q_pos,
                        k_pos,
                        q_seg,
                        pooled_seg,
                        self.block_size,
                        max(self.block_size // s, 1),
                    )
                )
            new_cache = None
        else:
            new_cache = self._extend_cache(cache, k, v, q_pos, lengths)
            outs = [
                cached_attention(q, new_cache.keys[s], new_cache.values[s], q_pos, s, max(self.block_size // s, 1))
                for s in self.scales
            ]
        if len(outs) > 1:
            weights = jax.nn.softmax(self.scale_logits[...])
            out = sum(w.astype(o.dtype) * o for w, o in zip(weights, outs))
        else:
            out = outs[0]
        return checkpoint_name(self.out_proj(out.reshape(b, l, d)), "attention_out"), new_cache

    def _extend_cache(self, cache: KVCache, k, v, q_pos, lengths=None):
        """Write a chunk's keys and values (b, l, h, dh) at positions ``q_pos`` (b, l) into the cache, of which
        the first ``lengths`` (b,) of each row are real (default: all).

        At scale s the chunk completes the windows ending at its positions e with (e + 1) % s == 0; each
        such window's mean (over its last s raw keys, the first ones possibly from ``cache.recent``) gets
        RoPE at e and goes to slot (e + 1) / s - 1; other positions write nowhere (an out-of-range slot,
        dropped). Returns the new cache.
        """
        b, l, h, dh = k.shape
        raw = jnp.concatenate([cache.recent, jnp.concatenate([k, v], -1).astype(cache.recent.dtype)], axis=1)
        rows = jnp.arange(b)[:, None]
        keys, values = {}, {}
        for s in self.scales:
            slots = cache.keys[s].shape[1]
            window = raw[:, raw.shape[1] - l - s + 1 :]  # (b, s - 1 + l, h, 2dh)
            mean = sum(window[:, i : i + l].astype(jnp.float32) for i in range(s)) / s
            ends = (q_pos + 1) % s == 0
            slot = jnp.where(ends, (q_pos + 1) // s - 1, slots)
            new_k = rope(mean[..., :dh].astype(k.dtype), q_pos, self.cfg.rope_theta)
            keys[s] = cache.keys[s].at[rows, slot].set(new_k.astype(cache.keys[s].dtype), mode="drop")
            values[s] = cache.values[s].at[rows, slot].set(mean[..., dh:].astype(cache.values[s].dtype), mode="drop")
        if lengths is None:
            return KVCache(keys, values, raw[:, raw.shape[1] - cache.recent.shape[1] :], cache.pos + l)
        return KVCache(keys, values, last_real(raw, lengths, cache.recent.shape[1]), cache.pos + lengths)


class MLP(nnx.Module):
    """d → mlp_ratio·d → GELU → d; the mixer signature of a cache-free layer."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(cfg.dtype)
        hidden = cfg.mlp_ratio * cfg.d_model
        self.fc1 = linear(cfg.d_model, hidden, dtype=dtype, kernel_init=torch_default_init, rngs=rngs)
        self.fc2 = linear(hidden, cfg.d_model, dtype=dtype, kernel_init=out_init(cfg), rngs=rngs)

    def init_cache(self, batch: int):
        return None

    def __call__(self, x, cache=None, segment_ids=None, lengths=None):
        return self.fc2(jax.nn.gelu(self.fc1(x))), cache
