"""Sweeps of the dense kernels' counted traffic: pure functions returning numbers.

One implementation for everyone who shows these numbers: the app's IO page,
``refattn bench dense`` (Figure 2 and the block sweep) and lesson 4. Each
function is a thin loop of calls into the kernels; every count comes from the
kernels' own loads and stores (refattn.memory), never from a formula, and the
simulated time from :func:`refattn.memory.simulated_time` on a chip preset.

* :func:`forward_point`: one forward run (standard or flash) on random inputs.
* :func:`n_sweep` / :func:`m_sweep`: those points along N or along M.
* :func:`figure2`: the FlashAttention paper's Figure 2 (left) setting: one head
  of forward + backward, its counts multiplied by batch x heads (exact: heads
  are independent), beside the paper's numbers (:data:`PAPER_FIG2`).
* :func:`block_sweep`: Figure 2 (middle): FA2 forward with Br = Bc = b, each
  with the smallest SRAM its tiles fit in (the kernel's own footprint).
"""

from __future__ import annotations

import numpy as np

#: FlashAttention paper, Figure 2 (left): GPT-2 medium attention (N = 1024, d = 64, 16 heads, batch 64),
#: forward + backward on an A100: HBM GB, runtime ms, GFLOPs.
PAPER_FIG2 = {"standard": {"GB": 40.3, "ms": 41.7, "GFLOPs": 66.6},
              "flash": {"GB": 4.4, "ms": 7.3, "GFLOPs": 75.2}}
#: The Figure 2 setting.
FIG2 = {"n": 1024, "d": 64, "heads": 16, "batch": 64, "chip": "a100"}


def _qkv(n: int, d: int, seed: int, count: int = 3):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, d)).astype(np.float32) for _ in range(count)]


def _forward(kernel: str, q, k, v, sram, variant="fa2", causal=False, block=None):
    from refattn import flash_forward, standard_forward

    if kernel == "flash":
        kw = {"variant": variant} | ({"block": tuple(block)} if block else {})
        return flash_forward(q, k, v, sram=sram, causal=causal, **kw)
    if kernel == "standard":
        return standard_forward(q, k, v, sram=sram, causal=causal)
    raise ValueError(f"kernel must be 'flash' or 'standard', got {kernel!r}")


def _scaled(traffic, factor: int):
    from refattn.memory import Traffic

    return Traffic({t: n * factor for t, n in traffic.reads.items()},
                   {t: n * factor for t, n in traffic.writes.items()}, traffic.bytes_per_element)


def forward_point(kernel: str, n: int, d: int, sram, *, variant="fa2", causal=False, block=None,
                  chip="a100", seed=0) -> dict:
    """Counted forward traffic of one run on random float32 (n, d) inputs.

    Returns {"kernel", "N", "d", "M", "reads", "writes", "total", "flops", "time_s", "bound", "plan"}
    (``plan``: the kernel's ``Plan.summary()``; time from the ``chip`` preset's roofline).
    """
    from refattn.memory import simulated_time

    res = _forward(kernel, *_qkv(n, d, seed), sram, variant, causal, block)
    t = simulated_time(res.traffic, res.flops, chip)
    return {"kernel": kernel, "N": n, "d": d, "M": res.sram.capacity, "reads": res.traffic.total_reads,
            "writes": res.traffic.total_writes, "total": res.traffic.total, "flops": res.flops,
            "time_s": t["time_s"], "bound": t["bound"], "plan": res.plan.summary()}


def n_sweep(ns, d: int, sram, *, variant="fa2", chip="a100") -> list[dict]:
    """[{"N": n, "standard": point, "flash": point}] for each n (see :func:`forward_point`)."""
    return [{"N": n, **{kern: forward_point(kern, n, d, sram, variant=variant, chip=chip)
                        for kern in ("standard", "flash")}} for n in ns]


def m_sweep(n: int, d: int, ms, *, variant="fa2", chip="a100") -> list[dict]:
    """[{"M": m, "standard": point, "flash": point}] for each SRAM size m (elements)."""
    return [{"M": m, **{kern: forward_point(kern, n, d, m, variant=variant, chip=chip)
                        for kern in ("standard", "flash")}} for m in ms]


def figure2(n: int = FIG2["n"], d: int = FIG2["d"], heads: int = FIG2["heads"], batch: int = FIG2["batch"],
            chip: str = FIG2["chip"], seed: int = 0) -> dict:
    """Forward + backward of one head on the ``chip`` preset's SRAM, scaled by batch x heads.

    Returns {"standard": row, "flash": row, "factor": batch * heads} with each row
    {"traffic" (Traffic, all heads), "bytes", "GB", "flops", "time_s", "ms", "bound"}.
    Standard: the three-pass forward and the standard backward; flash: FA2 forward and the flash backward.
    """
    from refattn import flash_backward, flash_forward, standard_backward, standard_forward
    from refattn.memory import simulated_time

    factor = heads * batch
    q, k, v, do = _qkv(n, d, seed, 4)
    sf = standard_forward(q, k, v, sram=chip)
    sb = standard_backward(q, k, v, sf.o, do, sram=chip)
    ff = flash_forward(q, k, v, sram=chip, variant="fa2")
    fb = flash_backward(q, k, v, ff.o, ff.lse, do, sram=chip)
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
    from refattn import flash_forward
    from refattn.kernels.flash import forward_footprint
    from refattn.memory import simulated_time

    q, k, v = _qkv(n, d, seed)
    rows = []
    for b in blocks:
        if b > n:
            continue
        m = forward_footprint(b, b, d, d, False)
        res = flash_forward(q, k, v, sram=m, variant="fa2", block=(b, b))
        t = simulated_time(_scaled(res.traffic, factor), res.flops * factor, chip)
        rows.append({"block": b, "M": m, "total": res.traffic.total, "bytes": t["bytes"], "GB": t["bytes"] / 1e9,
                     "time_s": t["time_s"], "memory_s": t["memory_s"], "compute_s": t["compute_s"],
                     "bound": t["bound"]})
    return rows


def loglog_slope(xs, ys) -> float:
    """Least-squares slope of log(y) against log(x) (the exponent of a power law)."""
    lx, ly = np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float))
    return float(np.polyfit(lx, ly, 1)[0])
