"""The float64 reference's variants (GQA/MQA, window, softcap, ALiBi, varlen) against a loop
written from docs/variants.md, their documented corner cases, and gradients by finite differences."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refattn.reference import attention, attention_backward, attention_probs, combined_mask


def naive_variants(q, k, v, scale, *, causal=None, window=None, softcap=None, slopes=None, cu_q=None, cu_k=None):
    """q (Hq, Nq, d), k (Hkv, Nk, d), v (Hkv, Nk, dv): the definitions, one score at a time."""
    hq, total_q, _ = q.shape
    hkv, total_k, dv = v.shape
    o, lse = np.zeros((hq, total_q, dv)), np.full((hq, total_q), -np.inf)
    seqs = [(0, total_q, 0, total_k)] if cu_q is None else [
        (cu_q[b], cu_q[b + 1], cu_k[b], cu_k[b + 1]) for b in range(len(cu_q) - 1)]
    for h in range(hq):
        kh = h // (hq // hkv)  # GQA: query head h reads KV head h // group
        for q0, q1, k0, k1 in seqs:
            nq, nk = q1 - q0, k1 - k0
            for i in range(nq):
                s = {}
                for j in range(nk):
                    if causal == "bottom_right" and j > i + nk - nq:
                        continue
                    if causal == "top_left" and j > i:
                        continue
                    if window is not None:
                        left, right = (-1 if w is None else w for w in window)
                        if left >= 0 and j < i + nk - nq - left:
                            continue
                        if right >= 0 and j > i + nk - nq + right:
                            continue
                    x = scale * float(np.dot(q[h, q0 + i], k[kh, k0 + j]))
                    if softcap:
                        x = softcap * np.tanh(x / softcap)
                    if slopes is not None:
                        x -= slopes[h] * abs(i + nk - nq - j)
                    s[j] = x
                if not s:
                    continue
                m = max(s.values())
                w = {j: np.exp(x - m) for j, x in s.items()}
                total = sum(w.values())
                lse[h, q0 + i] = m + np.log(total)
                o[h, q0 + i] = sum(w[j] / total * v[kh, k0 + j] for j in w)
    return o, lse


def lengths_to_cu(lengths):
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)


@st.composite
def variant_problems(draw, max_n=6):
    hkv = draw(st.integers(1, 2))
    hq = hkv * draw(st.integers(1, 3))
    d, dv = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    varlen = draw(st.booleans())
    if varlen:
        nb = draw(st.integers(1, 3))
        lq = draw(st.lists(st.integers(0, 4), min_size=nb, max_size=nb))
        lk = draw(st.lists(st.integers(0, 4), min_size=nb, max_size=nb))
        pad_q, pad_k = draw(st.integers(0, 2)), draw(st.integers(0, 2))
        cu_q, cu_k = lengths_to_cu(lq), lengths_to_cu(lk)
        nq, nk = max(int(cu_q[-1]) + pad_q, 1), max(int(cu_k[-1]) + pad_k, 1)
    else:
        cu_q = cu_k = None
        nq, nk = draw(st.integers(1, max_n)), draw(st.integers(1, max_n))
    side = st.one_of(st.none(), st.just(-1), st.integers(0, 4))
    window = draw(st.one_of(st.none(), st.tuples(side, side)))
    return dict(hq=hq, hkv=hkv, nq=nq, nk=nk, d=d, dv=dv, cu_q=cu_q, cu_k=cu_k, window=window,
                causal=draw(st.sampled_from([None, "bottom_right", "top_left"])),
                softcap=draw(st.sampled_from([None, 0.0, 0.5, 3.0])),
                alibi=draw(st.booleans()), seed=draw(st.integers(0, 2**32 - 1)))


def make(pr, scale_q=1.0):
    rng = np.random.default_rng(pr["seed"])
    q = rng.standard_normal((pr["hq"], pr["nq"], pr["d"])) * scale_q
    k = rng.standard_normal((pr["hkv"], pr["nk"], pr["d"]))
    v = rng.standard_normal((pr["hkv"], pr["nk"], pr["dv"]))
    slopes = rng.uniform(0.0, 1.0, pr["hq"]) if pr["alibi"] else None
    kw = dict(num_kv_heads=pr["hkv"], window=pr["window"], softcap=pr["softcap"], alibi_slopes=slopes,
              cu_seqlens_q=pr["cu_q"], cu_seqlens_k=pr["cu_k"], causal=pr["causal"] or False)
    return q, k, v, slopes, kw


@settings(max_examples=60)
@given(pr=variant_problems())
def test_variants_match_the_definition_loop(pr):
    q, k, v, slopes, kw = make(pr, scale_q=2.0)
    o, lse = attention(q, k, v, scale=0.8, **kw)
    o_n, lse_n = naive_variants(q, k, v, 0.8, causal=pr["causal"], window=pr["window"], softcap=pr["softcap"],
                                slopes=slopes, cu_q=pr["cu_q"], cu_k=pr["cu_k"])
    np.testing.assert_allclose(o, o_n, atol=1e-12)
    assert np.array_equal(np.isneginf(lse), np.isneginf(lse_n))
    np.testing.assert_allclose(lse[np.isfinite(lse)], lse_n[np.isfinite(lse_n)], atol=1e-12)
    p, lse_p = attention_probs(q, k, scale=0.8, **kw)
    np.testing.assert_allclose(np.einsum("hij,hjd->hid", p, np.repeat(v, pr["hq"] // pr["hkv"], 0)), o, atol=1e-12)
    np.testing.assert_array_equal(lse_p, lse)


@settings(max_examples=25)
@given(pr=variant_problems(max_n=4))
def test_variant_gradients_match_central_finite_differences(pr):
    q, k, v, _, kw = make(pr)
    do = np.random.default_rng(pr["seed"] + 1).standard_normal(q.shape[:-1] + (pr["dv"],))
    grads = attention_backward(q, k, v, do, **kw)

    def loss(args):
        return float(np.sum(attention(*args, **kw)[0] * do))

    h = 1e-6
    for which, g in enumerate(grads):
        x = [q, k, v][which]
        assert g.shape == x.shape
        num = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            args_p, args_m = [q.copy(), k.copy(), v.copy()], [q.copy(), k.copy(), v.copy()]
            args_p[which][idx] += h
            args_m[which][idx] -= h
            num[idx] = (loss(args_p) - loss(args_m)) / (2 * h)
        np.testing.assert_allclose(g, num, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------
# Each convention, pinned on a small example
# ---------------------------------------------------------------------------
def test_window_bounds_are_inclusive_and_bottom_right_aligned():
    # Nq = 2, Nk = 5: query i sits at key position i + 3; window (1, 1) keeps [i + 2, i + 4].
    keep = combined_mask(2, 5, window=(1, 1))
    assert keep.astype(int).tolist() == [[0, 0, 1, 1, 1], [0, 0, 0, 1, 1]]
    # -1 and None both mean unbounded; (-1, -1) is no window at all
    assert combined_mask(2, 5, window=(-1, 0)).tolist() == combined_mask(2, 5, window=(None, 0)).tolist()
    assert combined_mask(2, 5, window=(-1, -1)) is None
    assert combined_mask(2, 5, window=(0, 0)).astype(int).tolist() == [[0, 0, 0, 1, 0], [0, 0, 0, 0, 1]]


@pytest.mark.parametrize("nq,nk", [(4, 4), (3, 7), (6, 2)])
def test_window_with_causal_is_flashattention_right_zero(nq, nk):
    # FlashAttention: causal=True with window (left, right) runs as window (left, 0).
    for left in (-1, 0, 1, 3):
        for right in (-1, 0, 2):
            both = combined_mask(nq, nk, causal=True, window=(left, right))
            assert np.array_equal(both, combined_mask(nq, nk, window=(left, 0)))
    assert np.array_equal(combined_mask(nq, nk, window=(-1, 0)), combined_mask(nq, nk, causal=True))


def test_softcap_zero_and_none_are_off_and_the_cap_bounds_the_scores():
    rng = np.random.default_rng(3)
    q, k, v = rng.standard_normal((4, 3)) * 30, rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    plain = attention(q, k, v)
    for off in (None, 0, 0.0):
        o, lse = attention(q, k, v, softcap=off)
        np.testing.assert_array_equal(o, plain[0])
        np.testing.assert_array_equal(lse, plain[1])
    o, lse = attention(q, k, v, softcap=2.0)
    assert np.all(lse <= 2.0 + np.log(5) + 1e-12)  # every capped score is below 2
    assert not np.allclose(o, plain[0])
    np.testing.assert_allclose(attention(q, k, v, softcap=1e9)[0], plain[0], atol=1e-9)  # huge cap -> off


def test_softcap_is_applied_before_the_alibi_bias():
    rng = np.random.default_rng(4)
    q, k, v = rng.standard_normal((1, 3, 2)), rng.standard_normal((1, 3, 2)), rng.standard_normal((1, 3, 2))
    slopes = np.array([5.0])
    _, lse = attention(q, k, v, softcap=1.0, alibi_slopes=slopes, scale=1.0)
    s = np.tanh(np.einsum("hid,hjd->hij", q, k)) - 5.0 * np.abs(np.arange(3)[:, None] - np.arange(3)[None, :])
    np.testing.assert_allclose(lse, np.log(np.exp(s).sum(-1)), atol=1e-12)


def test_alibi_sign_and_alignment():
    # Equal scores (q = 0): the weights are softmax(-slope * |i + Nk - Nq - j|).
    q, k, v = np.zeros((1, 2, 1)), np.ones((1, 4, 1)), np.eye(4)[None]
    p, _ = attention_probs(q, k, alibi_slopes=np.array([1.0]))
    want = np.exp(-np.abs(np.arange(2)[:, None] + 2 - np.arange(4)[None, :]))
    np.testing.assert_allclose(p[0], want / want.sum(-1, keepdims=True), atol=1e-15)
    assert np.argmax(p[0, 0]) == 2 and np.argmax(p[0, 1]) == 3  # the nearest key, bottom-right aligned
    np.testing.assert_array_equal(attention(q, k, v, alibi_slopes=np.zeros(1))[0], attention(q, k, v)[0])


def test_alibi_slopes_per_batch_and_head():
    rng = np.random.default_rng(5)
    q, k, v = rng.standard_normal((2, 3, 4, 2)), rng.standard_normal((2, 3, 5, 2)), rng.standard_normal((2, 3, 5, 2))
    slopes = rng.uniform(0, 1, (2, 3))
    o, _ = attention(q, k, v, alibi_slopes=slopes)
    for b in range(2):
        for h in range(3):
            o1, _ = attention(q[b, h], k[b, h], v[b, h], alibi_slopes=slopes[b, h])
            np.testing.assert_allclose(o[b, h], o1, atol=1e-14)


def test_gqa_is_repeat_interleave_of_kv_heads_and_mqa_is_broadcast():
    rng = np.random.default_rng(6)
    q = rng.standard_normal((2, 6, 4, 3))
    k, v = rng.standard_normal((2, 2, 5, 3)), rng.standard_normal((2, 2, 5, 2))
    o, lse = attention(q, k, v, num_kv_heads=2)
    # head h reads KV head h // 3: heads 0, 1, 2 -> 0 and 3, 4, 5 -> 1
    o_rep, lse_rep = attention(q, np.repeat(k, 3, axis=1), np.repeat(v, 3, axis=1))
    np.testing.assert_array_equal(o, o_rep)
    np.testing.assert_array_equal(lse, lse_rep)
    o_mqa, _ = attention(q, k[:, :1], v[:, :1], num_kv_heads=1)
    np.testing.assert_allclose(o_mqa, attention(q, k[:, :1], v[:, :1])[0], atol=1e-15)  # plain broadcast
    do = rng.standard_normal(o.shape)
    dq, dk, dv = attention_backward(q, k, v, do, num_kv_heads=2)
    _, dk_rep, dv_rep = attention_backward(q, np.repeat(k, 3, axis=1), np.repeat(v, 3, axis=1), do)
    np.testing.assert_allclose(dk, dk_rep.reshape(2, 2, 3, 5, 3).sum(2), atol=1e-13)
    np.testing.assert_allclose(dv, dv_rep.reshape(2, 2, 3, 5, 2).sum(2), atol=1e-13)


def test_varlen_equals_separate_sequences_and_padding_rows_are_zero():
    rng = np.random.default_rng(7)
    lq, lk = [3, 0, 2, 4], [2, 3, 0, 4]  # an empty query sequence and an empty key sequence
    cu_q, cu_k = lengths_to_cu(lq), lengths_to_cu(lk)
    q, k, v = rng.standard_normal((2, 11, 3)), rng.standard_normal((2, 10, 3)), rng.standard_normal((2, 10, 2))
    do = rng.standard_normal((2, 11, 2))
    kw = dict(causal=True, window=(2, -1), alibi_slopes=np.array([0.3, 0.7]), softcap=2.0)
    o, lse = attention(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, **kw)
    dq, dk, dv = attention_backward(q, k, v, do, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, **kw)
    for b in range(4):
        sq, sk = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
        if lq[b] == 0:
            continue
        if lk[b] == 0:  # queries with no keys: output 0, lse -inf
            assert np.all(o[:, sq] == 0) and np.all(np.isneginf(lse[:, sq])) and np.all(dq[:, sq] == 0)
            continue
        o1, lse1 = attention(q[:, sq], k[:, sk], v[:, sk], **kw)
        g1 = attention_backward(q[:, sq], k[:, sk], v[:, sk], do[:, sq], **kw)
        np.testing.assert_allclose(o[:, sq], o1, atol=1e-14)
        np.testing.assert_allclose(lse[:, sq], lse1, atol=1e-14)
        for g, g_1, s in zip((dq, dk, dv), g1, (sq, sk, sk)):
            np.testing.assert_allclose(g[:, s], g_1, atol=1e-13)
    # padding: query rows 9, 10 and key rows 9 (after cu[-1]) take no part
    assert np.all(o[:, 9:] == 0) and np.all(np.isneginf(lse[:, 9:])) and np.all(dq[:, 9:] == 0)
    assert np.all(dk[:, 9:] == 0) and np.all(dv[:, 9:] == 0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(window=(-2, 0)), "window left"),
    (dict(window=(1, 1.5)), "window right"),
    (dict(window=3), "pair"),
    (dict(softcap=-1.0), "softcap"),
    (dict(softcap=float("nan")), "softcap"),
    (dict(num_kv_heads=4), "num_kv_heads = 4"),
    (dict(num_kv_heads=0), "positive"),
    (dict(alibi_slopes=np.ones(5)), "alibi_slopes shape"),
    (dict(alibi_slopes=np.array([1.0, np.inf, 1, 1])), "alibi_slopes contains NaN"),
    (dict(cu_seqlens_q=np.array([0, 3])), "together"),
    (dict(cu_seqlens_q=np.array([0, 3]), cu_seqlens_k=np.array([0, 2, 5])), "same length"),
    (dict(cu_seqlens_q=np.array([1, 3]), cu_seqlens_k=np.array([0, 2])), "start at 0"),
    (dict(cu_seqlens_q=np.array([0, 3, 2]), cu_seqlens_k=np.array([0, 2, 5])), "non-decreasing"),
    (dict(cu_seqlens_q=np.array([0, 9]), cu_seqlens_k=np.array([0, 2])), "packed tokens"),
    (dict(cu_seqlens_q=np.array([0.0, 3.0]), cu_seqlens_k=np.array([0, 2])), "integers"),
])
def test_bad_variant_arguments_are_refused_by_name(kwargs, match):
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((4, 5, 3)), rng.standard_normal((2, 6, 3)), rng.standard_normal((2, 6, 2))
    kwargs.setdefault("num_kv_heads", 2)
    with pytest.raises((ValueError, TypeError), match=match):
        attention(q, k, v, **kwargs)


def test_bias_is_added_after_the_softcap_like_alibi():
    rng = np.random.default_rng(8)
    q, k, v = rng.standard_normal((2, 3, 4, 2)), rng.standard_normal((2, 3, 5, 2)), rng.standard_normal((2, 3, 5, 2))
    slopes = rng.uniform(0, 1, 3)
    dist = np.abs(np.arange(4)[:, None] + 1 - np.arange(5)[None, :])
    as_bias = -slopes[:, None, None] * dist
    for kw in (dict(), dict(softcap=1.5, window=(2, 1))):
        o, lse = attention(q, k, v, alibi_slopes=slopes, **kw)
        o_b, lse_b = attention(q, k, v, bias=as_bias, **kw)
        np.testing.assert_allclose(o_b, o, atol=1e-14)
        np.testing.assert_allclose(lse_b, lse, atol=1e-14)
        do = rng.standard_normal(o.shape)
        for g, g_b in zip(attention_backward(q, k, v, do, alibi_slopes=slopes, **kw),
                          attention_backward(q, k, v, do, bias=as_bias, **kw)):
            np.testing.assert_allclose(g_b, g, atol=1e-13)
    with pytest.raises(ValueError, match="bias contains NaN"):
        attention(q, k, v, bias=np.full((4, 5), -np.inf))
    with pytest.raises(ValueError, match="bias shape"):
        attention(q, k, v, bias=np.zeros((4, 4)))
