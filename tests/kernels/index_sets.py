"""Random index sets for the sparse kernel's tests (test_sparse.py, test_sparse_variants.py)."""

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
