"""Recurrent decoding: prefill each prompt once, then O(1) work per generated token.

The model's cache (per layer: conv inputs and SSM state) is carried through a ``lax.scan`` of
decode steps, so generating N tokens is one compiled loop.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from hrm.errors import UserError


class SamplingError(UserError):
    """Impossible sampling settings; the message names the setting."""


def check_sampling(temperature: float, top_k: int | None, top_p: float | None, max_new_tokens: int) -> None:
    if temperature < 0:
        raise SamplingError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise SamplingError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise SamplingError(f"top_p must be in (0, 1], got {top_p}")
    if max_new_tokens < 0:
        raise SamplingError(f"max_new_tokens must be >= 0, got {max_new_tokens}")


def sample_logits(logits, key, temperature: float, top_k: int | None, top_p: float | None):
    """Next tokens (batch,) from logits (batch, vocab): greedy at temperature 0, else top-k/top-p sampling."""
    if temperature == 0:
        return jnp.argmax(logits, axis=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p is not None and top_p < 1:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        # keep the smallest prefix whose mass reaches top_p (the top token always stays)
        cutoff_index = jnp.sum(cumulative < top_p, axis=-1, keepdims=True)
        cutoff = jnp.take_along_axis(sorted_logits, cutoff_index, axis=-1)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1)


class Generator:
    """Compiled prefill and decode loops for one model structure (``graphdef``)."""

    def __init__(self, graphdef):
        self.graphdef = graphdef
        self._prefill = jax.jit(self._prefill_fn)
        self._decode = jax.jit(self._decode_fn, static_argnums=(3, 4, 5, 6))

    def _prefill_fn(self, params, tokens):
        """Run a prompt (1, length); the last position's logits and the cache after it."""
        model = nnx.merge(self.graphdef, params)
        logits, cache = model(tokens, model.init_cache(tokens.shape[0]))
        return logits[:, -1], cache

    def _decode_fn(self, params, logits, cache, steps, temperature, top_k, top_p, key):
        """Sample ``steps`` tokens (batch, steps), feeding each back through the recurrent cache.

        The model is merged (copied) inside the loop body: nnx transforms in the model (recursive_ssm's
        ``nnx.scan``) reject modules whose variables belong to an outer trace."""
        def step(carry, step_key):
            logits, cache = carry
            token = sample_logits(logits, step_key, temperature, top_k, top_p)
            model = nnx.merge(self.graphdef, params, copy=True)
            next_logits, cache = model(token[:, None], cache)
            return (next_logits[:, -1], cache), token

        _, tokens = jax.lax.scan(step, (logits, cache), jax.random.split(key, steps))
        return tokens.T

    def generate_ids(self, params, prompts: list[list[int]], max_new_tokens: int, temperature: float = 1.0,
                     top_k: int | None = None, top_p: float | None = None, seed: int = 0) -> list[list[int]]:
        """New token ids for each prompt. Prompts of any lengths are prefilled one by one (no padding
        enters the recurrent state), then decoded together as one batch."""
        check_sampling(temperature, top_k, top_p, max_new_tokens)
        if any(len(p) == 0 for p in prompts):
            raise SamplingError("every prompt needs at least one token")
        if max_new_tokens == 0 or not prompts:
            return [[] for _ in prompts]
        firsts = [self._prefill(params, jnp.asarray([p], jnp.int32)) for p in prompts]
        logits = jnp.concatenate([f[0] for f in firsts])
        cache = jax.tree.map(lambda *xs: jnp.concatenate(xs), *[f[1] for f in firsts])
        tokens = self._decode(params, logits, cache, max_new_tokens, float(temperature), top_k, top_p,
                              jax.random.key(seed))
        return jax.device_get(tokens).tolist()
