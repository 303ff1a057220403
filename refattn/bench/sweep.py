"""Count-only sweeps of the IO model: the library function the bench, lesson 4 and the app's IO page call.

Each point is one kernel run with ``count_only=True`` (docs/contract.md): the
kernel's own loop, loads and stores with the arithmetic skipped, so the counts
are exactly those of a full run while a 64k-token problem takes well under a
second. Inputs are zero arrays of the right shape (values do not change counts).

    >>> from refattn.bench.sweep import count_run, io_sweep
    >>> r = count_run("fa2", 65536, 128, "a100")            # KernelResult, outputs empty
    >>> rows = io_sweep(["standard", "fa2"], n=[512, 1024], d=64, sram=[4096, 98304])
"""

from __future__ import annotations

import itertools

import numpy as np
from tqdm.auto import tqdm

__all__ = ["KERNELS", "count_run", "io_sweep"]

#: kernel name -> what runs: forward kernels, or forward + backward ("*_fwd_bwd")
KERNELS = ("fa1", "fa2", "standard", "flash_backward", "standard_backward")


def count_run(kernel: str, n: int, d: int, sram, *, nk=None, dv=None, causal=False, dtype=np.float32, block=None):
    """One count-only run of ``kernel`` on Nq = ``n``, Nk = ``nk`` (default n), head dims d, dv (default d).

    ``kernel``: "fa1", "fa2", "standard" (forward), "flash_backward" or "standard_backward".
    Returns the kernel's :class:`~refattn.kernels.contract.KernelResult` (traffic, peak_sram,
    flops, exps, n_steps, plan; ``outputs`` empty).
    """
    from refattn.kernels.flash import flash_forward
    from refattn.kernels.flash_backward import flash_backward
    from refattn.kernels.standard import standard_backward, standard_forward

    nk = n if nk is None else nk
    dv = d if dv is None else dv
    q = np.zeros((n, d), dtype)
    k = np.zeros((nk, d), dtype)
    v = np.zeros((nk, dv), dtype)
    kw = dict(sram=sram, causal=causal, count_only=True)
    if kernel in ("fa1", "fa2"):
        return flash_forward(q, k, v, variant=kernel, block=block, **kw)
    if kernel == "standard":
        return standard_forward(q, k, v, **kw)
    o = np.zeros((n, dv), dtype)
    if kernel == "flash_backward":
        return flash_backward(q, k, v, o, np.zeros(n, dtype), o, block=block, **kw)
    if kernel == "standard_backward":
        return standard_backward(q, k, v, o, o, **kw)
    raise ValueError(f"count_run: kernel must be one of {KERNELS}, got {kernel!r}")


def io_sweep(kernels, *, n, d, sram, nk=None, dv=None, causal=False, chip=None, progress=True) -> list[dict]:
    """Count-only runs over every combination of ``kernels`` x ``n`` x ``d`` x ``sram`` (each a value or a list).

    Returns one dict per point: kernel, N, d, M, traffic (elements), bytes, reads, writes,
    flops, exps, n_steps, peak_sram, blocks, and with ``chip`` the roofline ``time_s``
    and ``bound`` (:func:`refattn.memory.simulated_time`). A progress bar shows for
    sweeps of more than a few points (``progress=False`` hides it).
    """
    from refattn import memory

    def listed(x):
        return list(x) if isinstance(x, (list, tuple, range, np.ndarray)) else [x]

    kernels = [kernels] if isinstance(kernels, str) else list(kernels)
    points = list(itertools.product(kernels, listed(n), listed(d), listed(sram)))
    rows = []
    for kernel, n_, d_, m_ in tqdm(points, desc="count-only sweep", disable=not progress or len(points) < 8,
                                   leave=False):
        r = count_run(kernel, int(n_), int(d_), m_, nk=nk, dv=dv, causal=causal)
        row = {"kernel": kernel, "N": int(n_), "d": int(d_), "M": r.plan.M, "traffic": r.traffic.total,
               "bytes": r.traffic.bytes, "reads": r.traffic.total_reads, "writes": r.traffic.total_writes,
               "flops": r.flops, "exps": r.exps, "n_steps": r.n_steps, "peak_sram": r.peak_sram,
               "blocks": dict(r.plan.blocks), "result": r}
        if chip is not None:
            t = memory.simulated_time(r.traffic, r.flops, chip)
            row.update(time_s=t["time_s"], bound=t["bound"])
        rows.append(row)
    return rows
