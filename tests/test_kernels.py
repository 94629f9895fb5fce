"""selective_scan against a float64 NumPy loop, across backends, with gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hrm.kernels import check, reference
from hrm.kernels.chunked_scan import chunked_scan, default_chunk

from hrm import kernels
from tests.helpers import fresh_rng, numpy_scan, random_inputs, rel_err


@pytest.mark.parametrize("backend", ["reference", "sequential", "chunked", "auto"])
@pytest.mark.parametrize("shape,with_state", [((2, 37, 24, 16), False), ((1, 5, 7, 3), True), ((3, 64, 16, 8), True)])
def test_forward_matches_float64_loop(backend, shape, with_state):
    inputs = random_inputs(fresh_rng(), *shape, with_state=with_state)
    scan = functools.partial(kernels.selective_scan, delta_softplus=True, return_last_state=True, backend=backend)
    y, last = jax.jit(scan)(**_as_jnp(inputs))  # one compile (eager, each primitive compiles on its own)
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
    for backend in ("reference", "sequential", "chunked"):
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


@pytest.mark.parametrize("backend", ["reference", "sequential", "chunked", "pallas"])
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
    argnums = tuple(range(len(names)))  # each gradient jitted: one compile (eager, each primitive compiles alone)
    grads = jax.jit(jax.grad(lambda *a: loss(reference.associative_scan, np.float32, *a), argnums=argnums))(*args32)
    with jax.enable_x64(True):
        args64 = [jnp.asarray(inputs[k], jnp.float64) for k in names]
        grads64 = jax.jit(jax.grad(lambda *a: loss(reference.sequential_scan, np.float64, *a), argnums=argnums))(
            *args64
        )
        grads64 = [np.asarray(g) for g in grads64]
    for name, g, g64 in zip(names, grads, grads64):
        assert g.dtype == jnp.float32
        assert rel_err(g, g64) < 1e-4, name


def test_fp32_sequential_gradients_match_associative():
    inputs = {k: jnp.asarray(v) for k, v in random_inputs(fresh_rng(), 2, 23, 8, 4).items() if v is not None}
    loss = lambda backend: lambda kw: jnp.sum(kernels.selective_scan(**kw, delta_softplus=True, backend=backend) ** 2)
    g_ref = jax.jit(jax.grad(loss("reference")))(inputs)  # jitted: one compile each
    g_seq = jax.jit(jax.grad(loss("sequential")))(inputs)
    for name in inputs:
        assert rel_err(g_seq[name], g_ref[name]) < 1e-4, name


def test_auto_backend_per_platform():
    assert kernels.resolve_backend("auto", "cpu") == "pallas"  # interpreted: measured fastest for fp32 on CPU
    assert kernels.resolve_backend("auto", "cpu", "bfloat16") == "chunked"  # and chunked for bf16
    assert kernels.resolve_backend("auto", "gpu") == "pallas"  # asked from a CPU: checked at its first use there
    assert kernels.resolve_backend("auto", "tpu") == "chunked"  # never the associative scan
    assert kernels.resolve_backend("pallas", "cpu") == "pallas"
    assert "the fastest for float32 on CPU" in kernels.choose_backend("auto", "cpu")[1]  # the reason comes along
    assert "compiled through Triton (self-checked at its first use)" in kernels.choose_backend("auto", "gpu")[1]
    with pytest.raises(ValueError, match="unknown scan backend"):
        kernels.resolve_backend("cuda")


def test_shape_errors_name_the_argument():
    inputs = random_inputs(fresh_rng(), 1, 4, 3, 2)
    inputs["B"] = inputs["B"][:, :, :1]
    with pytest.raises(ValueError, match="B has shape"):
        kernels.selective_scan(**{k: v for k, v in inputs.items() if v is not None})


# --- the chunked backend (kernels/chunked_scan.py) ----------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("length,chunk", [(37, 8), (64, 16), (5, 8)], ids=["ragged", "exact", "one_short_chunk"])
def test_chunked_outputs_and_every_gradient_match_float64(dtype, length, chunk):
    """Mamba-range inputs, dt from the init's floor 1e-4 up, with packed-document resets at random steps and
    on both sides of every chunk boundary; lengths that are and are not a multiple of the chunk."""
    rng = fresh_rng()
    reset = rng.random((2, length)) < 0.1
    reset[0, chunk - 1 :: chunk] = True  # the last step of a chunk starts a document
    reset[1, chunk::chunk] = True  # the first step of a chunk starts one
    reset[1, 0] = True  # discards the initial state
    reset[0, 0] = False  # row 0 keeps it (d initial_state is not all zero)
    for dt_range in ((1e-4, 1e-3), (1e-4, 1e-1)):
        scan = functools.partial(chunked_scan, chunk=chunk)
        results = check.parity(scan, dtype, shape=(2, length, 20, 5), dt_range=dt_range, reset=reset)
        for name, err, tol in results:
            assert err <= tol, (dt_range, name, err, tol)


def test_chunked_without_optional_arguments_and_with_float64():
    """No D, z, bias, softplus or initial state; float64 inputs compute (and return the state) in float64."""
    inputs = {k: v for k, v in random_inputs(fresh_rng(), 2, 23, 8, 4).items() if v is not None}
    plain = {
        k: jnp.abs(jnp.asarray(inputs[k])) if k == "delta" else jnp.asarray(inputs[k]) for k in "u delta A B C".split()
    }
    y, h = chunked_scan(**plain, chunk=4)
    y_ref, h_ref = reference.sequential_scan(**plain)
    assert rel_err(y, y_ref) < 1e-5 and rel_err(h, h_ref) < 1e-5
    with jax.enable_x64(True):
        wide = {k: jnp.asarray(v, jnp.float64) for k, v in inputs.items()}
        y64, h64 = chunked_scan(**wide, delta_softplus=True, chunk=5)
        assert y64.dtype == h64.dtype == jnp.float64
        y_ref, h_ref = numpy_scan(**inputs, initial_state=None)
        assert rel_err(y64, y_ref) < 1e-12 and rel_err(h64, h_ref) < 1e-12


def test_chunked_ragged_prefill_keeps_each_rows_last_real_state():
    """A batched prefill of prompts of different lengths: delta = -inf on padding (hrm/models/mamba.py), so
    each row's returned state is the state after its last real token, across chunk boundaries."""
    inputs = random_inputs(fresh_rng(), 3, 29, 8, 4, with_state=True)
    lengths = [29, 11, 8]
    delta = inputs["delta"].copy()
    for row, n in enumerate(lengths):
        delta[row, n:] = -np.inf
    _, last = chunked_scan(**{**_as_jnp(inputs), "delta": jnp.asarray(delta)}, delta_softplus=True, chunk=8)
    for row, n in enumerate(lengths):
        part = {k: v[row : row + 1, :n] if k in ("u", "delta", "B", "C", "z") else v for k, v in inputs.items()}
        part["initial_state"] = inputs["initial_state"][row : row + 1]
        assert rel_err(last[row], numpy_scan(**part)[1][0]) < 1e-5, row


def test_chunked_under_jit_grad_checkpoint_and_vmap():
    inputs = _as_jnp({k: v for k, v in random_inputs(fresh_rng(), 2, 20, 8, 4).items() if v is not None})
    scan = functools.partial(kernels.selective_scan, delta_softplus=True)
    loss = lambda backend: lambda kw: jnp.sum(scan(**kw, backend=backend) ** 2)
    g = jax.jit(jax.grad(loss("chunked")))(inputs)
    g_remat = jax.jit(jax.grad(jax.checkpoint(loss("chunked"))))(inputs)
    g_ref = jax.grad(loss("sequential"))(inputs)
    for name in inputs:
        assert rel_err(g[name], g_ref[name]) < 1e-5 and rel_err(g_remat[name], g[name]) < 1e-6, name
    seq = ("u", "delta", "B", "C", "z")
    stacked = {k: jnp.stack([v, v[::-1]]) for k, v in inputs.items() if k in seq}
    shared = {k: v for k, v in inputs.items() if k not in seq}
    ys = jax.jit(jax.vmap(lambda kw: scan(**kw, **shared, backend="chunked")))(stacked)
    assert rel_err(ys[1], scan(**{k: v[1] for k, v in stacked.items()}, **shared, backend="sequential")) < 1e-5


def test_chunked_backward_never_holds_length_times_state():
    """The compiled gradient's scratch memory stays far below one (batch, length, channels, state) float32
    tensor, which the associative scan's gradient needs several of."""
    b, l, d, n = 2, 2048, 32, 64
    args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in [(b, l, d), (b, l, d), (d, n), (b, l, n), (b, l, n)]]

    def temp_bytes(backend):
        loss = lambda *a: jnp.sum(kernels.selective_scan(*a, delta_softplus=True, backend=backend))
        grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))
        return grad.lower(*args).compile().memory_analysis().temp_size_in_bytes

    full_state = b * l * d * n * 4
    assert temp_bytes("reference") > full_state  # the guard can fail
    assert temp_bytes("chunked") < full_state / 4


def test_default_chunk_is_about_the_square_root_of_the_length():
    assert [default_chunk(n) for n in (1, 128, 2048, 4096, 8192, 65536)] == [64, 64, 64, 64, 128, 256]


def _as_jnp(inputs):
    return {k: None if v is None else jnp.asarray(v) for k, v in inputs.items()}


def test_scan_chunk_setting_is_validated_and_reaches_the_model(monkeypatch):
    import importlib

    from hrm.config import ConfigError, validate
    from hrm.models import build_model
    from tests.helpers import small_config

    for bad in (8, 2048, -1):
        config = small_config()
        config.model.scan_chunk = bad
        with pytest.raises(ConfigError, match=r"'model.scan_chunk' must be 0 \(automatic\) or in \[16, 1024\]"):
            validate(config)
    dispatch = importlib.import_module("hrm.kernels.selective_scan")
    implementation, chunks = dispatch._implementation, []
    spy = lambda name: lambda *a, **kw: chunks.append(kw.get("chunk")) or implementation(name)(*a, **kw)
    monkeypatch.setattr(dispatch, "_implementation", spy)
    tokens = jnp.asarray(fresh_rng().integers(0, 64, (2, 40)))
    logits = {}
    for backend, chunk in (("sequential", 0), ("chunked", 16)):
        config = small_config()
        config.model.vocab_size, config.model.scan_backend, config.model.scan_chunk = 64, backend, chunk
        validate(config)
        logits[backend] = build_model(config.model, 0)(tokens)[0]
    assert rel_err(logits["chunked"], logits["sequential"]) < 1e-5
    # each traced layer body (one for scanned layers, one per layer unrolled): the chunked scan got model.scan_chunk
    assert set(chunks) == {None, 16} and chunks == sorted(chunks, key=lambda c: c is not None)
