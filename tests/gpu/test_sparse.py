"""Sparse Triton forward on refattn index sets, and GPU vertical-slash index building."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refattn.index_set import IndexSet
from refattn.reference import attention
from tests.gpu.helpers import DEVICE, DTYPES, NEEDS, RTOL, check_lse, np64, randn, rel_err, skip_without_device, torch

pytestmark = NEEDS


def _random_set(rng, nq, nk, block, empty_row):
    nqb, nkb = -(-nq // block), -(-nk // block)
    blocks = [rng.choice(nkb, size=rng.integers(0, min(nkb, 3) + 1), replace=False) for _ in range(nqb)]
    cols = [rng.choice(nk, size=rng.integers(0, min(nk, 70) + 1), replace=False) for _ in range(nqb)]
    if empty_row is not None:
        blocks[empty_row % nqb], cols[empty_row % nqb] = [], []
    return IndexSet.from_lists(nq, nk, blocks, cols, block=block)


@settings(max_examples=5)
@given(nq=st.integers(1, 80), nk=st.integers(1, 80), d=st.integers(1, 40), block=st.sampled_from([16, 32]),
       causal=st.sampled_from([True, False, "top_left"]), dtype=st.sampled_from(DTYPES),
       shared=st.booleans(), empty_row=st.none() | st.integers(0, 5), seed=st.integers(0, 2**31 - 1))
def test_sparse_matches_masked_reference(nq, nk, d, block, causal, dtype, shared, empty_row, seed):
    skip_without_device()
    from gpu_optional import sparse_attention

    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    z = 2
    sets = [_random_set(rng, nq, nk, block, empty_row) for _ in range(1 if shared else z)]
    q, k, v = randn((z, nq, d), dtype, gen), randn((z, nk, d), dtype, gen), randn((z, nk, d + 3), dtype, gen)
    o, lse = sparse_attention(q, k, v, sets[0] if shared else sets, causal=causal)
    assert not torch.isnan(o).any()
    for h in range(z):
        s = sets[0 if shared else h]
        ro, rlse = attention(np64(q[h]), np64(k[h]), np64(v[h]), mask=s.to_mask(causal=causal))
        if np.linalg.norm(ro) > 0:
            assert rel_err(o[h], ro) <= RTOL[dtype]
        else:
            assert np.abs(np64(o[h])).max() == 0
        check_lse(lse[h], rlse, atol=50 * RTOL[dtype])


def test_sparse_dense_set_equals_flash():
    """IndexSet.dense is the dense kernel as an index set: same output as the flash kernel."""
    skip_without_device()
    from gpu_optional import flash_attention, sparse_attention

    gen = torch.Generator().manual_seed(5)
    q, k, v = (randn((1, 2, 50, 24), torch.float32, gen) for _ in range(3))
    o1, l1 = sparse_attention(q, k, v, IndexSet.dense(50, 50, block=16), causal=True)
    o2, l2 = flash_attention(q, k, v, causal=True)
    assert rel_err(o1, np64(o2)) <= 1e-6 and rel_err(l1, np64(l2)) <= 1e-6


def test_sparse_bad_input_is_refused():
    skip_without_device()
    from gpu_optional import sparse_attention

    q = torch.randn(2, 40, 16, device=DEVICE)
    with pytest.raises(ValueError, match="built for"):
        sparse_attention(q, q, q, IndexSet.dense(30, 40, block=16))
    with pytest.raises(ValueError, match="block must be"):
        sparse_attention(q, q, q, IndexSet.dense(40, 40, block=8))
    with pytest.raises(ValueError, match="index sets for"):
        sparse_attention(q, q, q, [IndexSet.dense(40, 40, block=16)] * 3)


def _check_index_equals_cpu(q, k, vs, ss, block, **kw):
    """The device build's IndexSet, columns and offsets equal refattn.patterns.vertical_slash's, per head."""
    from gpu_optional import vertical_slash_index
    from refattn.patterns.vertical_slash import vertical_slash

    r = vertical_slash_index(q, k, vs, ss, block=block, **kw)
    q3, k3 = q.reshape(-1, *q.shape[-2:]), k.reshape(-1, *k.shape[-2:])
    for h, got in enumerate(r.index_set.to_host()):
        ref = vertical_slash(np64(q3[h]).astype(np.float32), np64(k3[h]).astype(np.float32), vs, ss, block=block,
                             **kw)
        np.testing.assert_allclose(np64(r.vertical_scores[h]), ref.vertical_scores, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(np64(r.slash_scores[h]), ref.slash_scores, rtol=1e-4, atol=1e-6)
        assert np.array_equal(np64(r.columns[h]).astype(np.int64), ref.columns)
        assert np.array_equal(np64(r.offsets[h]).astype(np.int64), ref.offsets)
        for f in ("block_offsets", "block_indices", "column_offsets", "column_indices"):
            assert np.array_equal(getattr(got, f), getattr(ref.index_set, f)), f
    return r


@pytest.mark.parametrize("nq,nk,block,vs,ss", [(200, 200, 32, 40, 60), (150, 231, 16, 10, 10), (231, 150, 64, 35, 55),
                                               (20, 90, 16, 30, 50)])
def test_vertical_slash_index_matches_refattn_patterns(nq, nk, block, vs, ss):
    """Random inputs, Nq = Nk, Nq < Nk, Nq > Nk (rows with no key), fewer rows than last_q."""
    skip_without_device()
    gen = torch.Generator().manual_seed(nq * nk)
    q, k = randn((3, nq, 32), torch.float32, gen), randn((3, nk, 32), torch.float32, gen)
    _check_index_equals_cpu(q, k, vs, ss, block)


def test_vertical_slash_index_structured_heads():
    """Planted vertical columns and diagonals (what real heads look like), batch dims (B, H, N, d), d = 40
    (padded), 300 chosen columns (the column loop's second chunk), slash_size < force_slash (forced ties),
    and a forced-diagonal count of 0."""
    skip_without_device()
    gen = torch.Generator().manual_seed(9)
    n, d = 330, 40
    base = torch.randn((2, 2, n, d), generator=gen)
    q = base.clone()
    k = torch.randn((2, 2, n, d), generator=gen)
    k[..., [0, 7, 100, 201], :] += 2.0 * q[..., -1:, :]      # vertical lines: keys every late query likes
    k[..., :n - 5, :] += 0.4 * q[..., 5:, :]                # a diagonal at delta = 5 (query i likes key i - 5)
    q, k = q.to(DEVICE), k.to(DEVICE)
    _check_index_equals_cpu(q, k, 300, 60, 32)
    _check_index_equals_cpu(q, k, 40, 64, 64, force_slash=0, force_vertical=4)   # 64 chosen: S = S_PAD


@pytest.mark.needs_cuda
def test_graphed_vertical_slash_index_replays_on_new_inputs():
    """The CUDA-graph build, replayed after q and k are overwritten in place, equals a fresh eager build."""
    if not torch.cuda.is_available() or DEVICE != "cuda":
        pytest.skip("needs a CUDA GPU and TRITON_INTERPRET=0")
    from gpu_optional import graphed_vertical_slash_index, vertical_slash_index

    gen = torch.Generator().manual_seed(12)
    q, k = randn((2, 2, 1000, 64), torch.bfloat16, gen), randn((2, 2, 1000, 64), torch.bfloat16, gen)
    replay, result = graphed_vertical_slash_index(q, k, 100, 60, block=64)
    q.copy_(randn(q.shape, torch.bfloat16, gen))
    k.copy_(randn(k.shape, torch.bfloat16, gen))
    replay()
    fresh = vertical_slash_index(q, k, 100, 60, block=64)
    assert torch.equal(result.columns, fresh.columns) and torch.equal(result.offsets, fresh.offsets)
    for got, want in zip(result.index_set.to_host(), fresh.index_set.to_host()):
        for f in ("block_offsets", "block_indices", "column_offsets", "column_indices"):
            assert np.array_equal(getattr(got, f), getattr(want, f)), f


def test_vertical_slash_index_bad_input_is_refused():
    skip_without_device()
    from gpu_optional import vertical_slash_index

    q = torch.randn(2, 40, 16, device=DEVICE)
    with pytest.raises(ValueError, match="block must be"):
        vertical_slash_index(q, q, 30, 50, block=48)
    with pytest.raises(ValueError, match="do not match"):
        vertical_slash_index(q, q[:1], 30, 50)
    with pytest.raises(ValueError, match="last_q"):
        vertical_slash_index(q, q, 30, 50, last_q=0)


def test_minference_step_on_device():
    """Index building + sparse kernel, all on the device, against the masked float64 reference."""
    skip_without_device()
    from gpu_optional import sparse_attention, vertical_slash_index

    gen = torch.Generator().manual_seed(7)
    q, k, v = (randn((2, 130, 24), torch.float16, gen) for _ in range(3))
    r = vertical_slash_index(q, k, 30, 50, block=32)
    o, lse = sparse_attention(q, k, v, r.index_set, causal=True)
    for h, s in enumerate(r.index_set.to_host()):
        ro, rlse = attention(np64(q[h]), np64(k[h]), np64(v[h]), mask=s.to_mask(causal=True))
        assert rel_err(o[h], ro) <= RTOL[torch.float16]
        check_lse(lse[h], rlse, atol=0.25)
