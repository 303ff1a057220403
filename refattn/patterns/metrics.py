"""How good and how cheap an index set is, on a given input.

For single-head ``q (nq, d)``, ``k (nk, d)``, ``v (nk, dv)`` and an
:class:`~refattn.index_set.IndexSet` (causal, bottom-right, unless told):

* ``density``: computed entries / causally visible entries (IndexSet.density);
* ``recall``: attention mass kept, ``sum(P * mask) / nq`` with ``P`` the
  float64 reference probabilities of *dense* attention (rows with nothing
  visible count as fully kept);
* ``error``: relative Frobenius error of the sparse output against dense,
  ``||O_sparse - O_dense||_F / ||O_dense||_F`` (both float64 reference);
* ``flops`` / ``traffic`` of the sparse kernel against the dense FA2 kernel
  run with the same ``block x block`` tiles (counted by the kernels);
* ``build_share``: the share of wall time spent building the index, when a
  build time is given (``build_s / (build_s + sparse kernel s)``).

The reference materialises (nq, nk) float64 matrices: use it up to N of a
few thousand, or pass ``exact=False`` to skip recall/error.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from refattn import reference


@dataclass
class SparsityReport:
    density: float
    recall: float | None
    error: float | None
    n_blocks: int
    n_strips: int
    flops_sparse: int
    flops_dense: int
    traffic_sparse: int
    traffic_dense: int
    time_sparse_s: float
    time_dense_s: float
    build_s: float | None = None

    @property
    def flops_ratio(self) -> float:
        return self.flops_sparse / max(self.flops_dense, 1)

    @property
    def traffic_ratio(self) -> float:
        return self.traffic_sparse / max(self.traffic_dense, 1)

    @property
    def build_share(self) -> float | None:
        if self.build_s is None:
            return None
        return self.build_s / max(self.build_s + self.time_sparse_s, 1e-12)

    def as_dict(self) -> dict:
        out = asdict(self)
        out.update(flops_ratio=self.flops_ratio, traffic_ratio=self.traffic_ratio, build_share=self.build_share)
        return out


def recall(q, k, index_set, *, causal=True, scale=None) -> float:
    """Attention mass of dense attention that the index set keeps (float64 reference)."""
    p, _ = reference.attention_probs(q, k, scale=scale, causal=causal)
    kept = (p * index_set.to_mask(causal=causal)).sum(axis=-1)
    empty = p.sum(axis=-1) == 0
    return float(np.where(empty, 1.0, kept).mean())


def output_error(q, k, v, index_set, *, causal=True, scale=None) -> float:
    """Relative Frobenius error of masked (sparse) attention against dense, in float64."""
    dense, _ = reference.attention(q, k, v, scale=scale, causal=causal)
    sparse, _ = reference.attention(q, k, v, scale=scale, causal=causal, mask=index_set.to_mask(causal=causal))
    return float(np.linalg.norm(sparse - dense) / max(np.linalg.norm(dense), 1e-300))


def evaluate(q, k, v, index_set, *, sram="a100", causal=True, scale=None, build_s=None, exact=True) -> SparsityReport:
    """All metrics of one index set on one single-head input (see the module docstring)."""
    from refattn.kernels.flash import flash_forward
    from refattn.kernels.sparse import sparse_forward

    b = index_set.block
    t0 = time.perf_counter()
    sp = sparse_forward(q, k, v, index_set, sram=sram, causal=causal, scale=scale)
    t1 = time.perf_counter()
    de = flash_forward(q, k, v, sram=sram, variant="fa2", causal=causal, scale=scale,
                       block=(min(b, q.shape[-2]), min(b, k.shape[-2])))
    t2 = time.perf_counter()
    rec = recall(q, k, index_set, causal=causal, scale=scale) if exact else None
    err = output_error(q, k, v, index_set, causal=causal, scale=scale) if exact else None
    return SparsityReport(
        density=index_set.density(causal=causal), recall=rec, error=err,
        n_blocks=index_set.n_blocks, n_strips=index_set.n_strips,
        flops_sparse=sp.flops, flops_dense=de.flops,
        traffic_sparse=sp.traffic.total, traffic_dense=de.traffic.total,
        time_sparse_s=t1 - t0, time_dense_s=t2 - t1, build_s=build_s,
    )
