"""Document boundaries inside packed rows: the one place ``segment_ids`` are read.

``hrm.data`` packs whole documents into each row and numbers them: ``segment_ids`` (b, l) int, constant within
a document. Every family needs the same two facts from them: where a document starts (the Mamba scan's state
and the recursive memory restart there) and each token's position inside its document (attention's RoPE and
its pooled windows).
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
