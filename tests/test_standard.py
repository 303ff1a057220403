"""The standard (three-pass) kernel: values against the float64 reference, counts against its closed form.

Tolerances: float64 1e-10 absolute on outputs/gradients of O(1) inputs;
float32 2e-4 absolute (S, P and the accumulators are float32 throughout).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refattn import memory
from refattn.kernels.standard import matmul_blocks, row_blocks, standard_backward, standard_forward
from refattn.reference import attention, attention_backward

TOL = {np.float64: 1e-10, np.float32: 2e-4}


def _inputs(seed, lead, nq, nk, d, dv, dtype, logit=1.0):
    rng = np.random.default_rng(seed)
    q = (rng.standard_normal(lead + (nq, d)) * logit).astype(dtype)
    k = rng.standard_normal(lead + (nk, d)).astype(dtype)
    v = rng.standard_normal(lead + (nk, dv)).astype(dtype)
    do = rng.standard_normal(lead + (nq, dv)).astype(dtype)
    return rng, q, k, v, do


case = st.fixed_dictionaries({
    "seed": st.integers(0, 2**32 - 1),
    "lead": st.sampled_from([(), (2,), (1, 2)]),
    "nq": st.integers(1, 40), "nk": st.integers(1, 40),
    "d": st.integers(1, 9), "dv": st.integers(1, 9),
    "dtype": st.sampled_from([np.float32, np.float64]),
    "causal": st.sampled_from([False, True, "top_left"]),
    "masked": st.booleans(),
    "m_extra": st.sampled_from([0, 7, 100, 10**6]),
})


@settings(max_examples=25)
@given(case)
def test_forward_and_backward_match_reference(c):
    rng, q, k, v, do = _inputs(c["seed"], c["lead"], c["nq"], c["nk"], c["d"], c["dv"], c["dtype"])
    mask = rng.random(c["lead"] + (c["nq"], c["nk"])) < 0.6 if c["masked"] else None
    M = 3 * max(c["d"], c["dv"]) + 3 + c["m_extra"]  # from the smallest plan that fits to everything on chip
    tol = TOL[c["dtype"]]
    o, lse = attention(q, k, v, causal=c["causal"], mask=mask)
    r = standard_forward(q, k, v, sram=M, causal=c["causal"], mask=mask)
    assert r.o.dtype == c["dtype"] and r.o.shape == o.shape and r.lse.shape == lse.shape
    np.testing.assert_allclose(r.o, o, atol=tol, rtol=0)
    assert np.array_equal(np.isneginf(r.lse), np.isneginf(lse))  # fully masked rows: -inf, nowhere else
    fin = np.isfinite(lse)
    np.testing.assert_allclose(r.lse[fin], lse[fin], atol=tol, rtol=0)
    assert np.all(r.o[~fin] == 0) and not np.any(np.isnan(r.o))
    assert r.peak_sram <= M

    g = attention_backward(q, k, v, do, causal=c["causal"], mask=mask)
    b = standard_backward(q, k, v, r.o, do, sram=M, causal=c["causal"], mask=mask)
    for name, got, want in zip(("dq", "dk", "dv"), (b.dq, b.dk, b.dv), g):
        np.testing.assert_allclose(got, want, atol=tol * 5, rtol=0, err_msg=name)
    assert b.peak_sram <= M


@pytest.mark.parametrize("causal", [True, "top_left"])
def test_large_logits_and_fully_masked_rows(causal):
    # Nq > Nk with bottom-right causal: the first Nq - Nk rows see no key at all.
    _, q, k, v, do = _inputs(1, (), 12, 5, 4, 3, np.float64, logit=300.0)
    r = standard_forward(q, k, v, sram=64, causal=causal)
    o, lse = attention(q, k, v, causal=causal)
    assert np.all(np.isfinite(r.o))
    np.testing.assert_allclose(r.o, o, atol=1e-9, rtol=0)
    assert np.array_equal(np.isneginf(r.lse), np.isneginf(lse))
    if causal is True:
        assert np.all(r.o[:7] == 0) and np.all(np.isneginf(r.lse[:7]))
    b = standard_backward(q, k, v, r.o, do, sram=64, causal=causal)
    for got, want in zip((b.dq, b.dk, b.dv), attention_backward(q, k, v, do, causal=causal)):
        np.testing.assert_allclose(got, want, atol=1e-7, rtol=1e-9)


# ---------------------------------------------------------------------------
# Traffic: counted == closed form of the docstring, exactly
# ---------------------------------------------------------------------------
def _cdiv(a, b):
    return -(-a // b)


def closed_form_forward(nq, nk, d, dv, plan, has_mask, heads):
    """The docstring's forward table, written out independently of the kernel."""
    t1, t3 = _cdiv(nq, plan["F1"][0]), _cdiv(nq, plan["F3"][0])
    whole = plan["F2"][1] == nk
    reads = {"Q": nq * d, "K": t1 * nk * d, "S": nq * nk * (1 if whole else 2), "P": nq * nk, "V": t3 * nk * dv}
    if has_mask:
        reads["mask"] = nq * nk
    writes = {"S": nq * nk, "P": nq * nk, "L": nq, "O": nq * dv}
    return ({n: x * heads for n, x in reads.items()}, {n: x * heads for n, x in writes.items()})


def closed_form_backward(nq, nk, d, dv, plan, heads):
    t = {x: _cdiv(nk if x in ("B1", "B5") else nq, plan[x][0]) for x in ("B1", "B2", "B4", "B5")}
    reads = {"P": 2 * nq * nk, "dO": t["B1"] * nq * dv + nq * dv, "O": nq * dv, "V": t["B2"] * nk * dv,
             "dP": nq * nk, "D": nq, "dS": 2 * nq * nk, "K": t["B4"] * nk * d, "Q": t["B5"] * nq * d}
    writes = {"dV": nk * dv, "dP": nq * nk, "D": nq, "dS": nq * nk, "dQ": nq * d, "dK": nk * d}
    return ({n: x * heads for n, x in reads.items()}, {n: x * heads for n, x in writes.items()})


@settings(max_examples=30)
@given(nq=st.integers(1, 70), nk=st.integers(1, 70), d=st.integers(1, 12), dv=st.integers(1, 12),
       m_extra=st.integers(0, 6000), heads=st.integers(1, 3), masked=st.booleans(),
       causal=st.sampled_from([False, True]))
def test_traffic_equals_closed_form(nq, nk, d, dv, m_extra, heads, masked, causal):
    M = 3 * max(d, dv) + 3 + m_extra
    rng, q, k, v, do = _inputs(0, (heads,), nq, nk, d, dv, np.float32)
    mask = rng.random((heads, nq, nk)) < 0.5 if masked else None
    r = standard_forward(q, k, v, sram=M, causal=causal, mask=mask)
    passes = r.plan.details["passes"]
    assert (r.traffic.reads, r.traffic.writes) == closed_form_forward(nq, nk, d, dv, passes, masked, heads)
    assert r.flops == 2 * nq * nk * (d + dv) * heads
    b = standard_backward(q, k, v, r.o, do, sram=M, causal=causal, mask=mask)
    assert (b.traffic.reads, b.traffic.writes) == closed_form_backward(nq, nk, d, dv, b.plan.details["passes"], heads)
    assert b.flops == 4 * nq * nk * (d + dv) * heads
    assert r.peak_sram <= M and b.peak_sram <= M


def test_block_rule_as_documented():
    # C = min(n_inner, M // 4b); R takes the rest of M.
    assert matmul_blocks(1024, 1024, 64, 64, 1, 98304, "x") == (164, 384)
    assert matmul_blocks(50, 60, 8, 8, 1, 10**7, "x") == (50, 60)
    assert matmul_blocks(50, 60, 8, 8, 1, 17, "x") == (1, 1)  # fallback: 8 + 8 + 1 = 17
    with pytest.raises(memory.SramTooSmall, match="needs 17 elements on chip, but M = 16"):
        matmul_blocks(50, 60, 8, 8, 1, 16, "x")
    assert row_blocks(10, 30, 1, 2, 64, "x") == (2, 30)  # whole rows: 64 // 32
    assert row_blocks(10, 30, 1, 2, 31, "x") == (1, 29)  # one row in chunks of 29


def test_large_m_approaches_paper_counts():
    n, d = 64, 16
    _, q, k, v, do = _inputs(0, (), n, n, d, d, np.float32)
    r = standard_forward(q, k, v, sram=10**6)
    assert r.traffic.total == 4 * n * n + 4 * n * d + n  # paper 4Nd + 4N^2, plus the lse
    b = standard_backward(q, k, v, r.o, do, sram=10**6)
    assert b.traffic.total == 7 * n * n + 9 * n * d + 2 * n  # derived 8Nd + 7N^2, plus O and D


def test_traffic_grows_as_n_squared():
    d, M = 16, 4096
    totals, s_writes = [], []
    for n in (128, 256, 512):
        _, q, k, v, _ = _inputs(0, (), n, n, d, d, np.float32)
        r = standard_forward(q, k, v, sram=M)
        totals.append(r.traffic.total)
        s_writes.append(r.traffic.of("S")[1])
    assert s_writes[1] == 4 * s_writes[0] and s_writes[2] == 4 * s_writes[1]
    for a, b in zip(totals, totals[1:]):
        assert 3.5 < b / a < 4.5


def test_sram_too_small_is_refused_before_running():
    _, q, k, v, do = _inputs(0, (), 8, 8, 6, 6, np.float32)
    msg = r"standard_forward .* pass F1 .* needs 13 elements on chip, but M = 12"
    with pytest.raises(memory.SramTooSmall, match=msg):
        standard_forward(q, k, v, sram=12)
    r = standard_forward(q, k, v, sram=13)
    with pytest.raises(memory.SramTooSmall, match=r"standard_backward .* pass B2"):
        standard_backward(q, k, v, r.o, do, sram=13)
    with pytest.raises(ValueError, match="do has shape"):
        standard_backward(q, k, v, r.o, do[:-1], sram=100)


# ---------------------------------------------------------------------------
# Determinism, trace and stepping
# ---------------------------------------------------------------------------
def test_deterministic_outputs_counts_and_traces():
    _, q, k, v, do = _inputs(3, (2,), 20, 25, 5, 4, np.float32)
    a = standard_forward(q, k, v, sram=60, causal=True, trace=True)
    b = standard_forward(q, k, v, sram=60, causal=True, trace=True)
    assert np.array_equal(a.o, b.o) and np.array_equal(a.lse, b.lse)
    assert a.traffic == b.traffic and np.array_equal(a.trace.records, b.trace.records)
    ga = standard_backward(q, k, v, a.o, do, sram=60, causal=True, trace=True)
    gb = standard_backward(q, k, v, a.o, do, sram=60, causal=True, trace=True)
    assert all(np.array_equal(x, y) for x, y in zip((ga.dq, ga.dk, ga.dv), (gb.dq, gb.dk, gb.dv)))
    assert ga.traffic == gb.traffic and np.array_equal(ga.trace.records, gb.trace.records)


@pytest.mark.parametrize("M", [25, 400])  # two sweeps per softmax row / whole rows
def test_trace_and_stop_after_agree_with_the_full_run(M):
    _, q, k, v, do = _inputs(4, (), 9, 13, 3, 3, np.float64)
    full = standard_forward(q, k, v, sram=M, trace=True)
    plain = standard_forward(q, k, v, sram=M)
    assert np.array_equal(full.o, plain.o) and full.traffic == plain.traffic and full.trace is not None
    assert full.trace.traffic_until(full.n_steps) == full.traffic
    for k_ in (1, full.n_steps // 2, full.n_steps - 1):
        part = standard_forward(q, k, v, sram=M, trace=True, stop_after=k_)
        assert part.stopped and part.n_steps == k_ and part.state.step == k_
        assert part.traffic == full.trace.traffic_until(k_)
        assert np.array_equal(part.trace.records, full.trace.records[: len(part.trace)])
    (r1, c1) = full.plan.details["passes"]["F1"]
    f1_steps = _cdiv(9, r1) * _cdiv(13, c1)
    assert standard_forward(q, k, v, sram=M, stop_after=f1_steps).state.phase == "F1 S=QK^T"
    mid = standard_forward(q, k, v, sram=M, stop_after=f1_steps + 1)
    assert mid.state.phase == "F2 softmax"
    # S in HBM is complete once pass F1 is over.
    s_done = mid.state.arrays["hbm"]["S"][0]
    np.testing.assert_allclose(s_done, (q @ k.T) / np.sqrt(3), atol=1e-12)
    assert full.plan.n_steps == full.n_steps
    assert standard_forward(q, k, v, sram=M, stop_after=full.n_steps).stopped  # the last step stops too
    with pytest.raises(ValueError, match="stop_after must be an integer between 1 and n_steps"):
        standard_forward(q, k, v, sram=M, stop_after=full.n_steps + 1)

    b = standard_backward(q, k, v, full.o, do, sram=M, trace=True)
    assert b.trace.traffic_until(b.n_steps) == b.traffic
    assert b.plan.n_steps == b.n_steps
    part = standard_backward(q, k, v, full.o, do, sram=M, stop_after=1)
    assert part.stopped and part.state.phase == "B1 dV=P^T dO" and part.trace is not None
