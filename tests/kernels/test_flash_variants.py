"""The flash kernels with GQA/MQA, sliding windows, softcap and ALiBi (docs/variants.md):
against the float64 reference, the traffic closed forms of their docstrings, and the skips in the trace.

The closed forms are derived here from the reference's keep-mask (a tile is visited iff it holds a
visible entry), not from the kernels' band arithmetic.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refattn.kernels.flash import flash_forward
from refattn.kernels.flash_backward import flash_backward
from refattn.reference import attention, attention_backward, combined_mask


@st.composite
def variant_cases(draw, max_n=70):
    hkv = draw(st.integers(1, 2))
    side = st.one_of(st.just(-1), st.integers(0, 40))
    return dict(
        hkv=hkv, hq=hkv * draw(st.integers(1, 3)), nq=draw(st.integers(1, max_n)), nk=draw(st.integers(1, max_n)),
        d=draw(st.integers(1, 12)), dv=draw(st.integers(1, 12)),
        window=draw(st.one_of(st.none(), st.tuples(side, side))),
        causal=draw(st.sampled_from([False, "bottom_right", "top_left"])),
        softcap=draw(st.sampled_from([None, 0.0, 0.7, 5.0])), alibi=draw(st.booleans()),
        gqa=draw(st.booleans()), masked=draw(st.booleans()), m_extra=draw(st.integers(0, 4000)),
        seed=draw(st.integers(0, 2**31)))


def make(c):
    rng = np.random.default_rng(c["seed"])
    hk = c["hkv"] if c["gqa"] else c["hq"]
    q = rng.standard_normal((c["hq"], c["nq"], c["d"])) * 2
    k = rng.standard_normal((hk, c["nk"], c["d"]))
    v = rng.standard_normal((hk, c["nk"], c["dv"]))
    kw = dict(causal=c["causal"], window=c["window"], softcap=c["softcap"],
              alibi_slopes=rng.uniform(0, 1, c["hq"]) if c["alibi"] else None,
              num_kv_heads=c["hkv"] if c["gqa"] else None,
              mask=rng.random((c["nq"], c["nk"])) < 0.7 if c["masked"] else None)
    return q, k, v, kw


def tile_sums(nq, nk, br, bc, keep):
    """(R, C, A, Qr, Kc): the sums of refattn/kernels/flash.py over the tiles that hold a visible entry."""
    tr, tc = -(-nq // br), -(-nk // bc)
    R = C = A = Qr = 0
    key_rows = np.zeros(nk, bool)
    for i in range(tr):
        r0, r1 = i * br, min((i + 1) * br, nq)
        vis = [j for j in range(tc) if keep is None or keep[r0:r1, j * bc:min((j + 1) * bc, nk)].any()]
        cols = sum(min((j + 1) * bc, nk) - j * bc for j in vis)
        if vis:  # the visible key blocks form one contiguous range
            assert vis == list(range(vis[0], vis[-1] + 1))
        R, C, A, Qr = R + (r1 - r0) * len(vis), C + cols, A + (r1 - r0) * cols, Qr + (r1 - r0 if vis else 0)
        for j in vis:
            key_rows[j * bc:min((j + 1) * bc, nk)] = True
    return R, C, A, Qr, int(key_rows.sum())


def expected(kernel, c, plan):
    nq, nk, d, dv = c["nq"], c["nk"], c["d"], c["dv"]
    hq, hk = c["hq"], (c["hkv"] if c["gqa"] else c["hq"])
    keep = combined_mask(nq, nk, c["causal"], None, window=c["window"])
    R, C, A, Qr, Kc = tile_sums(nq, nk, plan.blocks["Br"], plan.blocks["Bc"], keep)
    if kernel == "fa2":
        reads, writes = {"Q": hq * d * Qr, "K": hq * d * C, "V": hq * dv * C}, {"O": hq * nq * dv, "L": hq * nq}
    elif kernel == "fa1":
        reads = {"K": hk * d * Kc, "V": hk * dv * Kc, "Q": hq * d * R, "O": hq * dv * R, "l": hq * (R + nq),
                 "m": hq * (R + nq)}
        writes = {"O": hq * (nq * dv + dv * R), "l": hq * (nq + R), "m": hq * (nq + R), "L": hq * nq}
    else:
        reads = {"O": hq * nq * dv, "dO": hq * (nq * dv + dv * R), "D": hq * R, "dQ": hq * d * R, "Q": hq * d * R,
                 "L": hq * R, "K": hk * d * Kc, "V": hk * dv * Kc}
        writes = {"D": hq * nq, "dQ": hq * (nq * d + d * R), "dK": hk * nk * d, "dV": hk * nk * dv}
    if c["masked"]:
        reads["mask"] = hq * A
    drop = lambda dct: {n: x for n, x in dct.items() if x}
    return drop(reads), drop(writes)


@settings(max_examples=25)
@given(c=variant_cases(), variant=st.sampled_from(["fa1", "fa2"]))
def test_forward_variants_match_reference_and_closed_forms(c, variant):
    q, k, v, kw = make(c)
    sram = 2 * (c["d"] + c["dv"]) + 7 + c["m_extra"]
    res = flash_forward(q, k, v, sram=sram, variant=variant, **kw)
    o, lse = attention(q, k, v, **kw)
    np.testing.assert_allclose(res.o, o, atol=1e-12)
    assert np.array_equal(np.isneginf(res.lse), np.isneginf(lse))
    np.testing.assert_allclose(res.lse[np.isfinite(lse)], lse[np.isfinite(lse)], atol=1e-12)
    reads, writes = expected(variant, c, res.plan)
    assert res.traffic.reads == reads
    assert res.traffic.writes == writes
    assert res.peak_sram <= sram


@settings(max_examples=20)
@given(c=variant_cases(max_n=50))
def test_backward_variants_match_reference_and_closed_forms(c):
    q, k, v, kw = make(c)
    do = np.random.default_rng(c["seed"] + 1).standard_normal(q.shape[:-1] + (c["dv"],))
    o, lse = attention(q, k, v, **kw)
    sram = 5 * (c["d"] + c["dv"]) + 9 + c["m_extra"]
    res = flash_backward(q, k, v, o, lse, do, sram=sram, **kw)
    for got, want in zip((res.dq, res.dk, res.dv), attention_backward(q, k, v, do, **kw)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-11)
    reads, writes = expected("backward", c, res.plan)
    assert res.traffic.reads == reads
    assert res.traffic.writes == writes
    assert res.peak_sram <= sram


def test_float32_variants_stay_close_to_the_reference():
    rng = np.random.default_rng(1)
    q = rng.standard_normal((4, 100, 16)).astype(np.float32)
    k, v = (rng.standard_normal((2, 90, 16)).astype(np.float32) for _ in range(2))
    kw = dict(num_kv_heads=2, window=(20, 3), causal=True, softcap=3.0, alibi_slopes=np.full(4, 0.1))
    o, lse = attention(q, k, v, **kw)
    res = flash_forward(q, k, v, sram=3000, **kw)
    assert res.o.dtype == np.float32 and np.abs(res.o - o).max() < 1e-5
    do = rng.standard_normal(o.shape).astype(np.float32)
    g = flash_backward(q, k, v, res.o, res.lse, do, sram=4000, **kw)
    for got, want in zip((g.dq, g.dk, g.dv), attention_backward(q, k, v, do, **kw)):
        assert np.abs(got - want).max() < 1e-4


def test_window_skips_tiles_and_the_trace_shows_each_skip():
    # N = 256, 32 x 32 tiles (8 x 8), window (32, 0): query block i sees key blocks i-1 and i only.
    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal((256, 16)) for _ in range(3))
    dense = flash_forward(q, k, v, sram=20_000, block=(32, 32), trace=True)
    win = flash_forward(q, k, v, sram=20_000, block=(32, 32), window=(32, 0), trace=True)
    skips = [e for e in win.trace.events if e.kind == "skip"]
    assert len(skips) == 64 - 15 and not any(e.kind == "skip" for e in dense.trace.events)
    assert {(e.rows, e.cols) for e in skips} == {
        ((32 * i, 32 * i + 32), (32 * j, 32 * j + 32)) for i in range(8) for j in range(8) if j not in (i - 1, i)}
    assert win.flops * 64 == dense.flops * 15
    # K and V: 15 tiles of 32 keys read instead of 64
    assert win.traffic.reads["K"] * 64 == dense.traffic.reads["K"] * 15
    np.testing.assert_allclose(win.o, attention(q, k, v, window=(32, 0))[0], atol=1e-12)


def test_gqa_reads_each_kv_head_once_per_group_in_fa1_and_the_backward():
    rng = np.random.default_rng(3)
    hq, hkv, n, d = 8, 2, 64, 8
    q = rng.standard_normal((hq, n, d))
    k, v = rng.standard_normal((hkv, n, d)), rng.standard_normal((hkv, n, d))
    kw = dict(sram=800, num_kv_heads=hkv)
    fa1 = flash_forward(q, k, v, variant="fa1", **kw)
    fa2 = flash_forward(q, k, v, variant="fa2", **kw)
    assert fa1.traffic.reads["K"] == hkv * n * d  # once per KV head
    assert fa2.traffic.reads["K"] == hq * fa2.plan.tiles["Tr"] * n * d  # once per query head and query block
    mha = flash_forward(q, np.repeat(k, 4, 0), np.repeat(v, 4, 0), variant="fa1", sram=800)
    assert mha.traffic.reads["K"] == hq * n * d and np.array_equal(mha.o, fa1.o)
    do = rng.standard_normal(q.shape)
    bw = flash_backward(q, k, v, fa1.o, fa1.lse, do, **kw)
    assert bw.traffic.reads["K"] == hkv * n * d and bw.traffic.writes["dK"] == hkv * n * d
    assert bw.dk.shape == k.shape


def test_fa1_gqa_steps_run_the_group_inside_the_key_loop():
    rng = np.random.default_rng(4)
    q, k, v = rng.standard_normal((4, 20, 4)), rng.standard_normal((2, 20, 4)), rng.standard_normal((2, 20, 4))
    res = flash_forward(q, k, v, sram=400, variant="fa1", block=(10, 10), num_kv_heads=2, trace=True)
    assert res.n_steps == res.plan.n_steps == 2 * (2 * 2 * 2 + 2)
    k_loads = [e for e in res.trace.events if e.kind == "load" and e.tensor == "K"]
    assert len(k_loads) == 2 * 2  # two key blocks per KV head, each loaded once
    full = res.o
    for k_ in range(1, res.n_steps + 1):
        st = flash_forward(q, k, v, sram=400, variant="fa1", block=(10, 10), num_kv_heads=2, stop_after=k_)
        assert st.state.step == k_
    np.testing.assert_array_equal(st.o, full)


def test_varlen_is_refused_by_kernels_that_do_not_walk_the_tile_layout():
    from refattn.kernels.variant_args import prepare_variants

    q = np.zeros((6, 4))
    with pytest.raises(ValueError, match="variable-length"):
        prepare_variants(q, q, q, cu_seqlens_q=np.array([0, 6]), cu_seqlens_k=np.array([0, 6]), where="sparse")


def test_bad_variants_are_refused_before_any_work():
    q, k = np.zeros((4, 6, 4)), np.zeros((3, 6, 4))
    with pytest.raises(ValueError, match="num_kv_heads"):
        flash_forward(q, k, k, sram=500, num_kv_heads=3)
    with pytest.raises(ValueError, match="window"):
        flash_backward(q, q, q, q, np.zeros((4, 6)), q, sram=900, window=(-3, 0))


def test_parallel_fa2_driver_agrees_with_the_serial_one_on_variants():
    rng = np.random.default_rng(5)
    q = rng.standard_normal((4, 512, 16))
    k, v = rng.standard_normal((2, 512, 16)), rng.standard_normal((2, 512, 16))
    kw = dict(sram=6000, num_kv_heads=2, window=(100, 7), softcap=4.0, alibi_slopes=np.linspace(0.01, 0.1, 4))
    fast = flash_forward(q, k, v, **kw)  # untraced and big enough: the parallel driver
    serial = flash_forward(q, k, v, trace=True, **kw)
    np.testing.assert_array_equal(fast.o, serial.o)
    assert fast.traffic.reads == serial.traffic.reads and fast.traffic.writes == serial.traffic.writes
    np.testing.assert_allclose(fast.o, attention(q, k, v, **{n: x for n, x in kw.items() if n != "sram"})[0],
                               atol=1e-12)


def test_softcap_backward_keeps_its_dtanh_tile_on_chip_and_says_so():
    rng = np.random.default_rng(6)
    q, k, v, do = (rng.standard_normal((20, 4)) for _ in range(4))
    o, lse = attention(q, k, v, softcap=2.0)
    res = flash_backward(q, k, v, o, lse, do, sram=600, softcap=2.0, trace=True)
    plain = flash_backward(q, k, v, o, lse, do, sram=600, block=(res.plan.blocks["Br"], res.plan.blocks["Bc"]))
    br, bc = res.plan.blocks["Br"], res.plan.blocks["Bc"]
    assert res.plan.footprint["dtanh_ij"] == br * bc and plain.plan.footprint["dtanh_ij"] == 0
    assert any(e.kind == "compute" and e.tensor == "dtanh" for e in res.trace.events)
    assert res.traffic.reads == plain.traffic.reads  # the cap costs on-chip space, no HBM traffic


def test_parallel_backward_driver_agrees_with_the_serial_one_on_gqa_and_variants():
    rng = np.random.default_rng(7)
    q, do = rng.standard_normal((4, 384, 16)), rng.standard_normal((4, 384, 16))
    k, v = rng.standard_normal((2, 384, 16)), rng.standard_normal((2, 384, 16))
    kw = dict(num_kv_heads=2, window=(90, 5), softcap=3.0, alibi_slopes=np.linspace(0.02, 0.2, 4))
    o, lse = attention(q, k, v, **kw)
    fast = flash_backward(q, k, v, o, lse, do, sram=6000, **kw)  # untraced and big enough: the parallel driver
    serial = flash_backward(q, k, v, o, lse, do, sram=6000, trace=True, **kw)
    for a, b in zip((fast.dq, fast.dk, fast.dv), (serial.dq, serial.dk, serial.dv)):
        np.testing.assert_array_equal(a, b)
    assert fast.traffic.reads == serial.traffic.reads and fast.traffic.writes == serial.traffic.writes
    for got, want in zip((fast.dq, fast.dk, fast.dv), attention_backward(q, k, v, do, **kw)):
        np.testing.assert_allclose(got, want, atol=1e-11)


def test_count_only_runs_count_the_same_with_variants():
    rng = np.random.default_rng(8)
    q, do = rng.standard_normal((4, 70, 8)), rng.standard_normal((4, 70, 8))
    k, v = rng.standard_normal((2, 90, 8)), rng.standard_normal((2, 90, 8))
    kw = dict(sram=900, num_kv_heads=2, window=(20, 3), causal=True, softcap=2.0, alibi_slopes=np.full(4, 0.1))
    for variant in ("fa1", "fa2"):
        full, counted = (flash_forward(q, k, v, variant=variant, count_only=c, **kw) for c in (False, True))
        assert counted.traffic.reads == full.traffic.reads and counted.traffic.writes == full.traffic.writes
        assert (counted.flops, counted.n_steps, counted.peak_sram) == (full.flops, full.n_steps, full.peak_sram)
    o, lse = attention(q, k, v, **{n: x for n, x in kw.items() if n != "sram"})
    full, counted = (flash_backward(q, k, v, o, lse, do, count_only=c, **kw) for c in (False, True))
    assert counted.traffic.reads == full.traffic.reads and counted.traffic.writes == full.traffic.writes
    assert (counted.flops, counted.n_steps) == (full.flops, full.n_steps)
