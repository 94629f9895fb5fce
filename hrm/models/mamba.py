"""The Mamba (v1) block in Flax NNX, math and initialisation as state-spaces/mamba ``Mamba``.

One code path serves training, prefill and decode: the block takes an optional ``MambaCache``
(the last ``d_conv - 1`` conv inputs and the SSM state) and returns the updated one, so a decode
step is the same forward pass on a length-1 input.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from hrm import kernels
from hrm.config import ModelConfig
from hrm.models.params import linear, no_decay, out_init, torch_default_init
from hrm.models.segments import document_starts, last_real, real_positions


class MambaCache(NamedTuple):
    conv: jax.Array  # (batch, d_conv - 1, d_inner): the most recent inputs to the causal conv
    ssm: jax.Array  # (batch, d_inner, d_state) float32


def dt_rank(cfg: ModelConfig) -> int:
    return cfg.dt_rank or math.ceil(cfg.d_model / 16)


def d_inner(cfg: ModelConfig) -> int:
    return cfg.expand * cfg.d_model


def _uniform(low, high):
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, low, high)


def _dt_bias_init(cfg: ModelConfig):
    """Inverse softplus of dt ~ exp(U(log dt_min, log dt_max)), clamped at dt_init_floor."""

    def init(key, shape, dtype=jnp.float32):
        u = jax.random.uniform(key, shape, jnp.float32)
        dt = jnp.exp(u * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min))
        dt = jnp.maximum(dt, cfg.dt_init_floor)
        return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)

    return init


class Mamba(nnx.Module):
    """The selective-SSM mixer: in_proj → causal conv + SiLU → selective scan (gated) → out_proj."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, di, n, k, r = cfg.d_model, d_inner(cfg), cfg.d_state, cfg.d_conv, dt_rank(cfg)
        self.cfg = cfg
        dtype = jnp.dtype(cfg.dtype)
        dense = lambda i, o, **kw: linear(i, o, dtype=dtype, rngs=rngs, **kw)
        self.in_proj = dense(d, 2 * di, use_bias=cfg.bias, kernel_init=torch_default_init)
        self.conv_kernel = nnx.Param(_uniform(-(k**-0.5), k**-0.5)(rngs.params(), (k, di)))
        if cfg.conv_bias:  # absent when off (mamba-ssm's ``conv_bias`` flag: nn.Conv1d(bias=False))
            self.conv_bias = no_decay(_uniform(-(k**-0.5), k**-0.5)(rngs.params(), (di,)))
        self.x_proj = dense(di, r + 2 * n, use_bias=False, kernel_init=torch_default_init)
        self.dt_proj = dense(
            r, di, use_bias=True, kernel_init=_uniform(-(r**-0.5), r**-0.5), bias_init=_dt_bias_init(cfg)
        )
        self.A_log = no_decay(jnp.log(jnp.broadcast_to(jnp.arange(1, n + 1, dtype=jnp.float32), (di, n))))
        self.D = no_decay(jnp.ones((di,), jnp.float32))
        self.out_proj = dense(di, d, use_bias=cfg.bias, kernel_init=out_init(cfg))

    def init_cache(self, batch: int) -> MambaCache:
        di, dtype = d_inner(self.cfg), jnp.dtype(self.cfg.dtype)
        return MambaCache(
            conv=jnp.zeros((batch, self.cfg.d_conv - 1, di), dtype),
            ssm=jnp.zeros((batch, di, self.cfg.d_state), jnp.float32),
        )

    def __call__(
        self,
        x: jax.Array,
        cache: MambaCache | None = None,
        segment_ids: jax.Array | None = None,
        lengths: jax.Array | None = None,
    ) -> tuple[jax.Array, MambaCache]:
        """x (batch, length, d_model) → (out (batch, length, d_model), cache after the last real position).

        ``segment_ids`` (batch, length) marks packed documents: where the id changes, the conv and
        SSM state start afresh, so each document sees only itself.
        ``lengths`` (batch,), decoding only: each row's real positions come first, the rest is padding (a
        batched prefill of prompts of different lengths). A padding step has dt = 0 (softplus(-inf)) and input 0,
        so the SSM state passes it unchanged (exp(0·A) = 1, drive 0), and the conv cache keeps the inputs before
        it; padding outputs are garbage nobody reads.
        """
        batch, _, _ = x.shape
        cache = cache if cache is not None else self.init_cache(batch)
        xs, z = jnp.split(checkpoint_name(self.in_proj(x), "in_proj"), 2, axis=-1)

        # Causal depthwise conv: the cache holds the d_conv - 1 inputs before this chunk.
        window = jnp.concatenate([cache.conv.astype(xs.dtype), xs], axis=1)
        k = self.cfg.d_conv
        conv_kernel = self.conv_kernel[...].astype(xs.dtype)
        length = xs.shape[1]
        if segment_ids is None:
            xc = sum(window[:, i : i + length] * conv_kernel[i] for i in range(k))
        else:  # an input from another document contributes nothing
            before = jnp.repeat(segment_ids[:, :1], k - 1, axis=1)
            padded = jnp.concatenate([before, segment_ids], axis=1)
            xc = sum(
                window[:, i : i + length]
                * conv_kernel[i]
                * (padded[:, i : i + length] == segment_ids)[..., None].astype(xs.dtype)
                for i in range(k)
            )
        if self.cfg.conv_bias:
            xc = xc + self.conv_bias[...].astype(xs.dtype)
        xc = checkpoint_name(jax.nn.silu(xc), "conv_out")
        real = None if lengths is None else real_positions(lengths, length)[..., None]
        if real is None:
            new_conv = window[:, window.shape[1] - (k - 1) :]
        else:  # the k - 1 inputs before each row's first padding position
            new_conv = last_real(window, lengths, k - 1)
            xc = jnp.where(real, xc, 0)

        n, r = self.cfg.d_state, dt_rank(self.cfg)
        dt_low, B, C = jnp.split(self.x_proj(xc), [r, r + n], axis=-1)
        dt = checkpoint_name(dt_low @ self.dt_proj.kernel[...].astype(dt_low.dtype), "dt")  # bias: in the scan
        if real is not None:
            dt = jnp.where(real, dt, -jnp.inf)
        y, ssm = kernels.selective_scan(
            xc,
            dt,
            -jnp.exp(self.A_log[...]),
            B,
            C,
            D=self.D[...],
            z=z,
            delta_bias=self.dt_proj.bias[...],
            delta_softplus=True,
            return_last_state=True,
            initial_state=cache.ssm,
            reset=document_starts(segment_ids),
            backend=self.cfg.scan_backend if x.shape[1] > 1 else "sequential",
            chunk=self.cfg.scan_chunk or None,
        )
        return checkpoint_name(self.out_proj(y), "out_proj"), MambaCache(conv=new_conv, ssm=ssm)
