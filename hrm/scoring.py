"""Log-probabilities of given tokens (teacher forcing): what ``/v1/completions``' ``logprobs`` and ``echo`` report
and what ``hrm.lm_eval`` scores.

A batch of token sequences is right-padded to one full forward pass (causal: padding changes no earlier
position); rows and lengths are rounded up to powers of two, so a new request length rarely compiles. The
log-softmax stays on the device: only each position's target log-probability, whether it was the argmax, and
the ``top`` best (ids, log-probabilities) come back.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

MIN_LENGTH = 16  # the shortest padded length
TOKENS_PER_PASS = 16384  # rows x padded length of one forward pass (bounds the (rows, length, vocab) logits)


class TokenScores(NamedTuple):
    """Per position i >= 1 of a sequence: log P(token i | tokens < i), and what the model preferred there."""

    logprobs: np.ndarray  # (n - 1,) float32
    greedy: np.ndarray  # (n - 1,) bool: token i was the argmax
    top_ids: np.ndarray  # (n - 1, top) int32, best first
    top_logprobs: np.ndarray  # (n - 1, top) float32


def bucket(n: int, least: int = MIN_LENGTH) -> int:
    return max(least, 1 << (max(n, 1) - 1).bit_length())


def _score(graphdef, params, tokens, top: int):
    logits = nnx.merge(graphdef, params)(tokens)[0].astype(jnp.float32)[:, :-1]
    logp = jax.nn.log_softmax(logits, axis=-1)
    target = tokens[:, 1:]
    chosen = jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
    greedy = jnp.argmax(logp, axis=-1) == target
    values, ids = jax.lax.top_k(logp, max(top, 1))
    return chosen, greedy, ids[..., :top], values[..., :top]


def _compiled(model):
    """The model's jitted ``_score`` (its graphdef is not hashable, so it cannot be a static argument)."""
    if "_score" not in model.__dict__:
        model.__dict__["_score"] = jax.jit(functools.partial(_score, model.graphdef), static_argnums=(2,))
    return model.__dict__["_score"]


def score(model, sequences: Sequence[Sequence[int]], top: int = 0) -> list[TokenScores]:
    """``TokenScores`` of each sequence (each at least one token) under ``model`` (an ``hrm.load`` model)."""
    for ids in sequences:
        model.generator.check_ids(model.params, ids)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))  # similar lengths share a pass
    results: list[TokenScores | None] = [None] * len(sequences)
    start = 0
    while start < len(order):
        length = bucket(len(sequences[order[start]]))
        rows = max(1, TOKENS_PER_PASS // length)
        group = [i for i in order[start : start + rows] if bucket(len(sequences[i])) == length]
        tokens = np.zeros((bucket(len(group), 1), length), np.int32)
        for row, i in enumerate(group):
            tokens[row, : len(sequences[i])] = sequences[i]
        chosen, greedy, ids, values = jax.device_get(_compiled(model)(model.params, jnp.asarray(tokens), top))
        for row, i in enumerate(group):
            n = len(sequences[i]) - 1
            results[i] = TokenScores(chosen[row, :n], greedy[row, :n], ids[row, :n], values[row, :n])
        start += len(group)
    return results
