"""MInference prefill: apply a searched :class:`~refattn.patterns.search.PatternConfig` head by head.

For each head, the chosen pattern's index set is built *online* from that
head's own q and k (the VS estimate from its last 64 queries, the BS pooled
scores; the A-shape needs no data), then one :func:`~refattn.kernels.sparse.sparse_forward`
call runs every head with its own index set. Causal (bottom-right) always,
as in prefill.
"""

from __future__ import annotations

import time

import numpy as np

from refattn.patterns import build_index


def minference_forward(q, k, v, config, *, sram="a100", scale=None, return_index_sets=False):
    """Sparse causal attention of ``(heads, N, d)`` inputs under ``config`` (one entry per head).

    Returns the sparse kernel's :class:`~refattn.kernels.contract.KernelResult`
    (``o``, ``lse``, counters), with ``plan.details["build_s"]`` (seconds spent
    building the index sets). With ``return_index_sets=True`` returns
    ``(result, [IndexSet per head])``.
    """
    from refattn.kernels.sparse import sparse_forward

    q, k, v = (np.asarray(x) for x in (q, k, v))
    if q.ndim != 3 or k.ndim != 3 or v.ndim != 3:
        raise ValueError(f"minference_forward: q, k, v must be (heads, N, d), got {q.shape}, {k.shape}, {v.shape}")
    if len(config) != q.shape[0]:
        raise ValueError(f"minference_forward: config has {len(config)} heads, q has {q.shape[0]}")
    if k.shape[0] != q.shape[0] or v.shape[0] != q.shape[0]:
        raise ValueError(f"minference_forward: q, k, v head counts differ: {q.shape}, {k.shape}, {v.shape}")
    t0 = time.perf_counter()
    sets = [build_index(config[h].pattern, q[h], k[h], config[h].params, block=config.block, scale=scale).index_set
            for h in range(q.shape[0])]
    build_s = time.perf_counter() - t0
    result = sparse_forward(q, k, v, sets, sram=sram, causal=True, scale=scale)
    result.plan.details["build_s"] = build_s
    return (result, sets) if return_index_sets else result
