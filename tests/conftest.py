"""Shared test configuration.

* Hypothesis: no per-example deadline (the first call of a Numba kernel
  compiles it), and fresh random examples every run (no database replay
  needed for CI; derandomize stays off).
* Optional dependencies: tests call :func:`tests.optional.require` or carry
  the mark :func:`tests.optional.needs`; they skip locally when the package is
  missing, but with ``REFATTN_REQUIRE_OPTIONAL=1`` (set by ``.ci/run``) a
  missing package is an error, and any skip fails: a skipped test, and a
  skipped module or folder at collection, except tests marked ``needs_cuda``
  (CI has no GPU).
"""

import os

# The Triton interpreter must be chosen before any @triton.jit runs.
os.environ.setdefault("TRITON_INTERPRET", "1")
# Keep BLAS single-threaded under the test runner (2 cores; see docs/design.md, pitfalls).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "refattn",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "refattn"))

from tests.optional import in_ci, require  # noqa: E402

REQUIRE_OPTIONAL = in_ci()


def pytest_configure(config):
    config.addinivalue_line("markers", "needs(*modules): the test needs these optional modules (tests/optional.py)")
    config.addinivalue_line("markers", "cold_start: runs only with REFATTN_COLD_START=1 (tests/browser/conftest.py)")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """The ``needs`` mark: import each module it names before the test's fixtures run (skip or, in CI, fail)."""
    for mark in item.iter_markers("needs"):
        for module in mark.args:
            require(module)


def _skip_reason(report) -> str:
    return report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_OPTIONAL and report.skipped and item.get_closest_marker("needs_cuda") is None:
        if not hasattr(report, "wasxfail"):
            report.outcome = "failed"
            report.longrepr = ("skipped in CI (REFATTN_REQUIRE_OPTIONAL=1), which counts as a failure: "
                               f"{_skip_reason(report)}")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A module (or folder) skipped as a whole at collection, e.g. by a top-level importorskip, fails in CI too."""
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_OPTIONAL and report.skipped:
        report.outcome = "failed"
        report.longrepr = (f"{collector.nodeid} was skipped at collection in CI (REFATTN_REQUIRE_OPTIONAL=1), "
                           f"which counts as a failure: {_skip_reason(report)}")
