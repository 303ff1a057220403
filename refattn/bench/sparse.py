"""``refattn bench sparse``: the dense FA2 kernel against the sparse kernel with a vertical-slash set.

One head, d = 64, float32, causal, on structured data
(:func:`refattn.data.synthetic.structured_qkv`, a ``vertical_slash`` head:
sinks, seeded retrieval columns, a narrow local band). The VS index set is
built online from the head's own last 64 queries (``vertical_size``,
``slash_size`` below); both kernels use 64 x 64 tiles on the A100-like SRAM.

Reported: density (computed / causally visible entries), recall (attention
mass kept, from the two kernels' log-sum-exps: ``mean_i exp(lse_sparse_i -
lse_dense_i)``, no N x N matrix), output error (relative Frobenius against
the dense kernel), index-building share (build / (build + sparse kernel)),
wall time of each kernel (best of ``repeats`` runs after a warm-up) and the
speedup dense / (build + sparse) and dense / sparse. Goal (issue 3): at
N = 32768 and density <= 5 %, sparse >= 10x faster than dense, recall >= 0.95.
"""

from __future__ import annotations

import time

import numpy as np

from refattn.bench.table import Table

VERTICAL_SIZE, SLASH_SIZE = 500, 150


def _best(repeats, fn, *args, **kwargs):
    best, out = np.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        best = min(best, time.perf_counter() - t0)
    return best, out


def run(quick: bool = False) -> list[Table]:
    from refattn.data.synthetic import structured_qkv
    from refattn.kernels.flash import flash_forward
    from refattn.kernels.sparse import sparse_forward
    from refattn.patterns import vertical_slash

    sizes = (2048, 8192) if quick else (8192, 32768)
    repeats = 1 if quick else 2
    sram = "a100"
    table = Table(
        f"sparse: dense FA2 vs sparse kernel, vertical-slash set (VS {VERTICAL_SIZE}/{SLASH_SIZE}), "
        "1 head, d=64, float32, causal, structured data",
        ["N", "density", "recall", "out err", "build ms", "build share", "dense s", "sparse s",
         "speedup", "speedup incl build", "traffic ratio", "flops ratio"],
    )
    # warm-up (compile) on a small input
    q, k, v, _ = structured_qkv(256, 64, 1, seed=0, kinds=("vertical_slash",))
    flash_forward(q[0], k[0], v[0], sram=sram, variant="fa2", causal=True, block=(64, 64))
    sparse_forward(q[0], k[0], v[0], vertical_slash(q[0], k[0], 30, 50).index_set, sram=sram)
    for n in sizes:
        q, k, v, _ = structured_qkv(n, 64, 1, seed=n, kinds=("vertical_slash",))
        q, k, v = q[0], k[0], v[0]
        t_build, vs = _best(repeats, vertical_slash, q, k, VERTICAL_SIZE, SLASH_SIZE)
        iset = vs.index_set
        t_sparse, sp = _best(repeats, sparse_forward, q, k, v, iset, sram=sram, causal=True)
        t_dense, de = _best(repeats, flash_forward, q, k, v, sram=sram, variant="fa2", causal=True, block=(64, 64))
        lse_s, lse_d = sp.lse.astype(np.float64), de.lse.astype(np.float64)
        rec = float(np.mean(np.exp(lse_s - lse_d)))
        err = float(np.linalg.norm(sp.o.astype(np.float64) - de.o) / np.linalg.norm(de.o.astype(np.float64)))
        table.add(n, iset.density(), rec, err, 1e3 * t_build, t_build / (t_build + t_sparse), t_dense, t_sparse,
                  t_dense / t_sparse, t_dense / (t_build + t_sparse), sp.traffic.total / de.traffic.total,
                  sp.flops / de.flops)
        print(f"  N={n}: done", flush=True)
    table.notes.append(f"wall times: best of {repeats} runs on this CPU (Numba prange over query blocks, "
                       "BLAS 1 thread)")
    table.notes.append("recall from log-sum-exps: mean_i exp(lse_sparse_i - lse_dense_i)")
    table.print()
    return [table]
