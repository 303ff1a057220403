"""``refattn bench dense``: dense attention, measured and simulated.

Three tables:

1. **Wall time** on this machine (median of a few runs, Numba compile
   excluded by a warm-up call): the float64 reference, the standard kernel,
   the FA2 kernel (both float32, ``sram="a100"``) and, when torch imports,
   torch's CPU ``scaled_dot_product_attention``; d = 64, one head. The ratio
   FA2 / torch at N = 4096 is the speed goal (<= 1.5x).
2. **FlashAttention paper, Figure 2 (left)**: simulated HBM traffic (2 bytes
   per element) and roofline time on the "a100" preset for N = 1024, d = 64,
   16 heads, batch 64, forward + backward, standard vs FlashAttention (FA2
   forward + flash backward), beside the paper's numbers. One head is run
   with the real kernels and its counts are multiplied by batch x heads:
   exact, since heads are independent.
3. **Block-size sweep** of the FA2 forward in the same setting: counted
   traffic and simulated time per block size (Br = Bc), each with an SRAM
   just large enough for its tiles.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
from tqdm import tqdm

from refattn.bench.table import Table

D = 64
#: Largest N at which the N x N arrays of the reference (float64, ~5 alive)
#: and the standard kernel (S, P float32) are run: 4096 -> ~0.7 GB. At 16384
#: they would need ~10 GB and ~2 GB, too much for a shared machine.
MAX_N_MATERIALISED = 4096


def _median_time(repeats, fn, *args, **kwargs):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args, **kwargs)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _torch_sdpa():
    try:
        import torch
        import torch.nn.functional as F
    except Exception:  # torch is optional
        return None

    def run(q, k, v):
        tq, tk, tv = (torch.from_numpy(x)[None, None] for x in (q, k, v))
        with torch.no_grad():
            return F.scaled_dot_product_attention(tq, tk, tv)

    return run


def wall_time(quick: bool) -> Table:
    from refattn import flash_forward, standard_forward
    from refattn.reference import attention

    sizes = [256, 512] if quick else [1024, 4096, 16384]
    repeats = 2 if quick else 3
    sdpa = _torch_sdpa()
    table = Table(f"dense wall time (s), d = {D}, float32, one head, median of {repeats} runs",
                  ["N", "reference (f64)", "standard", "FA2", "torch SDPA", "FA2 / torch"])
    table.notes.append(f"reference and standard only for N <= {MAX_N_MATERIALISED} "
                       "(their N x N arrays would need ~10 GB / ~2 GB at N = 16384)")
    table.notes.append("kernels run with sram='a100' (M = 98304 elements); Numba compile excluded (warm-up call); "
                       "BLAS held to one thread inside the kernels, FA2 runs query blocks in parallel")
    if sdpa is None:
        table.notes.append("torch is not installed: the torch SDPA column is skipped ('-')")
    rng = np.random.default_rng(0)
    for n_warm in (64, 1024):  # compile both FA2 drivers (serial for small work, parallel for large)
        warm = rng.standard_normal((3, n_warm, D)).astype(np.float32)
        flash_forward(*warm, sram="a100")
        standard_forward(*warm, sram="a100")
    goal = None
    for n in tqdm(sizes, desc="dense wall time", leave=False):
        q, k, v = (rng.standard_normal((n, D)).astype(np.float32) for _ in range(3))
        small = n <= MAX_N_MATERIALISED
        reps = repeats if n <= 4096 else 1
        t_ref = _median_time(reps, attention, q, k, v) if small else "-"
        t_std = _median_time(reps, standard_forward, q, k, v, sram="a100") if small else "-"
        t_fa2 = _median_time(reps, flash_forward, q, k, v, sram="a100")
        if sdpa is not None:
            sdpa(q, k, v)
            t_torch = _median_time(reps, sdpa, q, k, v)
            ratio = t_fa2 / t_torch
            if n == 4096:
                goal = ratio
        else:
            t_torch = ratio = "-"
        table.add(n, t_ref, t_std, t_fa2, t_torch, ratio)
    if goal is not None:
        table.notes.append(f"FA2 / torch at N = 4096: {goal:.2f}x (goal <= 1.5x: "
                           f"{'met' if goal <= 1.5 else 'not met'})")
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
