"""Public selective-scan API and backend dispatch. Models call only ``selective_scan``."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from kernels import reference

BACKENDS = ("auto", "reference", "sequential", "pallas")


def _implementation(name: str):
    if name == "pallas":
        from kernels.pallas_scan import pallas_scan  # noqa: PLC0415 (lazy: imports jax.experimental.pallas)
        return pallas_scan
    return {"reference": reference.associative_scan,
            "sequential": reference.sequential_scan}[name]


@functools.cache
def resolve_backend(backend: str = "auto", platform: str | None = None, dtype="float32") -> str:
    """The concrete backend ``backend`` stands for on ``platform`` (default: jax's default backend)
    for inputs of ``dtype``.

    On GPU "auto" takes the fused Pallas kernel ("pallas", kernels/pallas_scan.py). On CPU it takes
    whichever measured faster on a 2-core CPU (docs/BENCHMARKS.md): the interpreted Pallas kernel for
    float32 (1.8x the training speed of ``lax.scan`` on configs/tiny.py, its custom backward avoids
    autodiff through a scan) and the sequential ``lax.scan`` for bfloat16 (interpret mode is ~3x
    slower there). The associative scan materialises (batch, length, channels, state) and is the
    slowest on CPU; other platforms take it as the portable parallel definition.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown scan backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    platform = platform or jax.default_backend()
    if platform == "cpu":
        return "pallas" if jnp.dtype(dtype) == jnp.float32 else "sequential"
    return "pallas" if platform in ("gpu", "cuda", "rocm") else "reference"


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, backend="auto", initial_state=None, reset=None):
    """Selective scan over (batch, length, channels) inputs.

    Args:
      u, delta, z: (batch, length, channels).  A: (channels, state).  B, C: (batch, length, state).
      D, delta_bias: (channels,).  initial_state: optional (batch, channels, state).
      reset: optional (batch, length) bool; where true the state is zeroed before that step (a new
        packed document starts there), so nothing flows across the boundary.
      backend: "auto", "reference" (associative_scan), "sequential" (lax.scan) or "pallas"
        (fused Pallas kernels, kernels/pallas_scan.py).
    Returns:
      y (batch, length, channels) in u's dtype, or (y, last_state) with last_state
      (batch, channels, state) float32 when ``return_last_state``.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias, initial_state, reset)
    impl = _implementation(resolve_backend(backend, dtype=jnp.dtype(u.dtype).name))
    y, last_state = impl(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                         delta_softplus=delta_softplus, initial_state=initial_state, reset=reset)
    return (y, last_state) if return_last_state else y


def _check_shapes(u, delta, A, B, C, D, z, delta_bias, initial_state, reset):
    if u.ndim != 3:
        raise ValueError(f"u must be (batch, length, channels), got shape {u.shape}")
    batch, length, channels = u.shape
    state = A.shape[-1]
    expected = {"delta": (delta, u.shape), "A": (A, (channels, state)),
                "B": (B, (batch, length, state)), "C": (C, (batch, length, state)),
                "D": (D, (channels,)), "z": (z, u.shape), "delta_bias": (delta_bias, (channels,)),
                "initial_state": (initial_state, (batch, channels, state)),
                "reset": (reset, (batch, length))}
    for name, (array, shape) in expected.items():
        if array is not None and tuple(array.shape) != tuple(shape):
            raise ValueError(f"selective_scan: {name} has shape {tuple(array.shape)}, expected {shape}")
