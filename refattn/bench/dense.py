"""``refattn bench dense``: dense attention, measured and simulated.

Three tables:

1. **Wall time, refattn vs torch**, side by side in one run: the FA2 forward
   and the forward + flash backward (``sram="a100"``, float32, one head), and
   torch's CPU ``scaled_dot_product_attention`` (forward; forward + backward
   through autograd), causal and not, N = 1024 / 4096 / 16384, d = 64 and 128,
   with the ratio refattn / torch. Torch gets as many threads as Numba
   (pin the process with ``taskset`` to compare on a fixed number of cores).
   Without torch the refattn column is printed alone, with one line saying so.
   The notes say which exponential, which BLAS and which threading layer ran.
   The goal (issue 14): the ratio at N = 4096, d = 64 within 1.5x.
2. **FlashAttention paper, Figure 2 (left)**: simulated HBM traffic (2 bytes
   per element) and roofline time on the "a100" preset for N = 1024, d = 64,
   16 heads, batch 64, forward + backward, standard vs FlashAttention (FA2
   forward + flash backward), beside the paper's numbers. One head is counted
   with the real kernels (count-only runs: docs/contract.md) and its counts are
   multiplied by batch x heads: exact, since heads are independent.
3. **Block-size sweep** of the FA2 forward in the same setting: counted
   traffic and simulated time per block size (Br = Bc), each with an SRAM
   just large enough for its tiles (count-only runs).

Measured ratios refattn / torch at N = 4096, d = 64 (2 cores, ``taskset -c 0,1``):
see :data:`MEASURED` (printed as the table's closing note).
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import numpy as np
from tqdm import tqdm  # bars use disable=None: none when stderr is not a terminal (no leftovers in logs)

from refattn.bench.table import Table

D = 64

#: refattn / torch at N = 4096, d = 64, float32, 2 cores (``taskset -c 0,1``), measured by this table
#: (issue 14; docs/speed.md). Printed as the closing note of the wall-time table.
MEASURED = {
    "the developers' machine (Xeon Sapphire Rapids, torch 2.13.0+cpu, idle, load 1.2; torch imported before "
    "Numba's pool)": "N = 4096, d = 64: forward 1.86x (34.9 vs 18.8 ms), causal 1.30x; forward + backward 1.49x, "
    "causal 1.36x. Earlier runs that imported torch after Numba's pool had started slowed torch 4-7x and "
    "reported ratios near 0.3x: discard them",
}


def _median_time(repeats, fn, *args):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _refattn_pass(q, k, v, do, causal, backward):
    from refattn.kernels.flash import flash_forward
    from refattn.kernels.flash_backward import flash_backward

    f = flash_forward(q, k, v, sram="a100", causal=causal)
    if backward:
        flash_backward(q, k, v, f.o, f.lse, do, sram="a100", causal=causal)


def _torch_pass(tt, q, k, v, do, causal, backward):
    torch, F = tt
    if not backward:
        with torch.no_grad():
            F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return
    a, b, c = (x.clone().requires_grad_() for x in (q, k, v))
    F.scaled_dot_product_attention(a, b, c, is_causal=causal).backward(do)


def _torch():
    try:
        import torch
        import torch.nn.functional as F
    except Exception:  # torch is optional
        return None
    return torch, F


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def wall_time(quick: bool) -> Table:
    """Table 1 (module docstring): refattn's FA2 forward and flash backward beside torch's CPU SDPA."""
    import numba

    from refattn import threads
    from refattn.kernels.flash import flash_forward
    from refattn.kernels.flash_backward import flash_backward

    sizes = [256, 512] if quick else [1024, 4096, 16384]
    dims = [32] if quick else [64, 128]
    # torch first: once Numba has started its OpenMP pool (numba.get_num_threads() or a parallel kernel
    # starts it), a torch imported afterwards ran its CPU SDPA 4-7x slower here (18 ms -> 81-124 ms at
    # N = 4096, d = 64), which would flatter refattn's ratios. docs/speed.md, "torch beside Numba".
    tt = _torch()
    if tt is not None:
        tt[0].set_num_threads(numba.config.NUMBA_NUM_THREADS)
    nthreads = numba.get_num_threads()
    table = Table(f"dense wall time (ms), refattn vs torch CPU SDPA, float32, one head, {nthreads} threads",
                  ["pass", "causal", "N", "d", "refattn ms", "torch ms", "refattn / torch"])
    rng = np.random.default_rng(0)
    # compile / load both drivers of both kernels (serial for small work, parallel for large)
    for n_warm in (64, 1024):
        w = rng.standard_normal((4, n_warm, dims[0])).astype(np.float32)
        for causal in (False, True):
            f = flash_forward(w[0], w[1], w[2], sram="a100", causal=causal)
            flash_backward(w[0], w[1], w[2], f.o, f.lse, w[3], sram="a100", causal=causal)
    if tt is not None:
        torch, F = tt
    cases = [(d, n, causal, pas) for n in sizes for d in dims for causal in (False, True)
             for pas in ("forward", "forward + backward")]
    goal = {}
    bar = tqdm(cases, desc="dense wall time", leave=False, disable=None)
    for d, n, causal, pas in bar:
        reps = 5 if n <= 1024 else (3 if n <= 4096 else 1)
        q, k, v, do = (rng.standard_normal((n, d)).astype(np.float32) for _ in range(4))

        backward = pas != "forward"
        _refattn_pass(q, k, v, do, causal, backward)  # first call of this size: warms caches
        t_ours = _median_time(reps, _refattn_pass, q, k, v, do, causal, backward)
        t_torch = ratio = "-"
        if tt is not None:
            tq, tk, tv, tdo = (torch.from_numpy(x)[None, None] for x in (q, k, v, do))
            _torch_pass(tt, tq, tk, tv, tdo, causal, backward)
            t_torch = _median_time(reps, _torch_pass, tt, tq, tk, tv, tdo, causal, backward)
            ratio = t_ours / t_torch
            if n == 4096 and d == 64:
                goal[(pas, causal)] = ratio
            t_torch *= 1e3
        table.add(pas, "yes" if causal else "no", n, d, t_ours * 1e3, t_torch, ratio)
        bar.write(f"  measured: {pas}, causal {causal}, N = {n}, d = {d}: refattn {t_ours * 1e3:.1f} ms, "
                  f"torch {t_torch if isinstance(t_torch, str) else f'{t_torch:.1f}'} ms")

    info = threads.describe()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    table.notes.append(f"CPU: {_cpu_name()}; Numba threads {nthreads} ({info['numba_threading_layer']} layer); "
                       f"load average at the end {load:.1f} (a busy machine inflates both columns)")
    table.notes.append(f"BLAS: {'; '.join(info['blas'])}, held to 1 thread inside the kernels (refattn.threads)")
    table.notes.append(f"exp: {info['exp']}")
    table.notes.append("refattn: FA2 forward, and forward + flash backward, sram='a100' (the A100 plan's blocks), "
                       "median of 5 / 3 / 1 runs at N = 1024 / 4096 / 16384, compile excluded")
    if tt is None:
        table.notes.append("torch is not installed: the torch column is skipped ('-')")
    else:
        table.notes.append(f"torch {tt[0].__version__} with {tt[0].get_num_threads()} threads: "
                           "F.scaled_dot_product_attention (no_grad forward; autograd forward + backward)")
    if goal:
        parts = ", ".join(f"{p}{' causal' if c else ''} {r:.2f}x" for (p, c), r in goal.items())
        worst = max(goal.values())
        table.notes.append(f"refattn / torch at N = 4096, d = 64: {parts} (goal <= 1.5x: "
                           f"{'met' if worst <= 1.5 else 'not met'})")
    for machine, ratios in MEASURED.items():
        table.notes.append(f"measured before on {machine}: {ratios}")
    table.print()
    return table


def figure2(quick: bool) -> Table:
    from refattn.bench import sweeps

    n, heads, batch = (256 if quick else 1024), 16, 64
    factor = heads * batch
    table = Table(f"FlashAttention paper Figure 2: N = {n}, d = {D}, {heads} heads x batch {batch}, "
                  "forward + backward, a100 preset",
                  ["kernel", "HBM GB", "paper GB", "sim time ms", "paper ms", "GFLOPs", "paper GFLOPs", "bound"])
    table.notes.append(f"one head run with the real kernels; its counted traffic and FLOPs are multiplied by "
                       f"batch x heads = {factor} (exact: heads are independent); 2 bytes per element")
    table.notes.append("sim time = max(bytes / 1.555 TB/s, FLOPs / 312 TFLOP/s), a roofline (refattn.memory)")
    table.notes.append("our FLOPs count 2 per multiply-add of the matrix products only; the paper does not state "
                       "its convention, so compare the ratio (paper 75.2 / 66.6 = 1.13)")
    table.notes.append("the paper's standard baseline also runs mask/dropout kernels, so its GB exceed a three-pass "
                       "count; the robust target is the ratio (paper 40.3 / 4.4 = 9.2x)")
    if quick:
        table.notes.append("--quick: N = 256, so the paper columns are for reference only")
    fig = sweeps.figure2(n=n, d=D, heads=heads, batch=batch)  # refattn.bench.sweeps: shared with the app
    for name in ("standard", "flash"):
        row, paper = fig[name], sweeps.PAPER_FIG2[name]
        table.add(f"{name} ({'3-pass' if name == 'standard' else 'FA2 fwd + bwd'})", row["GB"], paper["GB"],
                  row["ms"], paper["ms"], row["flops"] / 1e9, paper["GFLOPs"], row["bound"])
    table.notes.append(f"ratio standard / flash: {fig['standard']['bytes'] / fig['flash']['bytes']:.1f}x fewer bytes, "
                       f"{fig['standard']['time_s'] / fig['flash']['time_s']:.1f}x less time "
                       "(paper: 9.2x bytes, 5.7x time)")
    table.print()
    return table


def block_sweep(quick: bool) -> Table:
    from refattn.bench import sweeps

    n, factor = (256 if quick else 1024), 16 * 64
    blocks = [32, 64, 128] if quick else [64, 128, 256, 512]
    table = Table(f"FA2 forward block-size sweep: N = {n}, d = {D}, x {factor} heads, a100 preset",
                  ["block (Br=Bc)", "M used", "HBM GB", "sim time ms", "memory ms", "compute ms", "bound"])
    table.notes.append("paper (Fig. 2 middle): HBM accesses and runtime fall as the block grows from 64 to 256; "
                       "past 256 runtime stops improving (compute becomes the limit)")
    table.notes.append("M used: the kernel's own on-chip footprint for that block (refattn.kernels.flash."
                       "forward_footprint); bandwidth and peak from the a100 preset")
    for r in sweeps.block_sweep(n, D, blocks, factor=factor):
        table.add(r["block"], r["M"], r["GB"], r["time_s"] * 1e3, r["memory_s"] * 1e3, r["compute_s"] * 1e3,
                  r["bound"])
    table.print()
    return table


def run(quick: bool = False) -> list[Table]:
    """Print and return the three tables (see the module docstring)."""
    return [wall_time(quick), figure2(quick), block_sweep(quick)]
