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

from refattn.warmup import announce  # noqa: E402

announce()  # a first run says which kernels it compiles (once; Numba caches them)

#: exit status of a lesson that could not run all of its claims (0: every claim checked; 1: a claim failed)
NOT_RUN = 3
_not_run: list[str] = []


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
    """End the lesson here, saying why it cannot run: it is *not run*, not passed (exit status 3)."""
    print(f"\nLesson {n} NOT RUN: {reason}. None of its claims was checked.", flush=True)
    raise SystemExit(NOT_RUN)


def not_run(step: str, reason: str) -> None:
    """Leave out one step the lesson cannot run here; the lesson goes on, and ends 'incomplete' (exit status 3)."""
    _not_run.append(step)
    print(f"\n    [not run] {step}: {reason}", flush=True)


def done(n: int) -> None:
    """End the lesson: 'done' (exit 0) if every step ran, else 'incomplete', naming the steps left out (exit 3)."""
    if _not_run:
        print(f"\nLesson {n} incomplete: the claims above were checked, but {', '.join(_not_run)} did not run "
              "(see [not run] above).", flush=True)
        raise SystemExit(NOT_RUN)
    print(f"\nLesson {n} done: every claim above was checked.")
