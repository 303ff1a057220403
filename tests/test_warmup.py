"""A first run says what it is compiling: refattn.warmup listens to Numba's own compile event."""

import io

import numba

from refattn import cli, warmup


def test_a_kernel_compile_is_announced_before_and_after_and_only_once():
    buf = io.StringIO()
    owner = warmup.announce(buf, prefix=__name__)  # watch this module's functions, as refattn's kernels are watched
    try:
        @numba.njit
        def helper(x):
            return x + 1

        @numba.njit
        def kernel(x):
            return helper(x) * 2

        assert kernel(1) == 4   # compiles kernel, and helper inside it: one announcement
        assert kernel(2) == 6   # compiled: silent
        assert kernel(1.5) == 5.0  # a new signature compiles again: announced again
    finally:
        warmup.stop(owner)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 4, lines
    assert lines[0] == "refattn: compiling the function kernel (first run only)..."
    assert lines[1].startswith("refattn: ... compiled in ") and lines[1].endswith("cached for the next runs")
    assert lines[2] == lines[0]


def test_announce_is_installed_once():
    assert warmup.announce() is warmup.announce()


def test_warmup_command(capsys):
    assert cli.main(["warmup"]) == 0
    assert "every kernel is compiled and cached" in capsys.readouterr().out
