"""Residual dropout (``model.dropout``), active only inside ``dropout_key`` — i.e. in the train step.

Evaluation, ``hrm.load``'s logits and decoding never enter the context, so they never drop; with rate 0
``dropout`` returns its input untouched, so such a model computes exactly what it did without the option.
Like Linen's ``make_rng("dropout")`` the key is implicit: the train step enters ``dropout_key(key)`` around
the forward (hrm/training/state.py) and every ``dropout`` call draws the next key, so each site and each call
of a shared module gets its own mask; a loop traced once (``nnx.scan`` over depths) folds its index in
with ``fold_in_dropout_key`` so each depth differs. The key follows the seed, the step and the
micro-batch, so masks are deterministic per seed and a resumed run draws the same ones.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp

_active: list = []  # [key, calls] while a train-step forward is being traced


@contextlib.contextmanager
def dropout_key(key: jax.Array | None):
    """Enable ``dropout`` inside the block with masks drawn from ``key`` (None: stay disabled)."""
    if key is None:
        yield
        return
    _active.append([key, 0])
    try:
        yield
    finally:
        _active.pop()


@contextlib.contextmanager
def fold_in_dropout_key(index: jax.Array):
    """Inside a traced loop body: masks that also depend on the iteration ``index`` (a traced int)."""
    if not _active:
        yield
        return
    key, calls = _active[-1]
    _active.append([jax.random.fold_in(jax.random.fold_in(key, calls), index), 0])
    _active[-2][1] += 1
    try:
        yield
    finally:
        _active.pop()


def dropout(x: jax.Array, rate: float) -> jax.Array:
    """Inverted dropout of ``x`` at ``rate`` inside ``dropout_key``; ``x`` itself otherwise or at rate 0."""
    if rate == 0 or not _active:
        return x
    key, calls = _active[-1]
    _active[-1][1] += 1
    keep = jax.random.bernoulli(jax.random.fold_in(key, calls), 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)
