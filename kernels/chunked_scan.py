"""The selective scan, time-parallel in plain JAX: chunks of T steps, a scan inside each chunk.

Why: the associative scan over the whole sequence (``reference.associative_scan``) materialises
(batch, length, channels, state) — and its autodiff keeps several such tensors — while ``lax.scan``'s
autodiff keeps every step's state.  Here the sequence is cut into chunks of ``chunk`` steps:

* **inside a chunk** the states come from ``jax.lax.associative_scan`` (log2(T) parallel levels over a
  (T, batch, channels, state) block, the state entering the chunk folded into the first step's drive) or,
  on CPU, from a fused ``lax.scan`` over its steps (``default_inner``);
* **across chunks** a ``lax.scan`` carries the chunk-end state (batch, channels, state);
* **backward** (``jax.custom_vjp``): the forward keeps only the state entering each chunk,
  (n_chunks, batch, channels, state).  A reverse ``lax.scan`` over the chunks recomputes one chunk from its
  boundary state and runs its adjoint (``_chunk_grads``, written out: the adjoint state is the same linear
  recurrence backwards in time), so at any time only one chunk's internals exist: peak extra memory
  O(batch · T · channels · state), never O(length · ...).  Per-step gradients are the scan's stacked
  outputs; the parameter gradients (A, D, delta_bias) accumulate in its carry, as does d(state entering
  the chunk), which becomes d initial_state at the start.

The math is ``kernels/reference.py``'s.  Lengths that are not a multiple of the chunk are padded at the
end with steps whose effective delta is masked to 0 (decay exp(0) = 1, drive 0): the state passes them
unchanged and their gradients are exactly 0.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from . import reference

MIN_CHUNK, MAX_CHUNK = 16, 1024  # the range a configured chunk length may take (hrm.config validates it)


def default_chunk(length: int) -> int:
    """The chunk length for ``length`` steps: the power of two at or above sqrt(length), within 64..256.

    About sqrt(length) balances the two memories the backward holds: the boundary states
    (length / T of them) and one chunk's internals (T steps), so neither dominates; 64..256 keeps a
    chunk's associative scan wide enough to be parallel and its (batch, T, channels, state) block small."""
    return min(max(1 << max(0, math.ceil(math.log2(max(length, 1)) / 2)), 64), 256)


INNER = ("associative", "sequential")


def default_inner() -> str:
    """How a chunk's steps are scanned: in parallel (associative) off CPU; on CPU by a ``lax.scan`` over the
    chunk's steps, fused per step, which keeps one step's (batch, channels, state) in cache (measured
    faster there, docs/BENCHMARKS.md)."""
    return "sequential" if jax.default_backend() == "cpu" else "associative"


class _Steps(NamedTuple):
    """One chunk's per-step inputs in the compute dtype, time-major: (T, batch, ...)."""

    u: jax.Array  # (T, b, d)
    pre: jax.Array  # (T, b, d) delta + bias, before the softplus
    dt: jax.Array  # (T, b, d) effective delta, 0 on padding
    B: jax.Array  # (T, b, n)
    C: jax.Array  # (T, b, n)
    keep: jax.Array  # (T, b) 0 where the state resets before the step
    valid: jax.Array  # (T,) 0 on padding


def _steps(u, delta, B, C, keep, valid, bias, softplus) -> _Steps:
    dtype = reference.compute_dtype(u)
    pre = delta.astype(dtype) + bias.astype(dtype)
    dt = (jax.nn.softplus(pre) if softplus else pre) * valid[:, None, None].astype(dtype)
    return _Steps(u.astype(dtype), pre, dt, B.astype(dtype), C.astype(dtype), keep.astype(dtype), valid)


def _decay(keep, dt, A):
    """keep * exp(dt * A): the factor on the previous state, (..., d, n)."""
    return keep[..., None, None] * jnp.exp(dt[..., None] * A)


def _drive(dt, u, B):
    """dt * u * B: what a step adds to the state, (..., d, n)."""
    return (dt * u)[..., None] * B[..., None, :]


# --- the inner scan, two ways: all of a chunk's states at once, or step by step -----------------------------


def _states(x: _Steps, A, h0):
    """(T, b, d, n): the state after every step of the chunk, by an associative scan over its steps."""
    decay = _decay(x.keep, x.dt, A)
    drive = _drive(x.dt, x.u, x.B).at[0].add(decay[0] * h0)
    return reference.linear_recurrence(decay, drive, axis=0)


def _forward_associative(x: _Steps, A, h0):
    h = _states(x, A, h0)
    return jnp.einsum("lbdn,lbn->lbd", h, x.C), h[-1]


def _forward_sequential(x: _Steps, A, h0):
    def step(h, t):
        u, dt, B, C, keep = t
        h = _decay(keep, dt, A) * h + _drive(dt, u, B)
        return h, jnp.einsum("bdn,bn->bd", h, C)

    h, y = jax.lax.scan(step, h0, (x.u, x.dt, x.B, x.C, x.keep))
    return y, h


def _adjoint_associative(x: _Steps, A, h0, g, dh_out):
    """Gradients of the chunk's states given g = dL/d(sum_n h C) per step and dh_out = dL/d(last state):
    the adjoint lam_t = dL/dh_t = g_t C_t + decay_{t+1} lam_{t+1} (lam_T-1 = g C + dh_out) is the same
    linear recurrence backwards in time.  Returns (dh0, (sum_n h C, du from the state, ddt, dB, dC), dA)."""
    h = _states(x, A, h0)
    decay = _decay(x.keep, x.dt, A)
    decay_next = jnp.concatenate([decay[1:], jnp.ones_like(decay[:1])], axis=0)
    lam = reference.linear_recurrence(
        jnp.flip(decay_next, 0), jnp.flip(g[..., None] * x.C[:, :, None, :], 0).at[0].add(dh_out), axis=0
    )
    lam = jnp.flip(lam, 0)
    h_prev = jnp.concatenate([h0[None], h[:-1]], axis=0)
    d_arg = lam * h_prev * decay  # dL/d(dt * A)
    lam_b = jnp.einsum("lbdn,lbn->lbd", lam, x.B)
    per_step = (
        jnp.einsum("lbdn,lbn->lbd", h, x.C),
        lam_b * x.dt,
        jnp.einsum("lbdn,dn->lbd", d_arg, A) + lam_b * x.u,
        jnp.einsum("lbdn,lbd->lbn", lam, x.dt * x.u),
        jnp.einsum("lbd,lbdn->lbn", g, h),
    )
    return lam[0] * decay[0], per_step, jnp.einsum("lbdn,lbd->dn", d_arg, x.dt)


def _adjoint_sequential(x: _Steps, A, h0, g, dh_out):
    """``_adjoint_associative`` step by step: a forward ``lax.scan`` stores each step's states before and after
    and its decay (T, b, d, n each: one chunk's), a reverse one runs the adjoint on them and emits each
    step's gradients."""

    def forward(h, t):
        u, dt, B, keep = t
        decay = _decay(keep, dt, A)
        h_next = decay * h + _drive(dt, u, B)
        return h_next, (h, h_next, decay)

    _, (h_prev, h, decay) = jax.lax.scan(forward, h0, (x.u, x.dt, x.B, x.keep))

    def backward(carry, t):
        lam, dA = carry  # lam: dL/dh_t from the later steps, already through their decays
        h_prev, h, decay, u, dt, B, C, g = t
        lam = lam + g[..., None] * C[:, None, :]
        d_arg = lam * h_prev * decay
        lam_b = jnp.einsum("bdn,bn->bd", lam, B)
        out = (
            jnp.einsum("bdn,bn->bd", h, C),
            lam_b * dt,
            jnp.einsum("bdn,dn->bd", d_arg, A) + lam_b * u,
            jnp.einsum("bdn,bd->bn", lam, dt * u),
            jnp.einsum("bd,bdn->bn", g, h),
        )
        return (lam * decay, dA + jnp.einsum("bdn,bd->dn", d_arg, dt)), out

    init = (dh_out, jnp.zeros(A.shape, A.dtype))
    (dh0, dA), per_step = jax.lax.scan(backward, init, (h_prev, h, decay, x.u, x.dt, x.B, x.C, g), reverse=True)
    return dh0, per_step, dA


# --- one chunk: forward and its VJP written out -------------------------------------------------------------


def _chunk_scan(h0, u, delta, B, C, z, keep, valid, A, D, bias, softplus, sequential):
    """One chunk, (T, batch, ...) inputs and the state ``h0`` entering it -> (y (T, batch, channels) in u's
    dtype, the state after its last step)."""
    x = _steps(u, delta, B, C, keep, valid, bias, softplus)
    A = A.astype(x.u.dtype)
    y, h = (_forward_sequential if sequential else _forward_associative)(x, A, h0.astype(x.u.dtype))
    return reference.finish_output(y, x.u, D, z, u.dtype), h


def _chunk_grads(h0, u, delta, B, C, z, keep, valid, A, D, bias, softplus, sequential, dy, dh_out):
    """The VJP of ``_chunk_scan`` (autodiff through an associative scan costs several times this): the chunk's
    states recomputed from ``h0``, then the adjoint.  Returns (dh0, du, ddelta, dB, dC, dz, dA, dD, dbias)."""
    x = _steps(u, delta, B, C, keep, valid, bias, softplus)
    dtype = x.u.dtype
    g = dy.astype(dtype)
    if z is not None:  # y = y_skip * silu(z): the state sees g * silu(z)
        zc = z.astype(dtype)
        sig = jax.nn.sigmoid(zc)
        g_state = g * zc * sig
    else:
        g_state = g
    adjoint = _adjoint_sequential if sequential else _adjoint_associative
    dh0, (y_state, du_state, ddt, dB, dC), dA = adjoint(
        x, A.astype(dtype), h0.astype(dtype), g_state, dh_out.astype(dtype)
    )
    dz = None
    if z is not None:
        y_skip = y_state + x.u * D.astype(dtype)
        dz = (g * y_skip * sig * (1 + zc * (1 - sig))).astype(z.dtype)
    dpre = (ddt * jax.nn.sigmoid(x.pre) if softplus else ddt) * valid[:, None, None].astype(dtype)
    return (
        dh0.astype(h0.dtype),
        (g_state * D.astype(dtype) + du_state).astype(u.dtype),
        dpre.astype(delta.dtype),
        dB.astype(B.dtype),
        dC.astype(C.dtype),
        dz,
        dA,
        jnp.sum(g_state * x.u, axis=(0, 1)),
        jnp.sum(dpre, axis=(0, 1)),
    )


class _Chunks:
    """The padded, chunk-major, time-major view of the per-step inputs: (n_chunks, T, batch, ...) arrays."""

    def __init__(self, length: int, chunk: int):
        self.length, self.chunk = length, chunk
        self.n = -(-length // chunk)
        self.padded = self.n * chunk

    def split(self, x, fill=0):
        """(batch, length, ...) -> (n_chunks, chunk, batch, ...), padded at the end with ``fill``."""
        if x is None:
            return None
        pad = [(0, 0), (0, self.padded - self.length)] + [(0, 0)] * (x.ndim - 2)
        x = jnp.pad(x, pad, constant_values=fill).reshape(x.shape[0], self.n, self.chunk, *x.shape[2:])
        return jnp.moveaxis(x, 0, 2)

    def join(self, x):
        """(n_chunks, chunk, batch, ...) -> (batch, length, ...)."""
        x = jnp.moveaxis(x, 2, 0)
        return x.reshape(x.shape[0], self.padded, *x.shape[3:])[:, : self.length]

    def valid(self):
        """(n_chunks, chunk) float32: 1 on real steps, 0 on padding (where keep is 1: no reset)."""
        return (jnp.arange(self.padded) < self.length).astype(jnp.float32).reshape(self.n, self.chunk)


def _forward(cfg, u, delta, A, B, C, D, z, bias, h0, keep, save_boundaries):
    chunk, softplus, sequential = cfg
    view = _Chunks(u.shape[1], chunk)
    xs = ([view.split(x) for x in (u, delta, B, C)], view.split(z), view.split(keep, fill=1), view.valid())

    def step(h, x):
        (u_c, delta_c, B_c, C_c), z_c, keep_c, valid_c = x
        y_c, h_next = _chunk_scan(h, u_c, delta_c, B_c, C_c, z_c, keep_c, valid_c, A, D, bias, softplus, sequential)
        return h_next, (y_c, h) if save_boundaries else y_c

    last, out = jax.lax.scan(step, h0, xs)
    y, boundaries = out if save_boundaries else (out, None)
    return view.join(y), last, boundaries


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _scan(cfg, u, delta, A, B, C, D, z, bias, h0, keep):
    """``cfg``: (chunk, softplus, sequential inner scan), static."""
    y, last, _ = _forward(cfg, u, delta, A, B, C, D, z, bias, h0, keep, save_boundaries=False)
    return y, last


def _scan_fwd(cfg, u, delta, A, B, C, D, z, bias, h0, keep):
    y, last, boundaries = _forward(cfg, u, delta, A, B, C, D, z, bias, h0, keep, save_boundaries=True)
    return (y, last), (u, delta, A, B, C, D, z, bias, h0, keep, boundaries)


def _scan_bwd(cfg, residuals, cotangents):
    chunk, softplus, sequential = cfg
    u, delta, A, B, C, D, z, bias, h0, keep, boundaries = residuals
    dy, dlast = cotangents
    view = _Chunks(u.shape[1], chunk)
    acc = reference.compute_dtype(u)

    def step(carry, x):
        dh, dparams = carry
        (u_c, delta_c, B_c, C_c, z_c, dy_c), keep_c, valid_c, h_in = x
        dh_in, *seq, dA, dD, dbias = _chunk_grads(
            h_in, u_c, delta_c, B_c, C_c, z_c, keep_c, valid_c, A, D, bias, softplus, sequential, dy_c, dh
        )
        dparams = tuple(a + g.astype(acc) for a, g in zip(dparams, (dA, dD, dbias)))
        return (dh_in.astype(acc), dparams), tuple(seq)

    seq = [view.split(x) for x in (u, delta, B, C, z, dy.astype(u.dtype))]
    init = (dlast.astype(acc), tuple(jnp.zeros(p.shape, acc) for p in (A, D, bias)))
    (dh0, (dA, dD, dbias)), grads = jax.lax.scan(
        step, init, (seq, view.split(keep, fill=1), view.valid(), boundaries), reverse=True
    )
    du, ddelta, dB, dC, dz = (None if g is None else view.join(g) for g in grads)
    return (
        du,
        ddelta,
        dA.astype(A.dtype),
        dB,
        dC,
        dD.astype(D.dtype),
        dz,
        dbias.astype(bias.dtype),
        dh0.astype(h0.dtype),
        jnp.zeros_like(keep),
    )


_scan.defvjp(_scan_fwd, _scan_bwd)


@functools.partial(jax.jit, static_argnames=("delta_softplus", "chunk", "inner"))
def chunked_scan(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    initial_state=None,
    reset=None,
    *,
    chunk=None,
    inner=None,
):
    """Selective scan in chunks of ``chunk`` steps (default ``default_chunk(length)``, capped at the length);
    same contract as ``reference.sequential_scan``: (y in u's dtype, last_state (batch, channels, state)
    float32, float64 for float64 inputs).  Differentiable (reverse mode) in every array argument.
    ``inner``: how a chunk's steps are scanned, "associative" or "sequential" (default ``default_inner()``)."""
    batch, length, channels = u.shape
    state = A.shape[1]
    acc = reference.compute_dtype(u)
    chunk = max(1, min(int(chunk or default_chunk(length)), length))
    D = jnp.zeros((channels,), acc) if D is None else D
    delta_bias = jnp.zeros((channels,), acc) if delta_bias is None else delta_bias
    h0 = jnp.zeros((batch, channels, state), acc) if initial_state is None else initial_state
    keep = reference.keep_mask(reset, u, acc)
    inner = inner or default_inner()
    if inner not in INNER:
        raise ValueError(f"chunked scan: inner must be one of {', '.join(INNER)}, got {inner!r}")
    cfg = (chunk, bool(delta_softplus), inner == "sequential")
    y, last = _scan(cfg, u, delta, A, B, C, D, z, delta_bias, h0, keep)
    return y, last.astype(acc)
