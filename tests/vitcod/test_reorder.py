"""Split attention equals the masked reference; the permutation is symmetric and invertible."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refattn.reference import attention
from refattn.vitcod.reorder import global_tokens, split_attention, split_mask


@st.composite
def masked_problem(draw):
    n = draw(st.integers(1, 40))
    d = draw(st.integers(1, 12))
    dv = draw(st.integers(1, 9))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    dens = draw(st.sampled_from([0.0, 0.05, 0.3, 0.9, 1.0]))
    mask = rng.random((n, n)) < dens
    if draw(st.booleans()):  # a few dense (global) columns, as in ViT masks
        mask[:, rng.choice(n, size=min(n, 3), replace=False)] = True
    scale = draw(st.sampled_from([1.0, 30.0]))  # 30: large logits
    q = scale * rng.standard_normal((n, d))
    k = rng.standard_normal((n, d))
    v = rng.standard_normal((n, dv))
    threshold = draw(st.one_of(st.none(), st.integers(0, n)))
    return q, k, v, mask, threshold


@given(masked_problem())
def test_split_attention_equals_masked_reference(prob):
    q, k, v, mask, threshold = prob
    o, lse = split_attention(q, k, v, mask, threshold=threshold)
    ro, rl = attention(q, k, v, mask=mask)
    np.testing.assert_allclose(o, ro, rtol=1e-10, atol=1e-12)
    assert np.array_equal(np.isneginf(lse), np.isneginf(rl))  # fully masked rows: lse -inf
    fin = np.isfinite(rl)
    np.testing.assert_allclose(lse[fin], rl[fin], rtol=1e-12, atol=1e-12)
    assert not np.isnan(o).any()
    assert np.all(o[~mask.any(axis=1)] == 0)


@given(st.integers(1, 30), st.integers(0, 2**32 - 1), st.integers(0, 30))
def test_permutation_symmetric_and_invertible(n, seed, threshold):
    mask = np.random.default_rng(seed).random((n, n)) < 0.4
    sp = split_mask(mask, threshold)
    assert sorted(sp.perm) == list(range(n))
    assert np.array_equal(sp.perm[sp.inv], np.arange(n)) and np.array_equal(sp.inv[sp.perm], np.arange(n))
    # symmetric: rows and columns move together, so the permuted mask is P M P^T
    p = np.eye(n, dtype=int)[sp.perm]
    assert np.array_equal(sp.permuted_mask().astype(int), p @ mask.astype(int) @ p.T)
    assert np.array_equal(sp.mask(), mask)
    glob = global_tokens(mask, threshold)
    assert sp.g == glob.size and np.array_equal(sp.perm[: sp.g], glob)
    assert np.all(mask[:, glob].sum(0) > threshold)
    # sparse lists: columns >= G, sorted per row, and the index set stands for the same entries
    assert np.all(sp.indices >= sp.g)
    assert sp.dense_kept + sp.nnz == mask.sum()
    sparse_part = np.concatenate([np.zeros((n, sp.g), bool), sp.permuted_mask()[:, sp.g :]], axis=1)
    assert np.array_equal(sp.sparse_index_set().to_mask(causal=False), sparse_part)


def test_bundled_mask_global_tokens_match_the_authors_count():
    from refattn.data.vit import load_deit_tiny_mask

    keep, g = load_deit_tiny_mask()
    assert keep.shape == (12, 3, 197, 197) and keep.dtype == bool
    assert keep[..., 0, :].all() and keep[..., :, 0].all()  # CLS row and column kept
    assert 0.05 < keep.mean() < 0.06
    counts = np.array([[split_mask(keep[l, h], 50).g for h in range(3)] for l in range(12)])
    assert np.array_equal(counts, g)


@pytest.mark.parametrize(
    "args, err, match",
    [
        ((np.zeros((3, 4), bool),), ValueError, "square"),
        ((np.zeros((3, 3), int),), TypeError, "boolean"),
    ],
)
def test_split_mask_bad_inputs(args, err, match):
    with pytest.raises(err, match=match):
        split_mask(*args)


def test_split_attention_bad_inputs():
    q = np.ones((4, 2))
    with pytest.raises(ValueError, match="mask"):
        split_attention(q, q, q, np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="NaN"):
        split_attention(np.full((3, 2), np.nan), q[:3], q[:3], np.ones((3, 3), bool))
