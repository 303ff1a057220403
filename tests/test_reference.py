"""The float64 reference: against a naive loop, causal alignments, masked rows, gradients by finite differences."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refattn.reference import attention, attention_backward, attention_probs, causal_mask


def naive(q, k, v, scale, keep):
    """Row by row, key by key: the definition, with no vectorisation."""
    nq, nk, dv = q.shape[0], k.shape[0], v.shape[1]
    o = np.zeros((nq, dv))
    lse = np.full(nq, -np.inf)
    for i in range(nq):
        s = [scale * sum(q[i, c] * k[j, c] for c in range(q.shape[1])) for j in range(nk)]
        vis = [j for j in range(nk) if keep[i, j]]
        if not vis:
            continue
        m = max(s[j] for j in vis)
        w = {j: np.exp(s[j] - m) for j in vis}
        total = sum(w.values())
        lse[i] = m + np.log(total)
        for j in vis:
            o[i] += w[j] / total * v[j]
    return o, lse


@settings(max_examples=30)
@given(nq=st.integers(1, 7), nk=st.integers(1, 7), d=st.integers(1, 4), dv=st.integers(1, 4),
       causal=st.sampled_from([False, True, "bottom_right", "top_left"]), masked=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_matches_naive_loop(nq, nk, d, dv, causal, masked, seed):
    rng = np.random.default_rng(seed)
    q, k, v = rng.standard_normal((nq, d)), rng.standard_normal((nk, d)), rng.standard_normal((nk, dv))
    mask = rng.random((nq, nk)) < 0.6 if masked else None
    keep = np.ones((nq, nk), bool)
    if causal:
        off = nk - nq if causal in (True, "bottom_right") else 0
        keep &= np.array([[j <= i + off for j in range(nk)] for i in range(nq)])
    if masked:
        keep &= mask
    o, lse = attention(q, k, v, causal=causal, mask=mask, scale=0.7)
    o_n, lse_n = naive(q, k, v, 0.7, keep)
    np.testing.assert_allclose(o, o_n, atol=1e-12)
    assert np.array_equal(np.isneginf(lse), np.isneginf(lse_n))
    np.testing.assert_allclose(lse[np.isfinite(lse)], lse_n[np.isfinite(lse_n)], atol=1e-12)


def test_causal_alignments():
    bottom = causal_mask(2, 4)  # key j visible iff j <= i + 2
    assert bottom.tolist() == [[True, True, True, False], [True, True, True, True]]
    top = causal_mask(2, 4, "top_left")  # j <= i
    assert top.tolist() == [[True, False, False, False], [True, True, False, False]]
    assert np.array_equal(causal_mask(3, 3), causal_mask(3, 3, "top_left"))  # equal when Nq == Nk
    assert not causal_mask(4, 2)[:2].any()  # Nq > Nk, bottom-right: the first rows see nothing


def test_fully_masked_rows_give_zero_and_minus_inf_without_warnings():
    rng = np.random.default_rng(0)
    q, k, v, do = rng.standard_normal((5, 3)), rng.standard_normal((4, 3)), rng.standard_normal((4, 2)), \
        rng.standard_normal((5, 2))
    mask = np.ones((5, 4), bool)
    mask[[1, 3]] = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        o, lse = attention(q, k, v, mask=mask)
        p, _ = attention_probs(q, k, mask=mask)
        dq, dk, dv = attention_backward(q, k, v, do, mask=mask)
        o2, lse2 = attention(q, k, v, causal=True, mask=mask)  # 5 x 4 bottom-right: row 0 sees nothing too
    assert np.all(o[[1, 3]] == 0) and np.all(np.isneginf(lse[[1, 3]])) and np.all(np.isfinite(lse[[0, 2, 4]]))
    assert np.all(p[[1, 3]] == 0)
    assert np.all(dq[[1, 3]] == 0)
    for x in (o, p, dq, dk, dv, o2):
        assert not np.any(np.isnan(x))
    assert np.isneginf(lse2[0]) and np.all(o2[0] == 0)


def test_large_logits_stay_finite():
    rng = np.random.default_rng(1)
    q = rng.standard_normal((6, 4)) * 1e3
    k, v = rng.standard_normal((6, 4)), rng.standard_normal((6, 3))
    o, lse = attention(q, k, v)
    assert np.all(np.isfinite(o)) and np.all(np.isfinite(lse))
    o_n, lse_n = naive(q, k, v, 0.5, np.ones((6, 6), bool))
    np.testing.assert_allclose(o, o_n, atol=1e-9)
    np.testing.assert_allclose(lse, lse_n, rtol=1e-12)


def test_broadcasting_of_leading_dims():
    rng = np.random.default_rng(2)
    q = rng.standard_normal((2, 3, 5, 4))  # (batch, heads, Nq, d)
    k = rng.standard_normal((1, 3, 6, 4))  # shared over batch
    v = rng.standard_normal((3, 6, 2))  # shared over batch, no batch dim
    do = rng.standard_normal((2, 3, 5, 2))
    o, lse = attention(q, k, v)
    assert o.shape == (2, 3, 5, 2) and lse.shape == (2, 3, 5)
    for b in range(2):
        for h in range(3):
            o1, lse1 = attention(q[b, h], k[0, h], v[h])
            np.testing.assert_allclose(o[b, h], o1, atol=1e-14)
            np.testing.assert_allclose(lse[b, h], lse1, atol=1e-14)
    dq, dk, dv = attention_backward(q, k, v, do)
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape
    dk_sum = sum(attention_backward(q[b], k[0], v, do[b])[1] for b in range(2))
    np.testing.assert_allclose(dk[0], dk_sum, atol=1e-12)


def test_backward_with_q_broadcast_over_leading_dims():
    # issue 19: q shared over the batch used to be refused ("expected (1,40,16) (the shape of o)")
    rng = np.random.default_rng(3)
    q = rng.standard_normal((1, 40, 16))
    k, v, do = (rng.standard_normal((2, 40, 16)) for _ in range(3))
    dq, dk, dv = attention_backward(q, k, v, do, causal=True)
    assert dq.shape == (1, 40, 16) and dk.shape == dv.shape == (2, 40, 16)
    per = [attention_backward(q[0], k[b], v[b], do[b], causal=True) for b in range(2)]
    np.testing.assert_allclose(dq[0], per[0][0] + per[1][0], atol=1e-12)
    np.testing.assert_allclose(dk[1], per[1][1], atol=1e-12)
    with pytest.raises(ValueError, match="the shape of o"):
        attention_backward(q, k, v, do[:, :, :3])


@settings(max_examples=20)
@given(nq=st.integers(1, 5), nk=st.integers(1, 5), d=st.integers(1, 3), dv=st.integers(1, 3),
       causal=st.sampled_from([False, True, "top_left"]), masked=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_backward_matches_central_finite_differences(nq, nk, d, dv, causal, masked, seed):
    rng = np.random.default_rng(seed)
    q, k, v = rng.standard_normal((nq, d)), rng.standard_normal((nk, d)), rng.standard_normal((nk, dv))
    do = rng.standard_normal((nq, dv))
    mask = rng.random((nq, nk)) < 0.6 if masked else None
    grads = attention_backward(q, k, v, do, causal=causal, mask=mask)

    def loss(q_, k_, v_):
        return float(np.sum(attention(q_, k_, v_, causal=causal, mask=mask)[0] * do))

    h = 1e-6
    for which, g in enumerate(grads):
        args = [q, k, v]
        x = args[which]
        num = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            xp, xm = x.copy(), x.copy()
            xp[idx] += h
            xm[idx] -= h
            ap, am = list(args), list(args)
            ap[which], am[which] = xp, xm
            num[idx] = (loss(*ap) - loss(*am)) / (2 * h)
        np.testing.assert_allclose(g, num, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("bad_do", [np.zeros((3, 5)), np.full((4, 2), np.nan)])
def test_backward_checks_do(bad_do):
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((4, 3)), rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    with pytest.raises(ValueError, match="do"):
        attention_backward(q, k, v, bad_do)
