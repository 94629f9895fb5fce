"""Recursion with shared parameters: hybrid_recursive's gated recursive processor and the
``recursive_ssm`` family (n physical Mamba blocks applied ``recurrent_depth`` times; docs/MODELS.md).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from hrm.config import ModelConfig
from hrm.models.attention import MLP
from hrm.models.dropout import dropout, layer_key, layer_stack
from hrm.models.lm import (
    ForwardApplications,
    LanguageModel,
    ResidualBlock,
    checkpointed,
    put_layer,
    record_probe,
    rematerialised,
    residual_dtype,
    rms,
    take_layer,
)
from hrm.models.mamba import Mamba
from hrm.models.params import linear, no_decay, rms_norm
from hrm.models.segments import document_starts, real_positions


def depth_prior(depth: int, p: float) -> jax.Array:
    """Truncated geometric prior over depths 1..depth (PonderNet's); p = 0 is uniform."""
    k = jnp.arange(depth, dtype=jnp.float32)
    prior = jnp.ones((depth,)) if p == 0 else p * (1 - p) ** k
    return prior / prior.sum()


def segment_prefix_mean(u: jax.Array, carry, segment_ids, lengths=None):
    """Causal running mean of u (b, l, d) that restarts where segment_ids change.

    ``carry`` = (sum (b, d), count (b,)) from earlier chunks (decoding); returns (means, new carry).
    ``lengths`` (b,): only each row's first ``lengths`` positions count (the rest is a prefill's padding).
    """
    b, l, d = u.shape
    total, count = carry
    values = jnp.concatenate([u.astype(jnp.float32), jnp.ones((b, l, 1), jnp.float32)], axis=-1)
    if lengths is not None:
        values = jnp.where(real_positions(lengths, l)[..., None], values, 0.0)
    values = values.at[:, 0].add(jnp.concatenate([total, count[:, None]], axis=-1))
    if segment_ids is None:
        sums = jnp.cumsum(values, axis=1)
    else:
        starts = document_starts(segment_ids)

        def combine(a, c):
            (va, fa), (vc, fc) = a, c
            return vc + jnp.where(fc[..., None], 0.0, va), fa | fc

        sums, _ = jax.lax.associative_scan(combine, (values, starts), axis=1)
    means = sums[..., :d] / sums[..., d:]
    return means, (sums[:, -1, :d], sums[:, -1, d])


class Transform(nnx.Module):
    """``T(x) = MLP(RMSNorm(x))``, the recursive processor's shared transform. The attributes keep the names of
    the residual block it was built as before (``norm``, ``mixer``), so saved runs load unchanged."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.mixer = MLP(cfg, rngs=rngs)
        self.norm = rms_norm(cfg.d_model, epsilon=cfg.norm_eps, dtype=jnp.dtype(cfg.dtype), rngs=rngs)

    def __call__(self, x):
        return self.mixer(self.norm(x))[0]


class RecursiveProcessor(nnx.Module):
    """One shared transform applied ``max_recursion_depth`` times, weighted by a learned depth gate.

    ``state_0 = 0``; ``state_k = state_{k-1} + w_k · T(state_{k-1} + u)`` (the input ``u`` re-injected at
    every depth); the output is ``u + state_D``. ``T`` = RMSNorm → MLP, one set of parameters for all
    depths. The gate ``w = softmax(Linear(RMSNorm(g)))`` over depths reads ``g = u`` per token
    (``gate_per_token``) or the causal running mean of ``u`` over the sequence so far (per sequence,
    without looking ahead; decoding carries the running sum and count).

    Anti-collapse: the depths are mixed, not halted, so PonderNet's "expected loss over depths" would
    need an LM head per depth and layer. Its regulariser is kept instead: ``gate_reg_weight ·
    KL(w ‖ prior)`` with a truncated geometric prior (``ponder_prior``; 0 = uniform, where the KL is
    ``log D − H(w)``, i.e. Ouro's entropy bonus). A gate that puts all weight on one depth pays
    ``log(1/prior_min)`` per token, so collapse is penalised, and the gate's mean weight per depth
    (``gate_depth_<k>``) and entropy (``gate_entropy``) are sown as metrics, logged to metrics.jsonl and
    tensorboard, so it cannot collapse silently. The KL is sown as ``aux_loss``.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dtype = jnp.dtype(cfg.dtype)
        self.depth = cfg.max_recursion_depth
        self.gate_norm = rms_norm(cfg.d_model, epsilon=cfg.norm_eps, dtype=dtype, rngs=rngs)
        self.gate = linear(cfg.d_model, self.depth, dtype=jnp.float32, kernel_init=nnx.initializers.zeros, rngs=rngs)
        self.transform = Transform(cfg, rngs=rngs)

    def init_cache(self, batch: int):
        return (jnp.zeros((batch, self.cfg.d_model), jnp.float32), jnp.zeros((batch,), jnp.float32))

    def gate_weights(self, u, cache=None, segment_ids=None, lengths=None):
        if self.cfg.gate_per_token:
            g, cache = u, cache
        else:
            carry = cache if cache is not None else self.init_cache(u.shape[0])
            g, new = segment_prefix_mean(u, carry, segment_ids, lengths)
            cache = new if cache is not None else None
        logits = self.gate(self.gate_norm(g.astype(self.gate_norm.dtype or jnp.float32)))
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1), cache

    def __call__(self, u, cache=None, segment_ids=None, lengths=None):
        w, cache = self.gate_weights(u, cache, segment_ids, lengths)  # (b, l, depth)
        state = jnp.zeros(u.shape, jnp.float32)
        state_rms = []
        for k in range(self.depth):
            out = self.transform(state.astype(u.dtype) + u)
            state = state + w[..., k : k + 1] * dropout(out, self.cfg.dropout).astype(jnp.float32)
            state_rms.append(rms(state))
        if cache is None:  # a full forward (training, evaluation); decoding steps record nothing
            self._record_gate(w)
            record_probe(self, "probe_state_rms", jnp.stack(state_rms))
        return (u.astype(jnp.float32) + state).astype(u.dtype), cache

    def _record_gate(self, w):
        prior = depth_prior(self.depth, self.cfg.ponder_prior)
        log_w = jnp.log(jnp.maximum(w, 1e-9))
        entropy = -jnp.sum(w * log_w, axis=-1)
        kl = jnp.sum(w * (log_w - jnp.log(prior)), axis=-1)
        if self.cfg.gate_reg_weight:
            record_probe(self, "aux_loss", self.cfg.gate_reg_weight * jnp.mean(kl))
        record_probe(self, "metric_gate_entropy", jnp.mean(entropy))
        mean_w = jnp.mean(w, axis=(0, 1))
        for k in range(self.depth):
            record_probe(self, f"metric_gate_depth_{k + 1}", mean_w[k])


class DepthAdapters(nnx.Module):
    """Per-depth scale/shift (and optional rank-r update) of the residual stream before each pass.

    They start as the identity; they are the only parameters that grow with ``recurrent_depth``.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        depth, d, r = cfg.recurrent_depth, cfg.d_model, cfg.adapter_rank
        self.scale = no_decay(jnp.zeros((depth, d), jnp.float32))
        self.shift = no_decay(jnp.zeros((depth, d), jnp.float32))
        if r:
            self.lora_a = nnx.Param(jax.random.normal(rngs.params(), (depth, d, r)) * d**-0.5)
            self.lora_b = nnx.Param(jnp.zeros((depth, r, d), jnp.float32))

    def per_depth(self) -> dict:
        return {k: getattr(self, k)[...] for k in ("scale", "shift", "lora_a", "lora_b") if hasattr(self, k)}

    @staticmethod
    def apply(x, adapter: dict):
        y = x * (1 + adapter["scale"]) + adapter["shift"]
        if "lora_a" in adapter:
            y = y + (x @ adapter["lora_a"]) @ adapter["lora_b"]
        return y.astype(x.dtype)


class RecursiveSSM(LanguageModel):
    """``n_layers`` physical Mamba residual blocks applied ``recurrent_depth`` times (the
    48 × 5 = 240-effective-layer recursive state space of docs/MODELS.md).

    The depth loop is ``nnx.scan`` over ``recurrent_depth`` with the blocks broadcast (one copy of their
    parameters for every depth) and the per-depth adapters scanned; inside it the blocks run in
    segments of ``checkpoint_segments`` blocks, each rematerialised under ``model.remat`` in a full
    forward (with "block", only segment boundaries are stored for the backward pass).
    Each block keeps one decode cache per depth (it sees different inputs at each depth), stored
    batch-first as (batch, depth, ...) so caches of several prompts concatenate along the batch.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        # Residual-branch init scaled for the effective depth, as a 240-layer stack would be.
        block_cfg = dataclasses.replace(cfg, n_layers=cfg.n_layers * cfg.recurrent_depth)
        super().__init__(
            cfg,
            lambda rngs: [
                ResidualBlock(block_cfg, Mamba(block_cfg, rngs=rngs), rngs=rngs) for _ in range(cfg.n_layers)
            ],
            rngs=rngs,
        )
        self.adapters = DepthAdapters(cfg, rngs=rngs)

    @staticmethod
    def forward_applications(cfg: ModelConfig) -> ForwardApplications:
        n, depth = cfg.n_layers, cfg.recurrent_depth
        return ForwardApplications(
            n * depth, f"{n} physical blocks x {depth} depths = {n * depth} layers", {"mamba": depth}, n * depth, 0.0
        )

    def init_cache(self, batch: int):
        depth = self.cfg.recurrent_depth
        if self.scanned:  # (batch, depth, block, ...)
            one = self.layers.init_cache(batch)
            return jax.tree.map(lambda a: jnp.zeros((a.shape[0], depth, self.n_stacked) + a.shape[1:], a.dtype), one)
        return tuple(
            jax.tree.map(lambda a: jnp.repeat(a[:, None], depth, axis=1), layer.init_cache(batch))
            for layer in self.layers
        )

    def body(self, x, cache=None, segment_ids=None, lengths=None):
        if self.scanned:
            return self.scanned_body(x, cache, segment_ids, lengths)
        n, seg = len(self.layers), self.cfg.checkpoint_segments
        caches = None if cache is None else jax.tree.map(lambda a: jnp.moveaxis(a, 1, 0), tuple(cache))
        segments = tuple(tuple(self.layers[lo : lo + seg]) for lo in range(0, n, seg))

        def segment_runner(first: int):
            """The blocks of the segment starting at block ``first``; each draws block ``first + j``'s masks."""

            def run_segment(blocks, x, block_caches):
                new = []
                for j, (block, block_cache) in enumerate(zip(blocks, block_caches)):
                    with layer_key(first + j):
                        x, block_cache = block(x, block_cache, segment_ids=segment_ids, lengths=lengths)
                    new.append(block_cache)
                return x, tuple(new)

            return rematerialised(run_segment, self.cfg) if cache is None else run_segment

        runners = [segment_runner(lo) for lo in range(0, n, seg)]

        @nnx.scan(in_axes=(nnx.Carry, None, 0, 0, 0), out_axes=(nnx.Carry, 0), length=self.cfg.recurrent_depth)
        def over_depth(x, segments, adapter, depth_caches, depth):
            x = DepthAdapters.apply(x, adapter)
            depth_caches = depth_caches if depth_caches is not None else (None,) * n
            new, norms = (), []
            with layer_key(depth), layer_stack():
                for i, blocks in enumerate(segments):
                    x, block_caches = runners[i](blocks, x, tuple(depth_caches[i * seg : (i + 1) * seg]))
                    new = new + block_caches
                    norms.append(rms(x))
            return x, (new, jnp.stack(norms))

        with layer_stack():
            x, (new_caches, norms) = over_depth(
                x.astype(residual_dtype(self.cfg)),
                segments,
                self.adapters.per_depth(),
                caches,
                jnp.arange(self.cfg.recurrent_depth),
            )
        if cache is None:  # the residual stream after each segment (depth-major) and after each depth
            record_probe(self, "probe_act_rms", jnp.ravel(norms))
            record_probe(self, "probe_state_rms", norms[:, -1])
        return x, None if cache is None else jax.tree.map(lambda a: jnp.moveaxis(a, 0, 1), new_caches)

    def scanned_body(self, x, cache=None, segment_ids=None, lengths=None):
        """``body`` with the stacked blocks under ``lax.scan`` inside the depth scan: one traced block whatever
        ``n_layers``. A full forward scans segments of ``checkpoint_segments`` blocks, each under ``model.remat``
        (a shorter last one when they do not divide ``n_layers``); decoding carries the depth's
        (batch, block, ...) cache through the blocks."""
        cfg, n, seg = self.cfg, self.n_stacked, self.cfg.checkpoint_segments
        graphdef, blocks = nnx.split(self.layers)
        x = x.astype(residual_dtype(cfg))
        depths = (self.adapters.per_depth(), jnp.arange(cfg.recurrent_depth))

        if cache is not None:

            def block_cached(carry, xs):
                (x, caches), (state, i) = carry, xs
                x, block_cache = nnx.merge(graphdef, state)(x, take_layer(caches, i), segment_ids, lengths)
                return (x.astype(residual_dtype(cfg)), put_layer(caches, block_cache, i)), None

            def depth_cached(x, xs):
                adapter, depth_caches = xs
                carry = (DepthAdapters.apply(x, adapter), depth_caches)
                return jax.lax.scan(block_cached, carry, (blocks, jnp.arange(n)))[0]

            caches = jax.tree.map(lambda a: jnp.moveaxis(a, 1, 0), cache)  # (depth, batch, block, ...)
            x, caches = jax.lax.scan(depth_cached, x, (depths[0], caches))
            return x, jax.tree.map(lambda a: jnp.moveaxis(a, 0, 1), caches)

        def block(x, xs):
            state, i = xs
            with layer_key(i):
                return nnx.merge(graphdef, state)(x, segment_ids=segment_ids)[0], None

        segment = checkpointed(lambda x, states, index: jax.lax.scan(block, x, (states, index))[0], cfg)
        whole = (n // seg) * seg
        split = lambda a, lo, hi: jax.tree.map(lambda v: v[lo:hi], a)
        full = jax.tree.map(lambda v: v.reshape((n // seg, seg) + v.shape[1:]), split(blocks, 0, whole))
        index = jnp.arange(n)

        def over_segments(x, xs):
            x = segment(x, *xs)
            return x, rms(x)

        def over_depth(x, xs):
            adapter, depth = xs
            x = DepthAdapters.apply(x, adapter)
            norms = []
            with layer_key(depth), layer_stack():
                if whole:
                    x, norms = jax.lax.scan(over_segments, x, (full, index[:whole].reshape(n // seg, seg)))
                    norms = [norms]
                if whole < n:
                    x = segment(x, split(blocks, whole, n), index[whole:])
                    norms.append(rms(x)[None])
            return x, jnp.concatenate(norms)

        with layer_stack():
            x, norms = jax.lax.scan(over_depth, x, depths)
        record_probe(self, "probe_act_rms", jnp.ravel(norms))  # after each segment, depth-major
        record_probe(self, "probe_state_rms", norms[:, -1])
        return x, None
