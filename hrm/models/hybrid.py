"""The hybrid families: ``hybrid_recursive`` and ``hybrid_pattern`` (docs/MODELS.md).

Both reuse ``LanguageModel`` (embedding → layers → RMSNorm → tied head) and ``ResidualBlock`` from lm.py.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from hrm.config import ModelConfig
from hrm.models.attention import MLP, MultiScaleAttention
from hrm.models.dropout import dropout, sublayer_key
from hrm.models.lm import ForwardApplications, LanguageModel, ResidualBlock, record_probe, residual_dtype, rms, unit_key
from hrm.models.mamba import Mamba
from hrm.models.params import linear, no_decay, rms_norm
from hrm.models.recursive import RecursiveProcessor


class HybridRecursiveLayer(nnx.Module):
    """Mamba → recursive processor → hierarchical (1x/2x/4x) attention → fusion.

    ``m = Mamba(norm(x))``; ``r = Recursive(m)``; ``r = r + Attention(norm(r))``;
    ``x + α · dropout(RMSNorm(Linear([m, r])))`` with a learned scalar α (the adaptive weight, starting at 0.1
    so the fused branch enters the residual stream gently).
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(cfg.dtype)
        norm = lambda: rms_norm(cfg.d_model, epsilon=cfg.norm_eps, dtype=dtype, rngs=rngs)
        self.norm = norm()
        self.mamba = Mamba(cfg, rngs=rngs)
        self.recursive = RecursiveProcessor(cfg, rngs=rngs)
        self.attn_norm = norm()
        self.attention = MultiScaleAttention(cfg, cfg.attention_scales, rngs=rngs)
        self.fuse = linear(2 * cfg.d_model, cfg.d_model, use_bias=False, dtype=dtype, rngs=rngs)
        self.fuse_norm = norm()
        self.alpha = no_decay(jnp.full((), 0.1, jnp.float32))
        self.residual_dtype = residual_dtype(cfg)
        self.dropout = cfg.dropout

    def init_cache(self, batch: int):
        return (self.mamba.init_cache(batch), self.recursive.init_cache(batch), self.attention.init_cache(batch))

    def __call__(self, x, cache=None, segment_ids=None, lengths=None):
        mamba_cache, gate_cache, attn_cache = cache if cache is not None else (None, None, None)
        m, mamba_cache = self.mamba(self.norm(x), mamba_cache, segment_ids=segment_ids, lengths=lengths)
        r, gate_cache = self.recursive(m, gate_cache, segment_ids=segment_ids, lengths=lengths)
        a, attn_cache = self.attention(self.attn_norm(r), attn_cache, segment_ids=segment_ids, lengths=lengths)
        r = r + a.astype(r.dtype)
        fused = dropout(self.fuse_norm(self.fuse(jnp.concatenate([m, r.astype(m.dtype)], axis=-1))), self.dropout)
        out = x.astype(self.residual_dtype) + self.alpha[...] * fused.astype(self.residual_dtype)
        return out, (mamba_cache, gate_cache, attn_cache)


class HybridRecursiveLM(LanguageModel):
    """``n_layers`` HybridRecursiveLayers between the shared embedding and head."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        super().__init__(
            cfg, lambda rngs: [HybridRecursiveLayer(cfg, rngs=rngs) for _ in range(cfg.n_layers)], rngs=rngs
        )

    @staticmethod
    def forward_applications(cfg: ModelConfig) -> ForwardApplications:
        n, scales = cfg.n_layers, cfg.attention_scales
        return ForwardApplications(
            n,
            f"{n} layers, each Mamba + recursive transform x {cfg.max_recursion_depth} + attention at "
            f"scales {','.join(map(str, scales))}",
            {"recursive processor": cfg.max_recursion_depth},
            n,
            n * sum(1 / s for s in scales),
        )


class AttentionLayer(nnx.Module):
    """A transformer layer: x + MHA(norm(x)) (causal, RoPE, KV cache), then x + MLP(norm(x))."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.attn = ResidualBlock(cfg, MultiScaleAttention(cfg, (1,), rngs=rngs), rngs=rngs)
        self.mlp = ResidualBlock(cfg, MLP(cfg, rngs=rngs), rngs=rngs)

    def init_cache(self, batch: int):
        return self.attn.init_cache(batch)

    def __call__(self, x, cache=None, segment_ids=None, lengths=None):
        x, cache = self.attn(x, cache, segment_ids=segment_ids, lengths=lengths)
        x, _ = self.mlp(x)
        return x, cache


def pattern_period(pattern: str) -> int:
    """The length of the shortest unit that repeats to make ``pattern`` ("AMAM" → 2); its length when none does."""
    n = len(pattern)
    return next(p for p in range(1, n + 1) if n % p == 0 and pattern[:p] * (n // p) == pattern)


class PatternUnit(nnx.Module):
    """Consecutive layers of a repeating pattern, applied in order: what ``nnx.scan`` repeats. A full forward
    records the residual stream's RMS after each of its layers (``probe_act_rms``, in layer order)."""

    def __init__(self, layers: list):
        # attributes, not an nnx.List: nnx.capture marks modules with a string key, which a List's integer keys
        # cannot be sorted with inside nnx.scan
        self.size = len(layers)
        for i, layer in enumerate(layers):
            setattr(self, unit_key(i), layer)

    @property
    def layers(self) -> list:
        return [getattr(self, unit_key(i)) for i in range(self.size)]

    def init_cache(self, batch: int):
        return tuple(layer.init_cache(batch) for layer in self.layers)

    def __call__(self, x, cache=None, segment_ids=None, lengths=None):
        new = []
        for i, layer in enumerate(self.layers):
            with sublayer_key(i, self.size):  # the masks of the unrolled stack's layer
                x, layer_cache = layer(x, None if cache is None else cache[i], segment_ids=segment_ids, lengths=lengths)
            new.append(layer_cache)
            if cache is None:
                record_probe(self, "probe_act_rms", rms(x))
        return x, None if cache is None else tuple(new)


class HybridPatternLM(LanguageModel):
    """Layers from ``layer_pattern``: ``M`` a Mamba residual block, ``A`` an AttentionLayer.

    With ``model.scan_layers`` the pattern's shortest repeating unit ("AM" of "AMAMAM") is one ``PatternUnit``
    and the repeats are scanned; a pattern that does not repeat stays a Python loop over its layers."""

    @staticmethod
    def unit_size(cfg: ModelConfig) -> int | None:
        period = pattern_period(cfg.layer_pattern)
        return period if period < len(cfg.layer_pattern) else None

    @staticmethod
    def group(layers: list, size: int) -> list:
        return [PatternUnit(layers[lo : lo + size]) for lo in range(0, len(layers), size)]

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        def make(letter, rngs):
            if letter == "A":
                return AttentionLayer(cfg, rngs=rngs)
            return ResidualBlock(cfg, Mamba(cfg, rngs=rngs), rngs=rngs)

        super().__init__(cfg, lambda rngs: [make(c, rngs) for c in cfg.layer_pattern], rngs=rngs)

    @staticmethod
    def forward_applications(cfg: ModelConfig) -> ForwardApplications:
        mamba, attention = cfg.layer_pattern.count("M"), cfg.layer_pattern.count("A")
        return ForwardApplications(
            cfg.n_layers,
            f"{cfg.n_layers} layers '{cfg.layer_pattern}' ({mamba} Mamba, {attention} attention)",
            {},
            mamba,
            float(attention),
        )
