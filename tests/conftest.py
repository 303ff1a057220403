"""Shared test configuration.

* Hypothesis: no per-example deadline (the first call of a Numba kernel
  compiles it), and fresh random examples every run (no database replay
  needed for CI; derandomize stays off).
* Optional dependencies: tests call :func:`tests.optional.require`; it skips
  locally when the package is missing, but with ``REFATTN_REQUIRE_OPTIONAL=1``
  (set by ``.ci/run``) a missing package is an error, and any skipped test
  fails, except tests marked ``needs_cuda`` (CI has no GPU).
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

REQUIRE_OPTIONAL = os.environ.get("REFATTN_REQUIRE_OPTIONAL") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_OPTIONAL and report.skipped and item.get_closest_marker("needs_cuda") is None:
        if not hasattr(report, "wasxfail"):
            report.outcome = "failed"
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
            report.longrepr = f"skipped in CI (REFATTN_REQUIRE_OPTIONAL=1), which counts as a failure: {reason}"
