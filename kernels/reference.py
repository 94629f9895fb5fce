"""The selective scan, written plainly: the math every other backend must reproduce.

Per channel c and state n, with the state h starting at ``initial_state`` (zero by default):

    delta  = softplus(delta + delta_bias)            (bias and softplus optional)
    h_t    = exp(delta_t,c * A_c,n) * h_{t-1} + delta_t,c * B_t,n * u_t,c
             (h_{t-1} taken as 0 where ``reset_t``: a packed document starts at t)
    y_t,c  = sum_n h_t,c,n * C_t,n  +  D_c * u_t,c
    y_t,c *= silu(z_t,c)                              (gate optional)

This is ``selective_scan_ref`` of state-spaces/mamba in a (batch, length, channels) layout.
All arithmetic is float32 (float64 if the inputs are); the output has the dtype of ``u``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def compute_dtype(x: jax.Array) -> jnp.dtype:
    """float64 stays float64 (used by tests); everything else computes in float32."""
    return jnp.float64 if x.dtype == jnp.float64 else jnp.float32


def effective_delta(delta, delta_bias, delta_softplus, dtype):
    """delta after the optional bias and softplus, in the compute dtype."""
    delta = delta.astype(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.astype(dtype)
    if delta_softplus:
        delta = jax.nn.softplus(delta)
    return delta


def keep_mask(reset, like: jax.Array, dtype):
    """(batch, length) float: 0 where the state is reset before step t, else 1 (all ones if no reset)."""
    if reset is None:
        return jnp.ones(like.shape[:2], dtype)
    return 1 - reset.astype(dtype)


def finish_output(y, u, D, z, out_dtype):
    """Add the D skip connection and apply the SiLU(z) gate."""
    if D is not None:
        y = y + u * D.astype(y.dtype)
    if z is not None:
        y = y * jax.nn.silu(z.astype(y.dtype))
    return y.astype(out_dtype)


def linear_recurrence(decay, drive, axis=1):
    """Every h_t = decay_t * h_{t-1} + drive_t along ``axis`` (h_{-1} = 0), by ``jax.lax.associative_scan``."""

    def combine(left, right):
        a_l, b_l = left
        a_r, b_r = right
        return a_l * a_r, a_r * b_l + b_r

    return jax.lax.associative_scan(combine, (decay, drive), axis=axis)[1]


def associative_scan(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None, reset=None
):
    """Parallel definition via ``jax.lax.associative_scan``; materialises (b, l, d, n).

    Returns (y, last_state) with last_state of shape (batch, channels, state).
    """
    dtype = compute_dtype(u)
    uc = u.astype(dtype)
    dt = effective_delta(delta, delta_bias, delta_softplus, dtype)
    keep = keep_mask(reset, u, dtype)[..., None, None]
    decay = keep * jnp.exp(dt[..., None] * A.astype(dtype))  # (b, l, d, n)
    drive = dt[..., None] * B.astype(dtype)[:, :, None, :] * uc[..., None]  # (b, l, d, n)
    if initial_state is not None:
        drive = drive.at[:, 0].add(decay[:, 0] * initial_state.astype(dtype))

    h = linear_recurrence(decay, drive)
    y = jnp.einsum("bldn,bln->bld", h, C.astype(dtype))
    return finish_output(y, uc, D, z, u.dtype), h[:, -1]


def sequential_scan(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None, reset=None
):
    """The same recurrence as a ``jax.lax.scan`` over time; never holds (b, l, d, n)."""
    dtype = compute_dtype(u)
    uc = u.astype(dtype)
    dt = effective_delta(delta, delta_bias, delta_softplus, dtype)
    A = A.astype(dtype)
    batch, _, channels = u.shape
    h0 = jnp.zeros((batch, channels, A.shape[1]), dtype) if initial_state is None else initial_state.astype(dtype)

    def step(h, inputs):
        u_t, dt_t, B_t, C_t, keep_t = inputs  # (b,d) (b,d) (b,n) (b,n) (b,)
        decay = keep_t[:, None, None] * jnp.exp(dt_t[..., None] * A)
        h = decay * h + (dt_t * u_t)[..., None] * B_t[:, None, :]
        return h, jnp.einsum("bdn,bn->bd", h, C_t)

    time_major = lambda x: jnp.swapaxes(x, 0, 1)
    h_last, y = jax.lax.scan(
        step,
        h0,
        (
            time_major(uc),
            time_major(dt),
            time_major(B.astype(dtype)),
            time_major(C.astype(dtype)),
            time_major(keep_mask(reset, u, dtype)),
        ),
    )
    return finish_output(time_major(y), uc, D, z, u.dtype), h_last
