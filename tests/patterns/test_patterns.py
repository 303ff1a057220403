"""A-shape, vertical-slash and block-sparse index sets against their definitions."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refattn.patterns import a_shape, block_sparse, vertical_slash
from refattn.patterns.a_shape import a_shape_mask
from refattn.patterns.vertical_slash import vs_mask


def tiles_touched(mask, block):
    """Per query block, the key blocks whose tile holds at least one True of ``mask``."""
    nq, nk = mask.shape
    out = []
    for r0 in range(0, nq, block):
        hit = mask[r0:r0 + block].any(axis=0)
        out.append(np.unique(np.flatnonzero(hit) // block))
    return out


@settings(max_examples=30)
@given(nq=st.integers(1, 300), extra=st.integers(0, 100), n_init=st.integers(0, 100),
       n_local=st.integers(1, 200), block=st.sampled_from([16, 64]))
def test_a_shape_lists_exactly_the_tiles_of_its_element_mask(nq, extra, n_init, n_local, block):
    nk = nq + extra
    res = a_shape(nq, nk, n_init, n_local, block=block)
    elem = a_shape_mask(nq, nk, n_init, n_local)
    want = tiles_touched(elem, block)
    for qb in range(res.index_set.n_query_blocks):
        assert np.array_equal(res.index_set.blocks_of(qb), want[qb]), qb
    assert res.index_set.n_strips == 0
    mask = res.index_set.to_mask()
    assert np.all(mask >= elem)


@settings(max_examples=25)
@given(nq=st.integers(1, 260), extra=st.integers(0, 60), vs=st.integers(1, 120), ss=st.integers(1, 160),
       block=st.sampled_from([16, 64]), seed=st.integers(0, 2**31))
def test_vertical_slash_covers_its_element_mask_and_is_at_most_a_block_wider(nq, extra, vs, ss, block, seed):
    rng = np.random.default_rng(seed)
    nk = nq + extra
    q = rng.standard_normal((nq, 16)).astype(np.float32)
    k = rng.standard_normal((nk, 16)).astype(np.float32)
    res = vertical_slash(q, k, vs, ss, block=block)
    iset = res.index_set
    # clamps and forced entries
    assert len(res.columns) == min(nk, max(vs, 30)) and len(res.offsets) == min(nk, max(ss, 50))
    assert set(range(min(30, nk))) <= set(res.columns.tolist())
    assert set(range(min(100, nk, max(ss, 50)))) <= set(res.offsets.tolist())
    # estimate: rows are probabilities; scores are its column and diagonal sums
    L = min(64, nq)
    assert res.estimate.shape == (L, nk)
    np.testing.assert_allclose(res.estimate.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(res.vertical_scores.sum(), L, rtol=1e-4)
    np.testing.assert_allclose(res.slash_scores.sum(), L, rtol=1e-4)
    # coverage
    elem = vs_mask(nq, nk, res.columns, res.offsets)
    assert np.all(iset.to_mask() >= elem)
    # no wider than needed: every block touches a diagonal range, each merged range costs <= ceil(w/b) + 1 blocks
    off = nk - nq
    for qb in range(iset.n_query_blocks):
        m0, m1 = qb * block, min((qb + 1) * block, nq)
        diag = np.zeros(nk, bool)
        for dlt in res.offsets:
            lo, hi = max(m0 + off - dlt, 0), min(m1 - 1 + off - dlt, nk - 1)
            if hi >= lo:
                diag[lo:hi + 1] = True
        blocks = iset.blocks_of(qb)
        for kb in blocks:
            assert diag[kb * block:(kb + 1) * block].any()
        edges = np.flatnonzero(np.diff(np.r_[0, diag.astype(int), 0]))
        widths = edges[1::2] - edges[::2]
        assert len(blocks) <= sum(-(-w // block) + 1 for w in widths)
        cols = iset.columns_of(qb)
        assert set(cols.tolist()) <= set(res.columns.tolist())
        assert not np.isin(cols // block, blocks).any() and np.all(cols <= m1 - 1 + off)


@settings(max_examples=25)
@given(nq=st.integers(1, 300), extra=st.integers(0, 80), top_k=st.integers(1, 8),
       block=st.sampled_from([16, 64]), seed=st.integers(0, 2**31))
def test_block_sparse_is_the_top_k_of_pooled_scores(nq, extra, top_k, block, seed):
    rng = np.random.default_rng(seed)
    nk = nq + extra
    q = rng.standard_normal((nq, 8))
    k = rng.standard_normal((nk, 8))
    res = block_sparse(q, k, top_k, block=block)
    nqb, nkb = -(-nq // block), -(-nk // block)
    qp = np.array([q[i * block:(i + 1) * block].mean(0) for i in range(nqb)])
    kp = np.array([k[j * block:(j + 1) * block].mean(0) for j in range(nkb)])
    want = qp @ kp.T / np.sqrt(8)
    off = nk - nq
    for qb in range(nqb):
        last = min((qb + 1) * block, nq) - 1 + off
        visible = np.arange(nkb) * block <= last
        np.testing.assert_allclose(res.block_scores[qb, visible], want[qb, visible], rtol=1e-4, atol=1e-5)
        assert np.all(np.isneginf(res.block_scores[qb, ~visible]))
        chosen = res.index_set.blocks_of(qb)
        assert len(chosen) == min(top_k, visible.sum()) and np.all(visible[chosen])
        others = np.setdiff1d(np.flatnonzero(visible), chosen)
        if len(others):
            assert res.block_scores[qb, chosen].min() >= res.block_scores[qb, others].max()


def test_pattern_inputs_are_checked():
    q = np.zeros((10, 4))
    with pytest.raises(ValueError, match="single-head"):
        vertical_slash(np.zeros((2, 10, 4)), np.zeros((2, 10, 4)), 30, 50)
    with pytest.raises(ValueError, match="share d"):
        block_sparse(q, np.zeros((10, 5)), 2)
    with pytest.raises(ValueError, match="NaN"):
        vertical_slash(np.full((10, 4), np.nan), q, 30, 50)
    with pytest.raises(ValueError, match="top_k"):
        block_sparse(q, q, 0)
    with pytest.raises(ValueError, match="n_local"):
        a_shape(10, 10, 4, 0)
