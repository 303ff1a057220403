"""FlashAttention forward (FA1, FA2) against the float64 reference, plus stepping, determinism, bad input.

Tolerances (max abs error of o relative to max|v|, and of lse, absolute):
float64: 1e-12 * (1 + smax); float32: 4e-6 * (1 + smax), where smax bounds the
logits |scale * q.k| (rounding in S is relative to it, and exp turns an
absolute error in S into a relative error in P).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refattn import memory
from refattn.kernels import flash
from refattn.kernels.flash import flash_forward
from refattn.reference import attention

TOL = {np.float64: 1e-12, np.float32: 4e-6}


def make_inputs(seed, lead, nq, nk, d, dv, dtype, logit=1.0, mask_p=None):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal(lead + (nq, d)) * logit
    k = rng.standard_normal(lead + (nk, d))
    v = rng.standard_normal(lead + (nk, dv))
    mask = None
    if mask_p is not None:
        mask = rng.random(lead + (nq, nk)) < mask_p
        mask[..., rng.integers(nq), :] = False  # at least one fully masked row
    return q.astype(dtype), k.astype(dtype), v.astype(dtype), mask


def check_forward(res, q, k, v, causal, mask):
    ro, rl = attention(q, k, v, causal=causal, mask=mask)
    q64, k64 = q.astype(np.float64), k.astype(np.float64)
    smax = np.abs(q64).max() * np.abs(k64).max() * q.shape[-1] / np.sqrt(q.shape[-1])
    tol = TOL[q.dtype.type] * (1 + smax)
    assert res.o.dtype == q.dtype and res.lse.dtype == q.dtype
    assert res.o.shape == ro.shape and res.lse.shape == rl.shape
    assert not np.isnan(res.o).any() and not np.isnan(res.lse).any()
    assert np.abs(res.o - ro).max() <= tol * max(np.abs(v).max(), 1e-30)
    dead = np.isneginf(rl)
    assert np.array_equal(np.isneginf(res.lse), dead)
    assert np.all(res.o[dead] == 0)
    assert np.abs(res.lse[~dead] - rl[~dead]).max(initial=0) <= tol * 4


@settings(max_examples=40)
@given(
    seed=st.integers(0, 2**32 - 1),
    variant=st.sampled_from(["fa1", "fa2"]),
    dtype=st.sampled_from([np.float32, np.float64]),
    lead=st.sampled_from([(), (2,), (2, 3)]),
    nq=st.integers(1, 130),
    nk=st.integers(1, 130),
    d=st.integers(1, 40),
    dv=st.integers(1, 40),
    causal=st.sampled_from([False, True, "top_left"]),
    mask_p=st.sampled_from([None, None, 0.05, 0.6]),
    logit=st.sampled_from([1.0, 30.0, 1e3 ** 0.5]),
    block=st.one_of(st.none(), st.tuples(st.integers(1, 40), st.integers(1, 40))),
)
def test_forward_matches_reference(seed, variant, dtype, lead, nq, nk, d, dv, causal, mask_p, logit, block):
    # logit**2 scales q.k: up to ~1e3 times the unit-variance logits
    q, k, v, mask = make_inputs(seed, lead, nq, nk, d, dv, dtype, logit, mask_p)
    k = (k * (logit if logit > 1 else 1)).astype(dtype)
    sram = 1 << 16 if block is not None else int(np.random.default_rng(seed).integers(8 * (d + dv) + 8, 6000))
    res = flash_forward(q, k, v, sram=sram, variant=variant, causal=causal, mask=mask, block=block)
    check_forward(res, q, k, v, causal, mask)
    assert res.peak_sram <= res.sram.capacity


@pytest.mark.parametrize("variant", ["fa1", "fa2"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fully_masked_rows_give_zero_and_neg_inf(variant, dtype):
    q, k, v, _ = make_inputs(1, (2,), 40, 13, 6, 5, dtype)
    # bottom-right causal with Nq > Nk: the first Nq - Nk rows see no key
    res = flash_forward(q, k, v, sram=500, variant=variant, causal=True, block=(7, 4))
    assert np.all(res.o[:, :27] == 0) and np.all(np.isneginf(res.lse[:, :27]))
    assert np.isfinite(res.lse[:, 27:]).all()
    check_forward(res, q, k, v, True, None)
    # an explicit all-False mask
    mask = np.zeros((40, 13), bool)
    res = flash_forward(q, k, v, sram=500, variant=variant, mask=mask, block=(7, 4))
    assert np.all(res.o == 0) and np.all(np.isneginf(res.lse))


def test_default_blocks_follow_the_paper_rule():
    q, k, v, _ = make_inputs(2, (), 1000, 1000, 16, 16, np.float64)
    m = 4096  # ceil(M/4d) = 64 > d = 16
    r1 = flash_forward(q, k, v, sram=m, variant="fa1")
    assert (r1.plan.blocks["Br"], r1.plan.blocks["Bc"]) == (16, 64)  # Bc = ceil(M/4d), Br = min(ceil(M/4d), d)
    r2 = flash_forward(q, k, v, sram=m, variant="fa2")
    assert (r2.plan.blocks["Br"], r2.plan.blocks["Bc"]) == (64, 16)  # FA2 swaps the roles
    assert r2.plan.tiles["Tr"] == 16 and r2.plan.tiles["Tc"] == 63
    # a chip preset name works as the SRAM
    r3 = flash_forward(q, k, v, sram="a100")
    assert r3.sram.capacity == memory.CHIPS["a100"].sram_elements
    # too little SRAM for the rule: shrink until the plan fits
    r4 = flash_forward(q, k, v, sram=300, variant="fa2")
    assert flash.forward_footprint(r4.plan.blocks["Br"], r4.plan.blocks["Bc"], 16, 16, False) <= 300 <= 4 * 16 * 16
    assert r4.plan.on_chip == flash.forward_footprint(r4.plan.blocks["Br"], r4.plan.blocks["Bc"], 16, 16, False)


@pytest.mark.parametrize("variant", ["fa1", "fa2"])
def test_deterministic_and_one_implementation(variant):
    q, k, v, mask = make_inputs(3, (2,), 45, 38, 7, 9, np.float32, mask_p=0.7)
    kw = dict(sram=700, variant=variant, causal=True, mask=mask, block=(8, 6))
    a = flash_forward(q, k, v, trace=True, **kw)
    b = flash_forward(q, k, v, trace=True, **kw)
    fast = flash_forward(q, k, v, **kw)
    for r in (b, fast):
        assert np.array_equal(a.o, r.o) and np.array_equal(a.lse, r.lse)
        assert a.traffic == r.traffic and a.peak_sram == r.peak_sram and a.n_steps == r.n_steps
        assert (a.flops, a.exps) == (r.flops, r.exps)
    assert np.array_equal(a.trace.records, b.trace.records)
    assert fast.trace is None
    # replaying the whole trace gives the counted traffic
    assert a.trace.traffic_until(a.n_steps, 2) == a.traffic
    assert a.trace.n_steps == a.n_steps == a.plan.n_steps


def test_parallel_driver_equals_serial(monkeypatch):
    q, k, v, mask = make_inputs(4, (3,), 70, 50, 8, 6, np.float32, mask_p=0.8)
    kw = dict(sram=900, variant="fa2", causal="top_left", mask=mask, block=(9, 7))
    serial = flash_forward(q, k, v, **kw)
    monkeypatch.setattr(flash, "PARALLEL_MIN_WORK", 0)
    par = flash_forward(q, k, v, **kw)
    assert np.array_equal(serial.o, par.o) and np.array_equal(serial.lse, par.lse)
    assert serial.traffic == par.traffic and serial.peak_sram == par.peak_sram
    assert (serial.n_steps, serial.flops, serial.exps) == (par.n_steps, par.flops, par.exps)


@pytest.mark.parametrize("variant", ["fa1", "fa2"])
def test_stepping_state_matches_full_run(variant):
    q, k, v, _ = make_inputs(5, (2,), 23, 30, 4, 3, np.float64)
    kw = dict(sram=400, variant=variant, causal=True, block=(5, 7))
    full = flash_forward(q, k, v, trace=True, **kw)
    n = full.n_steps
    assert n == 2 * (5 * 5 + (2 if variant == "fa1" else 0))
    for step in sorted({1, 2, 3, 7, n // 2, n - 1, n}):
        res = flash_forward(q, k, v, stop_after=step, **kw)
        s = res.state
        assert res.stopped and s.step == step and res.n_steps == step
        assert s.traffic == full.trace.traffic_until(step) == res.traffic
        assert s.sram == full.trace.sram_at(step)
        assert np.array_equal(res.trace.records, full.trace.records[full.trace.records[:, 0] <= step])
    # the meaning of the state: FA2 after the tile (i=1, j=1) of head 0
    if variant == "fa2":
        res = flash_forward(q, k, v, stop_after=5 + 2, **kw)
        s = res.state
        assert s.rows == (5, 10) and s.cols == (7, 14) and not s.arrays["o_normalised"]
        qq, kk, vv = q[0, 5:10], k[0, :14], v[0, :14]
        sc = qq @ kk.T / 2.0
        sc[np.arange(14)[None, :] > np.arange(5, 10)[:, None] + 7] = -np.inf
        m = sc.max(1)
        p = np.exp(sc - m[:, None])
        np.testing.assert_allclose(s.arrays["m"], m, rtol=1e-13)
        np.testing.assert_allclose(s.arrays["l"], p.sum(1), rtol=1e-13)
        np.testing.assert_allclose(s.arrays["o_partial"], p @ vv, rtol=1e-12)
        # outputs of a stopped run are the HBM contents: block 0 written, the rest not yet
        assert np.array_equal(res.o[0, :5], full.o[0, :5]) and np.all(res.o[0, 5:] == 0)


def test_bad_input_is_refused_clearly():
    q, k, v, _ = make_inputs(6, (), 20, 20, 8, 8, np.float64)
    with pytest.raises(memory.SramTooSmall, match="SRAM too small"):
        flash_forward(q, k, v, sram=30)
    with pytest.raises(memory.SramTooSmall, match="Br=16, Bc=16"):
        flash_forward(q, k, v, sram=500, block=(16, 16))
    with pytest.raises(ValueError, match="variant"):
        flash_forward(q, k, v, sram=1000, variant="fa3")
    for bad in [(0, 4), (4,), (2.5, 4), "ab", (True, 3)]:
        with pytest.raises(ValueError, match="block"):
            flash_forward(q, k, v, sram=1000, block=bad)
    for bad in [0, -1, 10**6, True, 1.5]:
        with pytest.raises(ValueError, match="stop_after"):
            flash_forward(q, k, v, sram=1000, stop_after=bad)
    with pytest.raises(ValueError, match="share the head dim"):
        flash_forward(q, k[:, :5], v, sram=1000)
    with pytest.raises(ValueError, match="share Nk"):
        flash_forward(q, k, v[:7], sram=1000)
    with pytest.raises(TypeError, match="dtype"):
        flash_forward(q.astype(np.float16), k, v, sram=1000)
    with pytest.raises(TypeError, match="one dtype"):
        flash_forward(q.astype(np.float32), k, v, sram=1000)
    with pytest.raises(TypeError, match="floating"):
        flash_forward(q.astype(int), k, v, sram=1000)
    bad = q.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        flash_forward(bad, k, v, sram=1000)
    with pytest.raises(ValueError, match="empty"):
        flash_forward(q[:0], k, v, sram=1000)
    with pytest.raises(ValueError, match="causal"):
        flash_forward(q, k, v, sram=1000, causal="left")
    with pytest.raises(ValueError, match="positive"):
        flash_forward(q, k, v, sram=0)
