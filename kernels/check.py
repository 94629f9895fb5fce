"""Parity of a scan backend with the float64 reference, on inputs in the range a Mamba block feeds it.

``python -m hrm.doctor`` runs ``parity`` on the backend in use; the tests take their inputs from
``mamba_range_inputs``.  The error of an output is ``|out - ref| / |ref|`` (Frobenius norms) against
``reference.sequential_scan`` in float64 on exactly the values the backend saw; a non-finite output is an
infinite error, so NaN never passes.  With ``against`` the reference is another backend at the same dtype
(``auto``'s self-check of the Pallas kernel against the chunked scan, kernels/selective_scan.py).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from . import reference

# Relative error bounds, outputs and gradients alike: float32 computes in float32 (measured: <= 3.1e-7 at
# the default shape, every backend); bfloat16 inputs and outputs carry 8 mantissa bits (<= 2.5e-3).
TOLERANCES = {"float32": 1e-5, "bfloat16": 1e-2}
PARAMETERS = ("A", "D", "delta_bias", "initial_state")  # float32 whatever the compute dtype, as in the models
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def mamba_range_inputs(
    rng: np.random.Generator,
    batch: int,
    length: int,
    channels: int,
    state: int,
    dt_min: float = 1e-4,
    dt_max: float = 1e-1,
) -> dict[str, np.ndarray]:
    """float32 scan inputs as a freshly initialised Mamba block produces them (hrm/models/mamba.py, after
    mamba-ssm's ``Mamba.__init__``): ``A = -[1..state]`` (S4D-real), ``delta_bias = softplus^-1(dt)`` with
    dt log-uniform in [dt_min, dt_max] (1e-4 is the init's floor), the dt projection's output ``delta``
    ~ N(0, 0.1^2), so the effective step softplus(delta + delta_bias) spans about dt_min..dt_max;
    u, B, C, z and the initial state ~ N(0, 1), D ~ N(1, 0.1^2)."""
    normal = lambda *shape, scale=1.0: (rng.standard_normal(shape) * scale).astype(np.float32)
    dt = np.exp(rng.uniform(math.log(dt_min), math.log(dt_max), channels))
    return dict(
        u=normal(batch, length, channels),
        delta=normal(batch, length, channels, scale=0.1),
        A=-np.broadcast_to(np.arange(1, state + 1, dtype=np.float32), (channels, state)).copy(),
        B=normal(batch, length, state),
        C=normal(batch, length, state),
        D=1 + normal(channels, scale=0.1),
        z=normal(batch, length, channels),
        delta_bias=(dt + np.log(-np.expm1(-dt))).astype(np.float32),
        initial_state=normal(batch, channels, state),
    )


def rel_err(out, ref) -> float:
    """``|out - ref| / |ref|`` in float64; infinite if ``out`` has a non-finite element."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    if not np.all(np.isfinite(out)):
        return math.inf
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


@functools.partial(jax.jit, static_argnums=0)
def _outputs_and_grads(scan, inputs: dict, cot_y, cot_h, reset=None):
    """(y, last_state, gradients of sum(y * cot_y) + sum(last_state * cot_h) for every input).
    Compiled once per ``scan`` object and shapes, so checking it on several input draws costs one compile."""

    def loss(args):
        y, h = scan(**args, delta_softplus=True, reset=reset)
        return jnp.sum(y.astype(cot_y.dtype) * cot_y) + jnp.sum(h.astype(cot_h.dtype) * cot_h), (y, h)

    (_, (y, h)), grads = jax.value_and_grad(loss, has_aux=True)(inputs)
    return y, h, grads


def parity(
    scan,
    dtype: str = "float32",
    shape=(2, 64, 32, 16),
    seed: int = 0,
    dt_range=(1e-4, 1e-1),
    reset=None,
    against=None,
) -> list[tuple[str, float, float]]:
    """[(output or gradient name, relative error, tolerance)] for ``scan`` (a function with
    ``reference.sequential_scan``'s signature and result) at ``dtype`` on ``mamba_range_inputs`` of
    ``shape`` (batch, length, channels, state) with dt in ``dt_range`` and the optional (batch, length)
    bool ``reset``.  The error is against the float64 definition, or, given ``against`` (another scan),
    against that scan run on the same inputs at the same dtype (the self-check of ``auto``)."""
    rng = np.random.default_rng(seed)
    inputs = mamba_range_inputs(rng, *shape, *dt_range)
    cast = {k: jnp.asarray(v, jnp.float32 if k in PARAMETERS else dtype) for k, v in inputs.items()}
    cot_y = rng.standard_normal(shape[:3])
    cot_h = rng.standard_normal((shape[0], shape[2], shape[3]))
    reset = None if reset is None else jnp.asarray(reset, bool)
    cots = jnp.asarray(cot_y, jnp.float32), jnp.asarray(cot_h, jnp.float32)
    y, h, grads = _outputs_and_grads(scan, cast, *cots, reset)
    if against is not None:
        y64, h64, grads64 = _outputs_and_grads(against, cast, *cots, reset)
    else:
        with jax.enable_x64(True):  # the reference sees exactly the (rounded) values the backend saw
            exact = {k: jnp.asarray(np.asarray(v, np.float64)) for k, v in cast.items()}
            y64, h64, grads64 = _outputs_and_grads(
                reference.sequential_scan, exact, jnp.asarray(cot_y), jnp.asarray(cot_h), reset
            )
    y64, h64, grads64 = np.asarray(y64), np.asarray(h64), {k: np.asarray(g) for k, g in grads64.items()}
    tol = TOLERANCES[jnp.dtype(dtype).name]
    return [("y", rel_err(y, y64), tol), ("last_state", rel_err(h, h64), tol)] + [
        (f"d{k}", rel_err(grads[k], grads64[k]), tol) for k in NAMES
    ]
