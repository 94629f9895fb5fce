"""Held-out evaluation: the loss over every held-out target, each target weighing the same."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import jax.numpy as jnp


def held_out_loss(sums: Callable, batches: Iterable[dict]) -> float:
    """The mean cross-entropy over all unmasked targets of ``batches``, from ``sums(batch)`` = (the batch's
    summed cross-entropy, its target count) (``eval_sums`` in hrm/training/state.py). The sums add up on the
    device and are read once at the end, so batches that hold more targets weigh more, the result does not
    depend on how the targets fall into batches, and the host never waits between batches."""
    total, count = jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)
    for batch in batches:
        ce, n = sums(batch)
        total, count = total + ce, count + n
    return float(total) / max(1.0, float(count))
