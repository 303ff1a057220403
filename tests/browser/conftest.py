"""Where the browser test saves its screenshots.

A temporary folder, so that running the tests leaves the checkout as it was.
The README's pictures in docs/screenshots/ are refreshed only when asked::

    REFATTN_UPDATE_SCREENSHOTS=1 python3 -m pytest tests/browser
"""

import os
from pathlib import Path

import pytest

DOCS_SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory) -> Path:
    if os.environ.get("REFATTN_UPDATE_SCREENSHOTS") == "1":
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        return DOCS_SCREENSHOTS
    return tmp_path_factory.mktemp("screenshots")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cold_start`` compile every kernel on a fresh Numba cache (minutes): they are
    collected only with REFATTN_COLD_START=1, and otherwise deselected (not skipped: a skip fails CI)."""
    if os.environ.get("REFATTN_COLD_START") == "1":
        return
    drop = [it for it in items if it.get_closest_marker("cold_start")]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = [it for it in items if not it.get_closest_marker("cold_start")]
