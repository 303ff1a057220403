"""Block-sparse pattern (MInference): top-k key blocks per query block from mean-pooled Q and K.

Estimate (float32, as the public code does)::

    Qp[qb] = mean of q over the rows of query block qb        (nqb, d)
    Kp[kb] = mean of k over the keys of key block kb          (nkb, d)
    B      = scale * Qp Kp^T                                  (nqb, nkb)  block_scores
    B[qb, kb] = -inf where the block is causally hidden for every row of qb
                (kb * block > r1 - 1 + nk - nq, bottom-right)

Then each query block keeps its ``top_k`` highest-scoring visible key blocks
(fewer if fewer are visible; ties go to the lower block index). Nothing is
forced: the diagonal block is kept only if its score ranks (the public code
keeps the plain top-k too). The public code uses k = 100 blocks of 64
(6,400 keys). The kernel applies the element causal mask inside the blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refattn.index_set import IndexSet
from refattn.validation import check_scale


@dataclass(frozen=True, eq=False)
class BlockSparseResult:
    index_set: IndexSet
    block_scores: np.ndarray  # (nqb, nkb) float32, -inf where hidden
    chosen: list  # per query block: the key blocks kept (sorted)
    top_k: int
    block: int


def _pool(x, block):
    n, d = x.shape
    nb = -(-n // block)
    pad = np.zeros((nb * block, d), np.float32)
    pad[:n] = x
    sums = pad.reshape(nb, block, d).sum(axis=1)
    counts = np.full(nb, block, np.float32)
    counts[-1] = n - (nb - 1) * block
    return sums / counts[:, None]


def _check_qk(q, k, where):
    q, k = np.asarray(q), np.asarray(k)
    if q.ndim != 2 or k.ndim != 2:
        raise ValueError(f"{where}: q and k must be single-head (N, d) arrays, got {q.shape} and {k.shape}")
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"{where}: q and k must share d, got {q.shape} and {k.shape}")
    if q.shape[0] < 1 or k.shape[0] < 1 or q.shape[1] < 1:
        raise ValueError(f"{where}: empty input, q {q.shape}, k {k.shape}")
    if not (np.all(np.isfinite(q)) and np.all(np.isfinite(k))):
        raise ValueError(f"{where}: q or k contains NaN or Inf")
    return q, k


def block_sparse(q, k, top_k, *, block=64, scale=None) -> BlockSparseResult:
    """Block-sparse index set of single-head ``q (nq, d)``, ``k (nk, d)``; see the module docstring."""
    q, k = _check_qk(q, k, "block_sparse")
    top_k, block = int(top_k), int(block)
    if top_k < 1 or block < 1:
        raise ValueError(f"block_sparse: need top_k >= 1 and block >= 1, got top_k={top_k}, block={block}")
    scale = check_scale(scale, q.shape[1], "block_sparse")
    nq, nk = q.shape[0], k.shape[0]
    off = nk - nq
    scores = (np.float32(scale) * (_pool(q.astype(np.float32), block) @ _pool(k.astype(np.float32), block).T))
    nqb, nkb = scores.shape
    r1 = np.minimum((np.arange(nqb) + 1) * block, nq) - 1 + off
    hidden = np.arange(nkb)[None, :] * block > r1[:, None]
    scores = np.where(hidden, np.float32(-np.inf), scores).astype(np.float32)
    chosen = []
    for qb in range(nqb):
        visible = int((~hidden[qb]).sum())
        order = np.argsort(-scores[qb], kind="stable")[:min(top_k, visible)]
        chosen.append(np.sort(order))
    return BlockSparseResult(IndexSet.from_lists(nq, nk, chosen, block=block), scores, chosen, top_k, block)
