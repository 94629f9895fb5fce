"""Language models assembled from blocks: pre-norm residual stacks with tied embeddings."""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from hrm.config import ModelConfig
from hrm.models.dropout import dropout, layer_key, layer_stack
from hrm.models.mamba import Mamba
from hrm.models.params import linear, rms_norm

# Values the layers tag with ``checkpoint_name`` (MaxText's practice): the named remat policies keep these and
# recompute the rest. "conv_out" and "dt" are the Mamba conv output and Δ before softplus: cheap elementwise work
# on (b, l, d_inner) tensors, so "save_projections" recomputes them, as mamba-ssm's ``mamba_inner_fn`` does.
PROJECTION_NAMES = ("layer_input", "in_proj", "out_proj", "attention_out")
CHECKPOINT_NAMES = PROJECTION_NAMES + ("conv_out", "dt")

# model.remat → what a rematerialised layer keeps for the backward pass (jax.checkpoint policies; "block" keeps
# only the layer's input). https://docs.jax.dev/en/latest/gradient-checkpointing.html
REMAT_POLICIES = {
    "block": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_named": jax.checkpoint_policies.save_only_these_names(*CHECKPOINT_NAMES),
    "save_projections": jax.checkpoint_policies.save_only_these_names(*PROJECTION_NAMES),
}


def rms(x: jax.Array) -> jax.Array:
    """The root mean square of ``x`` (float32): what the activation probes record (hrm/training/monitor.py)."""
    return jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32))))


_collectors: list[dict] = []  # innermost last: where sown values go while a scanned layer body is traced


@contextlib.contextmanager
def collect_sown():
    """Inside a scanned layer body, ``record_probe`` and the gate's metrics land in the yielded dict
    (name → [values]) instead of on the module: the scan returns them stacked and the model sows them after it
    (``nnx.scan`` would otherwise have to carry new variables out of its body)."""
    out: dict = {}
    _collectors.append(out)
    try:
        yield out
    finally:
        _collectors.pop()


def record_probe(module: nnx.Module, name: str, value: jax.Array) -> None:
    """Sow ``value`` for the activation probe's ``nnx.capture``; nothing outside a capture (flax's
    ``Module.sow`` would otherwise keep it on the module, flax/nnx/module.py ``sow``)."""
    if _collectors:
        _collectors[-1].setdefault(name, []).append(value)
    elif hasattr(module, "__captures__"):
        module.sow(nnx.Intermediate, name, value)


def rematerialised(fn, cfg: ModelConfig):
    """``fn`` under ``nnx.remat`` with the policy ``cfg.remat`` names; ``fn`` itself for "none"."""
    if cfg.remat == "none":
        return fn
    return nnx.remat(fn, policy=REMAT_POLICIES[cfg.remat])


def stack_modules(modules: list[nnx.Module]) -> nnx.Module:
    """One module of the same structure whose every variable is the ``modules``' stacked on a leading axis: the
    layer stack ``nnx.scan`` runs. Built from modules initialised one by one, so a scanned model starts from
    exactly the parameters of the unrolled one."""
    graphdef, _ = nnx.split(modules[0])
    states = [nnx.split(module)[1] for module in modules]
    return nnx.merge(graphdef, jax.tree.map(lambda *xs: jnp.stack(xs), *states))


def unit_key(i: int) -> str:
    """The attribute of the ``i``-th layer inside a scanned unit of several layers (hybrid_pattern's)."""
    return f"layer{i}"


def stack_layer_params(params: dict, size: int = 1) -> dict:
    """A parameter pure dict with per-layer ``layers`` ({0: ..., 1: ...}, ``model.scan_layers=False``) in the
    stacked layout: units of ``size`` consecutive layers (``unit_key``), stacked on a leading axis. Arrays or
    ``jax.ShapeDtypeStruct``s; the inverse of ``unstack_layer_params``."""
    layers = [params["layers"][i] for i in range(len(params["layers"]))]
    if size > 1:
        layers = [{unit_key(j): layers[lo + j] for j in range(size)} for lo in range(0, len(layers), size)]
    return {**params, "layers": jax.tree.map(_stack, *layers)}


def unstack_layer_params(params: dict, size: int = 1) -> dict:
    """A stacked parameter pure dict (``model.scan_layers``) with per-layer ``layers`` {0: ..., n - 1: ...}, the
    names the interop tensor maps and checkpoints of unrolled runs use."""
    stacked = params["layers"]
    units = jax.tree.leaves(stacked)[0].shape[0]
    unit = lambda u: jax.tree.map(lambda a: _take(a, u), stacked)
    if size == 1:
        return {**params, "layers": {u: unit(u) for u in range(units)}}
    return {**params, "layers": {u * size + j: unit(u)[unit_key(j)] for u in range(units) for j in range(size)}}


def _stack(*xs):
    if isinstance(xs[0], jax.ShapeDtypeStruct):  # abstract parameters (shapes only)
        return jax.ShapeDtypeStruct((len(xs),) + xs[0].shape, xs[0].dtype)
    return np.stack([np.asarray(x) for x in xs])


def _take(a, i: int):
    return jax.ShapeDtypeStruct(a.shape[1:], a.dtype) if isinstance(a, jax.ShapeDtypeStruct) else a[i]


def per_layer(params: dict) -> bool:
    """Whether a parameter pure dict holds its layers one by one (``model.scan_layers=False``) or stacked."""
    return 0 in params["layers"] or "0" in params["layers"]


def checkpointed(fn, cfg: ModelConfig):
    """A pure ``fn`` (no modules among its arguments) under ``jax.checkpoint`` with ``cfg.remat``'s policy."""
    if cfg.remat == "none":
        return fn
    return jax.checkpoint(fn, policy=REMAT_POLICIES[cfg.remat])


def take_layer(cache, i):
    """Layer ``i``'s slice of a scanned stack's (batch, layer, ...) cache."""
    return jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, axis=1, keepdims=False), cache)


def put_layer(cache, layer_cache, i):
    """``cache`` with layer ``i``'s slice replaced (in place inside a scan)."""
    put = lambda a, v: jax.lax.dynamic_update_index_in_dim(a, v.astype(a.dtype), i, axis=1)
    return jax.tree.map(put, cache, layer_cache)


def residual_dtype(cfg: ModelConfig):
    """The residual stream's dtype: float32 with ``residual_in_fp32`` (as state-spaces/mamba), else the compute
    dtype."""
    return jnp.dtype(jnp.float32 if cfg.residual_in_fp32 else cfg.dtype)


class ResidualBlock(nnx.Module):
    """x + dropout(mixer(RMSNorm(x))); the residual stream stays float32 when ``residual_in_fp32``."""

    def __init__(self, cfg: ModelConfig, mixer: nnx.Module, *, rngs: nnx.Rngs):
        self.norm = rms_norm(cfg.d_model, epsilon=cfg.norm_eps, dtype=jnp.dtype(cfg.dtype), rngs=rngs)
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

    @staticmethod
    def unit_size(cfg: ModelConfig) -> int | None:
        """Layers per scanned unit (``model.scan_layers``): 1 for a stack of identical layers, None where the
        family's layers do not repeat (they stay a Python loop); ``hybrid_pattern`` overrides it."""
        return 1

    @staticmethod
    def group(layers: list, size: int) -> list:
        """The scanned units made of consecutive ``layers``, ``size`` each (a unit of 1 is the layer itself)."""
        return layers

    def __init__(self, cfg: ModelConfig, make_layers, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dtype = jnp.dtype(cfg.dtype)
        self.embed = nnx.Embed(
            cfg.vocab_size, cfg.d_model, dtype=dtype, embedding_init=nnx.initializers.normal(0.02), rngs=rngs
        )
        layers = make_layers(rngs)
        size = self.unit_size(cfg)
        # one stacked module under nnx.scan; else a list run in a Python loop
        self.scanned = bool(cfg.scan_layers and size)
        if self.scanned:
            layers = self.group(layers, size)
        self.layers = stack_modules(layers) if self.scanned else nnx.List(layers)
        self.n_stacked = len(layers)
        self.norm_f = rms_norm(cfg.d_model, epsilon=cfg.norm_eps, dtype=jnp.float32, rngs=rngs)
        if not cfg.tie_embeddings:
            self.lm_head = linear(cfg.d_model, cfg.vocab_size, use_bias=False, dtype=jnp.float32, rngs=rngs)

    def init_cache(self, batch: int):
        """One cache per layer; a scanned stack's are stacked batch-first, (batch, layer, ...), so the caches of
        several prompts still concatenate along the batch."""
        if self.scanned:
            one = self.layers.init_cache(batch)  # a cache's shape needs the config only, not the parameters
            return jax.tree.map(lambda a: jnp.repeat(a[:, None], self.n_stacked, axis=1), one)
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
        if self.scanned:
            return scan_layers(self, self.layers, self.n_stacked, x, cache, segment_ids, lengths)
        if cache is None:
            run = rematerialised(lambda layer, x, segment_ids: layer(x, segment_ids=segment_ids)[0], self.cfg)
            with layer_stack():
                for i, layer in enumerate(self.layers):
                    with layer_key(i):
                        x = run(layer, x, segment_ids)
                    record_probe(self, "probe_act_rms", rms(x))
            return x, None
        new_cache = []
        for layer, layer_cache in zip(self.layers, cache):
            x, layer_cache = layer(x, layer_cache, segment_ids=segment_ids, lengths=lengths)
            new_cache.append(layer_cache)
        return x, tuple(new_cache)


def scan_layers(model, layers, n: int, x, cache=None, segment_ids=None, lengths=None):
    """``layers`` (one module stacked over ``n`` layers, ``stack_modules``) applied in order by ``nnx.scan``: one
    traced layer whatever the depth, so the program and its compile time stay the size of one layer.

    A full forward runs the body under ``model.remat`` (inside the scan, where XLA honours it), each layer with
    the dropout masks of the unrolled loop (``layer_key``: the layer index folded into the stack's key); what the
    layers sow comes out of the scan stacked on a leading layer axis and is sown on ``model``. Decoding carries the
    (batch, layer, ...) cache and reads and writes layer ``i``'s slice in place."""
    cfg = model.cfg
    x = x.astype(residual_dtype(cfg))
    index = jnp.arange(n)
    if cache is None:

        def layer_step(layer, x, i):
            with layer_key(i), collect_sown() as sown:
                x, _ = layer(checkpoint_name(x, "layer_input"), segment_ids=segment_ids)
                if "probe_act_rms" not in sown:  # a unit of several layers records one per layer
                    sown["probe_act_rms"] = [rms(x)]
            return x, {name: tuple(values) for name, values in sown.items()}

        step = rematerialised(layer_step, cfg)

        @nnx.scan(in_axes=(nnx.Carry, 0, 0), out_axes=(nnx.Carry, 0))
        def over_layers(x, layer, i):
            return step(layer, x, i)

        with layer_stack():
            x, sown = over_layers(x, layers, index)
        for name, values in sown.items():  # each (n, ...) per call site; one site's values in layer order
            values = jnp.stack(values, axis=1)
            record_probe(model, name, values.reshape((-1,) + values.shape[2:]))
        return x, None

    @nnx.scan(in_axes=(nnx.Carry, 0, 0), out_axes=nnx.Carry)
    def over_layers_cached(carry, layer, i):
        x, cache = carry
        x, layer_cache = layer(x, take_layer(cache, i), segment_ids=segment_ids, lengths=lengths)
        return x.astype(residual_dtype(cfg)), put_layer(cache, layer_cache, i)

    return over_layers_cached((x, cache), layers, index)


class MambaLM(LanguageModel):
    """Embedding → n_layers Mamba residual blocks → RMSNorm → (tied) LM head."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        super().__init__(
            cfg,
            lambda rngs: [ResidualBlock(cfg, Mamba(cfg, rngs=rngs), rngs=rngs) for _ in range(cfg.n_layers)],
            rngs=rngs,
        )
