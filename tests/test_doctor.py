"""python -m hrm.doctor, the scan-backend banner training prints, and a tiny training run on a GPU."""

import dataclasses
import functools
import importlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hrm.kernels.chunked_scan import chunked_scan
from hrm.kernels.pallas_scan import pallas_scan

from hrm import doctor, kernels
from hrm.cli import run_main
from hrm.training.loop import train
from tests.helpers import fresh_rng, numpy_scan, random_inputs, rel_err, small_config

dispatch = importlib.import_module("hrm.kernels.selective_scan")  # the module (the package exports the function)

on_gpu = pytest.mark.skipif(
    jax.default_backend() != "gpu", reason="needs a CUDA GPU: JAX_PLATFORMS=cuda python -m pytest -m gpu"
)


@pytest.mark.slow
def test_doctor_reports_the_machine_and_passes(capsys):
    doctor.main([])
    out = capsys.readouterr().out
    assert f"jax {jax.__version__}" in out
    assert f"float32: {kernels.banner('auto', 'float32')}" in out
    assert f"selective scan backend: {kernels.resolve_backend('auto')} (auto on {jax.default_backend()})" in out
    assert out.count(" ok\n") == 5 and out.splitlines()[-1].startswith("PASS")


def test_doctor_fails_with_exit_1_naming_what_is_off(monkeypatch, capsys):
    monkeypatch.setattr(doctor.check, "parity", lambda *a, **k: [("y", 1e-7, 1e-5), ("dA", math.nan, 1e-5)])
    monkeypatch.setattr(doctor, "decode_error", lambda *a: 0.5)
    with pytest.raises(SystemExit) as exit_info:
        doctor.main([])
    out = capsys.readouterr().out
    assert exit_info.value.code == 1
    assert "FAIL: dA nan" in out and "FAIL: logits 5.0e-01" in out and out.splitlines()[-1].startswith("FAIL")


@pytest.fixture
def pallas_cannot_run(monkeypatch):
    """Pretend this machine's jax has no Pallas Triton backend, on any platform."""
    monkeypatch.setattr(dispatch, "_pallas_problem", lambda platform: "no Pallas Triton backend")
    dispatch.choose_backend.cache_clear()
    yield
    dispatch.choose_backend.cache_clear()


def test_a_named_backend_that_cannot_run_is_a_one_line_error(pallas_cannot_run, capsys):
    platform = jax.default_backend()
    with pytest.raises(kernels.BackendUnavailable, match=f"'pallas' cannot run on {platform}: no Pallas"):
        kernels.selective_scan(
            *[jax.numpy.ones(s) for s in [(1, 2, 3), (1, 2, 3), (3, 4), (1, 2, 4), (1, 2, 4)]], backend="pallas"
        )
    with pytest.raises(SystemExit) as exit_info:
        run_main(doctor.main, ["--scan_backend", "pallas"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(
        f"error: scan backend 'pallas' cannot run on {platform}: no Pallas Triton backend; "
        "use scan_backend 'auto' or 'chunked'"
    )


def test_auto_says_why_it_does_not_take_the_kernel(pallas_cannot_run):
    name, why = kernels.choose_backend("auto", "gpu")
    assert name == "chunked" and "no Pallas Triton backend" in why  # never the associative scan


@pytest.fixture
def on_a_gpu(monkeypatch):
    """Pretend this process runs on a GPU whose Pallas kernel is ``set_kernel(fn)`` (the interpreted kernel
    until then); every cache of auto's decisions starts empty."""
    monkeypatch.setattr(dispatch, "_platform", lambda: "gpu")
    monkeypatch.setattr(dispatch, "_pallas_problem", lambda platform: None)
    caches = (dispatch.choose_backend, dispatch.pallas_self_check, dispatch._compile_failure)
    for cache in caches:
        cache.cache_clear()
    dispatch._warned.clear()
    used = []
    implementation = dispatch._implementation
    monkeypatch.setattr(dispatch, "_implementation", lambda name: used.append(name) or implementation(name))

    def set_kernel(fn):
        monkeypatch.setattr(dispatch, "_pallas_kernel", lambda platform: fn)

    set_kernel(functools.partial(pallas_scan, interpret=True))
    yield set_kernel, used
    for cache in caches:
        cache.cache_clear()


def _scan_inputs(length):
    inputs = random_inputs(fresh_rng(), 2, length, 8, 4)
    return {k: jnp.asarray(v) for k, v in inputs.items() if v is not None}


@pytest.mark.slow
def test_auto_trusts_the_pallas_kernel_once_it_passed_its_self_check(on_a_gpu):
    """The real (here interpreted) kernel passes, checked on first use inside a jit trace (as in a train step);
    auto then takes it, and says it was checked."""
    _, used = on_a_gpu
    jax.jit(lambda kw: kernels.selective_scan(**kw, delta_softplus=True))(_scan_inputs(9))
    assert dispatch.pallas_self_check("gpu", "float32") is None and used == ["pallas"]
    name, why = kernels.choose_backend("auto")
    assert name == "pallas" and "self-checked against the chunked scan" in why


def test_auto_falls_back_to_chunked_when_the_kernel_is_wrong(on_a_gpu):
    """A kernel whose outputs are right but one gradient is wrong fails the self-check, which names that
    gradient in the banner; auto scans with the chunked backend, a named "pallas" still gets the kernel."""
    set_kernel, used = on_a_gpu
    set_kernel(lambda **kw: chunked_scan(**{**kw, "delta_bias": jax.lax.stop_gradient(kw["delta_bias"])}))
    line = kernels.banner("auto", "float32")
    assert (
        "selective scan backend: chunked (auto on gpu): chunked scan: the Pallas kernel failed its self-check" in line
    )
    assert "ddelta_bias 1.0e+00 > 1e-05" in line and "\n" not in line
    kernels.selective_scan(**_scan_inputs(9), delta_softplus=True)
    kernels.selective_scan(**_scan_inputs(9), delta_softplus=True, backend="pallas")
    assert used == ["chunked", "pallas"]


def test_doctor_reports_the_self_check(on_a_gpu):
    set_kernel, _ = on_a_gpu
    set_kernel(lambda **kw: chunked_scan(**{**kw, "delta_bias": jax.lax.stop_gradient(kw["delta_bias"])}))
    lines = doctor.pallas_report("auto", "gpu").splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "pallas self-check vs chunked, float32",
        "pallas self-check vs chunked, bfloat16",
    ]
    assert all("FAILED, it differs from the chunked scan (ddelta_bias" in line for line in lines)
    assert lines[0].endswith("; auto uses the chunked scan")
    assert doctor.pallas_report("auto", "cpu") == (
        "pallas self-check: not run (auto on cpu does not consider the compiled kernel)"
    )


def test_auto_falls_back_to_chunked_when_the_kernel_does_not_compile(on_a_gpu):
    set_kernel, _ = on_a_gpu

    def broken(**kw):
        raise RuntimeError("Triton: out of resources: shared memory\nmore detail")

    set_kernel(broken)
    name, why = kernels.choose_backend("auto", dtype="bfloat16")
    assert name == "chunked"
    assert why.endswith("self-check: it does not run (RuntimeError: Triton: out of resources: shared memory)")


def test_auto_falls_back_at_real_shapes_where_the_kernel_does_not_compile(on_a_gpu, capsys):
    """The self-check's small problem compiles, the model's shapes do not: one warning line per shape, and
    the chunked scan computes the right result, inside jit too."""
    set_kernel, used = on_a_gpu

    def fails_beyond_200_steps(**kw):
        if kw["u"].shape[1] > 200:
            raise RuntimeError("Triton: out of resources")
        return chunked_scan(**kw)

    set_kernel(fails_beyond_200_steps)
    inputs = _scan_inputs(300)
    run = jax.jit(lambda kw: kernels.selective_scan(**kw, delta_softplus=True))
    y = run(inputs)
    run(inputs)
    jax.jit(lambda kw: jax.grad(lambda kw: kernels.selective_scan(**kw, delta_softplus=True).sum())(kw))(inputs)
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and err.strip() == (
        "warning: selective scan backend auto: the Pallas kernel does not compile at 2x300x8 "
        "(RuntimeError: Triton: out of resources); using the chunked scan"
    )
    assert set(used) == {"chunked"}
    assert rel_err(y, numpy_scan(**{**{k: np.asarray(v) for k, v in inputs.items()}, "initial_state": None})[0]) < 1e-5
    kernels.selective_scan(**_scan_inputs(50), delta_softplus=True)  # a shape that compiles takes the kernel
    assert used[-1] == "pallas"


def test_training_prints_the_doctor_banner(tmp_path):
    lines = []
    train(small_config(), tmp_path, log=lines.append, stop_at_step=1)
    assert any(line.endswith(kernels.banner("auto", "float32")) for line in lines), lines


@pytest.mark.gpu
@on_gpu
def test_tiny_training_run_on_gpu(tmp_path):
    """The compiled kernel trains: finite, falling loss, and the same losses as lax.scan to 1e-3."""
    lines, losses = [], {}
    for backend in ("auto", "sequential"):
        config = small_config(steps=20, log_every=1)
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, scan_backend=backend))
        records = train(config, tmp_path / backend, log=lines.append)
        losses[backend] = [r["loss"] for r in records if "loss" in r]
    assert any("selective scan backend: pallas (auto on gpu)" in line for line in lines), lines
    assert all(math.isfinite(x) for x in losses["auto"]) and losses["auto"][-1] < losses["auto"][0]
    assert max(abs(a - b) / b for a, b in zip(losses["auto"], losses["sequential"])) < 1e-3, losses
