"""Residual dropout (``model.dropout``), active only inside ``dropout_key`` — i.e. in the train step.

Evaluation, ``hrm.load``'s logits and decoding never enter the context, so they never drop; with rate 0
``dropout`` returns its input untouched, so such a model computes exactly what it did without the option.
Like Linen's ``make_rng("dropout")`` the key is implicit: the train step enters ``dropout_key(key)`` around
the forward (hrm/training/state.py) and every ``dropout`` call draws the next key, so each site and each call
of a shared module gets its own mask.

A stack of layers (or of depths) enters ``layer_stack()``, which takes one draw for the whole stack, and runs
layer ``i`` inside ``layer_key(i)``, which folds ``i`` into that draw. The masks so depend on the layer's index,
not on how often the code was traced: an unrolled loop (``i`` a Python int) and ``nnx.scan`` (``i`` traced, the
body traced once) give every layer the same masks, and a scanned unit of several layers gives its ``j``-th
layer the key of layer ``unit · size + j`` (``sublayer_key``). The key follows the seed, the step and the
micro-batch, so masks are deterministic per seed and a resumed run draws the same ones.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp

_active: list = []  # [key, calls, stack key or None, layer index or None] while a train-step forward is traced


@contextlib.contextmanager
def _entered(key: jax.Array, stack=None, index=None):
    _active.append([key, 0, stack, index])
    try:
        yield
    finally:
        _active.pop()


def _draw() -> jax.Array:
    """The current context's next key."""
    entry = _active[-1]
    entry[1] += 1
    return jax.random.fold_in(entry[0], entry[1] - 1)


@contextlib.contextmanager
def dropout_key(key: jax.Array | None):
    """Enable ``dropout`` inside the block with masks drawn from ``key`` (None: stay disabled)."""
    if key is None:
        yield
        return
    with _entered(key):
        yield


@contextlib.contextmanager
def layer_stack():
    """Around a stack of layers run in ``layer_key(i)``: one draw of the current key, shared by the stack."""
    if not _active:
        yield
        return
    with _entered(_draw()):
        yield


@contextlib.contextmanager
def layer_key(index):
    """Layer ``index`` (a Python or traced int) of the innermost ``layer_stack``: masks from the stack's key with
    ``index`` folded in."""
    if not _active:
        yield
        return
    stack = _active[-1][0]
    with _entered(jax.random.fold_in(stack, index), stack, index):
        yield


@contextlib.contextmanager
def sublayer_key(j: int, size: int):
    """Inside ``layer_key(unit)`` of a scanned unit of ``size`` layers: the masks of its ``j``-th layer, those of
    layer ``unit · size + j`` of the unrolled stack."""
    if not _active:
        yield
        return
    _, _, stack, unit = _active[-1]
    index = unit * size + j
    with _entered(jax.random.fold_in(stack, index), stack, index):
        yield


def dropout(x: jax.Array, rate: float) -> jax.Array:
    """Inverted dropout of ``x`` at ``rate`` inside ``dropout_key``; ``x`` itself otherwise or at rate 0."""
    if rate == 0 or not _active:
        return x
    keep = jax.random.bernoulli(_draw(), 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)
