"""FlashAttention backward (recomputation) against the float64 reference gradients.

Tolerance: max abs error of each gradient <= tol * (1 + smax) * G, with G the
largest reference gradient entry (of dq, dk, dv together) and smax a bound on
the logits; tol = 1e-12 (float64), 4e-6 (float32).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refattn import memory
from refattn.kernels.flash import flash_forward
from refattn.kernels.flash_backward import flash_backward
from refattn.reference import attention, attention_backward

TOL = {np.float64: 1e-12, np.float32: 4e-6}


def make(seed, lead, nq, nk, d, dv, dtype, logit=1.0, mask_p=None, klead=None):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal(lead + (nq, d)) * logit
    k = rng.standard_normal((klead or lead) + (nk, d)) * logit
    v = rng.standard_normal((klead or lead) + (nk, dv))
    do = rng.standard_normal(lead + (nq, dv))
    mask = None
    if mask_p is not None:
        mask = rng.random(lead + (nq, nk)) < mask_p
        mask[..., rng.integers(nq), :] = False
    return [x.astype(dtype) for x in (q, k, v, do)] + [mask]


def check_grads(res, q, k, v, do, causal, mask):
    ref = attention_backward(q, k, v, do, causal=causal, mask=mask)
    smax = np.abs(q).max() * np.abs(k).max() * np.sqrt(q.shape[-1])
    g = max(np.abs(r).max() for r in ref)
    tol = TOL[q.dtype.type] * (1 + smax) * g
    for name, r in zip(("dq", "dk", "dv"), ref):
        got = res.outputs[name]
        assert got.shape == r.shape and got.dtype == q.dtype, name
        assert not np.isnan(got).any()
        err = np.abs(got - r).max()
        assert err <= tol, (name, err, tol)


@settings(max_examples=30)
@given(
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from([np.float32, np.float64]),
    lead=st.sampled_from([(), (2,), (2, 2)]),
    nq=st.integers(1, 100),
    nk=st.integers(1, 100),
    d=st.integers(1, 33),
    dv=st.integers(1, 33),
    causal=st.sampled_from([False, True, "top_left"]),
    mask_p=st.sampled_from([None, None, 0.05, 0.6]),
    logit=st.sampled_from([1.0, 5.0, 30.0]),
    block=st.one_of(st.none(), st.tuples(st.integers(1, 30), st.integers(1, 30))),
)
def test_backward_matches_reference(seed, dtype, lead, nq, nk, d, dv, causal, mask_p, logit, block):
    q, k, v, do, mask = make(seed, lead, nq, nk, d, dv, dtype, logit, mask_p)
    o, lse = attention(q, k, v, causal=causal, mask=mask)
    sram = 1 << 17 if block is not None else int(np.random.default_rng(seed).integers(6 * (d + dv) + 8, 9000))
    res = flash_backward(q, k, v, o.astype(dtype), lse, do, sram=sram, causal=causal, mask=mask, block=block)
    check_grads(res, q, k, v, do, causal, mask)
    assert res.peak_sram <= sram


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_then_backward_with_broadcast_heads(dtype):
    q, k, v, do, _ = make(7, (2, 3), 33, 41, 6, 5, dtype, klead=(2, 1))
    f = flash_forward(q, k, v, sram=600, causal=True)
    res = flash_backward(q, k, v, f.o, f.lse, do, sram=900, causal=True)
    assert res.dk.shape == k.shape and res.dv.shape == v.shape
    check_grads(res, q, k, v, do, True, None)


def test_deterministic_stepping_and_trace():
    q, k, v, do, mask = make(8, (2,), 19, 26, 4, 3, np.float64, mask_p=0.8)
    o, lse = attention(q, k, v, causal="top_left", mask=mask)
    kw = dict(sram=500, causal="top_left", mask=mask, block=(5, 6))
    full = flash_backward(q, k, v, o, lse, do, trace=True, **kw)
    again = flash_backward(q, k, v, o, lse, do, trace=True, **kw)
    fast = flash_backward(q, k, v, o, lse, do, **kw)
    for r in (again, fast):
        for name in ("dq", "dk", "dv"):
            assert np.array_equal(full.outputs[name], r.outputs[name])
        assert full.traffic == r.traffic and full.peak_sram == r.peak_sram and full.flops == r.flops
    assert np.array_equal(full.trace.records, again.trace.records)
    tr, tc = full.plan.tiles["Tr"], full.plan.tiles["Tc"]
    assert full.n_steps == 2 * (tr + tr * tc)
    assert full.trace.traffic_until(full.n_steps) == full.traffic
    for step in sorted({1, tr, tr + 1, tr + 3, full.n_steps - 1, full.n_steps}):
        res = flash_backward(q, k, v, o, lse, do, stop_after=step, **kw)
        assert res.state.step == step
        assert res.state.traffic == full.trace.traffic_until(step) == res.traffic
        assert res.state.sram == full.trace.sram_at(step)
    # after the first key block of head 0 finished, its dK, dV rows are final in HBM
    res = flash_backward(q, k, v, o, lse, do, stop_after=tr + tr, **kw)
    assert res.state.cols == (0, 6)
    np.testing.assert_array_equal(res.dk[0, :6], full.dk[0, :6])
    np.testing.assert_array_equal(res.dv[0, :6], full.dv[0, :6])


def test_backward_bad_input():
    q, k, v, do, _ = make(9, (), 10, 12, 4, 3, np.float64)
    o, lse = attention(q, k, v)
    with pytest.raises(memory.SramTooSmall, match="SRAM too small"):
        flash_backward(q, k, v, o, lse, do, sram=20)
    with pytest.raises(ValueError, match="do has shape"):
        flash_backward(q, k, v, o, lse, do[:, :2], sram=2000)
    with pytest.raises(ValueError, match="lse has shape"):
        flash_backward(q, k, v, o, lse[:5], do, sram=2000)
    bad = lse.copy()
    bad[2] = np.nan
    with pytest.raises(ValueError, match="lse contains NaN"):
        flash_backward(q, k, v, o, bad, do, sram=2000)
    bad = o.copy()
    bad[1, 1] = np.inf
    with pytest.raises(ValueError, match="o contains NaN or Inf"):
        flash_backward(q, k, v, bad, lse, do, sram=2000)
    with pytest.raises(TypeError, match="floating"):
        flash_backward(q, k, v, o, lse, do.astype(int), sram=2000)
    with pytest.raises(ValueError, match="stop_after"):
        flash_backward(q, k, v, o, lse, do, sram=2000, stop_after=10**5)
    with pytest.raises(ValueError, match="share Nk"):
        flash_backward(q, k, v[:3], o, lse, do, sram=2000)
    # lse = -inf is allowed (a fully masked row): that row gets dq = 0
    mask = np.ones((10, 12), bool)
    mask[4] = False
    o, lse = attention(q, k, v, mask=mask)
    res = flash_backward(q, k, v, o, lse, do, sram=2000, mask=mask)
    assert np.all(res.dq[4] == 0)
    check_grads(res, q, k, v, do, False, mask)
