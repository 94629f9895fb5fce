"""selective_scan against a float64 NumPy loop, across backends, with gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels
from kernels import reference
from tests.helpers import fresh_rng, numpy_scan, random_inputs, rel_err


@pytest.mark.parametrize("backend", ["reference", "sequential", "auto"])
@pytest.mark.parametrize("shape,with_state", [((2, 37, 24, 16), False), ((1, 5, 7, 3), True), ((3, 64, 16, 8), True)])
def test_forward_matches_float64_loop(backend, shape, with_state):
    inputs = random_inputs(fresh_rng(), *shape, with_state=with_state)
    y, last = kernels.selective_scan(
        **{k: None if v is None else jnp.asarray(v) for k, v in inputs.items()},
        delta_softplus=True,
        return_last_state=True,
        backend=backend,
    )
    y_ref, last_ref = numpy_scan(**inputs)
    assert y.shape == shape[:3] and y.dtype == jnp.float32
    assert last.shape == (shape[0], shape[2], shape[3])
    assert rel_err(y, y_ref) < 1e-5
    assert rel_err(last, last_ref) < 1e-5


def test_bf16_inputs_keep_fp32_state():
    inputs = random_inputs(fresh_rng(), 2, 33, 16, 8)
    ref, _ = numpy_scan(**inputs)
    bf16 = {k: None if v is None else jnp.asarray(v, jnp.bfloat16) for k, v in inputs.items()}
    bf16["A"] = jnp.asarray(inputs["A"])  # A stays fp32, as in the models
    for backend in ("reference", "sequential"):
        y = kernels.selective_scan(**bf16, delta_softplus=True, backend=backend)
        assert y.dtype == jnp.bfloat16
        assert rel_err(y, ref) < 1e-2


def test_optional_arguments_are_optional():
    rng = fresh_rng()
    inputs = random_inputs(rng, 1, 9, 4, 2)
    y = kernels.selective_scan(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"])
    h = np.zeros((1, 4, 2))
    expected = np.zeros((1, 9, 4))
    for t in range(9):
        h = (
            np.exp(inputs["delta"][:, t, :, None] * inputs["A"]) * h
            + (inputs["delta"][:, t] * inputs["u"][:, t])[..., None] * inputs["B"][:, t, None, :]
        )
        expected[:, t] = np.einsum("bdn,bn->bd", h, inputs["C"][:, t])
    assert rel_err(y, expected) < 1e-5


def test_chunked_scan_with_initial_state_equals_one_pass():
    """Prefill in two chunks, passing the state across, gives the one-pass output (decode relies on it)."""
    inputs = {k: jnp.asarray(v) for k, v in random_inputs(fresh_rng(), 2, 20, 8, 4).items() if v is not None}
    whole, last = kernels.selective_scan(**inputs, delta_softplus=True, return_last_state=True)
    cut = lambda x, s: x[:, s] if x.ndim == 3 else x
    first, mid = kernels.selective_scan(
        **{k: cut(v, slice(0, 13)) for k, v in inputs.items()}, delta_softplus=True, return_last_state=True
    )
    second, last2 = kernels.selective_scan(
        **{k: cut(v, slice(13, None)) for k, v in inputs.items()},
        delta_softplus=True,
        return_last_state=True,
        initial_state=mid,
    )
    assert rel_err(jnp.concatenate([first, second], 1), whole) < 1e-5
    assert rel_err(last2, last) < 1e-5


@pytest.mark.parametrize("backend", ["reference", "sequential", "pallas"])
def test_reset_starts_each_packed_document_from_a_zero_state(backend):
    """A reset makes the rest of the row scan exactly as if it were fed alone (packed documents)."""
    inputs = random_inputs(fresh_rng(), 2, 30, 8, 4, with_state=True)
    reset = np.zeros((2, 30), bool)
    reset[0, [11, 12]] = True  # a one-token document at 11, the next starts at 12
    reset[1, [0, 25]] = True  # a reset at 0 discards the initial state
    as_jnp = {k: jnp.asarray(v) for k, v in inputs.items()}
    y, last = kernels.selective_scan(
        **as_jnp, reset=jnp.asarray(reset), delta_softplus=True, return_last_state=True, backend=backend
    )
    y64, last64 = numpy_scan(**inputs, reset=reset)
    assert rel_err(y, y64) < 1e-5 and rel_err(last, last64) < 1e-5

    def alone(row, start, stop):
        part = {
            k: (v[row : row + 1, start:stop] if v.ndim == 3 and k != "initial_state" else v) for k, v in inputs.items()
        }
        part["initial_state"] = None
        return numpy_scan(**part)[0][0]

    assert rel_err(y[0, 12:], alone(0, 12, 30)) < 1e-5
    assert rel_err(y[1, :25], alone(1, 0, 25)) < 1e-5
    assert rel_err(y[1, 25:], alone(1, 25, 30)) < 1e-5
    assert rel_err(y[0, :11], numpy_scan(**inputs)[0][0, :11]) < 1e-5  # before the first reset


@pytest.mark.slow
def test_gradients_match_float64_sequential_scan():
    inputs = random_inputs(fresh_rng(), 2, 19, 12, 5, with_state=True)
    names = [k for k in inputs]
    cotangent = fresh_rng().standard_normal((2, 19, 12))

    def loss(fn, dtype, *args):
        kw = dict(zip(names, args))
        y, h = fn(**kw, delta_softplus=True)
        return jnp.sum(y * cotangent.astype(dtype)) + jnp.sum(h**2)

    args32 = [jnp.asarray(inputs[k]) for k in names]
    grads = jax.grad(lambda *a: loss(reference.associative_scan, np.float32, *a), argnums=tuple(range(len(names))))(
        *args32
    )
    with jax.enable_x64(True):
        args64 = [jnp.asarray(inputs[k], jnp.float64) for k in names]
        grads64 = jax.grad(
            lambda *a: loss(reference.sequential_scan, np.float64, *a), argnums=tuple(range(len(names)))
        )(*args64)
        grads64 = [np.asarray(g) for g in grads64]
    for name, g, g64 in zip(names, grads, grads64):
        assert g.dtype == jnp.float32
        assert rel_err(g, g64) < 1e-4, name


def test_fp32_sequential_gradients_match_associative():
    inputs = {k: jnp.asarray(v) for k, v in random_inputs(fresh_rng(), 2, 23, 8, 4).items() if v is not None}
    loss = lambda backend: lambda kw: jnp.sum(kernels.selective_scan(**kw, delta_softplus=True, backend=backend) ** 2)
    g_ref = jax.grad(loss("reference"))(inputs)
    g_seq = jax.grad(loss("sequential"))(inputs)
    for name in inputs:
        assert rel_err(g_seq[name], g_ref[name]) < 1e-4, name


def test_auto_backend_per_platform():
    assert kernels.resolve_backend("auto", "cpu") == "pallas"  # interpreted, fastest for fp32 on CPU
    assert kernels.resolve_backend("auto", "cpu", "bfloat16") == "sequential"
    assert kernels.resolve_backend("auto", "gpu") == "pallas"
    assert kernels.resolve_backend("auto", "tpu") == "reference"
    assert kernels.resolve_backend("pallas", "cpu") == "pallas"
    assert "interpret mode" in kernels.choose_backend("auto", "cpu")[1]  # the reason comes along
    assert "compiled through Triton" in kernels.choose_backend("auto", "gpu")[1]
    with pytest.raises(ValueError, match="unknown scan backend"):
        kernels.resolve_backend("cuda")


def test_shape_errors_name_the_argument():
    inputs = random_inputs(fresh_rng(), 1, 4, 3, 2)
    inputs["B"] = inputs["B"][:, :, :1]
    with pytest.raises(ValueError, match="B has shape"):
        kernels.selective_scan(**{k: v for k, v in inputs.items() if v is not None})
