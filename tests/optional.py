"""Import an optional dependency: skip locally, fail in CI (REFATTN_REQUIRE_OPTIONAL=1)."""

import importlib
import os

import pytest


def require(module: str):
    if os.environ.get("REFATTN_REQUIRE_OPTIONAL") == "1":
        return importlib.import_module(module)
    return pytest.importorskip(module)
