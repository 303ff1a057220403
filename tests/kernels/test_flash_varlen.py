"""The flash kernels on packed variable-length batches (``cu_seqlens``; docs/variants.md):
against the float64 reference, the traffic closed forms of their docstrings, the tile layout
(no tile crosses a sequence, no key of another sequence is loaded), count-only runs and bad input.

The closed forms are derived here from the reference's keep-mask, one sequence at a time (a tile is
visited iff it holds a visible entry), not from the kernels' tables.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refattn.kernels.flash import flash_forward
from refattn.kernels.flash_backward import flash_backward
from refattn.reference import attention, attention_backward, combined_mask


@st.composite
def cu_seqlens(draw, n, nseq):
    """Cumulative lengths of ``nseq`` sequences over at most ``n`` tokens: empty sequences, 1-token
    sequences and padding at the end all come up."""
    used = draw(st.sampled_from([n, n, max(n - 1, 0), draw(st.integers(0, n))]))
    cuts = sorted(draw(st.lists(st.integers(0, used), min_size=nseq - 1, max_size=nseq - 1)))
    return np.array([0, *cuts, used], np.int64)


@st.composite
def varlen_cases(draw, max_n=60):
    hkv = draw(st.integers(1, 2))
    nq, nk = draw(st.integers(1, max_n)), draw(st.integers(1, max_n))
    nseq = draw(st.integers(1, 4))
    side = st.one_of(st.just(-1), st.integers(0, 12))
    return dict(
        hkv=hkv, hq=hkv * draw(st.integers(1, 2)), nq=nq, nk=nk, d=draw(st.integers(1, 6)), dv=draw(st.integers(1, 6)),
        cu_q=draw(cu_seqlens(nq, nseq)), cu_k=draw(cu_seqlens(nk, nseq)),
        window=draw(st.one_of(st.none(), st.tuples(side, side))),
        causal=draw(st.sampled_from([False, "bottom_right", "top_left"])),
        softcap=draw(st.sampled_from([None, 0.7])), alibi=draw(st.booleans()), gqa=draw(st.booleans()),
        masked=draw(st.booleans()), block=(draw(st.integers(1, 9)), draw(st.integers(1, 9))),
        seed=draw(st.integers(0, 2**31)))


def make(c, dtype=np.float64):
    rng = np.random.default_rng(c["seed"])
    hk = c["hkv"] if c["gqa"] else c["hq"]
    q = (rng.standard_normal((c["hq"], c["nq"], c["d"])) * 2).astype(dtype)
    k = rng.standard_normal((hk, c["nk"], c["d"])).astype(dtype)
    v = rng.standard_normal((hk, c["nk"], c["dv"])).astype(dtype)
    kw = dict(causal=c["causal"], window=c["window"], softcap=c["softcap"], cu_seqlens_q=c["cu_q"],
              cu_seqlens_k=c["cu_k"], alibi_slopes=rng.uniform(0, 1, c["hq"]) if c["alibi"] else None,
              num_kv_heads=c["hkv"] if c["gqa"] else None,
              mask=rng.random((c["nq"], c["nk"])) < 0.7 if c["masked"] else None)
    return q, k, v, kw


def segments(c):
    """The sequences, then the padding queries (no keys) and the padding keys (no queries)."""
    cu_q, cu_k, nq, nk = c["cu_q"], c["cu_k"], c["nq"], c["nk"]
    out = [(cu_q[b], cu_q[b + 1], cu_k[b], cu_k[b + 1]) for b in range(cu_q.size - 1)]
    if cu_q[-1] < nq:
        out.append((cu_q[-1], nq, cu_k[-1], cu_k[-1]))
    if cu_k[-1] < nk:
        out.append((nq, nq, cu_k[-1], nk))
    return [tuple(int(x) for x in seg) for seg in out]


def sums(c, br, bc):
    """(R, C, A, Qr, Kc) of refattn/kernels/flash.py summed over the sequences, from the reference's keep-mask,
    and the tile counts (Tr_s, Tc_s) of each segment."""
    keep = combined_mask(c["nq"], c["nk"], c["causal"], None, window=c["window"], cu_seqlens_q=c["cu_q"],
                         cu_seqlens_k=c["cu_k"])
    R = C = A = Qr = 0
    key_rows = np.zeros(c["nk"], bool)
    counts = []
    for q0, q1, k0, k1 in segments(c):
        rows = [(r, min(r + br, q1)) for r in range(q0, q1, br)]
        cols = [(x, min(x + bc, k1)) for x in range(k0, k1, bc)]
        counts.append((len(rows), len(cols)))
        for r0, r1 in rows:
            vis = [(c0, c1) for c0, c1 in cols if keep[r0:r1, c0:c1].any()]
            width = sum(c1 - c0 for c0, c1 in vis)
            R, C, A, Qr = R + (r1 - r0) * len(vis), C + width, A + (r1 - r0) * width, Qr + (r1 - r0 if vis else 0)
            for c0, c1 in vis:
                key_rows[c0:c1] = True
    assert not keep[:, key_rows.size:].any()
    return (R, C, A, Qr, int(key_rows.sum())), counts


def expected(kernel, c, plan):
    """The closed forms of the docstrings with the packed totals Nq, Nk (padding included)."""
    nq, nk, d, dv = c["nq"], c["nk"], c["d"], c["dv"]
    hq, hk = c["hq"], (c["hkv"] if c["gqa"] else c["hq"])
    group = hq // hk
    (R, C, A, Qr, Kc), counts = sums(c, plan.blocks["Br"], plan.blocks["Bc"])
    if kernel == "fa2":
        reads, writes = {"Q": hq * d * Qr, "K": hq * d * C, "V": hq * dv * C}, {"O": hq * nq * dv, "L": hq * nq}
        steps = hq * sum(tr * max(tc, 1) for tr, tc in counts)
    elif kernel == "fa1":
        reads = {"K": hk * d * Kc, "V": hk * dv * Kc, "Q": hq * d * R, "O": hq * dv * R, "l": hq * (R + nq),
                 "m": hq * (R + nq)}
        writes = {"O": hq * (nq * dv + dv * R), "l": hq * (nq + R), "m": hq * (nq + R), "L": hq * nq}
        steps = hk * (group * sum(tr * tc for tr, tc in counts) + 2)
    else:
        reads = {"O": hq * nq * dv, "dO": hq * (nq * dv + dv * R), "D": hq * R, "dQ": hq * d * R, "Q": hq * d * R,
                 "L": hq * R, "K": hk * d * Kc, "V": hk * dv * Kc}
        writes = {"D": hq * nq, "dQ": hq * (nq * d + d * R), "dK": hk * nk * d, "dV": hk * nk * dv}
        steps = hq * sum(tr for tr, _ in counts) + hk * sum(tc * max(group * tr, 1) for tr, tc in counts)
    if c["masked"]:
        reads["mask"] = hq * A
    drop = lambda dct: {n: x for n, x in dct.items() if x}
    return drop(reads), drop(writes), steps


def same_as_reference(got, want, atol):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=atol)


@settings(max_examples=30)
@given(c=varlen_cases(), variant=st.sampled_from(["fa1", "fa2"]))
def test_forward_on_packed_batches_matches_reference_and_closed_forms(c, variant):
    q, k, v, kw = make(c)
    sram = 2 * (c["d"] + c["dv"]) * 9 + 200
    res = flash_forward(q, k, v, sram=sram, variant=variant, block=c["block"], **kw)
    o, lse = attention(q, k, v, **kw)
    same_as_reference(res.o, o, 1e-12)
    assert np.array_equal(np.isneginf(res.lse), np.isneginf(lse))
    np.testing.assert_allclose(res.lse[np.isfinite(lse)], lse[np.isfinite(lse)], atol=1e-12)
    assert not res.o[:, c["cu_q"][-1]:].any() and np.isneginf(res.lse[:, c["cu_q"][-1]:]).all()  # padding rows
    reads, writes, steps = expected(variant, c, res.plan)
    assert res.traffic.reads == reads
    assert res.traffic.writes == writes
    assert res.n_steps == res.plan.n_steps == steps


@settings(max_examples=20)
@given(c=varlen_cases(max_n=45))
def test_backward_on_packed_batches_matches_reference_and_closed_forms(c):
    q, k, v, kw = make(c)
    do = np.random.default_rng(c["seed"] + 1).standard_normal(q.shape[:-1] + (c["dv"],))
    o, lse = attention(q, k, v, **kw)
    res = flash_backward(q, k, v, o, lse, do, sram=5 * (c["d"] + c["dv"]) * 9 + 400, block=c["block"], **kw)
    for got, want in zip((res.dq, res.dk, res.dv), attention_backward(q, k, v, do, **kw)):
        same_as_reference(got, want, 1e-11)
    assert not res.dq[:, c["cu_q"][-1]:].any() and not res.dk[:, c["cu_k"][-1]:].any()  # padding: exactly 0
    reads, writes, steps = expected("backward", c, res.plan)
    assert res.traffic.reads == reads
    assert res.traffic.writes == writes
    assert res.n_steps == res.plan.n_steps == steps


# cu_q: an empty sequence, a 1-token one, 3 padding rows; cu_k: a sequence with keys but no queries, 2 padding keys
CU_Q, CU_K = np.array([0, 5, 5, 6, 16, 16]), np.array([0, 7, 9, 12, 20, 23])
NQ, NK = 19, 25


def packed(seed=0, dtype=np.float64, heads=(4, 2), d=4, dv=3):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((heads[0], NQ, d)).astype(dtype)
    k, v = rng.standard_normal((heads[1], NK, d)).astype(dtype), rng.standard_normal((heads[1], NK, dv)).astype(dtype)
    do = rng.standard_normal((heads[0], NQ, dv)).astype(dtype)
    return q, k, v, do


KW = dict(cu_seqlens_q=CU_Q, cu_seqlens_k=CU_K, num_kv_heads=2, causal=True, window=(4, 1), softcap=3.0,
          alibi_slopes=np.array([0.1, 0.2, 0.3, 0.4]))


def which(rows, cu):
    """The sequence that half-open ``rows`` lie in (-1: padding), asserting they lie in one."""
    (a, b), last = rows, int(cu[-1])
    if a >= last:
        return -1
    seq = int(np.searchsorted(cu, a, side="right")) - 1
    assert b <= cu[seq + 1], (rows, cu)
    return seq


@pytest.mark.parametrize("kernel", ["fa1", "fa2", "backward"])
def test_tiles_never_cross_a_sequence_and_other_sequences_keys_are_never_loaded(kernel):
    q, k, v, do = packed()
    kw = dict(KW, sram=600, block=(3, 2), trace=True)
    o, lse = attention(q, k, v, **{n: x for n, x in KW.items()})
    res = (flash_backward(q, k, v, o, lse, do, **kw) if kernel == "backward"
           else flash_forward(q, k, v, variant=kernel, **kw))
    tiles = [e for e in res.trace.events if e.tensor in ("S", None) and e.kind in ("compute", "skip")]
    assert tiles and any(e.kind == "skip" for e in tiles)
    visited_keys = set()
    for e in tiles:
        if e.rows[0] == e.rows[1] or e.cols[0] == e.cols[1]:  # the empty tile of a segment with one side empty
            assert e.kind == "skip"
            continue
        assert which(e.rows, CU_Q) == which(e.cols, CU_K) != -1  # one sequence's rows and keys
        if e.kind == "compute":
            visited_keys |= set(range(*e.cols))
    loads = [e for e in res.trace.events if e.kind == "load" and e.tensor in ("K", "V")]
    for e in loads:  # (a K or V load names key rows as its rows)
        assert which(e.rows, CU_K) != -1 and set(range(*e.rows)) <= visited_keys
    assert loads and not visited_keys & set(range(int(CU_K[-1]), NK))  # padding keys are never loaded


def test_padding_rows_and_keyless_sequences_are_written_by_the_kernel():
    q, k, v, do = packed(1)
    for variant in ("fa1", "fa2"):
        res = flash_forward(q, k, v, variant=variant, sram=600, block=(3, 2), trace=True, **KW)
        rows = {r for e in res.trace.events if e.kind == "store" and e.tensor == "L" for r in range(*e.rows)}
        assert rows == set(range(NQ))  # every row, padding included, gets its L written
        assert not res.o[:, 16:].any() and np.isneginf(res.lse[:, 16:]).all()
    o, lse = attention(q, k, v, **KW)
    g = flash_backward(q, k, v, o, lse, do, sram=600, block=(3, 2), trace=True, **KW)
    keys = {r for e in g.trace.events if e.kind == "store" and e.tensor == "dK" for r in range(*e.rows)}
    assert keys == set(range(NK))  # the keys of the query-less sequence and the padding keys get dK = 0 written
    assert not g.dk[:, 7:9].any() and not g.dv[:, 23:].any()


def test_a_packed_batch_equals_its_sequences_run_one_by_one():
    """Each sequence's outputs and traffic are the rectangular kernel's on that sequence alone (FA2)."""
    q, k, v, _ = packed(2, heads=(2, 2))
    kw = dict(causal=True, window=(3, 0))
    whole = flash_forward(q, k, v, sram=600, block=(4, 3), cu_seqlens_q=CU_Q, cu_seqlens_k=CU_K, **kw)
    reads = {"Q": 0, "K": 0, "V": 0}
    for b in range(CU_Q.size - 1):
        (q0, q1), (k0, k1) = CU_Q[b:b + 2], CU_K[b:b + 2]
        if q1 == q0 or k1 == k0:
            continue
        one = flash_forward(q[:, q0:q1], k[:, k0:k1], v[:, k0:k1], sram=600, block=(4, 3), **kw)
        np.testing.assert_array_equal(whole.o[:, q0:q1], one.o)
        for name in reads:
            reads[name] += one.traffic.reads.get(name, 0)
    assert {n: whole.traffic.reads[n] for n in reads} == reads


def test_float32_packed_batches_stay_close_to_the_reference():
    q, k, v, do = packed(3, np.float32)
    o, lse = attention(q, k, v, **KW)
    for variant in ("fa1", "fa2"):
        res = flash_forward(q, k, v, variant=variant, sram=900, **KW)
        assert res.o.dtype == np.float32 and np.abs(res.o - o).max() < 1e-5
    g = flash_backward(q, k, v, res.o, res.lse, do, sram=1500, **KW)
    for got, want in zip((g.dq, g.dk, g.dv), attention_backward(q, k, v, do, **KW)):
        assert got.dtype == np.float32 and np.abs(got - want).max() < 1e-4


@pytest.mark.parametrize("kernel", ["fa1", "fa2", "backward"])
def test_count_only_and_stepping_agree_with_the_full_run_on_a_packed_batch(kernel):
    q, k, v, do = packed(4)
    o, lse = attention(q, k, v, **KW)

    def run(**kw):
        kw.update(KW, sram=600, block=(3, 2))
        if kernel == "backward":
            return flash_backward(q, k, v, o, lse, do, **kw)
        return flash_forward(q, k, v, variant=kernel, **kw)

    full, count = run(trace=True), run(trace=True, count_only=True)
    assert count.outputs == {} and count.traffic == full.traffic and count.plan == full.plan
    assert (count.flops, count.exps, count.n_steps, count.peak_sram) == (full.flops, full.exps, full.n_steps,
                                                                         full.peak_sram)
    assert np.array_equal(count.trace.records, full.trace.records)
    n = full.n_steps
    for step in sorted({1, 2, n // 3, n // 2, n - 1, n}):
        a, b = run(stop_after=step), run(stop_after=step, count_only=True)
        assert a.state.step == b.state.step == step
        assert a.traffic == b.traffic == full.trace.traffic_until(step)
        assert a.state.sram == b.state.sram == full.trace.sram_at(step)
    for name, x in full.outputs.items():
        np.testing.assert_array_equal(a.outputs[name], x)


def test_parallel_drivers_agree_with_the_serial_ones_on_a_packed_batch():
    rng = np.random.default_rng(5)
    cu_q, cu_k = np.array([0, 300, 301, 520]), np.array([0, 280, 280, 530])
    q, do = rng.standard_normal((2, 530, 16)), rng.standard_normal((2, 530, 16))
    k, v = rng.standard_normal((2, 540, 16)), rng.standard_normal((2, 540, 16))
    kw = dict(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, causal=True, window=(200, 3), alibi_slopes=np.array([0.01, 0.02]))
    fast = flash_forward(q, k, v, sram=6000, **kw)  # untraced and big enough: the parallel driver
    serial = flash_forward(q, k, v, sram=6000, trace=True, **kw)
    np.testing.assert_array_equal(fast.o, serial.o)
    assert fast.traffic == serial.traffic
    fast = flash_backward(q, k, v, serial.o, serial.lse, do, sram=6000, **kw)
    slow = flash_backward(q, k, v, serial.o, serial.lse, do, sram=6000, trace=True, **kw)
    for a, b, want in zip((fast.dq, fast.dk, fast.dv), (slow.dq, slow.dk, slow.dv),
                          attention_backward(q, k, v, do, **kw)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, want, atol=1e-11)
    assert fast.traffic == slow.traffic


@pytest.mark.parametrize("cu_q,cu_k,error,message", [
    ([1, 5], [0, 5], ValueError, "cu_seqlens_q must start at 0"),
    ([0, 5, 3], [0, 2, 5], ValueError, "cu_seqlens_q must be non-decreasing"),
    ([0, 4], [0, 9], ValueError, "cu_seqlens_k ends at 9 but there are only 6 packed tokens"),
    ([0.0, 5.0], [0, 5], TypeError, "cu_seqlens_q must hold integers"),
    ([0, 2, 5], [0, 5], ValueError, "cu_seqlens_q and cu_seqlens_k must have the same length"),
    ([0, 5], None, ValueError, "cu_seqlens_q and cu_seqlens_k must be given together"),
    ([[0, 5]], [[0, 5]], ValueError, "cu_seqlens_q must be 1-D"),
])
def test_bad_cu_seqlens_get_a_clear_error_naming_the_kernel(cu_q, cu_k, error, message):
    q = np.zeros((2, 6, 4))
    for name, call in (("flash_forward", lambda kw: flash_forward(q, q, q, sram=500, **kw)),
                       ("flash_backward", lambda kw: flash_backward(q, q, q, q, np.zeros((2, 6)), q, sram=900, **kw))):
        with pytest.raises(error, match=f"{name}: {message}"):
            call(dict(cu_seqlens_q=np.array(cu_q), cu_seqlens_k=None if cu_k is None else np.array(cu_k)))
