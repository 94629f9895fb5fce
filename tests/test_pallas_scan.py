"""Parity of the Pallas selective-scan kernels (kernels/pallas_scan.py) with the reference and a float64 loop.

Runs in Pallas interpret mode on CPU.  Shapes are small and deliberately odd: lengths that are not a
multiple of the chunk, channels that are not a multiple of the block, a state size that is not a power
of two, so the padding paths run.  Every kernel call here uses ``poison=True`` (all output buffers start
as NaN) and ``rel_err`` rejects non-finite values, so an element the kernel forgets to write fails.
Inputs are fresh random numbers on every run.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hrm.kernels import check, reference
from hrm.kernels import pallas_scan as ps

from hrm import kernels
from tests.helpers import fresh_rng, numpy_scan, random_inputs, rel_err

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
SMALL = dict(chunk=8, block_channels=8)  # several chunks and channel blocks at test sizes


def _jnp(inputs, dtype=None):
    return {k: None if v is None else jnp.asarray(v, dtype) for k, v in inputs.items()}


def _loss_and_grads(fn, inputs, cot_y, cot_h, softplus=True):
    """Gradients of sum(y * cot_y) + sum(last_state * cot_h) w.r.t. every non-None input."""
    names = [k for k in NAMES if inputs.get(k) is not None]

    def loss(*args):
        kw = {**{k: None for k in NAMES}, **dict(zip(names, args))}
        y, h = fn(**kw, delta_softplus=softplus)
        return jnp.sum(y.astype(cot_y.dtype) * cot_y) + jnp.sum(h.astype(cot_h.dtype) * cot_h)

    return names, jax.jit(jax.grad(loss, argnums=tuple(range(len(names)))))(*[inputs[k] for k in names])


def _float64_grads(inputs, cot_y, cot_h, softplus=True, reset=None):
    with jax.enable_x64(True):
        inputs64 = {k: None if v is None else jnp.asarray(np.asarray(v, np.float64)) for k, v in inputs.items()}
        names, grads = _loss_and_grads(
            functools.partial(reference.sequential_scan, reset=reset),
            inputs64,
            jnp.asarray(cot_y, jnp.float64),
            jnp.asarray(cot_h, jnp.float64),
            softplus,
        )
        return names, [np.asarray(g) for g in grads]


pallas = functools.partial(ps.pallas_scan, poison=True, **SMALL)
on_gpu = pytest.mark.skipif(
    jax.default_backend() != "gpu", reason="needs a CUDA GPU: JAX_PLATFORMS=cuda python -m pytest -m gpu"
)


def test_softplus_is_accurate_for_small_steps():
    """Both in-kernel softplus forms (lax.log1p, Goldberg's log-only form) stay within 2.4e-7 relative of
    float64 for dt from 1e-7 up, and over [-30, 30].  Evaluated op by op, as Triton runs them (XLA would
    fold Goldberg's (1 + x) - 1 to x).  These inputs tell: log(1 + exp(x)) errs by > 1e-5 at dt 1e-4..1e-3."""
    dt = np.geomspace(1e-7, 20, 100_001)
    x = np.concatenate([np.log(np.expm1(dt)), np.linspace(-30, 30, 20_001)]).astype(np.float32)
    exact = np.logaddexp(0, x.astype(np.float64))
    worst = lambda out, where=slice(None): np.max((np.abs(np.asarray(out, np.float64) - exact) / exact)[where])
    for native in (True, False):
        assert worst(ps.softplus(jnp.asarray(x), native)) < 5e-7, native  # measured 2.4e-7: 2 ulps
    small = (exact > 1e-4) & (exact < 1e-3)
    assert worst(np.log(np.float32(1) + np.exp(x)), small) > 1e-5  # the old form, 5.8e-4 there


@pytest.mark.parametrize("dtype,dt_range", [("float32", (1e-4, 1e-3)), ("bfloat16", (1e-4, 1e-1))])
def test_parity_with_float64_in_the_mamba_dt_range(dtype, dt_range):
    """Outputs and every gradient vs float64 on inputs as an initialised Mamba block feeds the scan, dt down
    to the init's floor 1e-4: relative error <= 1e-5 (float32), 1e-2 (bfloat16).  The small-dt case fails
    with softplus = log(1 + exp(x)) (dA 1.3e-5, dB 6.3e-5 measured)."""
    for name, err, tol in check.parity(pallas, dtype, shape=(2, 37, 20, 5), dt_range=dt_range):
        assert err <= tol, (name, err, tol)


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("tiles", [{}, SMALL], ids=["gpu_tiles", "small_tiles"])
@pytest.mark.parametrize("dt_range", [(1e-4, 1e-3), (1e-4, 1e-1)])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_compiled_kernels_match_float64(dtype, dt_range, tiles):
    """The Triton-compiled kernels (interpret=False), NaN-poisoned outputs, padded length and channels."""
    scan = functools.partial(ps.pallas_scan, interpret=False, poison=True, **tiles)
    for name, err, tol in check.parity(scan, dtype, shape=(3, 300, 200, 16), dt_range=dt_range):
        assert err <= tol, (name, err, tol)


@pytest.mark.parametrize("shape,with_state", [((2, 37, 20, 5), True), ((1, 16, 8, 4), False)])
def test_forward_matches_float64_loop_and_reference(shape, with_state):
    inputs = random_inputs(fresh_rng(), *shape, with_state=with_state)
    y, last = pallas(**_jnp(inputs), delta_softplus=True)
    y64, last64 = numpy_scan(**inputs)
    y_ref, last_ref = reference.associative_scan(**_jnp(inputs), delta_softplus=True)
    assert y.shape == shape[:3] and y.dtype == jnp.float32
    assert last.shape == (shape[0], shape[2], shape[3]) and last.dtype == jnp.float32
    assert rel_err(y, y64) < 1e-5 and rel_err(last, last64) < 1e-5
    assert rel_err(y, y_ref) < 1e-5 and rel_err(last, last_ref) < 1e-5


def test_kernels_write_every_element_of_their_raw_outputs():
    """Check the padded kernel outputs before any slicing: all finite although they started as NaN."""
    rng = fresh_rng()
    inputs = _jnp(random_inputs(rng, 2, 13, 12, 3, with_state=True))
    cfg = ps._Config(length=13, chunk=4, block=8, softplus=True, log1p=True, gated=True, interpret=True, poison=True)
    keep = jnp.asarray(rng.random((2, 13)) > 0.2, jnp.float32)
    x = ps._pad_inputs(cfg, *(inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")), keep)
    out = jax.jit(ps._forward, static_argnums=(0, 3))(cfg, x, ps._pad_state(cfg, inputs["initial_state"]), True)
    assert out["y"].shape == (2, 16, 16) and out["ckpt"].shape == (2, 4, 4, 16)  # 13 -> 16, 12 -> 16
    dy = jnp.asarray(rng.standard_normal(out["y"].shape), jnp.float32)
    dlast = jnp.asarray(rng.standard_normal(out["last"].shape), jnp.float32)
    grads = jax.jit(ps._backward, static_argnums=0)(cfg, x, out["ckpt"], dy, dlast)
    assert sorted(grads) == sorted(["du", "ddelta", "dz", "dB", "dC", "dA", "dD", "dbias", "dh0"])
    for name, array in {**out, **grads}.items():
        assert bool(jnp.all(jnp.isfinite(array))), f"{name} has unwritten (NaN) elements"
    assert bool(jnp.all(out["ckpt"][:, 0] == ps._pad_state(cfg, inputs["initial_state"])))  # chunk 0: h0


def test_poison_hook_catches_unwritten_elements():
    """The hook itself works: a kernel that writes half its output leaves NaN in the other half."""
    cfg = ps._Config(length=4, chunk=4, block=8, softplus=False, log1p=True, gated=False, interpret=True, poison=True)

    def half(*, x, o):
        o[0:2, :] = x[0:2, :]

    spec = ps.pl.BlockSpec((4, 8), lambda i: (0, 0))
    out = jax.jit(
        lambda x: ps._pallas_call(
            half, "half", cfg, (1,), {"x": (x, spec)}, {"o": (jax.ShapeDtypeStruct((4, 8), jnp.float32), spec)}
        )
    )(jnp.ones((4, 8), jnp.float32))["o"]
    assert bool(jnp.all(out[:2] == 1)) and bool(jnp.all(jnp.isnan(out[2:])))
    with pytest.raises(AssertionError, match="non-finite"):
        rel_err(out, np.ones((4, 8)))


@pytest.mark.parametrize("case", ["full", "plain", "reset"])
def test_gradients_match_float64_and_reference(case):
    """Every gradient, including through last_state, vs float64 lax.scan and fp32 associative_scan."""
    rng = fresh_rng()
    b, l, d, n = 2, 19, 12, 5
    inputs = random_inputs(rng, b, l, d, n, with_state=True)
    softplus = case == "full"
    if case == "plain":  # no softplus, no gate, no D, no initial state: the optional paths
        inputs.update(z=None, D=None, initial_state=None)
        inputs["delta"] = np.abs(inputs["delta"])
        inputs["delta_bias"] = np.abs(inputs["delta_bias"])
    reset = None
    if case == "reset":  # packed documents: the state is zeroed at random steps, including step 0
        reset = jnp.asarray(rng.random((b, l)) < 0.2).at[:, 0].set([True, False])
    cot_y, cot_h = rng.standard_normal((b, l, d)), rng.standard_normal((b, d, n))
    names, grads = _loss_and_grads(
        functools.partial(pallas, reset=reset),
        _jnp(inputs),
        jnp.asarray(cot_y, jnp.float32),
        jnp.asarray(cot_h, jnp.float32),
        softplus,
    )
    _, grads_ref = _loss_and_grads(
        functools.partial(reference.associative_scan, reset=reset),
        _jnp(inputs),
        jnp.asarray(cot_y, jnp.float32),
        jnp.asarray(cot_h, jnp.float32),
        softplus,
    )
    _, grads64 = _float64_grads(inputs, cot_y, cot_h, softplus, reset)
    for name, g, g_ref, g64 in zip(names, grads, grads_ref, grads64):
        assert g.shape == inputs[name].shape and g.dtype == jnp.float32, name
        assert rel_err(g, g64) < 1e-4, name
        assert rel_err(g, g_ref) < 1e-4, name


def test_bf16_inputs_forward_and_gradients():
    rng = fresh_rng()
    b, l, d, n = 2, 21, 12, 4
    inputs = random_inputs(rng, b, l, d, n, with_state=True)
    bf16 = _jnp(inputs, jnp.bfloat16)
    bf16["A"], bf16["D"] = jnp.asarray(inputs["A"]), jnp.asarray(inputs["D"])  # parameters stay fp32
    exact = {k: np.asarray(v, np.float64) for k, v in bf16.items()}  # the values the kernel actually sees
    y, last = pallas(**bf16, delta_softplus=True)
    y64, last64 = numpy_scan(**exact)
    assert y.dtype == jnp.bfloat16 and last.dtype == jnp.float32
    assert rel_err(y, y64) < 1e-2 and rel_err(last, last64) < 1e-2

    cot_y, cot_h = rng.standard_normal((b, l, d)), rng.standard_normal((b, d, n))
    names, grads = _loss_and_grads(pallas, bf16, jnp.asarray(cot_y, jnp.float32), jnp.asarray(cot_h, jnp.float32))
    _, grads64 = _float64_grads(exact, cot_y, cot_h)
    for name, g, g64 in zip(names, grads, grads64):
        assert g.dtype == bf16[name].dtype, name
        assert rel_err(g, g64) < 1e-2, name


def test_through_selective_scan_api_with_jit_grad_vmap_and_checkpoint():
    """backend="pallas" via the public API: forward, return_last_state, initial_state (chunked prefill),
    jax.jit(jax.grad(...)), jax.checkpoint and vmap."""
    rng = fresh_rng()
    inputs = _jnp(random_inputs(rng, 2, 20, 8, 4))
    del inputs["initial_state"]
    scan = functools.partial(kernels.selective_scan, delta_softplus=True, backend="pallas")
    whole, last = jax.jit(functools.partial(scan, return_last_state=True))(**inputs)
    y64, last64 = numpy_scan(**inputs, initial_state=None)
    assert rel_err(whole, y64) < 1e-5 and rel_err(last, last64) < 1e-5
    assert jax.jit(scan)(**inputs).shape == whole.shape

    cut = lambda s: {k: v[:, s] if v.ndim == 3 else v for k, v in inputs.items()}
    step = jax.jit(functools.partial(scan, return_last_state=True))
    first, mid = step(**cut(slice(0, 13)))
    second, last2 = step(**cut(slice(13, None)), initial_state=mid)
    assert rel_err(jnp.concatenate([first, second], 1), whole) < 1e-5
    assert rel_err(last2, last) < 1e-5

    def loss(kw, fn=scan):
        return jnp.sum(fn(**kw) ** 2)

    g = jax.jit(jax.grad(loss))(inputs)
    g_ref = jax.grad(functools.partial(loss, fn=functools.partial(scan, backend="sequential")))(inputs)
    g_remat = jax.jit(jax.grad(jax.checkpoint(loss)))(inputs)
    for name in inputs:
        assert rel_err(g[name], g_ref[name]) < 1e-4, name
        assert rel_err(g_remat[name], g[name]) < 1e-6, name

    # vmap over an extra leading axis of the sequence inputs (parameters shared)
    seq = ("u", "delta", "B", "C", "z")
    stacked = {k: jnp.stack([v, v[::-1]]) for k, v in inputs.items() if k in seq}
    shared = {k: v for k, v in inputs.items() if k not in seq}
    ys = jax.jit(jax.vmap(lambda kw: scan(**kw, **shared)))(stacked)
    assert rel_err(ys[0], whole) < 1e-5
    expected = scan(**{k: v[1] for k, v in stacked.items()}, **shared, backend="sequential")
    assert rel_err(ys[1], expected) < 1e-5


def _lower_for_cuda(fn, *args):
    """``fn`` traced and lowered for CUDA on a machine without a GPU, or a clean skip.

    jax 0.10 lowers Triton kernels for compute capability 9.0 when no GPU is present; jax >= 0.11 asks
    the device and raises "No supported GPU devices found", so trace again under an abstract H100
    (``jax.sharding.AbstractDevice`` in ``use_abstract_mesh``, as that error message suggests)."""
    try:
        return fn.trace(*args).lower(lowering_platforms=("cuda",))
    except ImportError as error:  # pragma: no cover (a jaxlib without the Triton dialect bindings)
        pytest.skip(f"Triton lowering unavailable: {error}")
    except RuntimeError as error:
        if "No supported GPU devices found" not in str(error):
            raise
    h100 = jax.sharding.AbstractDevice(device_kind="NVIDIA H100", num_cores=132, platform="gpu")
    try:
        with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("x",), abstract_device=h100)):
            return fn.trace(*args).lower(lowering_platforms=("cuda",))
    except (RuntimeError, TypeError, ValueError) as error:  # pragma: no cover (a jax without that route)
        pytest.skip(f"jax {jax.__version__} cannot lower for a GPU without one: {error}")


@pytest.mark.parametrize(
    "shape,dtype",
    [
        ((2, 37, 20, 5), "bfloat16"),
        ((1, 1536, 20, 16), "float32"),
        ((1, 1536, 20, 16), "bfloat16"),
        ((1, 3000, 40, 16), "float32"),
        ((1, 3000, 40, 16), "bfloat16"),
    ],
    ids=["small-bf16", "1536-fp32", "1536-bf16", "3000-fp32", "3000-bf16"],
)
def test_gpu_path_lowers_to_triton(shape, dtype):
    """Without a GPU, at least check the compiled (interpret=False) kernels pass Pallas's Triton lowering
    for CUDA (block shapes, power-of-two arrays, supported primitives, the backward's barriers) under
    their names, forward and backward, float32 and bfloat16, at lengths that pad to a multiple of the chunk
    that is not a power of two (1536 stays, 3000 -> 3008); PTX compilation is not run."""
    inputs = _jnp(random_inputs(fresh_rng(), *shape, with_state=True), jnp.dtype(dtype))
    inputs["A"] = inputs["A"].astype(jnp.float32)
    names = list(NAMES)

    def loss(*args):
        y, h = ps.pallas_scan(**dict(zip(names, args)), delta_softplus=True, interpret=False)
        return jnp.sum(y.astype(jnp.float32)) + jnp.sum(h)

    grad = jax.jit(jax.grad(loss, argnums=tuple(range(len(names)))))
    args = [inputs[k] for k in names]
    text = _lower_for_cuda(grad, *args).as_text()
    assert text.count("__gpu$xla.gpu.triton") == 2  # forward and backward kernels
    assert 'name = "selective_scan_fwd"' in text and 'name = "selective_scan_bwd"' in text
    padded = -(-shape[1] // ps.GPU_CHUNK) * ps.GPU_CHUNK
    element = {"float32": "f32", "bfloat16": "bf16"}[dtype]
    assert f"x{padded}x{-(-shape[2] // ps.GPU_BLOCK) * ps.GPU_BLOCK}x{element}>" in text  # the padded u, in dtype
    # the backward kernel brackets each chunk's adjoint with two barriers; the forward needs none
    assert str(grad.trace(*args).jaxpr).count("debug_barrier") == 2
