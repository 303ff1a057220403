"""The sparse kernel against the float64 reference, its counters against closed forms."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refattn import reference
from refattn.index_set import IndexSet
from refattn.kernels.sparse import footprint, sparse_forward
from refattn.memory import SramTooSmall
from tests.kernels.sparse_helpers import assert_matches_reference, random_set

TOL = {np.float64: 1e-10, np.float32: 3e-5}
M = 100_000


def check_against_reference(q, k, v, iset, causal, res, dtype):
    o, lse = reference.attention(q, k, v, causal=causal, mask=iset.to_mask(causal=causal))
    assert_matches_reference(res, o, lse, dtype, TOL[dtype])


@settings(max_examples=25)
@given(nq=st.integers(1, 140), nk=st.integers(1, 140), d=st.sampled_from([4, 16]), dv=st.sampled_from([4, 8]),
       block=st.sampled_from([8, 32]), causal=st.sampled_from([False, True, "top_left"]),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**31), big=st.booleans())
def test_matches_masked_reference(nq, nk, d, dv, block, causal, dtype, seed, big):
    rng = np.random.default_rng(seed)
    s = 8.0 if big else 1.0  # large logits
    q = (s * rng.standard_normal((2, nq, d))).astype(dtype)
    k = (s * rng.standard_normal((2, nk, d))).astype(dtype)
    v = rng.standard_normal((2, nk, dv)).astype(dtype)
    iset = random_set(rng, nq, nk, block)
    res = sparse_forward(q, k, v, iset, sram=M, causal=causal)
    check_against_reference(q, k, v, iset, causal, res, dtype)


def closed_form(iset, d, dv, causal, heads=1):
    """Traffic, FLOPs and exps from the module docstring, computed from the index set alone."""
    b, nq, nk = iset.block, iset.nq, iset.nk
    off = (nk - nq) if causal == "bottom_right" or causal is True else 0
    idx = used = area = 0
    for qb in range(iset.n_query_blocks):
        rows = min((qb + 1) * b, nq) - qb * b
        last = min((qb + 1) * b, nq) - 1 + off
        blocks, cols = iset.blocks_of(qb), iset.columns_of(qb)
        idx += 4 + len(blocks) + len(cols)
        vis_b = blocks if not causal else blocks[blocks * b <= last]
        vis_c = cols if not causal else cols[cols <= last]
        width = sum(min((kb + 1) * b, nk) - kb * b for kb in vis_b) + len(vis_c)
        used += width
        area += rows * width
    return {"idx": heads * idx, "Q": heads * nq * d, "K": heads * d * used, "V": heads * dv * used,
            "O": heads * nq * dv, "L": heads * nq, "flops": heads * 2 * (d + dv) * area, "exps": heads * area}


@pytest.mark.parametrize("causal", [False, True, "top_left"])
def test_traffic_equals_closed_form(causal):
    rng = np.random.default_rng(1)
    nq, nk, d, dv, block = 130, 170, 16, 8, 32
    q, k, v = (rng.standard_normal((3, n, w)) for n, w in ((nq, d), (nk, d), (nk, dv)))
    iset = random_set(rng, nq, nk, block)
    res = sparse_forward(q, k, v, iset, sram=M, causal=causal)
    cf = closed_form(iset, d, dv, causal, heads=3)
    t = res.traffic
    assert t.of("idx") == (cf["idx"], 0)
    assert t.of("Q") == (cf["Q"], 0) and t.of("K") == (cf["K"], 0) and t.of("V") == (cf["V"], 0)
    assert t.of("O") == (0, cf["O"]) and t.of("L") == (0, cf["L"])
    assert set(t.reads) | set(t.writes) <= {"idx", "Q", "K", "V", "O", "L"}
    assert res.flops == cf["flops"] and res.exps == cf["exps"]
    assert res.peak_sram <= footprint(block, d, dv)
    if not causal:
        assert res.flops == 3 * iset.flops(d, dv)


def test_traced_and_stepped_paths_agree_with_fast_path():
    rng = np.random.default_rng(2)
    nq = nk = 100
    q, k, v = (rng.standard_normal((2, nq, 8)) for _ in range(3))
    iset = random_set(rng, nq, nk, 16, p_empty=0.2)
    fast = sparse_forward(q, k, v, iset, sram=M)
    traced = sparse_forward(q, k, v, iset, sram=M, trace=True)
    assert fast.trace is None and traced.trace is not None
    assert np.array_equal(fast.o, traced.o) and np.array_equal(fast.lse, traced.lse)
    assert fast.traffic == traced.traffic and fast.flops == traced.flops and fast.n_steps == traced.n_steps
    assert fast.peak_sram == traced.peak_sram
    assert traced.trace.traffic_until(traced.n_steps) == traced.traffic
    # one step per key block and per gathered column tile, at least one per query block
    per_head = sum(max(1, len(iset.blocks_of(i)) + -(-len(iset.columns_of(i)) // 16))
                   for i in range(iset.n_query_blocks))
    assert fast.n_steps == 2 * per_head


def test_stop_after_gives_the_partial_softmax():
    rng = np.random.default_rng(3)
    nq = nk = 96
    q, k, v = (rng.standard_normal((nq, 8)) for _ in range(3))
    blocks = [[0], [0, 1], [1, 2], [0, 2]]
    cols = [[], [70, 90], [5, 6, 7], [40]]
    iset = IndexSet.from_lists(nq, nk, blocks, cols, block=24)
    mask = iset.to_mask(causal=False)
    step = 0
    for qb in range(4):
        r0, r1 = qb * 24, (qb + 1) * 24
        seen = np.zeros(nk, bool)
        units = [("cols", (kb * 24, (kb + 1) * 24)) for kb in iset.blocks_of(qb)]
        if len(iset.columns_of(qb)):
            units.append(("columns", iset.columns_of(qb)))
        for kind, what in units:
            step += 1
            res = sparse_forward(q, k, v, iset, sram=M, causal=False, stop_after=step)
            st_ = res.state
            assert st_.step == step and st_.rows == (r0, r1) and st_.arrays["query_block"] == qb
            if kind == "cols":
                assert st_.phase == "key blocks" and st_.cols == what
                seen[what[0]:what[1]] = True
            else:
                assert st_.phase == "columns" and np.array_equal(st_.arrays["columns"], what)
                seen[what] = True
            o, _ = reference.attention(q[r0:r1], k, v, mask=mask[r0:r1] & seen)
            a = st_.arrays
            o_part = a["o_partial"] if a["o_normalised"] else a["o_partial"] / a["l"][:, None]
            np.testing.assert_allclose(o_part, o, atol=1e-12)
            assert a["o_normalised"] == (kind == units[-1][0] and what is units[-1][1])
            if not a["o_normalised"]:
                assert st_.sram["Q"].elements == 24 * 8
    with pytest.raises(ValueError, match="stop_after"):
        sparse_forward(q, k, v, iset, sram=M, stop_after=0)


def test_per_head_index_sets():
    rng = np.random.default_rng(4)
    q, k, v = (rng.standard_normal((3, 80, 8)) for _ in range(3))
    sets = [random_set(rng, 80, 80, 16) for _ in range(3)]
    res = sparse_forward(q, k, v, sets, sram=M)
    for h in range(3):
        one = sparse_forward(q[h], k[h], v[h], sets[h], sram=M)
        assert np.array_equal(res.o[h], one.o) and np.array_equal(res.lse[h], one.lse)
    assert res.traffic.total == sum(sparse_forward(q[h], k[h], v[h], sets[h], sram=M).traffic.total
                                    for h in range(3))


def test_dense_set_counts_like_fa2_and_sparse_sets_never_cost_more():
    from refattn.kernels.flash import flash_forward
    from refattn.patterns import a_shape, vertical_slash

    rng = np.random.default_rng(5)
    n, d = 700, 16
    q, k, v = (rng.standard_normal((n, d)).astype(np.float32) for _ in range(3))
    dense = flash_forward(q, k, v, sram=M, variant="fa2", causal=True, block=(64, 64))
    full = sparse_forward(q, k, v, IndexSet.dense(n, n, block=64), sram=M)
    for name in ("Q", "K", "V", "O", "L"):
        assert full.traffic.of(name) == dense.traffic.of(name), name
    assert full.flops == dense.flops
    np.testing.assert_allclose(full.o, dense.o, atol=2e-5)
    # traffic and FLOPs grow with density, never above dense
    last = (0, 0, 0.0)
    for n_local in (64, 128, 256, 512):
        iset = a_shape(n, n, 64, n_local).index_set
        res = sparse_forward(q, k, v, iset, sram=M)
        now = (res.traffic.total, res.flops, iset.density())
        assert all(a > b for a, b in zip(now, last)), (now, last)
        assert res.traffic.total <= dense.traffic.total and res.flops <= dense.flops
        assert res.flops == iset.flops(d)
        last = now
    for vs, ss in ((30, 50), (100, 100), (300, 200)):
        iset = vertical_slash(q, k, vs, ss).index_set
        res = sparse_forward(q, k, v, iset, sram=M)
        assert res.flops <= dense.flops
        # without the index reads never above dense; with them, only a set as full as dense can be
        assert res.traffic.total - res.traffic.of("idx")[0] <= dense.traffic.total
        if iset.density() < 0.9:
            assert res.traffic.total <= dense.traffic.total


def test_bad_inputs_are_refused_clearly():
    rng = np.random.default_rng(6)
    q, k, v = (rng.standard_normal((2, 50, 8)) for _ in range(3))
    iset = IndexSet.dense(50, 50, block=16)
    with pytest.raises(ValueError, match=r"built for \(nq, nk\) = \(40, 50\)"):
        sparse_forward(q, k, v, IndexSet.dense(40, 50, block=16), sram=M)
    with pytest.raises(ValueError, match="2 heads"):
        sparse_forward(q, k, v, [iset, iset, iset], sram=M)
    with pytest.raises(TypeError, match="IndexSet"):
        sparse_forward(q, k, v, np.ones((50, 50), bool), sram=M)
    with pytest.raises(ValueError, match="different blocks"):
        sparse_forward(q, k, v, [iset, IndexSet.dense(50, 50, block=8)], sram=M)
    with pytest.raises(SramTooSmall, match="SRAM too small"):
        sparse_forward(q, k, v, iset, sram=100)
    bad = q.copy()
    bad[0, 3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sparse_forward(bad, k, v, iset, sram=M)
    with pytest.raises(ValueError, match="share the head dim"):
        sparse_forward(q[..., :4], k, v, iset, sram=M)
