"""The per-layer summaries come from the counted kernel; the public-simulator mode against their log."""

import math

import numpy as np
import pytest

from refattn.data.vit import load_deit_tiny_mask
from refattn.vitcod.engines import Hardware, dense_baseline, line_split, simulate_layer, unsplit_sparse_baseline
from refattn.vitcod.kernel import vitcod_forward
from refattn.vitcod.vitcod_model import PUBLISHED_LOG, PUBLISHED_TOTALS, vitcod_public_layer, vitcod_public_network


def small_mask():
    # N = 4; column 0 kept in every row (4 > threshold 2: the one global token);
    # sparse part: (1,2), (2,3), (3,1), (3,2) -> nnz = 4, row counts [0, 1, 1, 2].
    m = np.zeros((4, 4), bool)
    m[:, 0] = True
    m[1, 2] = m[2, 3] = m[3, 1] = m[3, 2] = True
    return m


HW = Hardware(lines=4)


def test_layer_summary_is_the_kernel_count():
    keep, _ = load_deit_tiny_mask()
    r = simulate_layer(keep[2])
    z = np.zeros((3, 197, 64))
    k = vitcod_forward(z, z, z, keep[2], threshold=50, count_only=True)
    assert r.total == k.cycles["total"] == max(k.cycles["hbm"], k.cycles["compute"])
    assert r.compute == sum(h.compute for h in r.heads) and [h.g for h in r.heads] == [70, 1, 1]
    assert sum(r.bytes.values()) == k.traffic.bytes
    assert r.bound in ("memory", "buffer", "compute")
    for h in r.heads:  # a stage costs at least each engine's cycles
        assert h.sddmm >= max(h.dense_sddmm, h.sparse_sddmm) and h.spmm >= max(h.dense_spmm, h.sparse_spmm)


def test_baselines_use_one_engine():
    m = small_mask()[None]
    u = unsplit_sparse_baseline(m, d=8, hw=HW)
    assert (u.heads[0].g, u.heads[0].dense_lines, u.heads[0].sparse_lines, u.heads[0].nnz) == (0, 0, 4, 8)
    d = dense_baseline(m, d=8, hw=HW)
    assert (d.heads[0].g, d.heads[0].dense_lines, d.heads[0].nnz) == (4, 4, 0)
    assert d.heads[0].dense_macs == 4 * 4 * 16


def test_line_split():
    assert line_split(0, 10, 64) == (0, 64) and line_split(10, 0, 64) == (64, 0)
    assert line_split(1, 10_000, 64) == (1, 63)  # clamped so both engines get a line


def test_autoencoder_cuts_qk_bytes_and_adds_decode():
    keep, _ = load_deit_tiny_mask()
    a, b = simulate_layer(keep[0]), simulate_layer(keep[0], autoencoder=True)
    assert b.bytes["Q codes"] * 3 == a.bytes["Q"] * 2 and b.bytes["K codes"] * 3 == a.bytes["K"] * 2
    assert "Q" not in b.bytes and b.bytes["V"] == a.bytes["V"]
    assert b.result.counter("decode_cycles") == 3 * math.ceil(2 * 197 * 64 * 2 / 512) and a.decode == 0
    assert b.preload < a.preload


def test_public_mode_small_case_by_hand():
    # N = 4, G = 1, nnz = 4, H = 3, d = 64, 64 lines: ratio 4/8 -> Ld = Ls = 32; w = 64/3; ceil(d/w) = 3
    r = vitcod_public_layer(small_mask(), heads=3, d=64, threshold=2)
    assert (r.dense_lines, r.sparse_lines) == (32, 32)
    assert (r.dense_sddmm, r.sparse_sddmm) == (1 * 1 * 3, 1 * 3)
    assert (r.dense_spmm, r.sparse_spmm) == (1, 1)  # ceil(4*64 / int(32*64/3) = 682) = 1
    # per token: Q/K 128 B -> 1 cycle, V 192 B -> 2 cycles, decoder weights -> 1 cycle
    # K_G 1 + dec 1 + Q 4 + dec 1 + K rest 3 + dec 1 + V_G 2 + V rest 3*2 = 19
    assert r.preload == 19 and r.decode == 1 + 4 + 3


def test_public_mode_reproduces_their_published_log():
    keep, _ = load_deit_tiny_mask()
    net = vitcod_public_network(keep)
    got = [(x.g, x.dense_sddmm, x.sparse_sddmm, x.dense_spmm, x.sparse_spmm) for x in net["layers"]]
    assert got == PUBLISHED_LOG
    assert (net["total"], net["preload"], net["decode"], net["compute"]) == (9492, 9492, 4728, 4709)
    assert vitcod_public_network(keep, sparse_v_factor=1.5)["total"] == PUBLISHED_TOTALS["total_with_1.5_factor"]


def test_bad_inputs():
    with pytest.raises(ValueError, match="bool"):
        simulate_layer(np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="lines >= 2"):
        Hardware(lines=1)
    with pytest.raises(ValueError, match="masks must be bool"):
        vitcod_public_network(np.ones((2, 4, 4), bool))
