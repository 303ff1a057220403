"""The CPU speed work of docs/speed.md, checked for correctness (speed itself is benchmarked, not tested).

* the vectorisable float32 exponential is accurate on the whole float32 range;
* the parallel flash backward gives the serial one's outputs bit for bit;
* kernels print no OpenBLAS "Detect OpenMP Loop" warning with torch imported beside them;
* a costly request warns before any work starts (and count-only never does).
"""

import os
import subprocess
import sys
import textwrap
import warnings

import numba
import numpy as np
import pytest

from refattn import threads
from refattn.kernels import flash_backward as fb
from refattn.kernels.common import CostWarning
from refattn.kernels.fastexp import fast_exp
from refattn.kernels.flash import flash_forward
from refattn.kernels.standard import standard_forward


@numba.njit(cache=True)
def _apply_exp(x, out):
    for i in range(x.shape[0]):
        out[i] = fast_exp(x[i])


@numba.njit(cache=True)
def _libm_exp(x, out):
    for i in range(x.shape[0]):
        out[i] = np.exp(x[i])


def test_fast_exp_float32_is_within_one_ulp_everywhere():
    edges = [-np.inf, np.inf, 0.0, -0.0, 88.72, 88.73, -87.33, -87.34, -103.97, -103.98]
    x = np.concatenate([np.linspace(-110, 95, 400_001), edges]).astype(np.float32)
    out = np.empty_like(x)
    _apply_exp(x, out)
    ref = np.exp(x.astype(np.float64))
    with np.errstate(over="ignore"):
        ref32 = ref.astype(np.float32)
    normal = np.isfinite(ref32) & (ref32 >= np.finfo(np.float32).tiny)
    ulps = np.abs(out[normal] - ref[normal]) / np.spacing(ref32[normal]).astype(np.float64)
    assert ulps.max() < 1.0
    sub = np.isfinite(ref32) & ~normal  # gradual underflow: within one subnormal step
    assert np.abs(out[sub] - ref[sub]).max() <= 2.0 ** -149
    assert np.array_equal(np.isinf(out), np.isinf(ref32))  # overflow to +inf exactly where float32 does
    assert out[x == -np.inf].tolist() == [0.0] and out[x == 0].tolist() == [1.0, 1.0]
    assert (out[x < -103.973] == 0).all()


def test_fast_exp_float64_is_libm():
    x = np.linspace(-700, 700, 10_001)
    a, b = np.empty_like(x), np.empty_like(x)
    _apply_exp(x, a)
    _libm_exp(x, b)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("causal", [False, True])
def test_parallel_backward_equals_serial_bit_for_bit(monkeypatch, causal):
    rng = np.random.default_rng(11)
    q = rng.standard_normal((3, 90, 8)).astype(np.float32)
    k = rng.standard_normal((3, 70, 8)).astype(np.float32)
    v = rng.standard_normal((3, 70, 5)).astype(np.float32)
    do = rng.standard_normal((3, 90, 5)).astype(np.float32)
    mask = rng.random((3, 90, 70)) < 0.8
    f = flash_forward(q, k, v, sram=900, causal=causal, mask=mask)
    kw = dict(sram=1500, causal=causal, mask=mask, block=(16, 12))  # Tc = 6 key blocks x 3 heads: several waves
    serial = fb.flash_backward(q, k, v, f.o, f.lse, do, **kw)
    monkeypatch.setattr(fb, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(fb, "WAVE_BYTES", 1)  # waves of 2 x threads tasks: several waves
    par = fb.flash_backward(q, k, v, f.o, f.lse, do, **kw)
    for name in ("dq", "dk", "dv"):
        assert np.array_equal(serial.outputs[name], par.outputs[name]), name
    assert serial.traffic == par.traffic and serial.peak_sram == par.peak_sram
    assert (serial.n_steps, serial.flops, serial.exps) == (par.n_steps, par.flops, par.exps)


QUIET = textwrap.dedent("""
    import numpy as np
    try:
        import torch  # noqa: F401  (loads its own OpenMP runtime, as in the bench)
    except ImportError:
        pass
    from refattn.kernels.flash import flash_forward
    from refattn.kernels.flash_backward import flash_backward
    rng = np.random.default_rng(0)
    q, k, v, do = (rng.standard_normal((1024, 32)).astype(np.float32) for _ in range(4))
    f = flash_forward(q, k, v, sram="a100")  # the parallel driver, first call of the process
    flash_backward(q, k, v, f.o, f.lse, do, sram="a100")
    print("done")
""")


def test_no_openblas_openmp_warning_with_torch_imported():
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    env["NUMBA_NUM_THREADS"] = "2"
    run = subprocess.run([sys.executable, "-c", QUIET], capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "done" in run.stdout
    assert "Detect OpenMP Loop" not in run.stderr + run.stdout


def test_threads_describe_names_the_layers():
    info = threads.describe()
    assert info["blas_threads_in_kernels"] == 1 and info["blas"] and "exp" in info["exp"]
    assert isinstance(info["numba_threading_layer"], str) and info["numba_threads"] >= 1


def test_costly_standard_run_warns_before_allocating():
    q = np.zeros((16384, 64), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CostWarning)
        with pytest.raises(CostWarning, match="GiB"):  # raised before the 2 GiB of S and P exist
            standard_forward(q, q, q, sram="a100")
        r = standard_forward(q, q, q, sram="a100", count_only=True)  # no arrays, no warning
    assert r.outputs == {} and r.traffic.total > 2 * 16384 ** 2


TORCH_FIRST = textwrap.dedent("""
    import numba.np.ufunc.parallel as pool
    from refattn.bench import dense

    seen = []
    real_torch = dense._torch

    def spy():
        seen.append(pool._is_initialized)  # has Numba started its thread pool when torch is imported?
        return real_torch()

    dense._torch = spy
    dense.wall_time(quick=True)
    print("numba pool started before torch:", seen)
""")


def test_bench_imports_torch_before_numba_starts_its_threads():
    """A torch imported after Numba's OpenMP pool started ran its CPU SDPA 4-7x slower (measured: 18 ms ->
    81-124 ms at N = 4096, d = 64), which made `refattn bench dense` report ratios in refattn's favour."""
    from tests.optional import require

    require("torch")
    env = dict(os.environ, NUMBA_NUM_THREADS="2")
    run = subprocess.run([sys.executable, "-c", TORCH_FIRST], capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "numba pool started before torch: [False]" in run.stdout, run.stdout[-2000:]
