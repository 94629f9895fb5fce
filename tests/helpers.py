"""Small configs, seeded random numbers, the scan's float64 definition and subprocess helpers shared by the tests."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from hrm.config import Config, DataConfig, ModelConfig, TrainConfig, load_config_file

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs/tiny.py"  # the command's own small config, which most CLI tests run


def report_on_fake_devices(script: str, *args, devices: int = 4) -> dict:
    """Run ``python -c script args`` on ``devices`` fake CPU devices; its last stdout line, as JSON.

    XLA's in-process CPU collectives between fake devices can stall for good: in 1 of 4 suite runs (2026-12-02) the
    4-device run of tests/test_train.py waited with the machine idle, its main thread on an evaluation batch whose
    all-reduce never completed; the same script passed alone and beside two busy processes (12 of 12 runs). XLA
    ends a rendezvous that a participant has not joined after ``--xla_cpu_collective_call_terminate_timeout_seconds``
    (40 s by default, which a starved device thread on an overloaded 2-core machine can exceed; 180 s here) by
    exiting, and the script then runs once more: a script that fails for any other reason, or twice, fails the
    test. A script run twice must start afresh (write into new or emptied directories)."""
    import json

    for _ in range(2):
        result = subprocess.run(
            [sys.executable, "-c", script, *map(str, args)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            env={
                **os.environ,
                "JAX_PLATFORMS": "cpu",
                "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices} "
                "--xla_cpu_collective_call_terminate_timeout_seconds=180".strip(),
            },
        )
        if result.returncode == 0 or "Termination timeout" not in result.stderr:
            break
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def poison_gradients(monkeypatch, poisoned: set[int]) -> None:
    """Make the gradients of the train-step calls numbered in ``poisoned`` (1-based, in call order) NaN."""
    import itertools

    import jax
    import jax.numpy as jnp
    from jax.experimental import io_callback

    from hrm.training import state as state_module

    calls, real = itertools.count(1), state_module.accumulated_gradients

    def poisoned_gradients(*args):
        grads, metrics = real(*args)
        factor = io_callback(
            lambda: np.float32(np.nan if next(calls) in poisoned else 1.0), jax.ShapeDtypeStruct((), jnp.float32)
        )
        return jax.tree.map(lambda g: g * factor, grads), metrics

    monkeypatch.setattr(state_module, "accumulated_gradients", poisoned_gradients)


def small_config(**train) -> Config:
    """A model small enough that a few steps take well under a second on CPU. Its train step's compile is what a
    test pays for (the learning-rate schedule's steps, lr and warmup are constants in it, as are the shapes): runs
    that keep these settings load the session's cached executable, so change only what a test is about."""
    return Config(
        name="small",
        model=ModelConfig(d_model=32, n_layers=2, d_state=8),
        data=DataConfig(seq_len=32, num_threads=1),
        train=TrainConfig(
            **{
                "steps": 8,
                "batch_size": 4,
                "lr": 3e-3,
                "warmup_steps": 2,
                "save_every": 4,
                "log_every": 1,
                "seed": 3,
                **train,
            }
        ),
    )


# XLA flags conftest.py sets for the session and the processes it starts, unless XLA_FLAGS names them already. The
# tests' programs are small, so compiling them costs far more than running them: XLA's CPU backend compiles them
# without LLVM's optimisation passes and emits fusions with its elemental IR emitter instead of the MLIR fusion
# emitters, whose pipeline is most of what is left of a compile (scripts/bench_test_xla.py, docs/BENCHMARKS.md).
# The HLO passes still run, so the memory analyses the tests read stay within 3% of the default backend's.
FAST_COMPILE_XLA_FLAGS = {"--xla_backend_optimization_level": "0", "--xla_cpu_use_fusion_emitters": "false"}


def tiny_file_config(file: str, **model) -> Config:
    """configs/``file`` (its family, depth, layer pattern, recursion, remat) with every step made tiny: width 32,
    16 steps of 4 rows of 32 tokens, dropout 0.1 (``model``: further model changes). What the layer stack's
    structure does is kept, its width is not."""
    config = load_config_file(ROOT / "configs" / file)
    config.model = dataclasses.replace(config.model, d_model=32, d_state=8, dropout=0.1, **model)
    config.data = dataclasses.replace(config.data, seq_len=32, num_threads=1)
    config.train = TrainConfig(
        steps=16, batch_size=4, lr=5e-3, warmup_steps=2, save_every=16, log_every=1, eval_batches=1, seed=0
    )
    return config


# The session's shared trained runs of each family (tests/conftest.py): its configs/tiny_*.py file made tiny by
# ``tiny_file_config``, with these model changes. recursive_ssm keeps its file's 3 depths and hybrid_recursive has
# 2 layers of 3 depths: the monitoring tests check one record per layer and per depth (tests/test_monitor.py);
# hybrid_pattern keeps "AMAM", 2 units for the scanned stack (tests/test_scan_layers.py trains each run again
# unrolled).
FAMILY_RUNS = {
    "hybrid_recursive": ("tiny_hybrid.py", {"n_layers": 2, "n_heads": 2}),
    "recursive_ssm": ("tiny_recursive.py", {"n_layers": 2, "adapter_rank": 2}),
    "hybrid_pattern": ("tiny_pattern.py", {"n_heads": 2}),
}


def optimised_xla_flags() -> str:
    """XLA_FLAGS without ``FAST_COMPILE_XLA_FLAGS`` (XLA's default CPU backend): for a test that runs many steps,
    where the optimised code's speed pays for its slower compile."""
    flags = os.environ.get("XLA_FLAGS", "").split()
    return " ".join(f for f in flags if f.split("=")[0] not in FAST_COMPILE_XLA_FLAGS)


CLI_STEPS = 20  # long enough that a signal sent a few steps in lands mid-run, in one process or two


def small_run_args(save_every: int, steps: int = CLI_STEPS) -> list:
    """hrm.train arguments for a tiny model that runs ``steps`` quick steps, logging each one. Every run with the
    default ``steps`` (subprocess or in-process) compiles the same train step: one compile, then cache hits."""
    return [
        "--config",
        TINY,
        "--config.model.d_model=32",
        "--config.model.n_layers=2",
        "--config.data.seq_len=32",
        "--config.train.batch_size=4",
        "--config.train.log_every=1",
        f"--config.train.save_every={save_every}",
        f"--config.train.steps={steps}",
        "--config.data.num_threads=1",
    ]


def run_module(module: str, *args, check=True, timeout=600, env=None, **popen) -> subprocess.CompletedProcess:
    """``python -m module args`` from the repository root (``env``: variables to set); the completed process."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
    result = subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **popen,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{module} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


# --- random numbers: a new seed per test, printed when it fails (conftest.py) --------------------------------

_test = {"seed": 0, "made": 0}


def start_test(seed: int) -> None:
    """conftest.py calls this before each test with the test's seed."""
    _test.update(seed=seed, made=0)


def fresh_rng() -> np.random.Generator:
    """The k-th random generator of the running test, seeded by (the test's seed, k): fresh numbers every run,
    and ``HRM_TEST_SEED=N`` (printed under a failing test) gives a failing run's numbers back."""
    _test["made"] += 1
    return np.random.default_rng([_test["seed"], _test["made"]])


# --- the selective scan's definition, for kernel parity tests --------------------------------------------------


def numpy_scan(u, delta, A, B, C, D, z, delta_bias, initial_state, reset=None):
    """Float64 loop over time: the definition, written as slowly and plainly as possible."""
    reset = np.zeros(u.shape[:2], bool) if reset is None else np.asarray(reset)
    u, delta, A, B, C = (np.asarray(x, np.float64) for x in (u, delta, A, B, C))
    delta = delta + np.asarray(delta_bias, np.float64)
    delta = np.log1p(np.exp(delta))
    b, l, d = u.shape
    h = np.array(initial_state, np.float64) if initial_state is not None else np.zeros((b, d, A.shape[1]))
    y = np.zeros((b, l, d))
    for t in range(l):
        h = np.where(reset[:, t, None, None], 0.0, h)
        h = np.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * u[:, t])[..., None] * B[:, t, None, :]
        y[:, t] = np.einsum("bdn,bn->bd", h, C[:, t])
    y = y + u * np.asarray(D, np.float64)
    zz = np.asarray(z, np.float64)
    return y * zz / (1 + np.exp(-zz)), h


def random_inputs(rng, b, l, d, n, dtype=np.float32, with_state=False):
    f = lambda *s, scale=1.0: (rng.standard_normal(s) * scale).astype(dtype)
    return dict(
        u=f(b, l, d),
        delta=f(b, l, d, scale=0.5),
        A=-np.exp(f(d, n, scale=0.5)).astype(dtype),
        B=f(b, l, n),
        C=f(b, l, n),
        D=f(d),
        z=f(b, l, d),
        delta_bias=f(d, scale=0.5),
        initial_state=f(b, d, n) if with_state else None,
    )


def rel_err(out, ref):
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    assert np.all(np.isfinite(out)), "non-finite output"
    return np.linalg.norm(out - ref) / np.linalg.norm(ref)
