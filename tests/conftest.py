import dataclasses
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# Tests run on CPU; keep XLA from grabbing every core's worth of threads per process.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent XLA compilation cache for the whole session, shared by the xdist workers and every `python -m`
# subprocess the tests start (they inherit the environment): most tests train the same small models, and XLA's CPU
# compile of a train step (20-60 s) dominates them. A cache hit loads the very executable a compile would build,
# so numerics are unchanged (https://docs.jax.dev/en/latest/persistent_compilation_cache.html). Set
# JAX_COMPILATION_CACHE_DIR yourself to keep the cache between sessions; otherwise it is removed at the end.
_SESSION_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # the xdist controller, or a run with -n 0
    _SESSION_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="hrm-tests-xla-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # eager ops' compiles add up too
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

from hrm.config import Config  # noqa: E402
from tests import helpers  # noqa: E402  (imports jax: after the platform and the cache are set)

# XLA reads its flags when its backend starts (the first computation), after these imports
for _flag, _value in helpers.FAST_COMPILE_XLA_FLAGS.items():
    if _flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}={_value}".strip()


def pytest_unconfigure(config):
    if _SESSION_CACHE:
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(items):
    """Run the ``slow`` tests first (stable order otherwise): xdist then spreads them over its workers from the
    start instead of leaving a few long ones to run one after another at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def test_seed(request):
    """Each test's seed for ``helpers.fresh_rng``: new every run, or ``HRM_TEST_SEED``; a failure prints it."""
    seed = int(os.environ.get("HRM_TEST_SEED") or secrets.randbits(31))
    helpers.start_test(seed)
    request.node.hrm_test_seed = seed
    return seed


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed and hasattr(item, "hrm_test_seed"):
        report.sections.append(("random numbers", f"reproduce with HRM_TEST_SEED={item.hrm_test_seed}"))
    return report


# --- runs trained once per session and shared by the test files ------------------------------------------------
# Training a model compiles its train step (most of a small run's time), so the tests that need a trained run
# (hrm.load, sampling, evaluation, export, monitoring, the families' training) share one run per family, trained
# on first use. A session fixture runs once per xdist worker; the second worker's compiles come from the shared
# XLA cache above (the same config compiles the same program). The runs are read-only: a test that writes into
# a run copies it first (shutil.copytree).


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    path: Path  # the run directory (checkpoints, metrics.jsonl, tb/)
    config: Config  # the config it was trained with
    records: list  # the metrics records train() returned
    messages: list  # the lines train() logged


def trained_run_config(family: str, path: Path) -> Config:
    """The shared run of ``family``. mamba: helpers.small_config for 12 steps (checkpoints at 6 and 12) on
    synthetic:addition with the loss on the answers, 10% of 60 documents held out (hrm.eval's perplexity);
    the others: ``helpers.tiny_file_config`` of their configs/tiny_*.py file (``helpers.FAMILY_RUNS``)."""
    from hrm.config import SyntheticConfig

    if family == "mamba":
        config = helpers.small_config(steps=12, save_every=6, eval_batches=0)
        config.model.scan_backend = "sequential"  # compiles faster than interpreted Pallas
        config.data.dataset, config.data.completion_only, config.data.eval_fraction = "synthetic:addition", True, 0.1
        config.data.synthetic = SyntheticConfig(examples=60, length=2)
        config.data.cache_dir = str(path / "cache")
        return config
    file, model = helpers.FAMILY_RUNS[family]
    return helpers.tiny_file_config(file, **model)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """``trained_run(family)``: that family's shared ``TrainedRun`` (``trained_run_config``), trained on first use."""
    runs = {}

    def get(family: str) -> TrainedRun:
        if family not in runs:
            from hrm.training.loop import train

            path = tmp_path_factory.mktemp(f"run-{family}")
            config, messages = trained_run_config(family, path), []
            records = train(config, path, log=messages.append)
            runs[family] = TrainedRun(path, config, records, messages)
        return runs[family]

    return get


@pytest.fixture
def run_cli(capsys):
    """``run_cli(main, *args)`` → (exit code, stdout, stderr): a command-line ``main`` through hrm.cli.run_main in
    this process, as its console script runs it, without the interpreter and jax start-up of a
    ``helpers.run_module`` (seconds each). Each entry point keeps a ``run_module`` test for ``python -m`` itself."""
    from hrm.cli import run_main

    def run(main, *args):
        capsys.readouterr()
        hook = sys.unraisablehook  # hrm.train's main wraps it for the process
        try:
            run_main(main, [str(a) for a in args])
            code = 0
        except SystemExit as error:
            code = error.code
        finally:
            sys.unraisablehook = hook
        out, err = capsys.readouterr()
        return code, out, err

    return run


# --- training-side fixtures (suite-a) ---


@pytest.fixture(scope="session")
def straight_cli_run(tmp_path_factory):
    """The run of ``helpers.small_run_args`` trained straight through (in-process, the same config the command
    builds): the losses a killed, preempted, resumed or two-process run of that command must reproduce."""
    from hrm.train import parse_command_line
    from hrm.training.loop import train

    run_dir = tmp_path_factory.mktemp("straight_cli_run")
    args = list(map(str, helpers.small_run_args(save_every=helpers.CLI_STEPS)))
    train(parse_command_line(args)[0], run_dir, log=lambda *_: None)
    return run_dir
