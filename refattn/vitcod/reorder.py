"""ViTCoD split and conquer: global tokens to the front, then a dense part and a sparse part.

docs/vitcod.md. For a square keep-mask (N x N, True = kept):

1. A key column with more than ``threshold`` kept entries is a *global token*
   (50 of 197 rows in the public ViTCoD code; scaled with N here by default).
2. A *symmetric* permutation ``perm`` (global tokens first in their original
   order, then the rest in theirs) reorders rows and columns alike:
   ``mask_p = mask[perm][:, perm]``. Being a permutation, it is undone by
   ``inv = argsort(perm)``.
3. The first G columns of ``mask_p`` form the dense N x G part (the denser
   engine computes all N*G scores; entries the mask prunes there are set to
   -inf before the softmax, so the result is exact); the kept entries of the
   remaining N - G columns form the sparse part, stored as CSR index lists
   (one list of key columns per query row) for the sparser engine.

:func:`split_attention` computes attention this way (dense GEMM part + SDDMM /
SpMM over the lists, one softmax across both) and returns ``(o, lse)`` equal
to ``reference.attention(q, k, v, mask=mask)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refattn.index_set import IndexSet
from refattn.validation import check_attention_inputs, check_scale

__all__ = ["Split", "default_threshold", "global_tokens", "split_attention", "split_mask"]


def default_threshold(n: int) -> int:
    """50 kept rows of 197 as in the public code, scaled to N: ``round(50 * N / 197)``."""
    return int(round(50 * n / 197))


def _check_mask(mask, where):
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise TypeError(f"{where}: mask must be boolean (True = kept), got dtype {mask.dtype}")
    if mask.ndim != 2 or mask.shape[0] != mask.shape[1]:
        raise ValueError(f"{where}: mask must be square (N, N) for a symmetric permutation, got shape {mask.shape}")
    if mask.shape[0] < 1:
        raise ValueError(f"{where}: mask is empty")
    return mask


def global_tokens(mask, threshold: int | None = None) -> np.ndarray:
    """Indices of key columns with more than ``threshold`` kept entries (sorted)."""
    mask = _check_mask(mask, "global_tokens")
    t = default_threshold(mask.shape[0]) if threshold is None else int(threshold)
    return np.flatnonzero(mask.sum(axis=0) > t)


@dataclass(frozen=True, eq=False)
class Split:
    """A mask split into the denser part (first G columns after ``perm``) and sparse index lists."""

    n: int
    perm: np.ndarray  # (N,) new position -> old token
    inv: np.ndarray  # (N,) old token -> new position
    g: int  # number of global tokens
    dense_mask: np.ndarray  # (N, G) bool, in permuted order
    indptr: np.ndarray  # (N + 1,) CSR row pointers of the sparse part (permuted rows)
    indices: np.ndarray  # (nnz,) permuted key columns >= G

    @property
    def nnz(self) -> int:
        """Kept entries in the sparse part."""
        return int(self.indices.size)

    @property
    def dense_kept(self) -> int:
        return int(self.dense_mask.sum())

    @property
    def row_nnz(self) -> np.ndarray:
        return np.diff(self.indptr)

    def permuted_mask(self) -> np.ndarray:
        m = np.zeros((self.n, self.n), bool)
        m[:, : self.g] = self.dense_mask
        rows = np.repeat(np.arange(self.n), self.row_nnz)
        m[rows, self.indices] = True
        return m

    def mask(self) -> np.ndarray:
        """The original (unpermuted) keep-mask."""
        return self.permuted_mask()[self.inv][:, self.inv]

    def sparse_index_set(self) -> IndexSet:
        """The sparse part in refattn's one index-set format (block = 1: single key columns per row)."""
        cols = [self.indices[self.indptr[i] : self.indptr[i + 1]] for i in range(self.n)]
        return IndexSet.from_lists(self.n, self.n, [[] for _ in range(self.n)], cols, block=1)


def split_mask(mask, threshold: int | None = None) -> Split:
    """Reorder a keep-mask (global tokens first, symmetric) and split it (see module docstring)."""
    mask = _check_mask(mask, "split_mask")
    n = mask.shape[0]
    glob = global_tokens(mask, threshold)
    rest = np.setdiff1d(np.arange(n), glob)
    perm = np.concatenate([glob, rest]).astype(np.int64)
    inv = np.argsort(perm).astype(np.int64)
    mp = mask[perm][:, perm]
    g = glob.size
    sparse = mp[:, g:]
    indptr = np.zeros(n + 1, np.int64)
    indptr[1:] = np.cumsum(sparse.sum(axis=1))
    rows, cols = np.nonzero(sparse)  # row-major: sorted by row, then column
    return Split(n, perm, inv, g, mp[:, :g].copy(), indptr, (cols + g).astype(np.int64))


def split_attention(q, k, v, mask, *, scale=None, threshold: int | None = None):
    """Attention by ViTCoD's split: dense N x G part + sparse lists, one softmax over both.

    q, k, v: ``(N, d)``, ``(N, d)``, ``(N, dv)`` (self-attention, one head);
    mask: ``(N, N)`` bool keep-mask. Returns ``(o, lse)`` in float64, like
    ``reference.attention(q, k, v, mask=mask)``, which it equals.
    """
    q, k, v = check_attention_inputs(q, k, v, mask=mask, where="split_attention")
    if q.ndim != 2 or q.shape[0] != k.shape[0]:
        raise ValueError(
            f"split_attention: one head of self-attention, q and k (N, d) with equal N; got {q.shape}, {k.shape}"
        )
    mask = _check_mask(mask, "split_attention")
    if mask.shape[0] != q.shape[0]:
        raise ValueError(f"split_attention: mask is {mask.shape}, expected ({q.shape[0]}, {q.shape[0]})")
    d = q.shape[-1]
    scale = check_scale(scale, d, where="split_attention")
    sp = split_mask(mask, threshold)
    g, n = sp.g, sp.n
    qp, kp, vp = (np.asarray(x, np.float64)[sp.perm] for x in (q, k, v))  # permuted rows

    # Denser engine: S_G = scale * Q K_G^T (N x G), pruned entries of global columns excluded.
    s_dense = scale * (qp @ kp[:g].T)  # (N, G)
    s_dense = np.where(sp.dense_mask, s_dense, -np.inf)
    # Sparser engine, SDDMM: one score per listed (row, column).
    rows = np.repeat(np.arange(n), sp.row_nnz)  # (nnz,)
    s_sparse = scale * np.einsum("ed,ed->e", qp[rows], kp[sp.indices])  # (nnz,)

    # One softmax per row across both parts (row max over both; empty rows -> 0, lse -inf).
    m = np.max(s_dense, axis=1, initial=-np.inf) if g else np.full(n, -np.inf)
    m_sp = np.full(n, -np.inf)
    np.maximum.at(m_sp, rows, s_sparse)
    m = np.maximum(m, m_sp)
    shift = np.where(np.isfinite(m), m, 0.0)
    p_dense = np.exp(s_dense - shift[:, None])  # (N, G); exp(-inf) = 0
    p_sparse = np.exp(s_sparse - shift[rows])  # (nnz,)
    l = p_dense.sum(axis=1) + np.bincount(rows, weights=p_sparse, minlength=n)

    # Denser engine S_G V_G (GEMM) + sparser engine SpMM over the lists.
    o = p_dense @ vp[:g] if g else np.zeros((n, vp.shape[1]))
    np.add.at(o, rows, p_sparse[:, None] * vp[sp.indices])
    safe_l = np.where(l > 0, l, 1.0)
    o = np.where((l > 0)[:, None], o / safe_l[:, None], 0.0)
    lse = np.where(l > 0, shift + np.log(safe_l), -np.inf)
    o, lse = o[sp.inv], lse[sp.inv]  # undo the permutation
    return o, lse
