"""Say so when a first run compiles: Numba builds refattn's kernels on first use, then caches them.

The kernels are ``@numba.njit(cache=True)``: the first call of a kernel with a
new signature (dtype, mask or not, ...) compiles it, which takes from a few
seconds to about a minute on 2 busy cores, and saves the machine code next to
the source (``__pycache__``) or in ``$NUMBA_CACHE_DIR``; later runs load it in
well under a second. Without a word a first run looks hung.

:func:`announce` installs a listener on Numba's own compile event
(``numba:compile``, sent only when Numba really compiles, not when it loads
from its cache). Each kernel that compiles says so on stderr,
before the wait and after it::

    refattn: compiling the FlashAttention forward kernel _fa2_serial (first run only, ~20 s)...
    refattn: ... compiled in 18.9 s, cached for the next runs

Nothing is compiled ahead of time: only what the run uses. ``refattn check``,
``refattn bench``, the lessons and the app call :func:`announce`;
``refattn warmup`` (:func:`main`) runs every kernel once on tiny float32
inputs so that later runs start warm.
"""

from __future__ import annotations

import sys
import threading
import time

from numba.core import event

#: kernel module -> (what it is, rough cold compile time of one of its kernels, seconds, on 2 busy cores)
KERNELS = {
    "refattn.kernels.flash": ("FlashAttention forward kernel", 20),
    "refattn.kernels.flash_backward": ("FlashAttention backward kernel", 20),
    "refattn.kernels.standard": ("standard three-pass kernel", 20),
    "refattn.kernels.sparse": ("sparse (MInference) kernel", 40),
    "refattn.vitcod.loop": ("ViTCoD engines kernel", 20),
    "refattn.pe_array": ("PE-array (systolic GEMM) model", 5),
}

_lock = threading.Lock()
_installed = None


class Announcer(event.Listener):
    """Numba event listener: a line when a watched kernel starts compiling, one when it is done.

    Compiles nest (a kernel compiles the functions it calls, e.g. refattn.memory's
    counters): only the outermost one, a kernel for one signature, is announced.
    """

    def __init__(self, stream=None, prefix="refattn."):
        self.stream = stream      # None: sys.stderr at the time of printing (pytest swaps it)
        self.prefix = prefix
        self.depth = 0
        self.t0 = None            # set while an announced compile runs

    def _out(self, text):
        print(f"refattn: {text}", file=self.stream or sys.stderr, flush=True)

    def on_start(self, ev):
        self.depth += 1
        if self.depth > 1:
            return
        func = ev.data["dispatcher"].py_func
        module = getattr(func, "__module__", "") or ""
        if not module.startswith(self.prefix):
            return
        what, seconds = KERNELS.get(module, ("function", None))
        rough = f", ~{seconds} s" if seconds else ""
        self._out(f"compiling the {what} {func.__name__} (first run only{rough})...")
        self.t0 = time.perf_counter()

    def on_end(self, ev):
        self.depth = max(self.depth - 1, 0)
        if self.depth == 0 and self.t0 is not None:
            self._out(f"... compiled in {time.perf_counter() - self.t0:.1f} s, cached for the next runs")
            self.t0 = None


def announce(stream=None, *, prefix="refattn.") -> Announcer:
    """Print a line to ``stream`` (default stderr) whenever Numba compiles a refattn kernel.

    Installed once per process for the default arguments (later calls return
    the same listener); ``stream`` and ``prefix`` (the modules watched) are
    for tests, which remove theirs with :func:`stop`.
    """
    global _installed
    with _lock:
        if stream is None and prefix == "refattn." and _installed is not None:
            return _installed
        owner = Announcer(stream, prefix)
        event.register("numba:compile", owner)
        if stream is None and prefix == "refattn.":
            _installed = owner
        return owner


def stop(owner: Announcer) -> None:
    """Remove a listener installed by :func:`announce`."""
    global _installed
    with _lock:
        event.unregister("numba:compile", owner)
        if owner is _installed:
            _installed = None


def main() -> int:
    """``refattn warmup``: compile (or load from the cache) every kernel once, on tiny float32 inputs."""
    import numpy as np

    import refattn

    announce()
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    q, k, v, do = (rng.standard_normal((1, 64, 16)).astype(np.float32) for _ in range(4))
    big = rng.standard_normal((3, 3, 1024, 16)).astype(np.float32)
    refattn.flash_forward(*big, sram=16384)  # enough work for FA2's parallel driver
    for causal in (False, True):
        for variant in ("fa2", "fa1"):
            refattn.flash_forward(q, k, v, sram=16384, variant=variant, causal=causal)
        f = refattn.flash_forward(q, k, v, sram=16384, causal=causal)
        refattn.flash_backward(q, k, v, f.o, f.lse, do, sram=16384, causal=causal)
        s = refattn.standard_forward(q, k, v, sram=16384, causal=causal)
        refattn.standard_backward(q, k, v, s.o, do, sram=16384, causal=causal)
        iset = refattn.IndexSet.from_lists(64, 64, [np.arange(2)] * 4, [np.arange(3)] * 4, block=16)
        refattn.sparse_forward(q, k, v, iset, sram=16384, causal=causal)
    print(f"refattn warmup: every kernel is compiled and cached ({time.perf_counter() - t0:.1f} s)")
    return 0
