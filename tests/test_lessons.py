"""Every lesson runs top to bottom as its own process and exits 0.

A lesson asserts each claim it prints, so a wrong library breaks it here.
Lessons are found by name (``lessons/NN_*.py``); the whole course is meant to
run in under two minutes with a warm Numba cache.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

LESSONS = sorted((Path(__file__).resolve().parents[1] / "lessons").glob("[0-9][0-9]_*.py"))


def test_lessons_exist():
    assert len(LESSONS) >= 2
    numbers = [int(p.name[:2]) for p in LESSONS]
    assert numbers == sorted(set(numbers)), "lesson numbers must be unique"


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_runs(path, tmp_path):
    env = dict(os.environ, REFATTN_LESSON_OUT=str(tmp_path), OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, f"{path.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert f"Lesson {int(path.name[:2])} done" in proc.stdout
    assert "[checked]" in proc.stdout or "skipped" in proc.stdout.lower()
