"""Sweeps of the dense kernels' counted traffic: pure functions returning numbers.

One implementation for everyone who shows these numbers: the app's IO page,
``refattn bench dense`` (Figure 2 and the block sweep) and lesson 4. Each
function is a thin loop of calls into the kernels; every count comes from the
kernels' own loads and stores (refattn.memory), never from a formula, and the
simulated time from :func:`refattn.memory.simulated_time` on a chip preset.
The kernels run with ``count_only=True`` (docs/contract.md, docs/speed.md): the
same loops, loads and stores with the arithmetic skipped, on zero inputs (values
never change counts), so even a 64k-token point answers in well under a second.

* :func:`count_run`: one count-only run of any counting kernel, its KernelResult.
* :func:`forward_point`: one forward run (standard or flash), as numbers.
* :func:`n_sweep` / :func:`m_sweep`: those points along N or along M.
* :func:`figure2`: the FlashAttention paper's Figure 2 (left) setting: one head
  of forward + backward, its counts multiplied by batch x heads (exact: heads
  are independent), beside the paper's numbers (:data:`PAPER_FIG2`).
* :func:`block_sweep`: Figure 2 (middle): FA2 forward with Br = Bc = b, each
  with the smallest SRAM its tiles fit in (the kernel's own footprint).
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

#: FlashAttention paper, Figure 2 (left): GPT-2 medium attention (N = 1024, d = 64, 16 heads, batch 64),
#: forward + backward on an A100: HBM GB, runtime ms, GFLOPs.
PAPER_FIG2 = {"standard": {"GB": 40.3, "ms": 41.7, "GFLOPs": 66.6},
              "flash": {"GB": 4.4, "ms": 7.3, "GFLOPs": 75.2}}
#: The Figure 2 setting.
FIG2 = {"n": 1024, "d": 64, "heads": 16, "batch": 64, "chip": "a100"}


#: What :func:`count_run` runs.
KERNELS = ("fa1", "fa2", "flash", "standard", "flash_backward", "standard_backward")


def count_run(kernel: str, n: int, d: int, sram, *, nk=None, dv=None, causal=False, block=None, variant="fa2",
              dtype=np.float32):
    """One count-only run of ``kernel`` on Nq = ``n``, Nk = ``nk`` (default n), head dims d, dv (default d).

    ``kernel``: "fa1", "fa2", "flash" (the FA ``variant``), "standard" (forward), "flash_backward" or
    "standard_backward". Returns the kernel's :class:`~refattn.kernels.contract.KernelResult`
    (traffic, peak_sram, flops, exps, n_steps, plan; ``outputs`` empty), exactly the counts of a full run.
    """
    from refattn.kernels.flash import flash_forward
    from refattn.kernels.flash_backward import flash_backward
    from refattn.kernels.standard import standard_backward, standard_forward

    nk = n if nk is None else nk
    dv = d if dv is None else dv
    q, k, v = np.zeros((n, d), dtype), np.zeros((nk, d), dtype), np.zeros((nk, dv), dtype)
    kw = {"sram": sram, "causal": causal, "count_only": True}
    blk = {"block": tuple(block)} if block is not None else {}
    if kernel in ("fa1", "fa2", "flash"):
        return flash_forward(q, k, v, variant=variant if kernel == "flash" else kernel, **blk, **kw)
    if kernel == "standard":
        return standard_forward(q, k, v, **kw)
    o = np.zeros((n, dv), dtype)
    if kernel == "flash_backward":
        return flash_backward(q, k, v, o, np.zeros(n, dtype), o, **blk, **kw)
    if kernel == "standard_backward":
        return standard_backward(q, k, v, o, o, **kw)
    raise ValueError(f"count_run: kernel must be one of {KERNELS}, got {kernel!r}")


def _forward(kernel: str, n, d, sram, variant="fa2", causal=False, block=None):
    if kernel not in ("flash", "standard"):
        raise ValueError(f"kernel must be 'flash' or 'standard', got {kernel!r}")
    return count_run(kernel, n, d, sram, causal=causal, block=block, variant=variant)


def _bar(points, desc, progress):
    """A progress bar over ``points`` for sweeps long enough to need one."""
    # disable=None: no bar when stderr is not a terminal (no leftovers in redirected output)
    return tqdm(points, desc=desc, leave=False, disable=None if progress and len(points) >= 8 else True)


def _scaled(traffic, factor: int):
    from refattn.memory import Traffic

    return Traffic({t: n * factor for t, n in traffic.reads.items()},
                   {t: n * factor for t, n in traffic.writes.items()}, traffic.bytes_per_element)


def forward_point(kernel: str, n: int, d: int, sram, *, variant="fa2", causal=False, block=None,
                  chip="a100", seed=0) -> dict:
    """Counted forward traffic of one count-only run on float32 (n, d) inputs (``seed`` is kept for
    compatibility: counts do not depend on the values).

    Returns {"kernel", "N", "d", "M", "reads", "writes", "total", "flops", "time_s", "bound", "plan"}
    (``plan``: the kernel's ``Plan.summary()``; time from the ``chip`` preset's roofline).
    """
    from refattn.memory import simulated_time

    res = _forward(kernel, n, d, sram, variant, causal, block)
    t = simulated_time(res.traffic, res.flops, chip)
    return {"kernel": kernel, "N": n, "d": d, "M": res.sram.capacity, "reads": res.traffic.total_reads,
            "writes": res.traffic.total_writes, "total": res.traffic.total, "flops": res.flops,
            "time_s": t["time_s"], "bound": t["bound"], "plan": res.plan.summary()}


def n_sweep(ns, d: int, sram, *, variant="fa2", chip="a100", progress=True) -> list[dict]:
    """[{"N": n, "standard": point, "flash": point}] for each n (see :func:`forward_point`)."""
    return [{"N": n, **{kern: forward_point(kern, n, d, sram, variant=variant, chip=chip)
                        for kern in ("standard", "flash")}} for n in _bar(list(ns), "N sweep", progress)]


def m_sweep(n: int, d: int, ms, *, variant="fa2", chip="a100", progress=True) -> list[dict]:
    """[{"M": m, "standard": point, "flash": point}] for each SRAM size m (elements)."""
    return [{"M": m, **{kern: forward_point(kern, n, d, m, variant=variant, chip=chip)
                        for kern in ("standard", "flash")}} for m in _bar(list(ms), "M sweep", progress)]


def figure2(n: int = FIG2["n"], d: int = FIG2["d"], heads: int = FIG2["heads"], batch: int = FIG2["batch"],
            chip: str = FIG2["chip"], seed: int = 0) -> dict:
    """Forward + backward of one head on the ``chip`` preset's SRAM, scaled by batch x heads.

    Returns {"standard": row, "flash": row, "factor": batch * heads} with each row
    {"traffic" (Traffic, all heads), "bytes", "GB", "flops", "time_s", "ms", "bound"}.
    Standard: the three-pass forward and the standard backward; flash: FA2 forward and the flash backward.
    """
    from refattn.memory import simulated_time

    factor = heads * batch
    sf, sb = count_run("standard", n, d, chip), count_run("standard_backward", n, d, chip)
    ff, fb = count_run("fa2", n, d, chip), count_run("flash_backward", n, d, chip)
    out = {"factor": factor}
    for name, fwd, bwd in (("standard", sf, sb), ("flash", ff, fb)):
        traffic = _scaled(fwd.traffic + bwd.traffic, factor)
        flops = (fwd.flops + bwd.flops) * factor
        t = simulated_time(traffic, flops, chip)
        out[name] = {"traffic": traffic, "bytes": t["bytes"], "GB": t["bytes"] / 1e9, "flops": flops,
                     "time_s": t["time_s"], "ms": t["time_s"] * 1e3, "bound": t["bound"]}
    return out


def block_sweep(n: int = FIG2["n"], d: int = FIG2["d"], blocks=(64, 128, 256, 512), *, factor: int = 16 * 64,
                chip: str = FIG2["chip"], seed: int = 0) -> list[dict]:
    """FA2 forward with Br = Bc = b for each b, each with SRAM M = the kernel's footprint for that block.

    Returns [{"block", "M", "total" (one head), "bytes", "GB", "time_s", "memory_s", "compute_s", "bound"}]
    with bytes and times for ``factor`` heads. Blocks larger than n are left out.
    """
    from refattn.kernels.flash import forward_footprint
    from refattn.memory import simulated_time

    rows = []
    for b in blocks:
        if b > n:
            continue
        m = forward_footprint(b, b, d, d, False)
        res = count_run("fa2", n, d, m, block=(b, b))
        t = simulated_time(_scaled(res.traffic, factor), res.flops * factor, chip)
        rows.append({"block": b, "M": m, "total": res.traffic.total, "bytes": t["bytes"], "GB": t["bytes"] / 1e9,
                     "time_s": t["time_s"], "memory_s": t["memory_s"], "compute_s": t["compute_s"],
                     "bound": t["bound"]})
    return rows


def loglog_slope(xs, ys) -> float:
    """Least-squares slope of log(y) against log(x) (the exponent of a power law)."""
    lx, ly = np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float))
    return float(np.polyfit(lx, ly, 1)[0])
