"""Public selective-scan API and backend dispatch. Models call only ``selective_scan``.

The scan is generic over its channels: ``channels`` is the model's d_inner (hrm/models/__init__.py has the
glossary) and ``state`` its d_state n. ``h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t``, ``y_t = C_t h_t + D u_t``,
gated by ``silu(z_t)``: Mamba (Gu & Dao 2023) §3.2 and Algorithm 2; the readable definition is
``kernels/reference.py``, the GPU kernels ``kernels/pallas_scan.py`` (where L, P, S are the padded length,
channels and state).
"""

from __future__ import annotations

import concurrent.futures
import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np

from . import chunked_scan, reference

BACKENDS = ("auto", "reference", "sequential", "chunked", "pallas")
GPU_PLATFORMS = ("gpu", "cuda", "rocm")


class BackendUnavailable(RuntimeError):
    """An explicitly requested scan backend cannot run here; the message names the reason and the fix."""


def _platform() -> str:
    return jax.default_backend()


def _implementation(name: str):
    if name == "pallas":
        from .pallas_scan import pallas_scan  # noqa: PLC0415 (lazy: imports jax.experimental.pallas)

        return pallas_scan
    if name == "chunked":
        return chunked_scan.chunked_scan
    return {"reference": reference.associative_scan, "sequential": reference.sequential_scan}[name]


@functools.cache
def _pallas_problem(platform: str) -> str | None:
    """Why the Pallas kernel cannot run on ``platform``, or None.  Off GPU it runs in interpret mode,
    which every jax has; on GPU it needs Pallas's Triton backend (kernels/pallas_scan.py)."""
    if platform not in GPU_PLATFORMS:
        return None
    try:
        from jax.experimental.pallas import triton as pltriton  # noqa: PLC0415
    except ImportError as error:
        return f"jax {jax.__version__} has no Pallas Triton backend ({error})"
    missing = [name for name in ("CompilerParams", "debug_barrier") if not hasattr(pltriton, name)]
    if missing:
        return f"jax {jax.__version__}'s Pallas Triton backend lacks {', '.join(missing)}"
    return None


# --------------------------------------------------------------------------------------------------
# auto's self-check of the Pallas kernel: nothing it has not seen work in this process is trusted.

# Padded length, channels and state; a reset inside a chunk, one at its boundary and one at step 0.
SELF_CHECK_SHAPE = (2, 100, 40, 16)
SELF_CHECK_RESETS = ((0, 37), (1, 0), (1, 64))


def _pallas_kernel(platform: str):
    """The Pallas scan as ``platform`` runs it: compiled on GPU, interpreted elsewhere."""
    from .pallas_scan import pallas_scan  # noqa: PLC0415

    return functools.partial(pallas_scan, interpret=platform not in GPU_PLATFORMS)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def _outside_any_trace(fn):
    """``fn()`` run eagerly, even from inside a jit trace: jax's tracing state is per thread, so a fresh
    thread computes concrete values (``jax.ensure_compile_time_eval`` would also evaluate the Pallas
    kernel's body eagerly, which Pallas rejects)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result()


@functools.cache
def pallas_self_check(platform: str, dtype: str = "float32") -> str | None:
    """Why the Pallas kernel on ``platform`` cannot be trusted for ``dtype`` inputs, or None.

    Compiles it and compares a small, padded problem with packed-document resets against the chunked scan
    (outputs, last state and every gradient, ``kernels.check`` tolerances: 1e-5 float32, 1e-2 bfloat16).
    Runs once per process and dtype, eagerly even when first asked inside a jit trace."""
    from . import check  # noqa: PLC0415

    reset = np.zeros(SELF_CHECK_SHAPE[:2], bool)
    reset[tuple(zip(*SELF_CHECK_RESETS))] = True
    try:
        results = _outside_any_trace(
            functools.partial(
                check.parity,
                _pallas_kernel(platform),
                dtype,
                SELF_CHECK_SHAPE,
                reset=reset,
                against=chunked_scan.chunked_scan,
            )
        )
    except Exception as error:  # noqa: BLE001 (any failure to compile or run is the answer)
        return f"it does not run ({_first_line(error)})"
    bad = [f"{name} {err:.1e} > {tol:.0e}" for name, err, tol in results if not err <= tol]
    return f"it differs from the chunked scan ({', '.join(bad)})" if bad else None


@functools.cache
def _compile_failure(platform: str, signature: tuple, delta_softplus: bool) -> str | None:
    """Why the Pallas kernel's forward and backward do not compile at these shapes, or None.
    ``signature``: ((argument name, shape, dtype) or (name, None, None)) for each argument."""
    specs = {k: None if shape is None else jax.ShapeDtypeStruct(shape, dtype) for k, shape, dtype in signature}
    reset = specs.pop("reset")
    kernel = _pallas_kernel(platform)

    def loss(args, reset):
        y, h = kernel(**args, delta_softplus=delta_softplus, reset=reset)
        return jnp.sum(y.astype(jnp.float32)) + jnp.sum(h)

    try:
        jax.jit(jax.grad(loss)).lower(specs, reset).compile()
    except Exception as error:  # noqa: BLE001
        return _first_line(error)
    return None


def _checked_at_these_shapes(args: dict, delta_softplus: bool) -> str:
    """ "pallas", or "chunked" after a one-line warning if the kernel does not compile at these shapes."""
    signature = tuple(
        (k, None, None) if v is None else (k, tuple(v.shape), jnp.dtype(v.dtype).name) for k, v in args.items()
    )
    failure = _compile_failure(_platform(), signature, bool(delta_softplus))
    if failure is None:
        return "pallas"
    if signature not in _warned:
        _warned.add(signature)
        shape = "x".join(map(str, args["u"].shape))
        print(
            f"warning: selective scan backend auto: the Pallas kernel does not compile at {shape} ({failure}); "
            "using the chunked scan",
            file=sys.stderr,
            flush=True,
        )
    return "chunked"


_warned: set = set()


@functools.cache
def choose_backend(backend: str = "auto", platform: str | None = None, dtype="float32") -> tuple[str, str]:
    """(the concrete backend ``backend`` stands for on ``platform`` for inputs of ``dtype``, why).

    ``platform`` defaults to jax's default backend.  "auto": on GPU the fused Pallas kernel compiled
    through Triton (kernels/pallas_scan.py) once it has passed ``pallas_self_check`` in this process
    (on this machine's platform; asked about another, the check is deferred to its first use there), else
    the chunked scan — never the associative scan, whose (batch, length, channels, state) tensors no real
    config fits.  On CPU the backend measured fastest for the dtype on a 2-core CPU (``CPU_CHOICE``:
    docs/BENCHMARKS.md).  Other platforms
    take the chunked scan, plain JAX.  An explicitly named backend that cannot run raises
    ``BackendUnavailable``; a named "pallas" is not self-checked: its errors stand.  "auto" never picks
    a backend that cannot run.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown scan backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    platform = platform or _platform()
    problem = _pallas_problem(platform)
    if backend == "pallas" and problem:
        raise BackendUnavailable(
            f"scan backend 'pallas' cannot run on {platform}: {problem}; use scan_backend 'auto' or 'chunked'"
        )
    if backend != "auto":
        return backend, {
            "reference": "associative scan (requested)",
            "sequential": "lax.scan (requested)",
            "chunked": "time-parallel chunked scan (requested)",
            "pallas": (
                "Pallas kernel compiled through Triton (requested)"
                if platform in GPU_PLATFORMS
                else "Pallas kernel in interpret mode: no GPU (requested)"
            ),
        }[backend]
    if platform in GPU_PLATFORMS:
        if problem:
            return "chunked", f"chunked scan: the Pallas kernel cannot run ({problem})"
        if platform != _platform():
            return "pallas", "fused Pallas kernel compiled through Triton (self-checked at its first use)"
        failure = pallas_self_check(platform, jnp.dtype(dtype).name)
        if failure:
            return "chunked", f"chunked scan: the Pallas kernel failed its self-check: {failure}"
        return "pallas", "fused Pallas kernel compiled through Triton, self-checked against the chunked scan"
    if platform == "cpu":
        return CPU_CHOICE["float32" if jnp.dtype(dtype) == jnp.float32 else "bfloat16"]
    return "chunked", f"time-parallel chunked scan in plain JAX (no kernel for {platform})"


# auto on CPU by dtype: the fastest in scripts/bench_train.py on configs/tiny.py (docs/BENCHMARKS.md).
CPU_CHOICE = {
    "float32": (
        "pallas",
        "Pallas kernel in interpret mode, the fastest for float32 on CPU "
        "(chunked 0.83x, lax.scan 0.55x its training speed, docs/BENCHMARKS.md)",
    ),
    "bfloat16": (
        "chunked",
        "chunked scan, the fastest for bfloat16 on CPU "
        "(1.55x lax.scan's, 1.35x the interpreted kernel's training speed, docs/BENCHMARKS.md)",
    ),
}


def resolve_backend(backend: str = "auto", platform: str | None = None, dtype="float32") -> str:
    """The concrete backend of ``choose_backend``."""
    return choose_backend(backend, platform, jnp.dtype(dtype).name)[0]


def banner(backend: str = "auto", dtype="float32") -> str:
    """One line: the scan backend in use, why, and the jax version and devices (``python -m hrm.doctor``
    and the start of training print it).  On GPU, "auto" runs the Pallas self-check here, so a failure is
    in this line."""
    platform = _platform()
    name, why = choose_backend(backend, platform, jnp.dtype(dtype).name)
    auto = f" (auto on {platform})" if backend == "auto" else ""
    return (
        f"selective scan backend: {name}{auto}: {why}; jax {jax.__version__}, "
        f"{jax.device_count()} device(s): {jax.devices()[0].device_kind}"
    )


def selective_scan(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    return_last_state=False,
    backend="auto",
    initial_state=None,
    reset=None,
    chunk=None,
):
    """Selective scan over (batch, length, channels) inputs.

    Args:
      u, delta, z: (batch, length, channels).  A: (channels, state).  B, C: (batch, length, state).
      D, delta_bias: (channels,).  initial_state: optional (batch, channels, state).
      reset: optional (batch, length) bool; where true the state is zeroed before that step (a new
        packed document starts there), so nothing flows across the boundary.
      backend: "auto", "reference" (associative_scan), "sequential" (lax.scan), "chunked" (time-parallel
        chunks, kernels/chunked_scan.py) or "pallas" (fused Pallas kernels, kernels/pallas_scan.py); see
        ``choose_backend``.
        A named backend that cannot run here raises ``BackendUnavailable``.
      chunk: the chunked scan's steps per chunk (default: ``chunked_scan.default_chunk``); others ignore it.
    Returns:
      y (batch, length, channels) in u's dtype, or (y, last_state) with last_state
      (batch, channels, state) float32 when ``return_last_state``.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias, initial_state, reset)
    args = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias, initial_state=initial_state)
    name = resolve_backend(backend, dtype=u.dtype)
    if backend == "auto" and name == "pallas" and _platform() in GPU_PLATFORMS:
        name = _checked_at_these_shapes({**args, "reset": reset}, delta_softplus)
    extra = {"chunk": chunk} if name == "chunked" and chunk else {}
    y, last_state = _implementation(name)(**args, delta_softplus=delta_softplus, reset=reset, **extra)
    return (y, last_state) if return_last_state else y


def _check_shapes(u, delta, A, B, C, D, z, delta_bias, initial_state, reset):
    if u.ndim != 3:
        raise ValueError(f"u must be (batch, length, channels), got shape {u.shape}")
    batch, length, channels = u.shape
    state = A.shape[-1]
    expected = {
        "delta": (delta, u.shape),
        "A": (A, (channels, state)),
        "B": (B, (batch, length, state)),
        "C": (C, (batch, length, state)),
        "D": (D, (channels,)),
        "z": (z, u.shape),
        "delta_bias": (delta_bias, (channels,)),
        "initial_state": (initial_state, (batch, channels, state)),
        "reset": (reset, (batch, length)),
    }
    for name, (array, shape) in expected.items():
        if array is not None and tuple(array.shape) != tuple(shape):
            raise ValueError(f"selective_scan: {name} has shape {tuple(array.shape)}, expected {shape}")
