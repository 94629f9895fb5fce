"""Document boundaries inside packed rows: the one place ``segment_ids`` are read.

``hrm.data`` packs whole documents into each row and numbers them: ``segment_ids`` (b, l) int, constant within
a document. Every family needs the same two facts from them: where a document starts (the Mamba scan's state
and the recursive memory restart there) and each token's position inside its document (attention's RoPE and
its pooled windows).

Decoding has one more kind of boundary: a batched prefill pads prompts of different lengths on the right, and
``lengths`` (b,) says how many positions of each row are real; ``real_positions`` and ``last_real`` are how every
cache reads it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def document_starts(segment_ids: jax.Array | None) -> jax.Array | None:
    """(b, l) bool: True where a new document begins inside the chunk. Position 0 is never a start, so state
    carried in from an earlier chunk (decoding) flows into it. ``None`` (one document per row) stays ``None``."""
    if segment_ids is None:
        return None
    return jnp.concatenate(
        [jnp.zeros_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1
    )


def positions_in_segment(segment_ids: jax.Array) -> jax.Array:
    """(b, l) int32: each token's offset from the start of its document (or of the chunk)."""
    t = jnp.arange(segment_ids.shape[1], dtype=jnp.int32)
    return t - jax.lax.cummax(jnp.where(document_starts(segment_ids), t, 0), axis=1)


def real_positions(lengths: jax.Array, length: int) -> jax.Array:
    """(b, length) bool: the positions before each row's ``lengths`` (the real tokens of a right-padded chunk)."""
    return jnp.arange(length, dtype=jnp.int32)[None] < lengths[:, None]


def last_real(history: jax.Array, lengths: jax.Array, n: int) -> jax.Array:
    """The ``n`` entries of ``history`` (b, n + length, ...) = (n carried entries, then a chunk) that end at
    each row's last real position: what a cache of the last ``n`` inputs holds after the chunk."""
    index = lengths[:, None] + jnp.arange(n, dtype=jnp.int32)[None]
    return jnp.take_along_axis(history, index.reshape(index.shape + (1,) * (history.ndim - 2)), axis=1)
