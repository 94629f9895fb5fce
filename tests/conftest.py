import os
import secrets
import shutil
import tempfile

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

from tests import helpers  # noqa: E402  (imports jax: after the platform and the cache are set)


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
