"""Public selective-scan API and backend dispatch. Models call only ``selective_scan``.

The scan is generic over its channels: ``channels`` is the model's d_inner (hrm/models/__init__.py has the
glossary) and ``state`` its d_state n. ``h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t``, ``y_t = C_t h_t + D u_t``,
gated by ``silu(z_t)``: Mamba (Gu & Dao 2023) §3.2 and Algorithm 2; the readable definition is
``kernels/reference.py``, the GPU kernels ``kernels/pallas_scan.py`` (where L, P, S are the padded length,
channels and state).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from kernels import reference

BACKENDS = ("auto", "reference", "sequential", "pallas")
GPU_PLATFORMS = ("gpu", "cuda", "rocm")


class BackendUnavailable(RuntimeError):
    """An explicitly requested scan backend cannot run here; the message names the reason and the fix."""


def _implementation(name: str):
    if name == "pallas":
        from kernels.pallas_scan import pallas_scan  # noqa: PLC0415 (lazy: imports jax.experimental.pallas)

        return pallas_scan
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


@functools.cache
def choose_backend(backend: str = "auto", platform: str | None = None, dtype="float32") -> tuple[str, str]:
    """(the concrete backend ``backend`` stands for on ``platform`` for inputs of ``dtype``, why).

    ``platform`` defaults to jax's default backend.  "auto": on GPU the fused Pallas kernel compiled
    through Triton (kernels/pallas_scan.py).  On CPU whichever measured faster on a 2-core CPU
    (docs/BENCHMARKS.md): the interpreted Pallas kernel for float32 (1.70x the training speed of
    ``lax.scan`` on configs/tiny.py: its custom backward avoids autodiff through a scan) and the
    sequential ``lax.scan`` for bfloat16 (interpret mode is ~3x slower there).  The associative scan
    materialises (batch, length, channels, state) and is the slowest on CPU; other platforms take it as
    the portable parallel definition.  An explicitly named backend that cannot run raises
    ``BackendUnavailable``; "auto" never picks one.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown scan backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    platform = platform or jax.default_backend()
    problem = _pallas_problem(platform)
    if backend == "pallas" and problem:
        raise BackendUnavailable(
            f"scan backend 'pallas' cannot run on {platform}: {problem}; use scan_backend 'auto' or 'reference'"
        )
    if backend != "auto":
        return backend, {
            "reference": "associative scan (requested)",
            "sequential": "lax.scan (requested)",
            "pallas": (
                "Pallas kernel compiled through Triton (requested)"
                if platform in GPU_PLATFORMS
                else "Pallas kernel in interpret mode: no GPU (requested)"
            ),
        }[backend]
    if platform in GPU_PLATFORMS:
        if problem:
            return "reference", f"associative scan: the Pallas kernel cannot run ({problem})"
        return "pallas", "fused Pallas kernel compiled through Triton"
    if platform == "cpu":
        if jnp.dtype(dtype) == jnp.float32:
            return "pallas", (
                "Pallas kernel in interpret mode, 1.70x lax.scan's training speed for float32 "
                "on CPU (docs/BENCHMARKS.md)"
            )
        return "sequential", (
            f"lax.scan: interpret mode is ~3x slower than lax.scan for {jnp.dtype(dtype).name} "
            "on CPU (docs/BENCHMARKS.md)"
        )
    return "reference", f"associative scan: the portable parallel definition (no kernel for {platform})"


def resolve_backend(backend: str = "auto", platform: str | None = None, dtype="float32") -> str:
    """The concrete backend of ``choose_backend``."""
    return choose_backend(backend, platform, jnp.dtype(dtype).name)[0]


def banner(backend: str = "auto", dtype="float32") -> str:
    """One line: the scan backend in use, why, and the jax version and devices (``python -m hrm.doctor``
    and the start of training print it)."""
    platform = jax.default_backend()
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
):
    """Selective scan over (batch, length, channels) inputs.

    Args:
      u, delta, z: (batch, length, channels).  A: (channels, state).  B, C: (batch, length, state).
      D, delta_bias: (channels,).  initial_state: optional (batch, channels, state).
      reset: optional (batch, length) bool; where true the state is zeroed before that step (a new
        packed document starts there), so nothing flows across the boundary.
      backend: "auto", "reference" (associative_scan), "sequential" (lax.scan) or "pallas"
        (fused Pallas kernels, kernels/pallas_scan.py); see ``choose_backend``.  A named backend that
        cannot run here raises ``BackendUnavailable``.
    Returns:
      y (batch, length, channels) in u's dtype, or (y, last_state) with last_state
      (batch, channels, state) float32 when ``return_last_state``.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias, initial_state, reset)
    impl = _implementation(resolve_backend(backend, dtype=u.dtype))
    y, last_state = impl(
        u,
        delta,
        A,
        B,
        C,
        D=D,
        z=z,
        delta_bias=delta_bias,
        delta_softplus=delta_softplus,
        initial_state=initial_state,
        reset=reset,
    )
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
