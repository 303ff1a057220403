"""The ``refattn`` command: help, check, bench dense, lesson listing."""

import subprocess
import sys

import pytest

from refattn import cli


def test_help_runs_and_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "refattn.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for word in ("app", "lesson", "bench", "check"):
        assert word in out.stdout


def test_check_quick_passes(capsys):
    assert cli.main(["check", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "standard forward" in out and "flash fa2 forward" in out and "FAIL" not in out


def test_bench_dense_quick_prints_its_tables(capsys, tmp_path):
    assert cli.main(["bench", "dense", "--quick", "--csv", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "dense wall time" in out and "Figure 2" in out and "block-size sweep" in out
    assert len(list(tmp_path.glob("*.csv"))) == 3


def test_bench_unknown_section_is_refused(capsys):
    assert cli.main(["bench", "no_such_section"]) == 2
    assert "unknown bench section" in capsys.readouterr().err


def test_lesson_without_number_lists_lessons(capsys):
    assert cli.main(["lesson"]) == 0
    out = capsys.readouterr().out
    for path in cli.lesson_paths().values():
        assert path.name in out


def test_unknown_lesson_number(capsys):
    assert cli.main(["lesson", "99"]) == 2
    assert "no lesson 99" in capsys.readouterr().err


def test_missing_subcommand_is_an_error():
    with pytest.raises(SystemExit):
        cli.main([])


def test_check_reports_a_wrong_kernel(monkeypatch, capsys):
    import refattn
    from refattn.kernels import standard

    def off_by_a_bit(*args, **kwargs):
        r = standard.standard_forward(*args, **kwargs)
        r.outputs["o"] = r.outputs["o"] + 1e-2
        return r

    monkeypatch.setattr(refattn, "standard_forward", off_by_a_bit, raising=False)
    assert cli.main(["check", "--quick"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "check(s) failed" in out
