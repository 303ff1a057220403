"""No silent skips: a missing optional package skips a test locally, one by one, and fails it in CI.

Runs pytest on a small throw-away test folder that uses this project's hooks
(tests/conftest.py), once as a developer (REFATTN_REQUIRE_OPTIONAL unset) and once as CI.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FILES = {
    "conftest.py": "from tests.conftest import *  # noqa: F401,F403  (the project's hooks)\n",
    "test_marked.py": (
        "from tests.optional import needs\n"
        "pytestmark = needs('refattn_no_such_module')\n"
        "def test_one():\n    raise AssertionError('must not run')\n"
        "def test_two():\n    raise AssertionError('must not run')\n"
    ),
    "test_required_inside.py": (
        "from tests.optional import require\n"
        "def test_three():\n    require('refattn_no_such_module')\n"
    ),
    "test_module_level.py": (  # the old way: a module-level skip, which CI must not let through either
        "import pytest\n"
        "pytest.importorskip('refattn_no_such_module')\n"
        "def test_four():\n    pass\n"
    ),
    "test_plain.py": "def test_five():\n    pass\n",
}


def _pytest(folder, ci):
    env = {k: v for k, v in os.environ.items() if k != "REFATTN_REQUIRE_OPTIONAL"}
    env["PYTHONPATH"] = str(ROOT)
    if ci:
        env["REFATTN_REQUIRE_OPTIONAL"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(folder)],
                          capture_output=True, text=True, env=env, cwd=folder, timeout=300)


def test_skips_are_per_test_with_a_reason_locally_and_failures_in_ci(tmp_path):
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    local = _pytest(tmp_path, ci=False)
    assert local.returncode == 0, local.stdout
    last = local.stdout.strip().splitlines()[-1]
    assert "1 passed" in last and "4 skipped" in last, local.stdout  # 3 tests + 1 module
    assert "SKIPPED [3]" in local.stdout and "refattn_no_such_module is not installed" in local.stdout
    assert "warning" not in last  # the mark is registered

    ci = _pytest(tmp_path, ci=True)  # a module skipped whole stops CI at collection
    assert ci.returncode != 0 and "test_module_level.py was skipped at collection in CI" in ci.stdout, ci.stdout
    (tmp_path / "test_module_level.py").unlink()
    ci = _pytest(tmp_path, ci=True)
    last = ci.stdout.strip().splitlines()[-1]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (failed|passed|errors?|skipped)", last)}
    assert ci.returncode == 1 and "skipped" not in counts and counts["passed"] == 1, ci.stdout
    assert counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0) == 3, ci.stdout
    assert "No module named 'refattn_no_such_module'" in ci.stdout
