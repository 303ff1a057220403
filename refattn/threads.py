"""Threads in refattn's CPU kernels: which layers run, and why nothing warns or hangs.

Two thread pools meet inside a kernel call:

* **Numba's**, for the ``prange`` loops that run independent tiles in parallel
  (query blocks of the FA2 forward, key blocks of the flash backward, query
  blocks of the sparse kernel). Numba picks its threading layer itself, in the
  order ``tbb``, ``omp``, ``workqueue`` (the first that is installed);
  ``NUMBA_THREADING_LAYER`` overrides it and refattn leaves that choice to the
  user. :func:`describe` says which one ran.
* **The BLAS library's**, for the matrix products on tiles. Numba calls SciPy's
  BLAS (``scipy.linalg.cython_blas``, an OpenBLAS built with pthreads on PyPI).

An OpenBLAS built with pthreads that is called with more than one thread of
its own from inside an OpenMP parallel region prints ``OpenBLAS Warning :
Detect OpenMP Loop and this application may hang`` on every call, and can
deadlock. OpenBLAS detects the region through the OpenMP runtime that is
loaded in the process, which is the case as soon as Numba's ``omp`` layer or
PyTorch (which ships its own libgomp) is imported.

refattn's rule, applied by every kernel call: **BLAS runs on one thread while a
kernel runs** (:func:`blas_one_thread`). The kernels parallelise over tiles
themselves, so one BLAS thread per kernel thread is also the fastest choice on
small tiles. The limit only works on libraries already loaded, so SciPy's BLAS
is loaded first (:func:`load_blas`): before that fix, the first kernel call
of a process loaded it unlimited and printed one warning per tile product.
With BLAS on one thread OpenBLAS never enters its threaded path, so the
warning cannot be printed and nothing waits on a second pool.

The limit is restored when the call returns: NumPy and torch code outside the
kernels keep their own thread counts.
"""

from __future__ import annotations

import contextlib
import functools

__all__ = ["blas_one_thread", "load_blas", "describe", "EXP_NOTE"]

#: How the kernels compute exponentials (refattn/kernels/fastexp.py, docs/speed.md).
EXP_NOTE = ("float32: refattn's branch-free polynomial exp (Cephes expf coefficients, < 1 ulp, vectorised by LLVM); "
            "float64: libm exp")


@functools.cache
def load_blas() -> bool:
    """Load SciPy's BLAS (the one Numba's ``np.dot`` calls) so that thread limits reach it. True if found."""
    try:
        import scipy.linalg.cython_blas  # noqa: F401
    except ImportError:  # pragma: no cover - scipy is a dependency
        return False
    return True


@functools.cache
def _controller():
    from threadpoolctl import ThreadpoolController

    load_blas()
    return ThreadpoolController()


@contextlib.contextmanager
def blas_one_thread():
    """Hold every loaded BLAS library to one thread for the duration (see the module docstring)."""
    with _controller().limit(limits=1, user_api="blas"):
        yield


def describe() -> dict:
    """Which threading layer, how many threads, which BLAS and which exp the kernels use (for reports)."""
    import numba

    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet in this process
        layer = f"not started yet (configured: {numba.config.THREADING_LAYER})"
    blas = []
    for lib in _controller().select(user_api="blas").lib_controllers:
        info = lib.info()
        name = f"{info['internal_api']} {info.get('version') or ''}".strip()
        extra = info.get("threading_layer")
        blas.append(f"{name} ({info['prefix']}{', ' + extra if extra else ''})")
    return {
        "numba_threading_layer": layer,
        "numba_threads": numba.get_num_threads(),
        "blas": blas,
        "blas_threads_in_kernels": 1,
        "exp": EXP_NOTE,
    }
