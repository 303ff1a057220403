"""The sparse kernel with GQA/MQA, sliding windows, softcap and ALiBi (docs/variants.md): against the float64
reference under (index set's keep mask) AND (causal, window), its counters against the closed form of
refattn/kernels/sparse.py, the skips in the trace, stepping and count-only runs.

The expected counts and skips are derived here from the reference's keep mask (a listed key block or column
is loaded iff it holds an entry the mask keeps for the query block's rows), not from the kernel's band.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refattn.index_set import IndexSet
from refattn.kernels.flash import flash_forward
from refattn.kernels.sparse import footprint, sparse_forward
from refattn.reference import attention, combined_mask
from tests.kernels.sparse_helpers import assert_matches_reference, random_set

TOL = {np.float64: 1e-11, np.float32: 3e-5}
M = 100_000


@st.composite
def cases(draw, max_n=70):
    hkv = draw(st.integers(1, 2))
    side = st.one_of(st.just(-1), st.integers(0, 40))
    return dict(
        hkv=hkv, hq=hkv * draw(st.integers(1, 3)), gqa=draw(st.booleans()),
        nq=draw(st.integers(1, max_n)), nk=draw(st.integers(1, max_n)),
        d=draw(st.integers(1, 9)), dv=draw(st.integers(1, 9)), block=draw(st.sampled_from([3, 8, 16])),
        window=draw(st.one_of(st.none(), st.tuples(side, side))),
        causal=draw(st.sampled_from([False, True, "top_left"])),
        softcap=draw(st.sampled_from([None, 0.0, 0.7, 5.0])), alibi=draw(st.booleans()),
        per_head=draw(st.booleans()), big=draw(st.booleans()), seed=draw(st.integers(0, 2**31)))


def make(c, dtype=np.float64):
    rng = np.random.default_rng(c["seed"])
    hk = c["hkv"] if c["gqa"] else c["hq"]
    s = 6.0 if c["big"] else 1.0  # large logits
    q = (s * rng.standard_normal((c["hq"], c["nq"], c["d"]))).astype(dtype)
    k = (s * rng.standard_normal((hk, c["nk"], c["d"]))).astype(dtype)
    v = rng.standard_normal((hk, c["nk"], c["dv"])).astype(dtype)
    n_sets = c["hq"] if c["per_head"] else 1
    sets = [random_set(rng, c["nq"], c["nk"], c["block"]) for _ in range(n_sets)]
    kw = dict(causal=c["causal"], window=c["window"], softcap=c["softcap"],
              alibi_slopes=rng.uniform(0, 1, c["hq"]) if c["alibi"] else None,
              num_kv_heads=c["hkv"] if c["gqa"] else None)
    return q, k, v, (sets if c["per_head"] else sets[0]), sets, kw


def set_masks(sets, hq):
    """(hq, nq, nk): each query head's index-set keep mask (no causal)."""
    return np.stack([sets[h % len(sets)].to_mask(causal=False) for h in range(hq)])


def check_outputs(res, o, lse, dtype):
    assert_matches_reference(res, o, lse, dtype, TOL[dtype])


def expected_counts(sets, keep, d, dv):
    """Traffic, FLOPs, exps and the skip events of every step, from the index sets and the keep mask
    ``keep`` (hq, nq, nk) = index set AND causal AND window."""
    hq, nq, nk = keep.shape
    idx = used = area = 0
    skips = []  # one list of (rows, cols) per step
    for h in range(hq):
        s = sets[h % len(sets)]
        b = s.block
        for qb in range(s.n_query_blocks):
            r0, r1 = qb * b, min((qb + 1) * b, nq)
            kh = keep[h, r0:r1]
            blocks, cols = s.blocks_of(qb), s.columns_of(qb)
            idx += 4 + len(blocks) + len(cols)
            width = 0
            for kb in blocks:
                k0, k1 = kb * b, min((kb + 1) * b, nk)
                seen = kh[:, k0:k1].any()
                width += (k1 - k0) * seen
                skips.append([] if seen else [((r0, r1), (k0, k1))])
            for t in range(0, len(cols), b):
                tile = cols[t:t + b]
                vis = np.flatnonzero(kh[:, tile].any(axis=0))
                width += len(vis)
                if not len(vis):
                    skips.append([((r0, r1), (tile[0], tile[-1] + 1))])
                    continue
                first, last = vis[0], vis[-1]
                assert len(vis) == last - first + 1  # the visible columns of a tile are one run
                step = []
                if first > 0:
                    step.append(((r0, r1), (tile[0], tile[first - 1] + 1)))
                if last < len(tile) - 1:
                    step.append(((r0, r1), (tile[last + 1], tile[-1] + 1)))
                skips.append(step)
            if not len(blocks) and not len(cols):
                skips.append([])
            used += width
            area += (r1 - r0) * width
    reads = {"idx": idx, "Q": hq * nq * d, "K": d * used, "V": dv * used}
    writes = {"O": hq * nq * dv, "L": hq * nq}
    drop = lambda dct: {n: x for n, x in dct.items() if x}  # noqa: E731
    return drop(reads), drop(writes), 2 * (d + dv) * area, area, skips


@settings(max_examples=30)
@given(c=cases())
def test_variants_match_reference_and_closed_forms(c):
    q, k, v, iset, sets, kw = make(c)
    res = sparse_forward(q, k, v, iset, sram=M, **kw)
    masks = set_masks(sets, c["hq"])
    o, lse = attention(q, k, v, mask=masks, **kw)
    check_outputs(res, o, lse, np.float64)
    keep = combined_mask(c["nq"], c["nk"], c["causal"], masks, window=c["window"])
    reads, writes, flops, exps, _ = expected_counts(sets, keep, c["d"], c["dv"])
    assert res.traffic.reads == reads and res.traffic.writes == writes
    assert (res.flops, res.exps) == (flops, exps)
    assert res.peak_sram <= footprint(c["block"], c["d"], c["dv"])
    if c["window"] and min(c["window"]) >= 0:  # the docstring's bound: whatever the set lists, per query block
        b, w = c["block"], sum(c["window"]) + 1
        per_block = b * (-(-(b + w - 1) // b) + 1) + b + w - 1
        assert res.traffic.reads.get("K", 0) <= c["d"] * c["hq"] * -(-c["nq"] // b) * per_block


@settings(max_examples=10)
@given(c=cases(max_n=50))
def test_float32_variants_match_reference(c):
    q, k, v, iset, sets, kw = make(c, np.float32)
    res = sparse_forward(q, k, v, iset, sram=M, **kw)
    o, lse = attention(q, k, v, mask=set_masks(sets, c["hq"]), **kw)
    check_outputs(res, o, lse, np.float32)


def test_window_skips_listed_blocks_and_columns_and_the_trace_names_each_skip():
    rng = np.random.default_rng(1)
    nq, nk, b = 45, 61, 8  # neither divides the block; Nq != Nk
    q, k, v = rng.standard_normal((2, nq, 5)), rng.standard_normal((2, nk, 5)), rng.standard_normal((2, nk, 3))
    sets = [random_set(rng, nq, nk, b, p_empty=0.1) for _ in range(2)]
    kw = dict(causal=False, window=(9, 4), softcap=3.0, alibi_slopes=np.array([0.2, 0.05]))
    res = sparse_forward(q, k, v, sets, sram=M, trace=True, **kw)
    plain = sparse_forward(q, k, v, sets, sram=M, trace=True, causal=False)
    keep = combined_mask(nq, nk, False, set_masks(sets, 2), window=(9, 4))
    reads, _, flops, _, skips = expected_counts(sets, keep, 5, 3)
    assert res.traffic.reads == reads and res.flops == flops
    assert res.traffic.reads["K"] < plain.traffic.reads["K"] and res.traffic.reads["idx"] == plain.traffic.reads["idx"]
    assert res.n_steps == plain.n_steps == len(skips)  # steps follow the index set, hidden entries too
    got = [[(e.rows, e.cols) for e in res.trace.events_at(s) if e.kind == "skip"] for s in range(1, res.n_steps + 1)]
    assert got == skips and sum(map(len, skips)) > 10
    assert res.plan.details["window"] == (9, 4) and res.plan.details["softcap"] == 3.0 and res.plan.details["alibi"]
    o, _ = attention(q, k, v, mask=set_masks(sets, 2), **kw)
    np.testing.assert_allclose(res.o, o, atol=1e-12)


def test_dense_set_with_a_window_counts_like_fa2_with_the_window():
    # N = 256, block 32, window (32, 0): query block i loads key blocks i-1 and i of the i+1 it lists.
    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal((256, 16)) for _ in range(3))
    iset = IndexSet.dense(256, 256, block=32)
    win = sparse_forward(q, k, v, iset, sram=M, window=(32, 0), trace=True)
    fa2 = flash_forward(q, k, v, sram=M, block=(32, 32), causal=True, window=(32, 0))
    for name in ("Q", "K", "V", "O", "L"):
        assert win.traffic.of(name) == fa2.traffic.of(name), name
    assert win.flops == fa2.flops and win.traffic.reads["K"] == 15 * 32 * 16
    skips = [e for e in win.trace.events if e.kind == "skip"]
    assert {(e.rows, e.cols) for e in skips} == {
        ((32 * i, 32 * i + 32), (32 * j, 32 * j + 32)) for i in range(8) for j in range(i - 1)}
    np.testing.assert_allclose(win.o, fa2.o, atol=1e-12)


def test_gqa_reads_the_kv_head_of_each_query_head_once_per_query_head():
    rng = np.random.default_rng(3)
    hq, hkv, nq, nk, d = 6, 2, 40, 52, 8
    q = rng.standard_normal((hq, nq, d))
    k, v = rng.standard_normal((hkv, nk, d)), rng.standard_normal((hkv, nk, d))
    sets = [random_set(rng, nq, nk, 8) for _ in range(hq)]
    kw = dict(causal=True, window=(12, -1), softcap=2.0, alibi_slopes=np.linspace(0.05, 0.3, hq))
    gqa = sparse_forward(q, k, v, sets, sram=M, num_kv_heads=hkv, trace=True, **kw)
    mha = sparse_forward(q, np.repeat(k, 3, 0), np.repeat(v, 3, 0), sets, sram=M, trace=True, **kw)
    np.testing.assert_array_equal(gqa.o, mha.o)  # query head h reads KV head h // 3
    assert gqa.traffic == mha.traffic and np.array_equal(gqa.trace.records, mha.trace.records)
    assert gqa.plan.details["num_kv_heads"] == hkv
    o, _ = attention(q, k, v, mask=set_masks(sets, hq), num_kv_heads=hkv, **kw)
    np.testing.assert_allclose(gqa.o, o, atol=1e-12)
    # MQA with one index set for every head: the same K/V traffic as six single-head runs
    mqa = sparse_forward(q, k[:1], v[:1], sets[0], sram=M, num_kv_heads=1, **kw)
    one = [sparse_forward(q[h], k[0], v[0], sets[0], sram=M, alibi_slopes=kw["alibi_slopes"][h],
                          window=kw["window"], softcap=2.0) for h in range(hq)]
    assert mqa.traffic.reads["K"] == sum(r.traffic.reads["K"] for r in one) > 0
    np.testing.assert_array_equal(mqa.o, np.stack([r.o for r in one]))


def test_batch_and_heads_with_gqa_one_set_per_flattened_query_head():
    rng = np.random.default_rng(9)
    q = rng.standard_normal((2, 4, 30, 6))
    k, v = rng.standard_normal((2, 2, 35, 6)), rng.standard_normal((2, 2, 35, 3))
    sets = [random_set(rng, 30, 35, 8) for _ in range(8)]  # (batch, query head) flattened
    kw = dict(num_kv_heads=2, window=(7, 3), softcap=1.0, alibi_slopes=rng.uniform(0, 1, (2, 4)), causal=True)
    res = sparse_forward(q, k, v, sets, sram=M, **kw)
    o, lse = attention(q, k, v, mask=set_masks(sets, 8).reshape(2, 4, 30, 35), **kw)
    check_outputs(res, o, lse, np.float64)


def test_fully_masked_rows_and_an_empty_band():
    rng = np.random.default_rng(4)
    n, b, d = 30, 8, 4
    q, k, v = (rng.standard_normal((n, d)) for _ in range(3))
    # every query block lists key block 0 and column 20; window (0, 0): each row sees only its own key
    iset = IndexSet.from_lists(n, n, [[0]] * 4, [[20]] * 4, block=b)
    res = sparse_forward(q, k, v, iset, sram=M, window=(0, 0))
    o, lse = attention(q, k, v, causal=True, window=(0, 0), mask=iset.to_mask(causal=False))
    check_outputs(res, o, lse, np.float64)
    seen = np.zeros(n, bool)
    seen[:b] = True
    seen[20] = True
    assert np.array_equal(np.isfinite(res.lse), seen) and np.all(res.o[~seen] == 0)
    assert res.traffic.reads["K"] == d * (b + 1)  # key block 0 for query block 0, column 20 for block 2
    # top-left causal and window (0, 0) with Nk > Nq: the band is empty, nothing is loaded
    k2, v2 = rng.standard_normal((n + 5, d)), rng.standard_normal((n + 5, d))
    full = IndexSet.dense(n, n + 5, block=b, causal=False)
    empty = sparse_forward(q, k2, v2, full, sram=M, causal="top_left", window=(0, 0), trace=True)
    o, lse = attention(q, k2, v2, causal="top_left", window=(0, 0))
    assert np.all(np.isneginf(lse)) and np.all(np.isneginf(empty.lse)) and np.all(empty.o == 0)
    assert "K" not in empty.traffic.reads and empty.flops == 0
    assert sum(e.kind == "skip" for e in empty.trace.events) == full.n_blocks


def test_tiny_problems():
    rng = np.random.default_rng(5)
    for nq, nk in ((1, 1), (1, 5), (4, 1), (2, 3)):
        q, k, v = rng.standard_normal((2, nq, 3)), rng.standard_normal((1, nk, 3)), rng.standard_normal((1, nk, 2))
        iset = IndexSet.from_lists(nq, nk, [[0]], [[]], block=4)
        for window in ((0, 0), (1, -1), (-1, 0)):
            kw = dict(num_kv_heads=1, window=window, softcap=1.5, alibi_slopes=np.array([0.5, 1.0]))
            res = sparse_forward(q, k, v, iset, sram=M, **kw)
            o, lse = attention(q, k, v, causal=True, mask=iset.to_mask(causal=False), **kw)
            check_outputs(res, o, lse, np.float64)


def _stepped_problem():
    rng = np.random.default_rng(6)
    nq, nk = 21, 27
    q = rng.standard_normal((2, nq, 4))
    k, v = rng.standard_normal((1, nk, 4)), rng.standard_normal((1, nk, 3))
    iset = random_set(rng, nq, nk, 4, p_empty=0.1)
    kw = dict(num_kv_heads=1, window=(6, 2), causal=True, softcap=2.0, alibi_slopes=np.array([0.3, 0.1]))
    return q, k, v, iset, kw


def test_stepping_gives_the_partial_softmax_of_the_steps_so_far():
    q, k, v, iset, kw = _stepped_problem()
    full = sparse_forward(q, k, v, iset, sram=M, trace=True, **kw)
    mask = iset.to_mask(causal=False)
    keep = combined_mask(q.shape[1], k.shape[1], True, mask, window=kw["window"])
    b, n = iset.block, full.n_steps
    step, checked = 0, 0
    for h in range(2):
        for qb in range(iset.n_query_blocks):
            r0, r1 = qb * b, min((qb + 1) * b, q.shape[1])
            seen = np.zeros_like(mask)
            units = [np.arange(kb * b, min((kb + 1) * b, k.shape[1])) for kb in iset.blocks_of(qb)]
            cols = iset.columns_of(qb)
            units += [cols[t:t + b] for t in range(0, len(cols), b)]
            for unit in units or [np.zeros(0, int)]:
                step += 1
                seen[r0:r1, unit] = True
                res = sparse_forward(q, k, v, iset, sram=M, stop_after=step, **kw)
                st_ = res.state
                assert st_.step == step and st_.head == h and st_.rows == (r0, r1)
                assert res.traffic == full.trace.traffic_until(step)
                o, lse = attention(q[h], k[0], v[0], mask=mask & seen, causal=True, window=kw["window"],
                                   softcap=2.0, alibi_slopes=kw["alibi_slopes"][h])
                a = st_.arrays
                some = a["l"] > 0
                assert np.array_equal(some, np.isfinite(lse[r0:r1]))
                part = a["o_partial"] if a["o_normalised"] else a["o_partial"] / np.where(some, a["l"], 1)[:, None]
                np.testing.assert_allclose(part[some], o[r0:r1][some], atol=1e-12)
                checked += int(some.any() and keep[r0:r1].any())
    assert step == n and checked > 5
    np.testing.assert_array_equal(res.o, full.o)


def test_count_only_and_the_parallel_path_agree_with_the_traced_run():
    q, k, v, iset, kw = _stepped_problem()
    traced = sparse_forward(q, k, v, iset, sram=M, trace=True, **kw)
    for counted in (sparse_forward(q, k, v, iset, sram=M, count_only=True, trace=True, **kw),
                    sparse_forward(q, k, v, iset, sram=M, count_only=True, **kw)):
        assert counted.outputs == {} and counted.traffic == traced.traffic and counted.plan == traced.plan
        assert (counted.flops, counted.exps, counted.n_steps, counted.peak_sram) == (
            traced.flops, traced.exps, traced.n_steps, traced.peak_sram)
        if counted.trace is not None:
            assert np.array_equal(counted.trace.records, traced.trace.records)
    fast = sparse_forward(q, k, v, iset, sram=M, **kw)  # untraced: the parallel driver
    assert fast.trace is None
    np.testing.assert_array_equal(fast.o, traced.o)
    np.testing.assert_array_equal(fast.lse, traced.lse)
    assert fast.traffic == traced.traffic and fast.flops == traced.flops and fast.n_steps == traced.n_steps


def test_minference_forward_passes_the_variants_through_and_builds_per_query_head():
    from refattn.patterns import build_index
    from refattn.patterns.minference import minference_forward
    from refattn.patterns.search import HeadConfig, PatternConfig

    rng = np.random.default_rng(7)
    hq, hkv, n, d = 4, 2, 150, 16
    q = rng.standard_normal((hq, n, d))
    k, v = rng.standard_normal((hkv, n, d)), rng.standard_normal((hkv, n, d))
    chosen = [("a_shape", {"n_init": 32, "n_local": 64}), ("vertical_slash", {"vertical_size": 40, "slash_size": 60}),
              ("block_sparse", {"top_k": 2}), ("a_shape", {"n_init": 0, "n_local": 32})]
    config = PatternConfig([HeadConfig(p, params, 0.0, 1.0, 0, 0) for p, params in chosen], n, block=32)
    kw = dict(num_kv_heads=hkv, window=(40, 0), softcap=4.0, alibi_slopes=np.full(hq, 0.05))
    res, sets = minference_forward(q, k, v, config, sram=M, return_index_sets=True, **kw)
    for h, (p, params) in enumerate(chosen):
        built = build_index(p, q[h], k[h // 2], params, block=32).index_set  # its own q, its KV head's k
        assert np.array_equal(built.to_mask(causal=False), sets[h].to_mask(causal=False))
    o, lse = attention(q, k, v, causal=True, mask=set_masks(sets, hq), **kw)
    check_outputs(res, o, lse, np.float64)
    assert res.plan.details["window"] == (40, 0)
    with pytest.raises(ValueError, match="num_kv_heads"):
        minference_forward(q, k, v, config, sram=M, num_kv_heads=3)
    with pytest.raises(ValueError, match="head counts differ"):
        minference_forward(q, k, v, config, sram=M)


def test_bad_variant_inputs_are_refused_clearly():
    rng = np.random.default_rng(8)
    q, k = rng.standard_normal((4, 12, 4)), rng.standard_normal((2, 12, 4))
    iset = IndexSet.dense(12, 12, block=4)
    with pytest.raises(ValueError, match="variable-length"):
        sparse_forward(q, q, q, iset, sram=M, cu_seqlens_q=np.array([0, 12]), cu_seqlens_k=np.array([0, 12]))
    with pytest.raises(ValueError, match="num_kv_heads"):
        sparse_forward(q, k, k, iset, sram=M, num_kv_heads=3)
    with pytest.raises(ValueError, match="do not broadcast"):
        sparse_forward(q, k, k, iset, sram=M)  # 4 query heads, 2 KV heads, no num_kv_heads
    with pytest.raises(ValueError, match="got 2 index sets for 4 heads"):
        sparse_forward(q, k, k, [iset, iset], sram=M, num_kv_heads=2)  # one set per query head, not per KV head
    with pytest.raises(ValueError, match="window"):
        sparse_forward(q, q, q, iset, sram=M, window=(-3, 0))
    with pytest.raises(ValueError, match="softcap"):
        sparse_forward(q, q, q, iset, sram=M, softcap=-1.0)
    with pytest.raises(ValueError, match="alibi_slopes"):
        sparse_forward(q, q, q, iset, sram=M, alibi_slopes=np.ones(3))
