"""vitcod_forward: equals the masked reference; its HBM traffic and buffer reads equal the docstring's closed forms."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refattn import memory
from refattn.pe_array import simulate_gemm
from refattn.reference import attention
from refattn.vitcod import Hardware, fit_head_autoencoder, vitcod_forward
from refattn.vitcod.kernel import FIELDS, STAGES, deal_pieces, line_split
from refattn.vitcod.reorder import split_mask


@st.composite
def problem(draw):
    heads = draw(st.integers(1, 3))
    n = draw(st.integers(1, 30))  # mostly not a multiple of 8
    d = draw(st.integers(1, 12))
    dv = draw(st.integers(1, 9))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dens = draw(st.sampled_from([0.0, 0.1, 0.4, 1.0]))
    mask = rng.random((heads, n, n)) < dens
    if draw(st.booleans()):  # a few global columns, as in ViT masks
        mask[:, :, rng.choice(n, size=min(n, 2), replace=False)] = True
    big = draw(st.sampled_from([1.0, 30.0]))  # 30: large logits
    q = big * rng.standard_normal((heads, n, d))
    k, v = rng.standard_normal((heads, n, d)), rng.standard_normal((heads, n, dv))
    # threshold 0: every kept column is global (empty sparse part); n: none is (no dense part)
    threshold = draw(st.sampled_from([None, 0, 1, n]))
    return q, k, v, mask, threshold


def _check_output(o, q, k, v, mask, rtol, atol):
    ro, _ = attention(q, k, v, mask=mask)
    np.testing.assert_allclose(o, ro, rtol=rtol, atol=atol)
    empty = np.broadcast_to(~mask.any(axis=-1), o.shape[:-1])
    assert np.all(o[empty] == 0)  # fully masked rows: 0


@settings(max_examples=25)
@given(problem(), st.sampled_from(["split", "dense", "sparse"]))
def test_equals_masked_reference_float64(prob, design):
    q, k, v, mask, threshold = prob
    r = vitcod_forward(q, k, v, mask, design=design, threshold=threshold)
    _check_output(r.o, q, k, v, mask, 1e-10, 1e-12)
    assert r.stopped is False and r.state is None and r.n_steps == 5 * q.shape[0]


@settings(max_examples=10)
@given(problem())
def test_equals_masked_reference_float32(prob):
    q, k, v, mask, threshold = prob
    q, k, v = (x.astype(np.float32) for x in (q, k, v))
    r = vitcod_forward(q, k, v, mask, threshold=threshold)
    assert r.o.dtype == np.float32
    _check_output(r.o, q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), mask, 2e-4, 2e-5)


def test_autoencoder_decodes_on_chip():
    rng = np.random.default_rng(3)
    q, k, v = rng.standard_normal((2, 3, 11, 5)), rng.standard_normal((2, 3, 11, 5)), rng.standard_normal((2, 3, 11, 4))
    mask = rng.random((3, 11, 11)) < 0.4
    mask[..., 0] = True
    ae = fit_head_autoencoder(q)
    r = vitcod_forward(q, k, v, mask, autoencoder=ae, threshold=4)
    _check_output(r.o, ae.reconstruct(q), ae.reconstruct(k), v, mask, 1e-10, 1e-12)
    hc = ae.bottleneck
    # per group of H = 3 heads: codes Hc*N*d of Q and of K, decoder weights 2*H*Hc; no plain Q or K
    assert r.traffic.of("Qc") == (2 * hc * 11 * 5, 0) and r.traffic.of("Kc") == (2 * hc * 11 * 5, 0)
    assert r.traffic.of("AE") == (2 * 2 * 3 * hc, 0) and r.traffic.of("Q") == (0, 0)
    # the decoder: 2*N*d*Hc MACs per head on all 512 MACs
    assert r.counter("decode_macs") == 6 * 2 * 11 * 5 * hc
    assert r.counter("decode_cycles") == 6 * math.ceil(2 * 11 * 5 * hc / 512)


def _closed_forms(mask, d, dv, hw, threshold, design="split"):
    """Traffic and buffer reads of one run, from the docstrings' closed forms (per head, summed)."""
    n = mask.shape[-1]
    cb, pb = hw.column_index_bytes(n), hw.row_pointer_bytes
    tot = dict.fromkeys(["idx", "mask", "dense_Q", "dense_K", "dense_V", "dense_S", "dense_out_writes",
                         "dense_cycles", "sparse_Q", "sparse_K", "sparse_V", "sparse_idx", "sparse_S",
                         "sparse_out_writes", "partial_reads", "sparse_cycles"], 0)
    for mk in mask:
        sp = split_mask(mk, threshold)
        g, nnz, row_nnz = sp.g, sp.nnz, sp.row_nnz
        if design == "dense":
            g, nnz, row_nnz = n, 0, np.zeros(n, int)
        elif design == "sparse":
            g, nnz, row_nnz = 0, int(mk.sum()), mk.sum(axis=1)
        indptr = np.concatenate([[0], np.cumsum(row_nnz)])
        tot["idx"] += nnz * cb + (n + 1) * pb if nnz else 0
        tot["mask"] += n * math.ceil(g / 8) if g else 0
        ld, ls = line_split(n * g * (d + dv), nnz * (d + dv), hw.lines)
        if g:
            best = [min((simulate_gemm(*shape, rows=8, cols=ld, dataflow=df) for df in ("os", "ws", "is")),
                        key=lambda r: r.cycles) for shape in ((n, g, d), (n, dv, g))]
            tot["dense_Q"] += best[0].sram_reads["A"]
            tot["dense_K"] += best[0].sram_reads["B"]
            tot["dense_S"] += best[1].sram_reads["A"]
            tot["dense_V"] += best[1].sram_reads["B"]
            tot["dense_out_writes"] += best[0].sram_writes["C"] + best[1].sram_writes["C"]
            tot["dense_cycles"] += best[0].cycles + best[1].cycles
        if nnz:
            pieces = deal_pieces(row_nnz, indptr, ls)
            n_p = len(pieces)
            load = np.bincount(pieces[:, 0], weights=pieces[:, 3] - pieces[:, 2], minlength=ls).max()
            tot["sparse_cycles"] += int(load) * (math.ceil(d / 8) + math.ceil(dv / 8)) + 7
            tot["sparse_Q"] += n_p * d
            tot["sparse_K"] += nnz * d
            tot["sparse_V"] += nnz * dv
            tot["sparse_idx"] += 2 * (2 * pb * n_p + nnz * cb)
            tot["sparse_S"] += nnz
            tot["sparse_out_writes"] += nnz + n_p * dv
            parts = np.bincount(pieces[:, 1], minlength=n) + (1 if g else 0)
            tot["partial_reads"] += dv * int(np.maximum(parts - 1, 0)[np.bincount(pieces[:, 1], minlength=n) > 0]
                                             .sum())
    return tot


@settings(max_examples=20)
@given(problem(), st.sampled_from(["split", "dense", "sparse"]), st.booleans(),
       st.sampled_from([Hardware(), Hardware(lines=3, buffer_read_bytes=8, buffer_banks=2)]))
def test_counts_equal_closed_forms(prob, design, count_only, hw):
    q, k, v, mask, threshold = prob
    heads, n, d = q.shape
    dv = v.shape[-1]
    r = vitcod_forward(q, k, v, mask, design=design, threshold=threshold, count_only=count_only, hw=hw)
    cf = _closed_forms(mask, d, dv, hw, threshold, design)
    t = r.traffic
    assert t.of("Q") == (heads * n * d, 0) and t.of("K") == (heads * n * d, 0)
    assert t.of("V") == (heads * n * dv, 0) and t.of("O") == (0, heads * n * dv)
    assert t.of("idx") == (cf.pop("idx"), 0) and t.of("mask") == (cf.pop("mask"), 0)
    for name, want in cf.items():
        assert r.counter(name) == want, name
    assert r.outputs == {} if count_only else set(r.outputs) == {"o"}
    # the cycles of every step follow from its counts and the rates (module docstring)
    w, banks = hw.buffer_read_bytes, hw.buffer_banks
    for row in r.counters.reshape(-1, r.counters.shape[-1]):
        c = dict(zip(FIELDS, (int(x) for x in row)))

        def gather(rows, nbytes):
            return -(-rows // min(banks, max(1, w // nbytes))) * -(-nbytes // w)

        assert c["port_K"] == -(-(c["dense_K"] + c["decode_K"]) // w) + gather(c["sparse_K_rows"], d)
        assert c["port_V"] == -(-c["dense_V"] // w) + gather(c["sparse_V_rows"], dv)
        assert c["stage_cycles"] == max(c[f] for f in ("dense_cycles", "sparse_cycles", "decode_cycles", "port_Q",
                                                       "port_K", "port_V", "port_idx", "port_out"))
    assert r.cycles["compute"] == int(r.counters[..., -1].sum())
    assert r.cycles["total"] == max(r.cycles["compute"], math.ceil(r.traffic.bytes / hw.bytes_per_cycle))
    full = r if not count_only else vitcod_forward(q, k, v, mask, design=design, threshold=threshold, hw=hw)
    assert np.array_equal(full.counters, r.counters) and full.traffic == r.traffic
    assert (full.flops, full.exps, full.peak_sram, full.n_steps) == (r.flops, r.exps, r.peak_sram, r.n_steps)


def test_read_width_charges_gathers_per_row_and_streams_per_byte():
    """The sparse engine's K reads are gathered rows: ceil(d / W) cycles each, however wide the port;
    the dense engine's stream: ceil(bytes / W)."""
    mask = np.zeros((1, 40, 40), bool)
    mask[0, :, 0] = True  # one global token
    mask[0, np.arange(40), (np.arange(40) + 1) % 40] = True  # a diagonal: 40 sparse entries
    z = np.zeros((1, 40, 16))
    for w in (4, 16, 64, 256):
        r = vitcod_forward(z, z, z, mask, hw=Hardware(buffer_read_bytes=w), threshold=20, count_only=True)
        assert r.plan.details["heads"][0]["g"] == 1 and r.counter("sparse_K_rows", "SDDMM") == 39
        assert r.counter("port_K", "SDDMM") == math.ceil(r.counter("dense_K", "SDDMM") / w) + 39 * math.ceil(16 / w)


def test_stepping_states_and_refusals():
    rng = np.random.default_rng(1)
    q, k, v = rng.standard_normal((2, 19, 6)), rng.standard_normal((2, 19, 6)), rng.standard_normal((2, 19, 3))
    mask = rng.random((2, 19, 19)) < 0.3
    mask[..., 2] = True
    full = vitcod_forward(q, k, v, mask, threshold=6, trace=True)
    hw = Hardware()
    for step in range(1, full.n_steps + 1):
        r = vitcod_forward(q, k, v, mask, threshold=6, stop_after=step)
        s = r.state
        assert r.stopped and s.step == step and s.head == (step - 1) // 5 and s.phase == STAGES[(step - 1) % 5]
        assert r.trace is not None  # stepping always records the trace
        info = r.plan.details["heads"][s.head]
        eng = s.arrays["line_engine"]
        assert (eng == 0).sum() == info["dense_lines"] and (eng == 1).sum() == info["sparse_lines"]
        if s.phase in ("SDDMM", "SpMM"):  # every sparse entry of the head is done by some line this step
            assert s.arrays["line_entries"].sum() == info["nnz"]
            assert s.arrays["counters"]["stage_cycles"] == full.counters[s.head, STAGES.index(s.phase), -1]
        else:
            assert s.arrays["line_entries"].sum() == 0
        if s.phase == "store":
            assert "O" not in s.sram
    last = vitcod_forward(q, k, v, mask, threshold=6, stop_after=full.n_steps)
    assert np.array_equal(last.o, full.o) and last.traffic == full.traffic
    assert np.array_equal(last.counters, full.counters)
    for bad in (0, full.n_steps + 1, 1.0):
        with pytest.raises(ValueError, match=f"stop_after must be an integer between 1 and n_steps = {full.n_steps}"):
            vitcod_forward(q, k, v, mask, threshold=6, stop_after=bad)
    assert hw.macs == 512


def test_deit_tiny_fits_and_a_long_sequence_is_refused():
    from refattn.data.vit import load_deit_tiny_mask

    keep, _ = load_deit_tiny_mask()
    z = np.zeros((3, 197, 64))
    r = vitcod_forward(z, z, z, keep[2], threshold=50, count_only=True)
    assert [h["g"] for h in r.plan.details["heads"]] == [70, 1, 1]
    assert r.peak_sram <= r.plan.M
    big = np.zeros((1, 1024, 64))
    with pytest.raises(memory.SramTooSmall, match="the Q buffer holds 54272 bytes, but head 0 needs 65536"):
        vitcod_forward(big, big, big, np.ones((1024, 1024), bool), count_only=True)


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(design="both"), ValueError, "design must be one of"),
        (dict(split=np.ones((5, 5), int)), TypeError, "bool keep-mask"),
        (dict(split=np.ones((4, 4), bool)), ValueError, "does not fit heads"),
        (dict(hw="vitcod"), TypeError, "hw must be"),
    ],
)
def test_bad_inputs(kwargs, err, match):
    z = np.zeros((2, 5, 4))
    args = dict(split=np.ones((5, 5), bool))
    args.update(kwargs)
    split = args.pop("split")
    with pytest.raises(err, match=match):
        vitcod_forward(z, z, z, split, **args)


def test_bad_shapes():
    z = np.zeros((2, 5, 4))
    with pytest.raises(ValueError, match="self-attention"):
        vitcod_forward(z, np.zeros((2, 6, 4)), np.zeros((2, 6, 4)), np.ones((5, 6), bool))
    ae = fit_head_autoencoder(np.random.default_rng(0).standard_normal((3, 5, 4)))
    with pytest.raises(ValueError, match="H = 3 heads"):
        vitcod_forward(z, z, z, np.ones((5, 5), bool), autoencoder=ae)


@pytest.mark.parametrize("design", ["split", "sparse"])
def test_counts_equal_closed_forms_on_deit_tiny(design):
    """The bundled mask reaches every path: G = 70 on the array, the CLS row cut into pieces (partial sums)."""
    from refattn.data.vit import load_deit_tiny_mask

    keep, _ = load_deit_tiny_mask()
    z = np.zeros((3, 197, 64))
    r = vitcod_forward(z, z, z, keep[2], design=design, threshold=50, count_only=True)
    cf = _closed_forms(keep[2], 64, 64, Hardware(), 50, design)
    assert r.traffic.of("idx") == (cf.pop("idx"), 0) and r.traffic.of("mask") == (cf.pop("mask"), 0)
    for name, want in cf.items():
        assert r.counter(name) == want, name
    assert r.counter("partial_reads") > 0 and r.counter("sparse_K") > 0
    assert (r.counter("dense_K") > 0) == (design == "split")


def test_peak_buffers_counted_equal_the_plan():
    from refattn.data.vit import load_deit_tiny_mask
    from refattn.vitcod import HeadAutoencoder
    from refattn.vitcod.kernel import buffer_needs

    keep, _ = load_deit_tiny_mask()
    z = np.zeros((1, 3, 197, 64))
    ae = HeadAutoencoder(np.zeros((2, 3)), np.zeros((3, 2)))
    for auto in (None, ae):
        r = vitcod_forward(z, z, z, keep[2], threshold=50, count_only=True, autoencoder=auto)
        hw = r.hw
        want = {}
        for h in r.plan.details["heads"]:
            need = buffer_needs(197, 64, 64, h["g"], h["nnz"], hw, 2 if auto else 0, 3 if auto else 0)
            want = {k: max(want.get(k, 0), v) for k, v in need.items()}
        assert r.peak_buffers == want
        assert all(r.peak_buffers[k] <= cap for k, cap in hw.buffers().items())
