"""A-shape pattern (MInference / StreamingLLM): sink keys plus a causal local window.

Element level, query ``i`` (bottom-right causal, ``off = nk - nq``) sees key ``j`` iff::

    j <= i + off  and  (j < n_init  or  i + off - j < n_local)

As an index set (block granularity, as MInference's kernel runs it), query
block ``qb`` with rows ``[r0, r1)`` lists the key blocks::

    sink:  kb * block < n_init                                     (blocks touching [0, n_init))
    local: kb overlaps [r0 + off - n_local + 1, r1 - 1 + off]      (the windows of all its rows)

restricted to blocks the causal mask leaves at least one entry of
(``kb * block <= r1 - 1 + off``). The set is therefore a superset of the
element-level mask by less than one block at each edge; the kernel applies
the element causal mask. The paper's setting is 1k sink + 4k local; the
public code's default is 128 + 3968 (docs/algorithms.md, MInference).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refattn.index_set import IndexSet


@dataclass(frozen=True, eq=False)
class AShapeResult:
    index_set: IndexSet
    n_init: int
    n_local: int
    block: int

    def element_mask(self) -> np.ndarray:
        """The element-level A-shape mask (causal, bottom-right)."""
        return a_shape_mask(self.index_set.nq, self.index_set.nk, self.n_init, self.n_local)


def a_shape_mask(nq, nk, n_init, n_local) -> np.ndarray:
    i = np.arange(nq)[:, None] + (nk - nq)
    j = np.arange(nk)[None, :]
    return (j <= i) & ((j < n_init) | (i - j < n_local))


def a_shape(nq, nk, n_init=128, n_local=3968, block=64) -> AShapeResult:
    """A-shape index set for an (nq, nk) causal attention; see the module docstring."""
    nq, nk, n_init, n_local, block = (int(x) for x in (nq, nk, n_init, n_local, block))
    if n_init < 0 or n_local < 1:
        raise ValueError(f"a_shape: need n_init >= 0 and n_local >= 1, got n_init={n_init}, n_local={n_local}")
    if nq < 1 or nk < 1 or block < 1:
        raise ValueError(f"a_shape: need nq, nk, block >= 1, got nq={nq}, nk={nk}, block={block}")
    off = nk - nq
    nqb, nkb = -(-nq // block), -(-nk // block)
    n_sink_blocks = min(nkb, -(-n_init // block))
    rows = []
    for qb in range(nqb):
        r0, r1 = qb * block, min((qb + 1) * block, nq)
        last = r1 - 1 + off  # last key any row of the block may see
        if last < 0:
            rows.append([])
            continue
        hi = min(nkb - 1, last // block)
        lo_key = max(0, r0 + off - n_local + 1)
        lo = min(lo_key // block, hi + 1)
        sink = np.arange(min(n_sink_blocks, hi + 1))
        rows.append(np.union1d(sink, np.arange(lo, hi + 1)))
    return AShapeResult(IndexSet.from_lists(nq, nk, rows, block=block), n_init, n_local, block)
