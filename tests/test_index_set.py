"""The one sparse index-set format: building, validation, the mask it stands for, and its costs."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refattn.index_set import IndexSet
from refattn.reference import causal_mask


def test_from_lists_sorts_dedupes_and_drops_covered_columns():
    s = IndexSet.from_lists(10, 12, [[2, 0, 0], [1]], [[9, 1, 9, 5], [3]], block=5)
    assert s.n_query_blocks == 2
    assert s.blocks_of(0).tolist() == [0, 2] and s.blocks_of(1).tolist() == [1]
    assert s.columns_of(0).tolist() == [5, 9]  # column 1 lies in key block 0, listed already
    assert s.columns_of(1).tolist() == [3]
    assert s.n_blocks == 3 and s.n_strips == 3
    assert s.block_offsets.tolist() == [0, 2, 3] and s.column_offsets.tolist() == [0, 2, 3]
    assert "blocks=3" in repr(s) and "strips=3" in repr(s)


def test_to_mask_by_hand():
    s = IndexSet.from_lists(4, 6, [[1], []], [[0], [5]], block=2)
    want = np.zeros((4, 6), bool)
    want[0:2, 2:4] = True  # key block 1 for query block 0
    want[0:2, 0] = True  # single column 0
    want[2:4, 5] = True
    assert np.array_equal(s.to_mask(causal=False), want)
    # bottom-right causal with Nq=4, Nk=6: key j visible to query i iff j <= i + 2
    assert np.array_equal(s.to_mask(causal=True), want & causal_mask(4, 6))
    assert np.array_equal(s.to_mask(causal="top_left"), want & causal_mask(4, 6, "top_left"))
    with pytest.raises(ValueError, match=r"built for \(4, 6\)"):
        s.to_mask(5, 6)


@settings(max_examples=40)
@given(nq=st.integers(1, 50), nk=st.integers(1, 50), block=st.integers(1, 16),
       causal=st.sampled_from([False, True, "top_left"]))
def test_dense_set_covers_exactly_the_visible_entries(nq, nk, block, causal):
    s = IndexSet.dense(nq, nk, block=block, causal=causal)
    mode = "top_left" if causal == "top_left" else "bottom_right"
    visible = causal_mask(nq, nk, mode) if causal else np.ones((nq, nk), bool)
    assert np.array_equal(s.to_mask(causal=causal), visible)
    assert s.n_strips == 0
    assert s.density(causal=causal) == (1.0 if visible.any() else 0.0)
    if not causal:
        assert s.computed_entries() == nq * nk and s.flops(8) == 2 * nq * nk * 16


@settings(max_examples=40)
@given(data=st.data(), nq=st.integers(1, 40), nk=st.integers(1, 40), block=st.integers(1, 8))
def test_mask_costs_and_density_agree_with_the_lists(data, nq, nk, block):
    nqb, nkb = -(-nq // block), -(-nk // block)
    blocks = [data.draw(st.lists(st.integers(0, nkb - 1), max_size=nkb)) for _ in range(nqb)]
    cols = [data.draw(st.lists(st.integers(0, nk - 1), max_size=6)) for _ in range(nqb)]
    s = IndexSet.from_lists(nq, nk, blocks, cols, block=block)
    mask = s.to_mask(causal=False)
    entries = 0
    for qb in range(nqb):
        r0, r1 = qb * block, min((qb + 1) * block, nq)
        want = np.zeros(nk, bool)
        for kb in blocks[qb]:
            want[kb * block:(kb + 1) * block] = True
        want[cols[qb]] = True
        assert all(np.array_equal(mask[r], want) for r in range(r0, r1))
        entries += (r1 - r0) * int(want.sum())  # columns inside listed blocks were dropped, so no double count
    assert s.computed_entries() == entries
    assert s.flops(3, 5) == 2 * entries * 8
    assert s.density(causal=False) == pytest.approx(mask.sum() / (nq * nk))
    assert s.density(causal=True) == pytest.approx(
        s.to_mask(causal=True).sum() / max(causal_mask(nq, nk).sum(), 1))


@pytest.mark.parametrize("kwargs,msg", [
    (dict(nq=0, nk=4, blocks=[]), "nq, nk, block >= 1"),
    (dict(nq=4, nk=4, blocks=[[0]]), "expected 2 lists of key blocks"),
    (dict(nq=4, nk=4, blocks=[[0], [2]]), "block index out of range"),
    (dict(nq=4, nk=4, blocks=[[0], [-1]]), "block index out of range"),
    (dict(nq=4, nk=4, blocks=[[0], [1]], columns=[[4], []]), "column index out of range"),
    (dict(nq=4, nk=4, blocks=[[0], [1]], columns=[[]]), "expected 2 lists of key columns"),
])
def test_from_lists_refuses_bad_input(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        IndexSet.from_lists(block=2, **kwargs)


def test_constructor_refuses_malformed_csr():
    ok = dict(nq=4, nk=4, block=2, column_offsets=np.zeros(3, np.int64), column_indices=np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="malformed block_offsets"):
        IndexSet(block_offsets=np.array([0, 1]), block_indices=np.array([0]), **ok)
    with pytest.raises(ValueError, match="not sorted and unique"):
        IndexSet(block_offsets=np.array([0, 2, 2]), block_indices=np.array([1, 0]), **ok)
    with pytest.raises(ValueError, match="malformed block_offsets"):
        IndexSet(block_offsets=np.array([0, 2, 1]), block_indices=np.array([0]), **ok)


# ---------------------------------------------------------------------------
# Invariants checked at construction (issue 19)
# ---------------------------------------------------------------------------
def test_constructor_refuses_a_column_inside_a_listed_block():
    # every query block lists key block 0 (keys 0..15) and column 5 inside it: the kernel counted key 5 twice
    with pytest.raises(ValueError, match="column 5 of query block 0 lies inside key block 0"):
        IndexSet(40, 40, 16, np.arange(4), np.zeros(3, int), np.arange(4), np.full(3, 5))
    # the same lists through from_lists are normalised instead (the column is dropped)
    s = IndexSet.from_lists(40, 40, [[0]] * 3, [[5]] * 3, block=16)
    assert s.n_strips == 0


def test_constructor_converts_array_likes_and_refuses_bad_indices():
    s = IndexSet(4, 4, 2, [0, 1, 1], [0], (0, 0, 1), [3])
    assert s.block_indices.dtype == np.int64 and s.column_offsets.tolist() == [0, 0, 1]
    assert s.to_mask(causal=False)[2:, 3].all()
    with pytest.raises(ValueError):  # the arrays are read-only: the invariants cannot be broken later
        s.block_indices[0] = 1
    ok = dict(nq=4, nk=8, block=2, column_offsets=[0, 0, 0], column_indices=[])
    with pytest.raises(ValueError, match="not sorted and unique"):
        IndexSet(block_offsets=[0, 2, 2], block_indices=[1, 1], **ok)  # a duplicate
    with pytest.raises(ValueError, match="out of range"):
        IndexSet(block_offsets=[0, 1, 1], block_indices=[4], **ok)
    with pytest.raises(ValueError, match="must hold integers"):
        IndexSet(block_offsets=[0, 1, 1], block_indices=[0.5], **ok)
    with pytest.raises(ValueError, match="nq must be a positive integer"):
        IndexSet(0, 4, 2, [0], [], [0], [])
    with pytest.raises(ValueError, match="column indices of query block 1 are not sorted"):
        IndexSet(4, 8, 2, [0, 0, 0], [], [0, 1, 3], [7, 6, 5])


@settings(max_examples=25)
@given(data=st.data(), nq=st.integers(1, 40), nk=st.integers(1, 40), block=st.integers(1, 9),
       causal=st.sampled_from([False, True, "top_left"]))
def test_sparse_kernel_agrees_with_to_mask_on_every_valid_set(data, nq, nk, block, causal):
    from refattn.kernels.sparse import sparse_forward
    from refattn.reference import attention

    nqb, nkb = -(-nq // block), -(-nk // block)
    blocks = [data.draw(st.lists(st.integers(0, nkb - 1), max_size=nkb)) for _ in range(nqb)]
    cols = [data.draw(st.lists(st.integers(0, nk - 1), max_size=2 * block + 1)) for _ in range(nqb)]
    s = IndexSet.from_lists(nq, nk, blocks, cols, block=block)
    again = IndexSet(nq, nk, block, s.block_offsets, s.block_indices, s.column_offsets, s.column_indices)
    assert np.array_equal(again.to_mask(causal=causal), s.to_mask(causal=causal))  # a valid set passes
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    q, k, v = rng.standard_normal((nq, 3)), rng.standard_normal((nk, 3)), rng.standard_normal((nk, 2))
    res = sparse_forward(q, k, v, again, sram=10**6, causal=causal)
    o, lse = attention(q, k, v, mask=s.to_mask(causal=causal))
    np.testing.assert_allclose(res.o, o, atol=1e-12)
    assert np.array_equal(np.isneginf(res.lse), np.isneginf(lse))
    np.testing.assert_allclose(res.lse[np.isfinite(lse)], lse[np.isfinite(lse)], atol=1e-12)
