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
* **Workspace synchronisation.**  The workspace lives in global memory and is written in one loop and
  read in another by the threads of one program.  Triton maps an array's elements to threads by a
  layout it picks per operation, and inserts no barrier between global-memory accesses, so the thread
  that reads ``work[k]`` need not be the thread that wrote it.  Each chunk therefore brackets its
  adjoint with ``_barrier``: once after the recompute (every write is visible before any read) and
  once after the adjoint (every read is done before the next chunk's recompute overwrites the slots).
  ``_barrier`` is Triton's ``debug_barrier`` (``gpu.barrier``, CUDA's ``__syncthreads``, which also
  orders a block's global-memory accesses); interpret mode runs one program at a time and needs none.
  Every other buffer is written only (y, checkpoints, gradients) or read only (inputs) by a kernel.

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
``compiler_params=pallas.triton.CompilerParams`` on jax 0.10 to 0.12: this kernel streams rows straight
from global memory inside the time loop, which is Triton's memory model.  jax >= 0.9 lowers a bare
``pl.pallas_call`` to Mosaic GPU by default on Hopper; Mosaic GPU would stage each whole-length block in
shared memory, which does not fit long sequences, so a Mosaic GPU port needs explicit per-chunk
GMEM->SMEM copies (jax 0.11 deprecates Triton: that port is the follow-up).  The code uses only
``pl.pallas_call`` + ``pl.BlockSpec`` + ref indexing + ``lax.fori_loop`` and, compiled, Triton's
``debug_barrier``, which exist unchanged on jax 0.10, 0.11 and 0.12.  Both kernels are named
(``selective_scan_fwd``, ``selective_scan_bwd``: the names a GPU profile shows) and take their refs as
named keyword arguments.  tests/test_pallas_scan.py checks on CPU that both kernels pass Pallas's
Triton lowering for CUDA; the compiled kernels' parity tests are marked ``gpu``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from . import reference

F32 = jnp.float32

# Default tile sizes.  On GPU a program holds state x block floats of state in registers and, in the
# backward, a chunk x state x block float32 workspace.  On CPU (interpret mode) larger blocks mean
# fewer grid iterations of the interpreter, which is what dominates its run time.
GPU_CHUNK, GPU_BLOCK = 64, 32
CPU_CHUNK, CPU_BLOCK = 64, 128


# --------------------------------------------------------------------------------------------------
# Elementwise helpers usable inside a kernel.


def log1p(x, native: bool):
    """log(1 + x), accurate for small x.

    ``native``: ``lax.log1p`` (interpret mode; Triton lowers it to ``__nv_log1pf``).  Otherwise Goldberg's
    form, a few ulps from ``log`` alone (D. Goldberg, "What every computer scientist should know about
    floating-point arithmetic", 1991, Theorem 4): with ``u = 1 + x``, ``log1p(x) = x`` where ``u == 1``,
    else ``log(u) * x / (u - 1)`` — the rounding of ``1 + x`` cancels in the ratio.  It holds only where
    ``(1 + x) - 1`` is evaluated as written: XLA's algebraic simplifier rewrites it to ``x`` (which is
    why interpret mode, run by XLA, takes ``lax.log1p``); Triton and LLVM without fast-math do not.
    """
    if native:
        return jnp.log1p(x)
    u = 1.0 + x
    return jnp.where(u == 1.0, x, jnp.log(u) * x / (u - 1.0))


def softplus(x, native_log1p: bool):
    """log1p(exp(x)), and x above 20, as mamba-ssm's CUDA kernel (``log1pf(expf(x))`` for x <= 20).

    ``log(1 + exp(x))`` loses relative precision as softplus(x) falls: in float32 up to 6.6e-5 at
    softplus ≈ 1e-3 and 6.6e-3 at 1e-5, against at most 2.4e-7 for both forms here
    (tests/test_pallas_scan.py::test_softplus_is_accurate_for_small_steps).
    """
    return jnp.where(x <= 20.0, log1p(jnp.exp(x), native_log1p), x)


def lowers_log1p(interpret: bool) -> bool:
    """Whether the kernel's backend has ``lax.log1p``: interpret mode does; compiled, ask Triton's
    lowering table (private; if it moves, the kernel takes Goldberg's ``log``-only form)."""
    if interpret:
        return True
    try:
        from jax._src.pallas.triton import lowering  # noqa: PLC0415

        return jax.lax.log1p_p in lowering.triton_lowering_rules
    except (ImportError, AttributeError):  # pragma: no cover
        return False


def sigmoid(x):
    return 1.0 / (1.0 + jnp.exp(-x))


# --------------------------------------------------------------------------------------------------
# Static configuration (hashable: it is a nondiff argument of the custom_vjp and part of jit keys).


class _Config(NamedTuple):
    length: int  # true sequence length (before padding)
    chunk: int  # time steps per chunk (checkpoint interval)
    block: int  # channels per program
    softplus: bool  # apply softplus to delta + delta_bias
    log1p: bool  # the backend lowers lax.log1p (else softplus takes Goldberg's form)
    gated: bool  # multiply by SiLU(z)
    interpret: bool  # Pallas interpret mode (CPU)
    poison: bool  # test hook: every output buffer starts as NaN (see _pallas_call)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _compiler_params(interpret: bool):
    """Selects the Triton GPU backend (see the module docstring); None in interpret mode."""
    if interpret:
        return None
    from jax.experimental.pallas import triton as pltriton  # noqa: PLC0415 (GPU only)

    return pltriton.CompilerParams(num_warps=4, num_stages=1)


def _barrier(cfg: _Config) -> None:
    """Synchronise the threads of one program (see "Workspace synchronisation" above)."""
    if not cfg.interpret:
        from jax.experimental.pallas import triton as pltriton  # noqa: PLC0415 (GPU only)

        pltriton.debug_barrier()


def _pallas_call(kernel, name: str, cfg: _Config, grid, inputs: dict, outputs: dict) -> dict:
    """``pl.pallas_call`` with named refs: ``inputs`` maps ref names to (array, BlockSpec), ``outputs``
    to (ShapeDtypeStruct, BlockSpec); ``kernel`` is called with one keyword argument per ref, and the
    outputs come back as a dict by name.  ``name`` names the compiled kernel (what a profile shows).

    Test hook ``cfg.poison``: every output is aliased to a NaN-filled input buffer, so an element the
    kernel never writes stays NaN in the returned array (instead of whatever the backend allocates).
    """
    in_names, out_names = list(inputs), list(outputs)
    arrays, in_specs = [a for a, _ in inputs.values()], [s for _, s in inputs.values()]
    out_shapes, out_specs = [s for s, _ in outputs.values()], [s for _, s in outputs.values()]
    aliases, n_aliased = {}, 0
    if cfg.poison:
        arrays += [jnp.full(s.shape, jnp.nan, s.dtype) for s in out_shapes]
        in_specs += out_specs
        aliases = {len(in_names) + k: k for k in range(len(out_names))}
        n_aliased = len(out_names)

    def named_refs(*refs):  # the aliased NaN inputs are not passed on: the kernel sees only its outputs
        ins, outs = refs[: len(in_names)], refs[len(in_names) + n_aliased :]
        kernel(**dict(zip(in_names, ins)), **dict(zip(out_names, outs)))

    results = pl.pallas_call(
        named_refs,
        out_shape=tuple(out_shapes),
        grid=grid,
        in_specs=in_specs,
        out_specs=tuple(out_specs),
        input_output_aliases=aliases,
        interpret=cfg.interpret,
        compiler_params=_compiler_params(cfg.interpret),
        name=name,
    )(*arrays)
    return dict(zip(out_names, results))


# --------------------------------------------------------------------------------------------------
# Padding and layout shared by the forward and backward passes.


class _Padded(NamedTuple):
    """Kernel-layout inputs. L = padded length, P = padded channels, S = padded state."""

    u: jax.Array  # (b, L, P) input dtype
    delta: jax.Array  # (b, L, P) input dtype
    z: jax.Array | None  # (b, L, P) input dtype, only when gated
    B: jax.Array  # (b, L, S, 1)
    C: jax.Array  # (b, L, S, 1)
    A: jax.Array  # (S, P) float32
    D: jax.Array  # (1, P) float32
    bias: jax.Array  # (1, P) float32
    keep: jax.Array  # (b, L, 1, 1) float32: 0 where the state resets before the step, else 1


def _pad_sizes(cfg: _Config, channels: int, state: int):
    return _round_up(cfg.length, cfg.chunk), _round_up(channels, cfg.block), _next_pow2(state)


def _pad_inputs(cfg: _Config, u, delta, A, B, C, D, z, bias, keep) -> _Padded:
    _, length, channels = u.shape
    state = A.shape[1]
    L, P, S = _pad_sizes(cfg, channels, state)
    seq = lambda x: jnp.pad(x, ((0, 0), (0, L - length), (0, P - channels)))
    bc = lambda x: jnp.pad(x, ((0, 0), (0, L - length), (0, S - state)))[..., None]
    vec = lambda x: jnp.pad(x.astype(F32), (0, P - channels))[None]
    return _Padded(
        u=seq(u),
        delta=seq(delta),
        z=seq(z) if cfg.gated else None,
        B=bc(B),
        C=bc(C),
        A=jnp.pad(A.astype(F32).T, ((0, S - state), (0, P - channels))),
        D=vec(D),
        bias=vec(bias),
        keep=jnp.pad(keep.astype(F32), ((0, 0), (0, L - length)), constant_values=1)[..., None, None],
    )


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
        self.seq = pl.BlockSpec((None, L, block), lambda i, j: (i, 0, j))  # (b, L, P)
        self.bc = pl.BlockSpec((None, L, S, 1), lambda i, j: (i, 0, 0, 0))  # (b, L, S, 1)
        self.keep = pl.BlockSpec((None, L, 1, 1), lambda i, j: (i, 0, 0, 0))  # (b, L, 1, 1)
        self.param = pl.BlockSpec((S, block), lambda i, j: (0, j))  # (S, P)
        self.vec = pl.BlockSpec((1, block), lambda i, j: (0, j))  # (1, P)
        self.state = pl.BlockSpec((None, S, block), lambda i, j: (i, 0, j))  # (b, S, P)
        self.ckpt = pl.BlockSpec((None, n_chunks, S, block), lambda i, j: (i, 0, 0, j))
        self.batch_vec = pl.BlockSpec((None, 1, block), lambda i, j: (i, 0, j))  # (b, 1, P)
        self.bc_partial = pl.BlockSpec((None, None, L, S, 1), lambda i, j: (i, j, 0, 0, 0))
        self.work = pl.BlockSpec(
            (None, None, chunk, S, block),  # one chunk
            lambda i, j: (i, j, 0, 0, 0),
        )


# --------------------------------------------------------------------------------------------------
# One time step's inputs, read from the refs and brought to float32.


class _Step(NamedTuple):
    u: jax.Array  # (1, block)
    pre: jax.Array  # (1, block) delta + bias (before softplus)
    dt: jax.Array  # (1, block) effective delta, 0 on padded steps
    B: jax.Array  # (S, 1)
    C: jax.Array  # (S, 1)
    z: jax.Array | None  # (1, block)
    keep: jax.Array  # (1, 1) 0 where the state resets before this step

    def decay(self, A):
        """The factor on the previous state, (S, block)."""
        return self.keep * jnp.exp(self.dt * A)


def _read_step(cfg: _Config, seq: dict, bias, t) -> _Step:
    """Step ``t`` from the sequence refs ``seq`` (u, delta, z or None, B, C, keep)."""
    row = lambda ref: ref[pl.ds(t, 1), :].astype(F32)
    pre = row(seq["delta"]) + bias
    dt = softplus(pre, cfg.log1p) if cfg.softplus else pre
    dt = jnp.where(t < cfg.length, dt, 0.0)  # padded time steps: decay 1, input 0
    return _Step(
        u=row(seq["u"]),
        pre=pre,
        dt=dt,
        B=seq["B"][t].astype(F32),
        C=seq["C"][t].astype(F32),
        z=row(seq["z"]) if cfg.gated else None,
        keep=seq["keep"][t],
    )


def _sequence_inputs(x: _Padded, specs: _Specs) -> dict:
    """The per-step inputs both kernels read, by ref name."""
    return {
        "u": (x.u, specs.seq),
        "delta": (x.delta, specs.seq),
        **({"z": (x.z, specs.seq)} if x.z is not None else {}),
        "B": (x.B, specs.bc),
        "C": (x.C, specs.bc),
        "keep": (x.keep, specs.keep),
        "A": (x.A, specs.param),
        "D": (x.D, specs.vec),
        "bias": (x.bias, specs.vec),
    }


# --------------------------------------------------------------------------------------------------
# Forward kernel.


def _forward_kernel(cfg: _Config, n_chunks: int, *, u, delta, B, C, keep, A, D, bias, h0, y, last, z=None, ckpt=None):
    """Refs: inputs u, delta, z (b, L, P) · B, C (b, L, S, 1) · keep (b, L, 1, 1) · A (S, P) ·
    D, bias (1, P) · h0 (b, S, P); outputs y (b, L, P) · last (b, S, P) · ckpt (b, n_chunks, S, P),
    the state entering each chunk (training only).  Each ref is this program's block."""
    seq = {"u": u, "delta": delta, "z": z, "B": B, "C": C, "keep": keep}
    A_, D_, bias_ = A[...], D[...], bias[...]  # (S, blk), (1, blk), (1, blk)

    def chunk_body(c, h):
        if ckpt is not None:
            ckpt[c] = h  # state entering chunk c

        def time_step(k, h):
            t = c * cfg.chunk + k
            x = _read_step(cfg, seq, bias_, t)
            h = x.decay(A_) * h + (x.dt * x.u) * x.B  # (S, blk)
            out = jnp.sum(h * x.C, axis=0, keepdims=True) + D_ * x.u
            if cfg.gated:
                out = out * (x.z * sigmoid(x.z))
            y[pl.ds(t, 1), :] = out.astype(y.dtype)
            return h

        return jax.lax.fori_loop(0, cfg.chunk, time_step, h)

    last[...] = jax.lax.fori_loop(0, n_chunks, chunk_body, h0[...])


def _forward(cfg: _Config, x: _Padded, h0, save_checkpoints: bool) -> dict:
    """The padded outputs in kernel layout: {"y", "last"} and, if ``save_checkpoints``, "ckpt"."""
    batch, L, P = x.u.shape
    S = x.A.shape[0]
    n_chunks = L // cfg.chunk
    specs = _Specs(L, P, S, cfg.block, n_chunks, cfg.chunk)
    sds = jax.ShapeDtypeStruct
    outputs = {"y": (sds((batch, L, P), x.u.dtype), specs.seq), "last": (sds((batch, S, P), F32), specs.state)}
    if save_checkpoints:
        outputs["ckpt"] = (sds((batch, n_chunks, S, P), F32), specs.ckpt)
    return _pallas_call(
        functools.partial(_forward_kernel, cfg, n_chunks),
        "selective_scan_fwd",
        cfg,
        (batch, P // cfg.block),
        {**_sequence_inputs(x, specs), "h0": (h0, specs.state)},
        outputs,
    )


# --------------------------------------------------------------------------------------------------
# Backward kernel.


def _backward_kernel(
    cfg: _Config,
    n_chunks: int,
    *,
    u,
    delta,
    B,
    C,
    keep,
    A,
    D,
    bias,
    ckpt,
    dy,
    dlast,
    du,
    ddelta,
    dB,
    dC,
    dA,
    dD,
    dbias,
    dh0,
    work,
    z=None,
    dz=None,
):
    """Refs: the forward's inputs, ckpt (b, n_chunks, S, P), dy (b, L, P), dlast (b, S, P); outputs
    du, ddelta, dz (b, L, P) · dB, dC (b, blocks, L, S, 1) · dA, dh0 (b, S, P) · dD, dbias (b, 1, P) ·
    work (b, blocks, chunk, S, blk), the recompute workspace."""
    seq = {"u": u, "delta": delta, "z": z, "B": B, "C": C, "keep": keep}
    A_, D_, bias_ = A[...], D[...], bias[...]

    def chunk_body(r, carry):
        c = n_chunks - 1 - r
        start = c * cfg.chunk

        # 1. Recompute this chunk's states from its boundary state; work[k] = state entering step k.
        def recompute(k, h):
            work[k] = h
            x = _read_step(cfg, seq, bias_, start + k)
            return x.decay(A_) * h + (x.dt * x.u) * x.B

        jax.lax.fori_loop(0, cfg.chunk, recompute, ckpt[c])
        _barrier(cfg)  # work written -> read

        # 2. Reverse-time adjoint over the chunk.  dh is dL/dh_t including every later step.
        def adjoint(r2, carry):
            dh, dA_, dD_, dbias_ = carry
            k = cfg.chunk - 1 - r2
            t = start + k
            x = _read_step(cfg, seq, bias_, t)
            h_prev = work[k]
            decay = x.decay(A_)
            h = decay * h_prev + (x.dt * x.u) * x.B
            g = dy[pl.ds(t, 1), :].astype(F32)  # (1, blk)
            if cfg.gated:  # y = y_skip * silu(z)
                y_skip = jnp.sum(h * x.C, axis=0, keepdims=True) + D_ * x.u
                sig = sigmoid(x.z)
                dz[pl.ds(t, 1), :] = (g * y_skip * sig * (1.0 + x.z * (1.0 - sig))).astype(dz.dtype)
                g = g * x.z * sig
            dD_ = dD_ + g * x.u  # y_skip = sum_n h C + D u
            du_t = g * D_
            dh = dh + g * x.C  # (S, blk)
            dC[t] = jnp.sum(g * h, axis=1, keepdims=True)  # (S, 1), partial over block
            d_arg = dh * h_prev * decay  # dL/d(dt * A), keep included
            dA_ = dA_ + d_arg * x.dt
            dh_b = jnp.sum(dh * x.B, axis=0, keepdims=True)  # (1, blk)
            ddt = jnp.sum(d_arg * A_, axis=0, keepdims=True) + dh_b * x.u
            du_t = du_t + dh_b * x.dt
            dB[t] = jnp.sum(dh * (x.dt * x.u), axis=1, keepdims=True)
            dpre = ddt * sigmoid(x.pre) if cfg.softplus else ddt
            dpre = jnp.where(t < cfg.length, dpre, 0.0)  # dt was masked there
            du[pl.ds(t, 1), :] = du_t.astype(du.dtype)
            ddelta[pl.ds(t, 1), :] = dpre.astype(ddelta.dtype)
            return dh * decay, dA_, dD_, dbias_ + dpre

        carry = jax.lax.fori_loop(0, cfg.chunk, adjoint, carry)
        _barrier(cfg)  # work read -> next chunk's writes
        return carry

    zeros_row = jnp.zeros(D_.shape, F32)
    carry = (dlast[...], jnp.zeros(A_.shape, F32), zeros_row, zeros_row)
    dh0_, dA_, dD_, dbias_ = jax.lax.fori_loop(0, n_chunks, chunk_body, carry)
    dh0[...] = dh0_
    dA[...] = dA_
    dD[...] = dD_
    dbias[...] = dbias_


def _backward(cfg: _Config, x: _Padded, ckpt, dy, dlast) -> dict:
    """Padded gradients by name: du, ddelta, dz (gated only), dB and dC per channel block, dA, dD and
    dbias per sequence, dh0."""
    batch, L, P = x.u.shape
    S = x.A.shape[0]
    n_chunks, n_blocks = L // cfg.chunk, P // cfg.block
    specs = _Specs(L, P, S, cfg.block, n_chunks, cfg.chunk)
    sds = jax.ShapeDtypeStruct
    inputs = {
        **_sequence_inputs(x, specs),
        "ckpt": (ckpt, specs.ckpt),
        "dy": (dy, specs.seq),
        "dlast": (dlast, specs.state),
    }
    seq_grads = {"du": x.u, "ddelta": x.delta, **({"dz": x.z} if cfg.gated else {})}
    outputs = {
        **{k: (sds(a.shape, a.dtype), specs.seq) for k, a in seq_grads.items()},
        "dB": (sds((batch, n_blocks, L, S, 1), F32), specs.bc_partial),
        "dC": (sds((batch, n_blocks, L, S, 1), F32), specs.bc_partial),
        "dA": (sds((batch, S, P), F32), specs.state),
        "dD": (sds((batch, 1, P), F32), specs.batch_vec),
        "dbias": (sds((batch, 1, P), F32), specs.batch_vec),
        "dh0": (sds((batch, S, P), F32), specs.state),
        "work": (sds((batch, n_blocks, cfg.chunk, S, cfg.block), F32), specs.work),
    }
    grads = _pallas_call(
        functools.partial(_backward_kernel, cfg, n_chunks),
        "selective_scan_bwd",
        cfg,
        (batch, n_blocks),
        inputs,
        outputs,
    )
    del grads["work"]
    return grads


# --------------------------------------------------------------------------------------------------
# custom_vjp glue (inputs and outputs in the public layout; padding happens in here).


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _scan(cfg, u, delta, A, B, C, D, z, bias, h0, keep):
    out = _forward(
        cfg, _pad_inputs(cfg, u, delta, A, B, C, D, z, bias, keep), _pad_state(cfg, h0), save_checkpoints=False
    )
    return out["y"][:, : cfg.length, : u.shape[2]], _unpad_state(out["last"], u.shape[2], A.shape[1])


def _scan_fwd(cfg, u, delta, A, B, C, D, z, bias, h0, keep):
    out = _forward(
        cfg, _pad_inputs(cfg, u, delta, A, B, C, D, z, bias, keep), _pad_state(cfg, h0), save_checkpoints=True
    )
    y_last = (out["y"][:, : cfg.length, : u.shape[2]], _unpad_state(out["last"], u.shape[2], A.shape[1]))
    return y_last, (u, delta, A, B, C, D, z, bias, h0, keep, out["ckpt"])


def _scan_bwd(cfg, residuals, cotangents):
    u, delta, A, B, C, D, z, bias, h0, keep, ckpt = residuals
    dy, dlast = cotangents
    x = _pad_inputs(cfg, u, delta, A, B, C, D, z, bias, keep)
    _, length, channels = u.shape
    state = A.shape[1]
    L, P, _ = _pad_sizes(cfg, channels, state)
    dy = jnp.pad(dy.astype(u.dtype), ((0, 0), (0, L - length), (0, P - channels)))
    g = _backward(cfg, x, ckpt, dy, _pad_state(cfg, dlast))
    seq = lambda g: g[:, :length, :channels]
    bc = lambda g, like: jnp.sum(g, axis=1)[:, :length, :state, 0].astype(like.dtype)
    vec = lambda g, like: jnp.sum(g, axis=(0, 1))[:channels].astype(like.dtype)
    return (
        seq(g["du"]),
        seq(g["ddelta"]),
        jnp.sum(g["dA"], axis=0).T[:channels, :state].astype(A.dtype),
        bc(g["dB"], B),
        bc(g["dC"], C),
        vec(g["dD"], D),
        None if z is None else seq(g["dz"]),
        vec(g["dbias"], bias),
        _unpad_state(g["dh0"], channels, state).astype(h0.dtype),
        jnp.zeros_like(keep),
    )


_scan.defvjp(_scan_fwd, _scan_bwd)


# --------------------------------------------------------------------------------------------------
# Public entry point.


@functools.partial(jax.jit, static_argnames=("delta_softplus", "chunk", "block_channels", "interpret", "poison"))
def pallas_scan(
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
    block_channels=None,
    interpret=None,
    poison=False,
):
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
    cfg = _Config(
        length=length,
        chunk=chunk,
        block=block,
        softplus=bool(delta_softplus),
        log1p=lowers_log1p(bool(interpret)),
        gated=z is not None,
        interpret=bool(interpret),
        poison=bool(poison),
    )
    D = jnp.zeros((channels,), F32) if D is None else D
    delta_bias = jnp.zeros((channels,), F32) if delta_bias is None else delta_bias
    h0 = jnp.zeros((batch, channels, state), F32) if initial_state is None else initial_state
    return _scan(cfg, u, delta, A, B, C, D, z, delta_bias, h0, reference.keep_mask(reset, u, F32))
