"""Public selective-scan API and backend dispatch. Models call only ``selective_scan``."""

from __future__ import annotations

import functools

import jax

from kernels import reference

BACKENDS = ("auto", "reference", "sequential")


def _implementation(name: str):
    return {"reference": reference.associative_scan,
            "sequential": reference.sequential_scan}[name]


@functools.cache
def resolve_backend(backend: str = "auto", platform: str | None = None) -> str:
    """The concrete backend ``backend`` stands for on ``platform`` (default: jax's default backend).

    On CPU the associative scan is several times slower than a sequential ``lax.scan`` because it
    materialises (batch, length, channels, state), so "auto" takes "sequential" there and the
    parallel "reference" elsewhere.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown scan backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    platform = platform or jax.default_backend()
    return "sequential" if platform == "cpu" else "reference"


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, backend="auto", initial_state=None):
    """Selective scan over (batch, length, channels) inputs.

    Args:
      u, delta, z: (batch, length, channels).  A: (channels, state).  B, C: (batch, length, state).
      D, delta_bias: (channels,).  initial_state: optional (batch, channels, state).
      backend: "auto", "reference" (associative_scan) or "sequential" (lax.scan).
    Returns:
      y (batch, length, channels) in u's dtype, or (y, last_state) with last_state
      (batch, channels, state) float32 when ``return_last_state``.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias, initial_state)
    impl = _implementation(resolve_backend(backend))
    y, last_state = impl(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                         delta_softplus=delta_softplus, initial_state=initial_state)
    return (y, last_state) if return_last_state else y


def _check_shapes(u, delta, A, B, C, D, z, delta_bias, initial_state):
    if u.ndim != 3:
        raise ValueError(f"u must be (batch, length, channels), got shape {u.shape}")
    batch, length, channels = u.shape
    state = A.shape[-1]
    expected = {"delta": (delta, u.shape), "A": (A, (channels, state)),
                "B": (B, (batch, length, state)), "C": (C, (batch, length, state)),
                "D": (D, (channels,)), "z": (z, u.shape), "delta_bias": (delta_bias, (channels,)),
                "initial_state": (initial_state, (batch, channels, state))}
    for name, (array, shape) in expected.items():
        if array is not None and tuple(array.shape) != tuple(shape):
            raise ValueError(f"selective_scan: {name} has shape {tuple(array.shape)}, expected {shape}")
