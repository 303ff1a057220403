"""Shared by the sparse kernel's tests (test_sparse.py, test_sparse_variants.py): random index sets, and the
check of an output against the float64 reference."""

import numpy as np

from refattn.index_set import IndexSet


def random_set(rng, nq, nk, block, p_empty=0.25):
    """An :class:`IndexSet` with random key blocks and single columns per query block; a query block lists
    nothing with probability ``p_empty``."""
    nqb, nkb = -(-nq // block), -(-nk // block)
    blocks, cols = [], []
    for _ in range(nqb):
        if rng.random() < p_empty:
            blocks.append([]), cols.append([])
            continue
        blocks.append(rng.choice(nkb, rng.integers(0, nkb + 1), replace=False))
        cols.append(rng.choice(nk, rng.integers(0, min(nk, 2 * block) + 1), replace=False))
    return IndexSet.from_lists(nq, nk, blocks, cols, block=block)


def assert_matches_reference(res, o, lse, dtype, tol):
    """``res.o``, ``res.lse`` in ``dtype`` equal the reference's ``o``, ``lse`` within ``tol``; rows with no
    visible key have lse -inf and output exactly 0 in both; no NaN anywhere."""
    assert res.o.dtype == dtype and res.lse.dtype == dtype
    np.testing.assert_allclose(res.o, o, rtol=tol, atol=tol)
    empty = np.isneginf(lse)
    assert np.array_equal(np.isneginf(res.lse), empty)
    assert np.all(res.o[empty] == 0) and not np.any(np.isnan(res.o))
    np.testing.assert_allclose(res.lse[~empty], lse[~empty], rtol=tol, atol=tol)
