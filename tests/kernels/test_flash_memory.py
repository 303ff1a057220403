"""The flash kernels never allocate an (N, N) array: memory is O(N*d).

At N = 8192, d = 64, float32 an (N, N) float32 array is 256 MiB, while q, k,
v, o are 2 MiB each. A fresh Python process (so earlier tests do not hide the
peak) warms the kernels up on a small input (compilation excluded), then for
the forward and the backward measures

* the peak Python/NumPy allocation during the call (tracemalloc), and
* the growth of the process's peak resident memory (ru_maxrss), which also
  sees the jitted code's own allocations that tracemalloc cannot.
"""

import json
import subprocess
import sys
import textwrap

N, D = 8192, 64

SCRIPT = textwrap.dedent(f"""
    import json, resource, tracemalloc
    import numpy as np
    from refattn.kernels.flash import flash_forward
    from refattn.kernels.flash_backward import flash_backward

    def maxrss():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB

    rng = np.random.default_rng(0)
    q, k, v, do = (rng.standard_normal(({N}, {D})).astype(np.float32) for _ in range(4))
    small = flash_forward(q[:300], k[:300], v[:300], sram="a100")  # warm-up (compile/cache load)
    flash_backward(q[:300], k[:300], v[:300], small.o, small.lse, do[:300], sram="a100")
    flash_forward(q[:4096], k[:4096], v[:4096], sram="a100")  # warm the parallel runtime too
    out = {{}}
    for name in ("forward", "backward"):
        rss0 = maxrss()
        tracemalloc.start()
        if name == "forward":
            res = flash_forward(q, k, v, sram="a100")
            o, lse = res.o, res.lse
        else:
            res = flash_backward(q, k, v, o, lse, do, sram="a100")
        out[name] = {{"traced_peak": tracemalloc.get_traced_memory()[1], "rss_growth": maxrss() - rss0}}
        tracemalloc.stop()
    print(json.dumps(out))
""")


def test_flash_memory_is_linear_in_n():
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600,
                         env=None)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    linear = 20 * N * D * 8  # 80 MiB: O(N*d) with a generous constant
    square = N * N * 4  # 256 MiB: one (N, N) float32 array
    for name, m in out.items():
        assert m["traced_peak"] < linear, (name, m)
        assert m["rss_growth"] < square / 4, (name, m)
    # the Python-side peak is a few (N, d) arrays, nowhere near N^2
    assert out["forward"]["traced_peak"] < 8 * N * D * 4
