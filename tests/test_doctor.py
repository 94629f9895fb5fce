"""python -m hrm.doctor, the scan-backend banner training prints, and a tiny training run on a GPU."""

import dataclasses
import importlib
import math

import jax
import pytest

import kernels
from hrm import doctor
from hrm.cli import run_main
from hrm.training.loop import train
from tests.helpers import small_config

dispatch = importlib.import_module("kernels.selective_scan")  # the module (the package exports the function)

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
        "use scan_backend 'auto' or 'reference'"
    )


def test_auto_says_why_it_does_not_take_the_kernel(pallas_cannot_run):
    name, why = kernels.choose_backend("auto", "gpu")
    assert name == "reference" and "no Pallas Triton backend" in why


def test_training_prints_the_doctor_banner(tmp_path):
    lines = []
    train(small_config(steps=1, save_every=1), tmp_path, log=lines.append)
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
