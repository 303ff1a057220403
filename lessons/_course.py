"""Small helpers shared by the lessons: print prose, check claims, find the output folder.

Not a lesson itself (its name does not start with a number). A lesson run from a
checkout without ``pip install -e .`` still finds ``refattn``: the project root
is put on ``sys.path`` when the package is not importable.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("refattn") is None:  # running from a plain checkout
    sys.path.insert(0, str(ROOT))

# BLAS on one thread: the lessons are small and the kernels run their own loops.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def intro(doc: str, page: str) -> None:
    """Print the lesson's docstring (its prose) and the app page that shows the same idea."""
    print(textwrap.dedent(doc).strip())
    print(f"\n(In the app: the \"{page}\" page shows the same idea. Start it with `refattn app`.)\n")


def say(text: str) -> None:
    """Print a paragraph of explanation."""
    print()
    print(textwrap.fill(textwrap.dedent(text).strip().replace("\n", " "), width=88))


def show(label: str, value) -> None:
    """Print one computed number or array with what it is."""
    print(f"    {label}: {value}")


def claim(ok, text: str) -> None:
    """Assert a claim the lesson makes, and print it as checked."""
    if not bool(ok):
        raise AssertionError(f"lesson claim failed: {text}")
    print(f"    [checked] {text}")


def out_dir() -> Path:
    """Where a lesson may write figures: $REFATTN_LESSON_OUT, else a temp folder."""
    path = Path(os.environ.get("REFATTN_LESSON_OUT") or Path(tempfile.gettempdir()) / "refattn_lessons")
    path.mkdir(parents=True, exist_ok=True)
    return path


def skip(n: int, reason: str) -> None:
    """End the lesson early, cleanly (exit status 0), saying why it did not run."""
    print(f"\nLesson {n} done (skipped: {reason}).")
    raise SystemExit(0)


def done(n: int) -> None:
    print(f"\nLesson {n} done: every claim above was checked.")
