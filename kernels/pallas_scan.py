"""The selective scan as Pallas kernels: a chunked forward scan and a recomputing reverse-time backward.

The math is the one written out in ``kernels/reference.py``; this file only changes *where* it runs:

* **Grid** ``(batch, channel blocks)``.  Each program owns one sequence and ``block`` channels and walks
  the whole length itself: an outer ``fori_loop`` over chunks of ``chunk`` time steps and an inner
  ``fori_loop`` over the steps of a chunk.  The state ``h`` (state × block, float32) is the loop carry,
  so it stays on chip; nothing of shape (batch, length, channels, state) is ever written to memory.
* **Fused**: ``delta_bias``, the softplus, the ``D`` skip and the ``SiLU(z)`` gate are applied inside
  the step, so the kernel reads u, delta, z, B, C once and writes y once.
* **Backward** (``jax.custom_vjp``): the forward pass run for training also stores the state at every
  chunk boundary, (batch, n_chunks, state, channels).  The backward kernel walks the chunks in reverse;
  for each chunk it recomputes the chunk's states forward from the stored boundary state into a
  (chunk, state, block) float32 workspace, then runs the reverse-time adjoint over the chunk's steps.
  The workspace is a per-program slice of a discarded output (batch, channel blocks, chunk, state,
  block) — Triton has no scratch memory — so memory stays O(length / chunk), never O(length), in state.
  Per-step gradients (u, delta, z) are written directly; dB and dC are per-channel-block partial sums
  written to an output with a channel-block axis; dA, dD and d delta_bias are per-sequence partial sums.
  Those axes are summed outside the kernel, so the result is deterministic (no atomics).

Layout inside the kernels: the state is held as (state, channels) so that a time step's row of
u / delta / z — shape (1, block) — broadcasts against it directly, and B, C are passed as
(batch, length, state, 1) so a time step's values are an (state, 1) column.  Every dynamic index is on
a leading axis (``ref[t]`` or ``ref[pl.ds(t, 1), :]``).

Padding (outside the kernels): length to a multiple of the chunk, channels to a multiple of the block,
state to a power of two (Triton needs power-of-two array shapes).  Padded channels have A = 0 and u = 0,
so their state stays 0; padded state entries have B = C = 0.  Padded *time steps* are made an exact
identity inside the kernel: the effective delta is masked to 0 for ``t >= length`` (decay exp(0) = 1,
input 0), and their delta gradient is masked to 0 as well.

Backends.  On CPU the kernels run with ``interpret=True`` (correctness only; slow).  On GPU they are
compiled with ``interpret=False`` through the **Triton** backend, selected explicitly with
``compiler_params=pallas.triton.CompilerParams``: this kernel streams rows straight from global memory
inside the time loop, which is Triton's memory model.  jax >= 0.9 lowers a bare ``pl.pallas_call`` to
Mosaic GPU by default on Hopper and deprecates ``pl.pallas_call`` for Mosaic GPU in favour of
``plgpu.kernel``; Mosaic GPU would stage each whole-length block in shared memory, which does not fit
long sequences, so a Mosaic GPU port needs explicit per-chunk GMEM->SMEM copies.  Triton is deprecated
from jax 0.11: that port is the follow-up.  The code uses only ``pl.pallas_call`` + ``pl.BlockSpec`` +
ref indexing + ``lax.fori_loop`` (no backend scratch memory), which exist on jax 0.10 and newer.
The GPU path has not been run in the session that wrote it (no GPU was available; see
docs/BENCHMARKS.md); tests/test_pallas_scan.py checks on CPU that both kernels pass Pallas's Triton
lowering for CUDA, but PTX compilation and execution are untested.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from kernels import reference

F32 = jnp.float32

# Default tile sizes.  On GPU a program holds state x block floats of state in registers and, in the
# backward, a chunk x state x block float32 workspace.  On CPU (interpret mode) larger blocks mean
# fewer grid iterations of the interpreter, which is what dominates its run time.
GPU_CHUNK, GPU_BLOCK = 64, 32
CPU_CHUNK, CPU_BLOCK = 64, 128


# --------------------------------------------------------------------------------------------------
# Elementwise helpers usable inside a kernel (no jax.nn: Mosaic GPU / Triton lack log1p and expm1).

def softplus(x):
    """softplus(x) = log(1 + exp(x)), linear above 20 as in the reference implementations."""
    return jnp.where(x <= 20.0, jnp.log(1.0 + jnp.exp(x)), x)


def sigmoid(x):
    return 1.0 / (1.0 + jnp.exp(-x))


# --------------------------------------------------------------------------------------------------
# Static configuration (hashable: it is a nondiff argument of the custom_vjp and part of jit keys).

class _Config(NamedTuple):
    length: int          # true sequence length (before padding)
    chunk: int           # time steps per chunk (checkpoint interval)
    block: int           # channels per program
    softplus: bool       # apply softplus to delta + delta_bias
    gated: bool          # multiply by SiLU(z)
    interpret: bool      # Pallas interpret mode (CPU)
    poison: bool         # test hook: every output buffer starts as NaN (see _pallas_call)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _compiler_params(interpret: bool):
    """Selects the Triton GPU backend (see the module docstring); None in interpret mode.

    ``jax.experimental.pallas.triton.CompilerParams`` exists on jax 0.10; if a newer jax has removed it,
    fall back to jax's default GPU lowering (Mosaic GPU), which this kernel has not been written for.
    """
    if interpret:
        return None
    try:
        from jax.experimental.pallas import triton as pltriton  # noqa: PLC0415 (GPU only)
        return pltriton.CompilerParams(num_warps=4, num_stages=1)
    except (ImportError, AttributeError):  # pragma: no cover
        return None


def _pallas_call(kernel, cfg: _Config, grid, inputs, in_specs, out_shapes, out_specs):
    """``pl.pallas_call`` with the test hook ``cfg.poison``.

    With poison on, every output is aliased to a NaN-filled input buffer, so an element the kernel
    never writes stays NaN in the returned array (instead of whatever the backend happens to allocate).
    """
    n_in = len(inputs)
    name = getattr(kernel, "__name__", None)
    aliases = {}
    if cfg.poison:
        nan_buffers = [jnp.full(s.shape, jnp.nan, s.dtype) for s in out_shapes]
        aliases = {n_in + k: k for k in range(len(out_shapes))}
        inputs = list(inputs) + nan_buffers
        in_specs = list(in_specs) + list(out_specs)
        inner = kernel

        def kernel(*refs):  # drop the aliased input refs: the kernel sees only its outputs
            return inner(*refs[:n_in], *refs[n_in + len(out_shapes):])

    return pl.pallas_call(kernel, out_shape=tuple(out_shapes), grid=grid, in_specs=list(in_specs),
                          out_specs=tuple(out_specs), input_output_aliases=aliases,
                          interpret=cfg.interpret, compiler_params=_compiler_params(cfg.interpret),
                          name=name)(*inputs)


# --------------------------------------------------------------------------------------------------
# Padding and layout shared by the forward and backward passes.

class _Padded(NamedTuple):
    """Kernel-layout inputs. L = padded length, P = padded channels, S = padded state."""
    u: jax.Array        # (b, L, P) input dtype
    delta: jax.Array    # (b, L, P) input dtype
    z: jax.Array | None  # (b, L, P) input dtype, only when gated
    B: jax.Array        # (b, L, S, 1)
    C: jax.Array        # (b, L, S, 1)
    A: jax.Array        # (S, P) float32
    D: jax.Array        # (1, P) float32
    bias: jax.Array     # (1, P) float32
    keep: jax.Array     # (b, L, 1, 1) float32: 0 where the state resets before the step, else 1


def _pad_sizes(cfg: _Config, channels: int, state: int):
    return _round_up(cfg.length, cfg.chunk), _round_up(channels, cfg.block), _next_pow2(state)


def _pad_inputs(cfg: _Config, u, delta, A, B, C, D, z, bias, keep) -> _Padded:
    _, length, channels = u.shape
    state = A.shape[1]
    L, P, S = _pad_sizes(cfg, channels, state)
    seq = lambda x: jnp.pad(x, ((0, 0), (0, L - length), (0, P - channels)))
    bc = lambda x: jnp.pad(x, ((0, 0), (0, L - length), (0, S - state)))[..., None]
    vec = lambda x: jnp.pad(x.astype(F32), (0, P - channels))[None]
    return _Padded(u=seq(u), delta=seq(delta), z=seq(z) if cfg.gated else None, B=bc(B), C=bc(C),
                   A=jnp.pad(A.astype(F32).T, ((0, S - state), (0, P - channels))), D=vec(D),
                   bias=vec(bias),
                   keep=jnp.pad(keep.astype(F32), ((0, 0), (0, L - length)), constant_values=1)[..., None, None])


def _pad_state(cfg: _Config, h):
    """(b, channels, state) -> kernel layout (b, S, P) float32."""
    _, channels, state = h.shape
    _, P, S = _pad_sizes(cfg, channels, state)
    return jnp.pad(jnp.swapaxes(h.astype(F32), 1, 2), ((0, 0), (0, S - state), (0, P - channels)))


def _unpad_state(h, channels, state):
    """Kernel layout (b, S, P) -> (b, channels, state)."""
    return jnp.swapaxes(h, 1, 2)[:, :channels, :state]


class _Specs:
    """BlockSpecs for grid (batch i, channel block j)."""

    def __init__(self, L, P, S, block, n_chunks, chunk):
        self.seq = pl.BlockSpec((None, L, block), lambda i, j: (i, 0, j))           # (b, L, P)
        self.bc = pl.BlockSpec((None, L, S, 1), lambda i, j: (i, 0, 0, 0))          # (b, L, S, 1)
        self.keep = pl.BlockSpec((None, L, 1, 1), lambda i, j: (i, 0, 0, 0))        # (b, L, 1, 1)
        self.param = pl.BlockSpec((S, block), lambda i, j: (0, j))                  # (S, P)
        self.vec = pl.BlockSpec((1, block), lambda i, j: (0, j))                    # (1, P)
        self.state = pl.BlockSpec((None, S, block), lambda i, j: (i, 0, j))         # (b, S, P)
        self.ckpt = pl.BlockSpec((None, n_chunks, S, block), lambda i, j: (i, 0, 0, j))
        self.batch_vec = pl.BlockSpec((None, 1, block), lambda i, j: (i, 0, j))     # (b, 1, P)
        self.bc_partial = pl.BlockSpec((None, None, L, S, 1), lambda i, j: (i, j, 0, 0, 0))
        self.work = pl.BlockSpec((None, None, chunk, S, block),                      # one chunk
                                 lambda i, j: (i, j, 0, 0, 0))


# --------------------------------------------------------------------------------------------------
# One time step's inputs, read from the refs and brought to float32.

class _Step(NamedTuple):
    u: jax.Array      # (1, block)
    pre: jax.Array    # (1, block) delta + bias (before softplus)
    dt: jax.Array     # (1, block) effective delta, 0 on padded steps
    B: jax.Array      # (S, 1)
    C: jax.Array      # (S, 1)
    z: jax.Array | None  # (1, block)
    keep: jax.Array   # (1, 1) 0 where the state resets before this step

    def decay(self, A):
        """The factor on the previous state, (S, block)."""
        return self.keep * jnp.exp(self.dt * A)


def _read_step(cfg: _Config, refs, bias, t) -> _Step:
    u_ref, delta_ref, z_ref, b_ref, c_ref, keep_ref = refs
    row = lambda ref: ref[pl.ds(t, 1), :].astype(F32)
    pre = row(delta_ref) + bias
    dt = softplus(pre) if cfg.softplus else pre
    dt = jnp.where(t < cfg.length, dt, 0.0)  # padded time steps: decay 1, input 0
    return _Step(u=row(u_ref), pre=pre, dt=dt, B=b_ref[t].astype(F32), C=c_ref[t].astype(F32),
                 z=row(z_ref) if cfg.gated else None, keep=keep_ref[t])


# --------------------------------------------------------------------------------------------------
# Forward kernel.

def _forward_kernel(cfg: _Config, n_chunks: int, save_checkpoints: bool, *refs):
    it = iter(refs)
    u_ref, delta_ref = next(it), next(it)
    z_ref = next(it) if cfg.gated else None
    b_ref, c_ref, keep_ref, a_ref, d_ref, bias_ref, h0_ref = (next(it) for _ in range(7))
    y_ref, last_ref = next(it), next(it)
    ckpt_ref = next(it) if save_checkpoints else None
    step_refs = (u_ref, delta_ref, z_ref, b_ref, c_ref, keep_ref)
    A, D, bias = a_ref[...], d_ref[...], bias_ref[...]       # (S, blk), (1, blk), (1, blk)

    def chunk_body(c, h):
        if save_checkpoints:
            ckpt_ref[c] = h                                   # state entering chunk c

        def time_step(k, h):
            t = c * cfg.chunk + k
            x = _read_step(cfg, step_refs, bias, t)
            h = x.decay(A) * h + (x.dt * x.u) * x.B           # (S, blk)
            y = jnp.sum(h * x.C, axis=0, keepdims=True) + D * x.u
            if cfg.gated:
                y = y * (x.z * sigmoid(x.z))
            y_ref[pl.ds(t, 1), :] = y.astype(y_ref.dtype)
            return h

        return jax.lax.fori_loop(0, cfg.chunk, time_step, h)

    last_ref[...] = jax.lax.fori_loop(0, n_chunks, chunk_body, h0_ref[...])


def _forward(cfg: _Config, x: _Padded, h0, save_checkpoints: bool):
    """Returns the padded (y, last_state[, checkpoints]) in kernel layout."""
    batch, L, P = x.u.shape
    S = x.A.shape[0]
    n_chunks = L // cfg.chunk
    specs = _Specs(L, P, S, cfg.block, n_chunks, cfg.chunk)
    inputs = [x.u, x.delta] + ([x.z] if cfg.gated else []) + [x.B, x.C, x.keep, x.A, x.D, x.bias, h0]
    in_specs = ([specs.seq, specs.seq] + ([specs.seq] if cfg.gated else [])
                + [specs.bc, specs.bc, specs.keep, specs.param, specs.vec, specs.vec, specs.state])
    out_shapes = [jax.ShapeDtypeStruct((batch, L, P), x.u.dtype), jax.ShapeDtypeStruct((batch, S, P), F32)]
    out_specs = [specs.seq, specs.state]
    if save_checkpoints:
        out_shapes.append(jax.ShapeDtypeStruct((batch, n_chunks, S, P), F32))
        out_specs.append(specs.ckpt)
    kernel = functools.partial(_forward_kernel, cfg, n_chunks, save_checkpoints)
    kernel.__name__ = "selective_scan_fwd"
    return _pallas_call(kernel, cfg, (batch, P // cfg.block), inputs, in_specs, out_shapes, out_specs)


# --------------------------------------------------------------------------------------------------
# Backward kernel.

def _backward_kernel(cfg: _Config, n_chunks: int, *refs):
    it = iter(refs)
    u_ref, delta_ref = next(it), next(it)
    z_ref = next(it) if cfg.gated else None
    b_ref, c_ref, keep_ref, a_ref, d_ref, bias_ref, ckpt_ref, dy_ref, dlast_ref = (next(it) for _ in range(9))
    du_ref, ddelta_ref = next(it), next(it)
    dz_ref = next(it) if cfg.gated else None
    db_ref, dc_ref, da_ref, dd_ref, dbias_ref, dh0_ref, work_ref = (next(it) for _ in range(7))
    step_refs = (u_ref, delta_ref, z_ref, b_ref, c_ref, keep_ref)
    A, D, bias = a_ref[...], d_ref[...], bias_ref[...]

    def chunk_body(r, carry):
        c = n_chunks - 1 - r
        start = c * cfg.chunk

        # 1. Recompute this chunk's states from its boundary state; work[k] = state entering step k.
        def recompute(k, h):
            work_ref[k] = h
            x = _read_step(cfg, step_refs, bias, start + k)
            return x.decay(A) * h + (x.dt * x.u) * x.B

        jax.lax.fori_loop(0, cfg.chunk, recompute, ckpt_ref[c])

        # 2. Reverse-time adjoint over the chunk.  dh is dL/dh_t including every later step.
        def adjoint(r2, carry):
            dh, dA, dD, dbias = carry
            k = cfg.chunk - 1 - r2
            t = start + k
            x = _read_step(cfg, step_refs, bias, t)
            h_prev = work_ref[k]
            decay = x.decay(A)
            h = decay * h_prev + (x.dt * x.u) * x.B
            dy = dy_ref[pl.ds(t, 1), :].astype(F32)                    # (1, blk)
            if cfg.gated:                                              # y = y_skip * silu(z)
                y_skip = jnp.sum(h * x.C, axis=0, keepdims=True) + D * x.u
                sig = sigmoid(x.z)
                dz_ref[pl.ds(t, 1), :] = (dy * y_skip * sig * (1.0 + x.z * (1.0 - sig))
                                          ).astype(dz_ref.dtype)
                dy = dy * x.z * sig
            dD = dD + dy * x.u                                         # y_skip = sum_n h C + D u
            du = dy * D
            dh = dh + dy * x.C                                         # (S, blk)
            dc_ref[t] = jnp.sum(dy * h, axis=1, keepdims=True)         # (S, 1), partial over block
            d_arg = dh * h_prev * decay                                # dL/d(dt * A), keep included
            dA = dA + d_arg * x.dt
            dh_b = jnp.sum(dh * x.B, axis=0, keepdims=True)            # (1, blk)
            ddt = jnp.sum(d_arg * A, axis=0, keepdims=True) + dh_b * x.u
            du = du + dh_b * x.dt
            db_ref[t] = jnp.sum(dh * (x.dt * x.u), axis=1, keepdims=True)
            dpre = ddt * sigmoid(x.pre) if cfg.softplus else ddt
            dpre = jnp.where(t < cfg.length, dpre, 0.0)                # dt was masked there
            du_ref[pl.ds(t, 1), :] = du.astype(du_ref.dtype)
            ddelta_ref[pl.ds(t, 1), :] = dpre.astype(ddelta_ref.dtype)
            return dh * decay, dA, dD, dbias + dpre

        return jax.lax.fori_loop(0, cfg.chunk, adjoint, carry)

    zeros_row = jnp.zeros(D.shape, F32)
    carry = (dlast_ref[...], jnp.zeros(A.shape, F32), zeros_row, zeros_row)
    dh0, dA, dD, dbias = jax.lax.fori_loop(0, n_chunks, chunk_body, carry)
    dh0_ref[...] = dh0
    da_ref[...] = dA
    dd_ref[...] = dD
    dbias_ref[...] = dbias


def _backward(cfg: _Config, x: _Padded, ckpt, dy, dlast):
    """Padded gradients: (du, ddelta, dz, dB_part, dC_part, dA_part, dD_part, dbias_part, dh0)."""
    batch, L, P = x.u.shape
    S = x.A.shape[0]
    n_chunks, n_blocks = L // cfg.chunk, P // cfg.block
    specs = _Specs(L, P, S, cfg.block, n_chunks, cfg.chunk)
    seq_in = [x.u, x.delta] + ([x.z] if cfg.gated else [])
    inputs = seq_in + [x.B, x.C, x.keep, x.A, x.D, x.bias, ckpt, dy, dlast]
    in_specs = ([specs.seq] * len(seq_in) + [specs.bc, specs.bc, specs.keep, specs.param, specs.vec,
                                             specs.vec, specs.ckpt, specs.seq, specs.state])
    sds = jax.ShapeDtypeStruct
    out_shapes = ([sds(a.shape, a.dtype) for a in seq_in]
                  + [sds((batch, n_blocks, L, S, 1), F32)] * 2          # dB, dC per channel block
                  + [sds((batch, S, P), F32)]                           # dA per sequence
                  + [sds((batch, 1, P), F32)] * 2                       # dD, d delta_bias per sequence
                  + [sds((batch, S, P), F32)]                           # d initial_state
                  + [sds((batch, n_blocks, cfg.chunk, S, cfg.block), F32)])  # recompute workspace
    out_specs = ([specs.seq] * len(seq_in) + [specs.bc_partial] * 2 + [specs.state]
                 + [specs.batch_vec] * 2 + [specs.state, specs.work])
    kernel = functools.partial(_backward_kernel, cfg, n_chunks)
    kernel.__name__ = "selective_scan_bwd"
    outs = _pallas_call(kernel, cfg, (batch, n_blocks), inputs, in_specs, out_shapes, out_specs)
    outs = list(outs[:-1])                                             # drop the workspace
    if not cfg.gated:
        outs.insert(2, None)
    return tuple(outs)


# --------------------------------------------------------------------------------------------------
# custom_vjp glue (inputs and outputs in the public layout; padding happens in here).

@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _scan(cfg, u, delta, A, B, C, D, z, bias, h0, keep):
    y, last = _forward(cfg, _pad_inputs(cfg, u, delta, A, B, C, D, z, bias, keep), _pad_state(cfg, h0),
                       save_checkpoints=False)
    return y[:, :cfg.length, :u.shape[2]], _unpad_state(last, u.shape[2], A.shape[1])


def _scan_fwd(cfg, u, delta, A, B, C, D, z, bias, h0, keep):
    y, last, ckpt = _forward(cfg, _pad_inputs(cfg, u, delta, A, B, C, D, z, bias, keep),
                             _pad_state(cfg, h0), save_checkpoints=True)
    out = (y[:, :cfg.length, :u.shape[2]], _unpad_state(last, u.shape[2], A.shape[1]))
    return out, (u, delta, A, B, C, D, z, bias, h0, keep, ckpt)


def _scan_bwd(cfg, residuals, cotangents):
    u, delta, A, B, C, D, z, bias, h0, keep, ckpt = residuals
    dy, dlast = cotangents
    x = _pad_inputs(cfg, u, delta, A, B, C, D, z, bias, keep)
    _, length, channels = u.shape
    state = A.shape[1]
    L, P, _ = _pad_sizes(cfg, channels, state)
    dy = jnp.pad(dy.astype(u.dtype), ((0, 0), (0, L - length), (0, P - channels)))
    du, ddelta, dz, dB, dC, dA, dD, dbias, dh0 = _backward(cfg, x, ckpt, dy, _pad_state(cfg, dlast))
    seq = lambda g: g[:, :length, :channels]
    bc = lambda g, like: jnp.sum(g, axis=1)[:, :length, :state, 0].astype(like.dtype)
    vec = lambda g, like: jnp.sum(g, axis=(0, 1))[:channels].astype(like.dtype)
    return (seq(du), seq(ddelta), jnp.sum(dA, axis=0).T[:channels, :state].astype(A.dtype),
            bc(dB, B), bc(dC, C), vec(dD, D), None if z is None else seq(dz), vec(dbias, bias),
            _unpad_state(dh0, channels, state).astype(h0.dtype), jnp.zeros_like(keep))


_scan.defvjp(_scan_fwd, _scan_bwd)


# --------------------------------------------------------------------------------------------------
# Public entry point.

@functools.partial(jax.jit, static_argnames=("delta_softplus", "chunk", "block_channels", "interpret",
                                             "poison"))
def pallas_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                initial_state=None, reset=None, *, chunk=None, block_channels=None, interpret=None, poison=False):
    """Selective scan with Pallas kernels; same contract as ``reference.sequential_scan``.

    Args:
      u, delta, z: (batch, length, channels), float32 or bfloat16.  A: (channels, state) float32.
      B, C: (batch, length, state).  D, delta_bias: (channels,).  initial_state: (batch, channels, state).
      reset: (batch, length) bool, the state is zeroed before steps where it is true (not differentiated).
      chunk: time steps per chunk (rounded up to a power of two, capped at the padded length);
        block_channels: channels per program (power of two).  Defaults depend on the platform.
      interpret: force Pallas interpret mode (default: on unless running on GPU).
      poison: test hook, outputs start as NaN so unwritten elements cannot go unnoticed.
    Returns:
      (y, last_state): y (batch, length, channels) in u's dtype, last_state (batch, channels, state)
      float32.  Differentiable (reverse mode) in every array argument.
    """
    batch, length, channels = u.shape
    state = A.shape[1]
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    default_chunk, default_block = (CPU_CHUNK, CPU_BLOCK) if interpret else (GPU_CHUNK, GPU_BLOCK)
    chunk = min(_next_pow2(chunk or default_chunk), _next_pow2(length))
    block = min(_next_pow2(block_channels or default_block), _next_pow2(channels))
    cfg = _Config(length=length, chunk=chunk, block=block, softplus=bool(delta_softplus),
                  gated=z is not None, interpret=bool(interpret), poison=bool(poison))
    D = jnp.zeros((channels,), F32) if D is None else D
    delta_bias = jnp.zeros((channels,), F32) if delta_bias is None else delta_bias
    h0 = jnp.zeros((batch, channels, state), F32) if initial_state is None else initial_state
    return _scan(cfg, u, delta, A, B, C, D, z, delta_bias, h0, reference.keep_mask(reset, u, F32))
