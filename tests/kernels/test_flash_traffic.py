"""Counted HBM traffic of the flash kernels == the closed forms in their docstrings, exactly.

The closed forms are re-derived here from the algorithms (not from the kernels'
code): J_i visible key blocks per query block, then sums over blocks.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refattn.kernels.flash import flash_forward
from refattn.kernels.flash_backward import flash_backward


def block_sums(nq, nk, br, bc, causal):
    """(R, C, A, Qr, Kc, Tr, Tc) of the module docstring."""
    tr, tc = -(-nq // br), -(-nk // bc)
    off = nk - nq if causal == "bottom_right" else 0
    R = C = A = Qr = 0
    jmax = 0
    for i in range(tr):
        r1 = min((i + 1) * br, nq)
        bri = r1 - i * br
        J = tc if causal is None else min(max((r1 - 1 + off) // bc + 1, 0), tc)
        cols = min(J * bc, nk)
        R += bri * J
        C += cols
        A += bri * cols
        Qr += bri if J > 0 else 0
        jmax = max(jmax, J)
    return R, C, A, Qr, min(jmax * bc, nk), tr, tc


def expected_forward(variant, nb, nq, nk, d, dv, br, bc, causal, masked):
    R, C, A, Qr, Kc, tr, tc = block_sums(nq, nk, br, bc, causal)
    if variant == "fa2":
        reads = {"Q": d * Qr, "K": d * C, "V": dv * C}
        writes = {"O": nq * dv, "L": nq}
    else:
        reads = {"K": d * Kc, "V": dv * Kc, "Q": d * R, "O": dv * R, "l": R + nq, "m": R + nq}
        writes = {"O": nq * dv + dv * R, "l": nq + R, "m": nq + R, "L": nq}
    if masked:
        reads["mask"] = A
    scale = lambda dct: {n: nb * x for n, x in dct.items() if x}
    return scale(reads), scale(writes)


def expected_backward(nb, nq, nk, d, dv, br, bc, causal, masked):
    R, C, A, Qr, Kc, tr, tc = block_sums(nq, nk, br, bc, causal)
    reads = {"O": nq * dv, "dO": nq * dv + dv * R, "D": R, "dQ": d * R, "Q": d * R, "L": R,
             "K": d * Kc, "V": dv * Kc}
    writes = {"D": nq, "dQ": nq * d + d * R, "dK": nk * d, "dV": nk * dv}
    if masked:
        reads["mask"] = A
    scale = lambda dct: {n: nb * x for n, x in dct.items() if x}
    return scale(reads), scale(writes)


def inputs(seed, nb, nq, nk, d, dv, masked):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((nb, n, w)) for n, w in ((nq, d), (nk, d), (nk, dv)))
    mask = rng.random((nb, nq, nk)) < 0.5 if masked else None
    return q, k, v, mask


@settings(max_examples=30)
@given(seed=st.integers(0, 2**31), nb=st.integers(1, 2), nq=st.integers(1, 150), nk=st.integers(1, 150),
       d=st.integers(1, 24), dv=st.integers(1, 24), variant=st.sampled_from(["fa1", "fa2"]),
       causal=st.sampled_from([None, "bottom_right", "top_left"]), masked=st.booleans(),
       m_extra=st.integers(0, 5000))
def test_forward_traffic_equals_closed_form(seed, nb, nq, nk, d, dv, variant, causal, masked, m_extra):
    q, k, v, mask = inputs(seed, nb, nq, nk, d, dv, masked)
    sram = 2 * (d + dv) + 6 + m_extra
    res = flash_forward(q, k, v, sram=sram, variant=variant, causal=causal or False, mask=mask)
    br, bc = res.plan.blocks["Br"], res.plan.blocks["Bc"]
    reads, writes = expected_forward(variant, nb, nq, nk, d, dv, br, bc, causal, masked)
    assert res.traffic.reads == reads
    assert res.traffic.writes == writes
    assert res.peak_sram <= sram


@settings(max_examples=25)
@given(seed=st.integers(0, 2**31), nb=st.integers(1, 2), nq=st.integers(1, 120), nk=st.integers(1, 120),
       d=st.integers(1, 20), dv=st.integers(1, 20), causal=st.sampled_from([None, "bottom_right", "top_left"]),
       masked=st.booleans(), m_extra=st.integers(0, 5000))
def test_backward_traffic_equals_closed_form(seed, nb, nq, nk, d, dv, causal, masked, m_extra):
    q, k, v, mask = inputs(seed, nb, nq, nk, d, dv, masked)
    rng = np.random.default_rng(seed + 1)
    o, lse, do = rng.standard_normal((nb, nq, dv)), rng.standard_normal((nb, nq)), rng.standard_normal((nb, nq, dv))
    sram = 4 * (d + dv) + 2 * dv + d + 8 + m_extra
    res = flash_backward(q, k, v, o, lse, do, sram=sram, causal=causal or False, mask=mask)
    br, bc = res.plan.blocks["Br"], res.plan.blocks["Bc"]
    reads, writes = expected_backward(nb, nq, nk, d, dv, br, bc, causal, masked)
    assert res.traffic.reads == reads
    assert res.traffic.writes == writes
    assert res.peak_sram <= sram


def test_no_causal_totals_match_the_simple_formulas():
    nq, nk, d, dv = 100, 90, 8, 6
    q, k, v, _ = inputs(0, 1, nq, nk, d, dv, False)
    for variant in ("fa1", "fa2"):
        res = flash_forward(q, k, v, sram=2000, variant=variant)
        tr, tc = res.plan.tiles["Tr"], res.plan.tiles["Tc"]
        if variant == "fa2":
            assert res.traffic.total == nq * d + tr * nk * (d + dv) + nq * dv + nq
        else:
            assert res.traffic.total == nk * (d + dv) + tc * nq * (d + 2 * dv + 4) + nq * (dv + 5)
    o, lse, do = np.zeros((nq, dv)), np.zeros(nq), np.ones((nq, dv))
    res = flash_backward(q[0], k[0], v[0], o, lse, do, sram=3000)
    tc = res.plan.tiles["Tc"]
    assert res.traffic.total == nq * (2 * dv + 1 + d) + tc * nq * (3 * d + dv + 2) + nk * (2 * d + 2 * dv)


@pytest.mark.parametrize("kernel", ["fa1", "fa2", "backward"])
def test_traffic_falls_as_one_over_m(kernel):
    """Theta(N^2 d^2 / M): quadrupling M cuts the dominant (per-pass) term about 4x."""
    n, d = 1024, 16
    q, k, v, _ = inputs(1, 1, n, n, d, d, False)
    o, lse, do = np.zeros((n, d)), np.zeros(n), np.ones((n, d))
    totals = []
    for m in (4096, 16384, 65536):
        if kernel == "backward":
            res = flash_backward(q[0], k[0], v[0], o, lse, do, sram=m)
            dominant = res.traffic.total - (n * (2 * d + 1 + d) + n * 4 * d)
        else:
            res = flash_forward(q[0], k[0], v[0], sram=m, variant=kernel)
            dominant = res.traffic.total - (2 * n * d + n if kernel == "fa2" else 2 * n * d + n * (d + 5))
        assert res.peak_sram <= res.sram.capacity
        totals.append((res.traffic.total, dominant))
    for (t0, d0), (t1, d1) in zip(totals, totals[1:]):
        assert t1 < t0
        assert 3.0 <= d0 / d1 <= 5.0, totals
