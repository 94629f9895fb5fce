import os
import secrets

import pytest

# Tests run on CPU; keep XLA from grabbing every core's worth of threads per process.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from tests import helpers  # noqa: E402  (after the platform is chosen)


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
