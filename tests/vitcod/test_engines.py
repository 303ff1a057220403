"""Engine cycle counts against hand computations; the public-simulator mode against their log."""

import math

import numpy as np
import pytest

from refattn.data.vit import load_deit_tiny_mask
from refattn.vitcod.engines import (
    Hardware,
    best_gemm,
    dense_baseline,
    line_split,
    simulate_layer,
    sparse_engine_cycles,
    unsplit_sparse_baseline,
)
from refattn.vitcod.vitcod_model import PUBLISHED_LOG, PUBLISHED_TOTALS, vitcod_public_layer, vitcod_public_network


def small_mask():
    # N = 4; column 0 kept in every row (4 > threshold 2: the one global token);
    # sparse part: (1,2), (2,3), (3,1), (3,2) -> nnz = 4, row counts [0, 1, 1, 2].
    m = np.zeros((4, 4), bool)
    m[:, 0] = True
    m[1, 2] = m[2, 3] = m[3, 1] = m[3, 2] = True
    return m


HW = Hardware(lines=4)


def test_small_head_by_hand():
    r = simulate_layer(small_mask()[None], d=8, hw=HW, threshold=2)
    (h,) = r.heads
    # work: dense N*G*(d+dv) = 4*1*16 = 64, sparse nnz*(d+dv) = 64 -> lines round(4 * 1/2) = 2 and 2
    assert (h.g, h.nnz, h.dense_lines, h.sparse_lines) == (1, 4, 2, 2)
    # dense SDDMM (4x8)@(8x1) on an 8x2 array, best mapping = os: 1 fold of T + R + C - 2 = 8 + 8 + 2 - 2 = 16,
    # minus SCALE-Sim's last-cycle convention -> 15 (ws: 4+16+2-2-1 = 19; is on the transpose: 19; others 31, 33)
    assert h.dense_sddmm == 15
    # dense SpMM (4x1)@(1x8): best = os on the transpose (8x1)@(1x4): Sr=8 -> 1 fold, Sc=4 on 2 cols -> 2 folds,
    # T=1: 2 * (1 + 8 + 2 - 2) - 1 = 17
    assert h.dense_spmm == 17
    # sparse: chunk ceil(4/2) = 2, pieces [1, 1, 2] -> LPT loads {2, 2}; SDDMM 2*ceil(8/8) + 7 = 9; SpMM 2*1 = 2
    assert (h.sparse_sddmm, h.sparse_spmm) == (9, 2)
    assert r.compute == max(15, 9) + max(17, 2) == 32
    # bytes: Q, K, V, O 4*8 each + index 4*1 + 5*2 = 142 -> ceil(142 / (76.8 GiB/s) * 500 MHz) = 1 cycle
    assert sum(r.bytes.values()) == 142 and r.preload == 1
    assert r.total == 32 and r.bound == "compute"


def test_baselines_by_hand():
    m = small_mask()[None]
    u = unsplit_sparse_baseline(m, d=8, hw=HW)
    # all 8 kept entries on 4 lines: rows [1, 2, 2, 3], chunk 2 -> pieces [1,2,2,2,1] -> max load 2
    assert (u.heads[0].sparse_sddmm, u.heads[0].sparse_spmm, u.total) == (2 + 7, 2, 11)
    d = dense_baseline(m, d=8, hw=HW)
    # QK^T (4x8)@(8x4) on 8x4: os 1 fold of 8 + 8 + 4 - 2 = 18 -> 17; SV (4x4)@(4x8): os on the transpose
    # (8x4)@(4x4): 1 fold of 4 + 8 + 4 - 2 = 14 -> 13
    assert (d.heads[0].dense_sddmm, d.heads[0].dense_spmm, d.total) == (17, 13, 30)


def test_sparse_engine_lpt_and_line_split():
    assert sparse_engine_cycles([5, 0, 0], d=16, dv=8, n_lines=2) == (3 * 2 + 7, 3 * 1)  # 5 -> pieces 3, 2
    assert sparse_engine_cycles([0, 0], d=16, dv=8, n_lines=2) == (0, 0)
    assert line_split(0, 10, 64) == (0, 64) and line_split(10, 0, 64) == (64, 0)
    assert line_split(1, 10_000, 64) == (1, 63)  # clamped so both engines get a line


def test_best_gemm_is_the_fastest_mapping():
    r = best_gemm(197, 1, 64, rows=8, cols=5)
    assert r.cycles == 8 * (197 + 16 + 5 - 2) - 1  # weight-stationary, 8 folds over d


def test_autoencoder_halves_qk_bytes_and_adds_decode():
    keep, _ = load_deit_tiny_mask()
    a, b = simulate_layer(keep[0]), simulate_layer(keep[0], autoencoder=True)
    assert b.bytes["Q"] * 3 == a.bytes["Q"] * 2 and b.bytes["K"] * 3 == a.bytes["K"] * 2
    assert b.decode == 2 * math.ceil(197 * 64 * 3 * 2 / 512) and a.decode == 0
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
    with pytest.raises(ValueError, match="split must be"):
        simulate_layer(small_mask()[None], split="even")
    with pytest.raises(ValueError, match="lines >= 2"):
        Hardware(lines=1)
    with pytest.raises(ValueError, match="masks must be bool"):
        vitcod_public_network(np.ones((2, 4, 4), bool))
