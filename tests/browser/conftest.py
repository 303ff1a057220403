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
