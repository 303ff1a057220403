"""Every lesson runs top to bottom as its own process and exits 0.

A lesson asserts each claim it prints, so a wrong library breaks it here.
Lessons are found by name (``lessons/NN_*.py``); the whole course is meant to
run in under two minutes with a warm Numba cache. A lesson that cannot run
(part of) its claims here exits 3 ("not run" / "incomplete", lessons/_course.py):
that is a skip, which fails in CI, except for the lessons that need a CUDA GPU.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted((ROOT / "lessons").glob("[0-9][0-9]_*.py"))
NEEDS_CUDA = {"12_real_gpu"}
NOT_RUN = 3  # lessons/_course.py


def test_lessons_exist():
    assert len(LESSONS) >= 2
    numbers = [int(p.name[:2]) for p in LESSONS]
    assert numbers == sorted(set(numbers)), "lesson numbers must be unique"


def _run(path, tmp_path):
    env = dict(os.environ, REFATTN_LESSON_OUT=str(tmp_path), OPENBLAS_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(path)], capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp_path)


@pytest.mark.parametrize("path", [pytest.param(p, marks=[pytest.mark.needs_cuda] if p.stem in NEEDS_CUDA else [])
                                  for p in LESSONS], ids=[p.stem for p in LESSONS])
def test_lesson_runs(path, tmp_path):
    proc = _run(path, tmp_path)
    if proc.returncode == NOT_RUN:
        pytest.skip(f"{path.name}: " + proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0, f"{path.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert f"Lesson {int(path.name[:2])} done: every claim above was checked" in proc.stdout
    assert "[checked]" in proc.stdout and "[not run]" not in proc.stdout


def _fake_lesson(tmp_path, body):
    path = tmp_path / "99_fake.py"
    path.write_text(f"import sys\nsys.path.insert(0, {str(ROOT / 'lessons')!r})\nimport _course as c\n{body}\n")
    return _run(path, tmp_path)


def test_a_lesson_that_cannot_run_says_not_run_and_does_not_pass(tmp_path):
    proc = _fake_lesson(tmp_path, 'c.claim(True, "one")\nc.skip(99, "needs a CUDA GPU")\nc.done(99)')
    assert proc.returncode == NOT_RUN
    assert "Lesson 99 NOT RUN: needs a CUDA GPU" in proc.stdout and "done" not in proc.stdout


def test_a_lesson_with_a_step_left_out_ends_incomplete(tmp_path):
    proc = _fake_lesson(tmp_path, 'c.claim(True, "one")\nc.not_run("step 4", "no [real] extra")\nc.done(99)')
    assert proc.returncode == NOT_RUN
    assert "[not run] step 4: no [real] extra" in proc.stdout
    assert "Lesson 99 incomplete" in proc.stdout and "every claim above was checked" not in proc.stdout
    assert _fake_lesson(tmp_path, 'c.claim(True, "one")\nc.done(99)').returncode == 0
