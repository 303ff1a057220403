"""Vertical-Slash pattern (MInference): key columns plus diagonals, estimated from the last queries.

Estimate (float32, causal bottom-right, ``off = nk - nq``; docs/algorithms.md, MInference)::

    L = min(last_q, nq) last query rows, i = nq - L .. nq - 1
    A = softmax(scale * Q[-L:] K^T)  with the causal mask (only the last L x L corner is cut)
    vertical_scores[c] = sum_i A[i, c]                           (nk,)
    slash_scores[delta] = sum over the diagonal i + off - j = delta of A   (nk,), delta = 0 .. nk-1

Choices (public MInference behaviour, each a keyword):

* sizes are clamped below: ``vertical_size >= 30``, ``slash_size >= 50``
  (and above by nk);
* the first ``force_vertical = 30`` columns are always kept (sink tokens);
* the nearest ``force_slash = 100`` diagonals (offsets 0..99, the current
  public code; older paths used 30) are always kept;
* then the top ``vertical_size`` columns and top ``slash_size`` offsets by
  score (forced ones count towards the size; ties go to the lower index).

Index building per query block ``[m0, m1)``: diagonal delta covers keys
``[m0 + off - delta, m1 - 1 + off - delta]`` (clipped to [0, nk)); the ranges
of all chosen diagonals are merged where they touch or overlap, and each
merged range is covered by the aligned key blocks it touches, so a range of
width w costs at most ``ceil(w / block) + 1`` blocks (one block wider than the
range at most). Chosen columns that are causally visible to the block
(``c <= m1 - 1 + off``) and fall outside those blocks become single columns,
gathered ``block`` at a time by the kernel. The set always covers the
element-level VS mask (columns U diagonals, causal) -- a slight superset at
block edges -- and the kernel applies the element causal mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refattn.index_set import IndexSet
from refattn.patterns.block_sparse import _check_qk
from refattn.validation import check_scale

MIN_VERTICAL, MIN_SLASH = 30, 50


@dataclass(frozen=True, eq=False)
class VerticalSlashResult:
    index_set: IndexSet
    estimate: np.ndarray  # (L, nk) float32 probabilities of the last L queries
    vertical_scores: np.ndarray  # (nk,)
    slash_scores: np.ndarray  # (nk,) by offset delta = i + off - j
    columns: np.ndarray  # chosen key columns, sorted
    offsets: np.ndarray  # chosen diagonal offsets, sorted
    vertical_size: int  # after clamping
    slash_size: int
    block: int

    def element_mask(self) -> np.ndarray:
        """Element-level VS mask: (column chosen or diagonal chosen) and causal."""
        return vs_mask(self.index_set.nq, self.index_set.nk, self.columns, self.offsets)


def vs_mask(nq, nk, columns, offsets) -> np.ndarray:
    i = np.arange(nq)[:, None] + (nk - nq)
    j = np.arange(nk)[None, :]
    col = np.zeros(nk, bool)
    col[np.asarray(columns, np.int64)] = True
    diag = np.zeros(nk, bool)
    diag[np.asarray(offsets, np.int64)] = True
    delta = i - j
    return (j <= i) & (col[None, :] | diag[np.clip(delta, 0, nk - 1)])


def _top(scores, size, forced):
    """Indices of the top ``size`` scores, with the first ``forced`` indices always in; sorted."""
    s = scores.astype(np.float64).copy()
    s[:forced] = np.inf
    return np.sort(np.argsort(-s, kind="stable")[:size])


def vs_index_set(nq, nk, columns, offsets, block=64) -> IndexSet:
    """Index set covering the chosen columns and diagonals (see the module docstring)."""
    off = nk - nq
    nqb, nkb = -(-nq // block), -(-nk // block)
    desc = np.sort(np.asarray(offsets, np.int64))[::-1]  # descending delta = ascending key ranges
    columns = np.sort(np.asarray(columns, np.int64))
    blocks, cols = [], []
    for qb in range(nqb):
        m0, m1 = qb * block, min((qb + 1) * block, nq)
        last = m1 - 1 + off
        lo = np.maximum(m0 + off - desc, 0)  # range of each diagonal, [lo, hi], both ascending
        hi = np.minimum(last - desc, nk - 1)
        keep = hi >= lo
        lo, hi = lo[keep], hi[keep]
        mark = np.zeros(nkb + 1, np.int64)
        if len(lo):
            # merge touching/overlapping ranges: a new range starts where lo > previous hi + 1
            new = np.ones(len(lo), bool)
            new[1:] = lo[1:] > hi[:-1] + 1
            starts = lo[new]
            ends = hi[np.append(np.flatnonzero(new)[1:] - 1, len(hi) - 1)]
            np.add.at(mark, starts // block, 1)  # cover [start // block, end // block]
            np.add.at(mark, ends // block + 1, -1)
        covered = np.cumsum(mark[:nkb]) > 0
        blocks.append(np.flatnonzero(covered))
        c = columns[columns <= last]
        cols.append(c[~covered[c // block]])
    return IndexSet.from_lists(nq, nk, blocks, cols, block=block)


def vertical_slash(q, k, vertical_size, slash_size, *, last_q=64, block=64, scale=None,
                   force_vertical=30, force_slash=100) -> VerticalSlashResult:
    """Vertical-slash index set of single-head ``q (nq, d)``, ``k (nk, d)``; see the module docstring."""
    q, k = _check_qk(q, k, "vertical_slash")
    nq, nk = q.shape[0], k.shape[0]
    if int(last_q) < 1 or int(block) < 1:
        raise ValueError(f"vertical_slash: need last_q >= 1 and block >= 1, got {last_q}, {block}")
    scale = check_scale(scale, q.shape[1], "vertical_slash")
    vsize = min(nk, max(int(vertical_size), MIN_VERTICAL))
    ssize = min(nk, max(int(slash_size), MIN_SLASH))
    L = min(int(last_q), nq)
    off = nk - nq
    qi = np.arange(nq - L, nq) + off  # last visible key of each estimated row
    s = np.float32(scale) * (q[-L:].astype(np.float32) @ k.astype(np.float32).T)  # (L, nk)
    j = np.arange(nk)
    s = np.where(j[None, :] <= qi[:, None], s, np.float32(-np.inf))
    mx = s.max(axis=1, keepdims=True)
    mx = np.where(np.isneginf(mx), 0, mx)
    e = np.exp(s - mx)
    tot = e.sum(axis=1, keepdims=True)
    est = np.where(tot > 0, e / np.where(tot > 0, tot, 1), 0).astype(np.float32)
    vscores = est.sum(axis=0)
    delta = qi[:, None] - j[None, :]  # (L, nk)
    ok = delta >= 0
    sscores = np.bincount(delta[ok], weights=est[ok], minlength=nk)[:nk].astype(np.float32)
    columns = _top(vscores, vsize, min(force_vertical, nk))
    offsets = _top(sscores, ssize, min(force_slash, nk))
    iset = vs_index_set(nq, nk, columns, offsets, block)
    return VerticalSlashResult(iset, est, vscores.astype(np.float32), sscores, columns, offsets, vsize, ssize, block)
