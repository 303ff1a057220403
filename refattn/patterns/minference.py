"""MInference prefill: apply a searched :class:`~refattn.patterns.search.PatternConfig` head by head.

For each head, the chosen pattern's index set is built *online* from that
head's own q and k (the VS estimate from its last 64 queries, the BS pooled
scores; the A-shape needs no data), then one :func:`~refattn.kernels.sparse.sparse_forward`
call runs every head with its own index set. Causal (bottom-right) always,
as in prefill; GQA, a sliding window, softcap and ALiBi pass through to the
kernel (see :func:`minference_forward`).
"""

from __future__ import annotations

import time

import numpy as np

from refattn.patterns import build_index
from refattn.variants import check_variants


def minference_forward(q, k, v, config, *, sram="a100", scale=None, return_index_sets=False, num_kv_heads=None,
                       window=None, softcap=None, alibi_slopes=None):
    """Sparse causal attention of ``(heads, N, d)`` inputs under ``config`` (one entry per query head).

    Returns the sparse kernel's :class:`~refattn.kernels.contract.KernelResult`
    (``o``, ``lse``, counters), with ``plan.details["build_s"]`` (seconds spent
    building the index sets). With ``return_index_sets=True`` returns
    ``(result, [IndexSet per query head])``.

    Variants (docs/variants.md), passed through to :func:`~refattn.kernels.sparse.sparse_forward`:

    * ``num_kv_heads``: k, v are ``(Hkv, N, d)``; query head h's index set is
      built from its own q and the k of its KV head ``h // (Hq / Hkv)`` (one set
      per query head, as without GQA);
    * ``window``, ``softcap``, ``alibi_slopes``: the index builders do not see
      them (each pattern estimates from the plain causal scores ``scale * q k^T``);
      the kernel applies them to what the set keeps: the window is and-ed with the
      set (listed blocks and columns outside it are skipped, not loaded), the cap
      and the bias change the kept scores.
    """
    from refattn.kernels.sparse import sparse_forward

    q, k, v = (np.asarray(x) for x in (q, k, v))
    if q.ndim != 3 or k.ndim != 3 or v.ndim != 3:
        raise ValueError(f"minference_forward: q, k, v must be (heads, N, d), got {q.shape}, {k.shape}, {v.shape}")
    if len(config) != q.shape[0]:
        raise ValueError(f"minference_forward: config has {len(config)} heads, q has {q.shape[0]}")
    if num_kv_heads is None and (k.shape[0] != q.shape[0] or v.shape[0] != q.shape[0]):
        raise ValueError(f"minference_forward: q, k, v head counts differ: {q.shape}, {k.shape}, {v.shape} "
                         "(give num_kv_heads for GQA/MQA)")
    check_variants(q, k, v, num_kv_heads=num_kv_heads, where="minference_forward")  # the GQA head counts
    hkv = q.shape[0] if num_kv_heads is None else num_kv_heads
    group = q.shape[0] // hkv
    t0 = time.perf_counter()
    sets = [build_index(config[h].pattern, q[h], k[h // group], config[h].params, block=config.block,
                        scale=scale).index_set for h in range(q.shape[0])]
    build_s = time.perf_counter() - t0
    result = sparse_forward(q, k, v, sets, sram=sram, causal=True, scale=scale, num_kv_heads=num_kv_heads,
                            window=window, softcap=softcap, alibi_slopes=alibi_slopes)
    result.plan.details["build_s"] = build_s
    return (result, sets) if return_index_sets else result
