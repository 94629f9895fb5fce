"""Language models assembled from blocks: pre-norm residual stacks with tied embeddings."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from hrm.config import ModelConfig
from hrm.models.dropout import dropout
from hrm.models.mamba import Mamba

# model.remat → what a rematerialised layer keeps for the backward pass (jax.checkpoint policies; "block" keeps
# only the layer's input). https://docs.jax.dev/en/latest/gradient-checkpointing.html
REMAT_POLICIES = {
    "block": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def rms(x: jax.Array) -> jax.Array:
    """The root mean square of ``x`` (float32): what the activation probes record (hrm/training/monitor.py)."""
    return jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32))))


def record_probe(module: nnx.Module, name: str, value: jax.Array) -> None:
    """Sow ``value`` for the activation probe's ``nnx.capture``; nothing outside a capture (flax's
    ``Module.sow`` would otherwise keep it on the module, flax/nnx/module.py ``sow``)."""
    if hasattr(module, "__captures__"):
        module.sow(nnx.Intermediate, name, value)


def rematerialised(fn, cfg: ModelConfig):
    """``fn`` under ``nnx.remat`` with the policy ``cfg.remat`` names; ``fn`` itself for "none"."""
    if cfg.remat == "none":
        return fn
    return nnx.remat(fn, policy=REMAT_POLICIES[cfg.remat])


def residual_dtype(cfg: ModelConfig):
    """The residual stream's dtype: float32 with ``residual_in_fp32`` (as state-spaces/mamba), else the compute
    dtype."""
    return jnp.dtype(jnp.float32 if cfg.residual_in_fp32 else cfg.dtype)


class ResidualBlock(nnx.Module):
    """x + dropout(mixer(RMSNorm(x))); the residual stream stays float32 when ``residual_in_fp32``."""

    def __init__(self, cfg: ModelConfig, mixer: nnx.Module, *, rngs: nnx.Rngs):
        self.norm = nnx.RMSNorm(cfg.d_model, epsilon=cfg.norm_eps, dtype=jnp.dtype(cfg.dtype), rngs=rngs)
        self.mixer = mixer
        self.residual_dtype = residual_dtype(cfg)
        self.dropout = cfg.dropout

    def init_cache(self, batch: int):
        return self.mixer.init_cache(batch)

    def __call__(self, x, cache=None, segment_ids=None, lengths=None):
        out, cache = self.mixer(self.norm(x), cache, segment_ids=segment_ids, lengths=lengths)
        out = dropout(out, self.dropout)
        return x.astype(self.residual_dtype) + out.astype(self.residual_dtype), cache


class ForwardApplications(NamedTuple):
    """What one token's forward pass applies, per family (``hrm.models.accounting`` counts FLOPs from it)."""

    depth: int  # effective layers
    description: str  # how they are made up, for a reader
    weight_reuse: dict[str, int]  # component (accounting.component_of) → applications; 1 when absent
    scans: int  # selective-scan applications
    attention: float  # full-context attention applications (a 1/s-pooled scale counts 1/s)


def head_logits(features: jax.Array, head: jax.Array, cfg: ModelConfig) -> jax.Array:
    """``features @ head`` as float32 logits, every caller's one LM-head projection (training loss, evaluation,
    decoding).

    The matmul reads its inputs in ``cfg.logits_dtype`` ("auto": the compute dtype) and accumulates in float32
    (``preferred_element_type``), so a bf16 model's head runs on bf16 tensor cores while the logits, the softmax
    and the loss stay float32. Columns past ``cfg.token_vocab_size`` (the padding of the vocabulary to a multiple
    of 128) are -inf: no probability mass, never sampled, no gradient."""
    dtype = jnp.dtype(cfg.dtype if cfg.logits_dtype == "auto" else cfg.logits_dtype)
    logits = jnp.matmul(features.astype(dtype), head.astype(dtype), preferred_element_type=jnp.float32)
    if 0 < cfg.token_vocab_size < logits.shape[-1]:  # a (vocab,) bias: XLA fuses it, no second logits buffer
        logits = logits + jnp.where(jnp.arange(logits.shape[-1]) < cfg.token_vocab_size, 0.0, -jnp.inf)
    return logits


class LanguageModel(nnx.Module):
    """The plumbing every family shares: embedding → layers → RMSNorm → (tied) LM head.

    ``make_layers(rngs)`` returns the layers; each maps ``(x, cache, segment_ids, lengths) → (x, cache)`` and
    has ``init_cache(batch)``. The embedding is created first, so every family initialises it identically.
    """

    def __init__(self, cfg: ModelConfig, make_layers, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dtype = jnp.dtype(cfg.dtype)
        self.embed = nnx.Embed(
            cfg.vocab_size, cfg.d_model, dtype=dtype, embedding_init=nnx.initializers.normal(0.02), rngs=rngs
        )
        self.layers = nnx.List(make_layers(rngs))
        self.norm_f = nnx.RMSNorm(cfg.d_model, epsilon=cfg.norm_eps, dtype=jnp.float32, rngs=rngs)
        if not cfg.tie_embeddings:
            self.lm_head = nnx.Linear(cfg.d_model, cfg.vocab_size, use_bias=False, dtype=jnp.float32, rngs=rngs)

    def init_cache(self, batch: int):
        return tuple(layer.init_cache(batch) for layer in self.layers)

    @staticmethod
    def forward_applications(cfg: ModelConfig) -> ForwardApplications:
        """The family's per-token work; ``MambaLM``'s here, the other families override it."""
        return ForwardApplications(cfg.n_layers, f"{cfg.n_layers} Mamba layers", {}, cfg.n_layers, 0.0)

    def __call__(self, tokens: jax.Array, cache=None, segment_ids=None, lengths=None):
        """tokens (batch, length) int → (logits (batch, length, vocab) float32, the updated decode cache).

        ``cache`` (from ``init_cache``) makes the call a decode step/prefill; without one (training,
        evaluation) the returned cache is None.
        ``segment_ids`` (batch, length), optional: ids of packed documents; no state crosses a change.
        ``lengths`` (batch,), with a cache only: each row's first ``lengths`` tokens are real and the rest is
        right padding that leaves the row's cache as the real tokens left it (a batched prefill).
        """
        x, cache = self.features(tokens, cache, segment_ids, lengths)
        return self.logits(x), cache

    def features(self, tokens: jax.Array, cache=None, segment_ids=None, lengths=None):
        """The final-norm hidden states (batch, length, d_model) float32 that the LM head reads, and the cache.

        The final norm, the head and everything after them run in float32 whatever ``cfg.dtype`` is: bf16
        logits would be rounded by ~0.1 before the softmax."""
        x, cache = self.body(self.embed(tokens), cache, segment_ids, lengths)
        return self.norm_f(x.astype(jnp.float32)), cache

    def head_weight(self) -> jax.Array:
        """The LM head (d_model, vocab) float32: the embedding's transpose when tied."""
        if self.cfg.tie_embeddings:
            return self.embed.embedding[...].T
        return self.lm_head.kernel[...]

    def logits(self, features: jax.Array) -> jax.Array:
        """float32 logits of ``features`` (..., d_model) through the LM head (``head_logits``)."""
        return head_logits(features, self.head_weight(), self.cfg)

    def body(self, x, cache=None, segment_ids=None, lengths=None):
        """The layers in order, each with its own cache; families with other wiring override this.

        A full forward (no cache: training, evaluation) runs each layer under ``model.remat`` and sows the RMS of
        the residual stream after each one (``probe_act_rms``, hrm/training/monitor.py)."""
        if cache is None:
            run = rematerialised(lambda layer, x, segment_ids: layer(x, segment_ids=segment_ids)[0], self.cfg)
            for layer in self.layers:
                x = run(layer, x, segment_ids)
                record_probe(self, "probe_act_rms", rms(x))
            return x, None
        new_cache = []
        for layer, layer_cache in zip(self.layers, cache):
            x, layer_cache = layer(x, layer_cache, segment_ids=segment_ids, lengths=lengths)
            new_cache.append(layer_cache)
        return x, tuple(new_cache)


class MambaLM(LanguageModel):
    """Embedding → n_layers Mamba residual blocks → RMSNorm → (tied) LM head."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        super().__init__(
            cfg,
            lambda rngs: [ResidualBlock(cfg, Mamba(cfg, rngs=rngs), rngs=rngs) for _ in range(cfg.n_layers)],
            rngs=rngs,
        )
