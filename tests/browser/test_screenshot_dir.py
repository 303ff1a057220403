"""Running the tests writes no file into the checkout: screenshots go to a temporary folder unless asked."""

import os

from tests.browser.conftest import DOCS_SCREENSHOTS


def test_screenshots_go_to_a_temporary_folder_unless_asked(screenshot_dir, tmp_path_factory):
    if os.environ.get("REFATTN_UPDATE_SCREENSHOTS") == "1":
        assert screenshot_dir == DOCS_SCREENSHOTS
    else:
        assert screenshot_dir.is_dir() and screenshot_dir.is_relative_to(tmp_path_factory.getbasetemp())
        assert not screenshot_dir.is_relative_to(DOCS_SCREENSHOTS.parents[1])
