"""Standard attention: the three-pass baseline that materialises S and P in HBM.

This is the algorithm the FlashAttention paper beats (its Algorithm 0;
docs/algorithms.md), run on the simulated hierarchy so that every
element it moves is counted by :mod:`refattn.memory`. Nothing is skipped:
masked entries are computed, written to S as -inf and to P as 0.

Forward, per head (Nq queries, Nk keys, head dims d and dv)::

    F1  S = scale * Q K^T        read Q, K by tiles   -> write S  (Nq x Nk)
    F2  P = softmax(S), L = lse  read S by rows       -> write P, L
    F3  O = P V                  read P, V by tiles   -> write O

Backward (the derivation in docs/algorithms.md)::

    B1  dV = P^T dO              read P, dO           -> write dV
    B2  dP = dO V^T, D = rowsum(dO * O)   read dO, O, V -> write dP, D
    B3  dS = P * (dP - D)        read P, dP, D        -> write dS
    B4  dQ = scale * dS K        read dS, K           -> write dQ
    B5  dK = scale * dS^T Q      read dS, Q           -> write dK

The backward reads the P that the forward left in HBM. Since this wrapper
is called without it, P is rebuilt first by running passes F1-F2 of the
*same* jitted code on scratch counters that are thrown away: the bits are
those the forward stored, and the counted traffic is the backward's alone.

Tiling (the project's choice, stated once)
------------------------------------------
Matrix-product passes (F1, F3, B1, B2, B4, B5) hold a block of R "outer"
rows on chip (a elements per row: e.g. the Q block in F1, the O accumulator
in F3) and stream blocks of C "inner" rows (b elements per row: K in F1, V
in F3) past it, with ``t`` tiles of R x C on chip (the S/P/dS tile, plus
the mask tile in F1 when a mask is given). Footprint ``R*a + C*b + t*R*C``.
Block sizes from M::

    C = min(n_inner, max(1, M // (4 b)))
    R = min(n_outer, (M - C b) // (a + t C))        # the rest of M goes to R
    if R < 1: C = 1, R = min(n_outer, (M - b) // (a + t));  R < 1: SramTooSmall

    pass  outer  inner   a     b    t
    F1    Nq     Nk      d     d    1 (+1 with a mask)
    F3    Nq     Nk      dv    dv   1
    B1    Nk     Nq      dv    dv   1     (dV accumulator; dO streamed)
    B2    Nq     Nk      2dv+1 dv   1     (dO, O and D held; V streamed)
    B4    Nq     Nk      d     d    1     (dQ accumulator; K streamed)
    B5    Nk     Nq      d     d    1     (dK accumulator; Q streamed)

Row passes (F2, B3) hold R rows of ``k`` tiles of width C plus ``s``
statistics per row (F2: k = 1 (S, turned into P in place), s = 2 (m, l);
B3: k = 2 (P and dP, turned into dS), s = 1 (D)). If a whole row fits
(``M >= k Nk + s``): C = Nk, R = min(Nq, M // (k Nk + s)). Otherwise R = 1
and C = (M - s) // k. Softmax with whole rows reads S once; with partial
rows it reads S twice (sweep 1: online max/sum -> L; sweep 2: P = exp(S - L)).
B3 is elementwise once D is known, so it reads P and dP once either way.

Steps (1..n_steps, docs/contract.md): one step per tile of each pass (F1,
F3, B1, B2, B4, B5: one per R x C tile; F2 and B3: one per row block when
rows fit, else one per chunk of each sweep). Heads run one after another,
each through all its passes; a pass releases its slots in its last step.
``stop_after=k`` (1 <= k <= ``plan.n_steps``) stops after step k:
``state.phase`` names the pass, ``state.rows``/``cols`` the tile, and
``state.arrays`` holds ``accumulator`` (the pass's on-chip accumulator,
float64) and ``hbm`` (the simulated HBM arrays as they stand: forward S, P,
O, L; backward P, dP, D, dS, dQ, dK, dV); the trace is then always recorded.

Precision: S, P, dP, dS and the outputs are stored in the input dtype.
Three sums are kept in float64 and rounded once: the softmax denominator
l = sum_j exp(S_ij - m_i) (a float32 running sum over Nk terms loses about
Nk * eps; FlashAttention's tiles avoid this by summing Bc terms at a time),
the matmul accumulators (O, dV, dQ, dK across tiles), and D_i =
rowsum(dO_i * O_i) and dP = dO V^T, so dP - D is computed from two equally
rounded numbers (docs/design.md, "Precision").

HBM traffic closed form (elements, per head; ``Tx = ceil(n_outer / R)`` of pass x)::

    forward:   Q  r  Nq d                       S  w  Nq Nk
               K  r  T_F1 Nk d                  S  r  Nq Nk * (1 if rows fit in F2 else 2)
               mask r Nq Nk (only with a mask)  P  w  Nq Nk,   L  w  Nq
               P  r  Nq Nk                      V  r  T_F3 Nk dv,   O  w  Nq dv
    backward:  P  r  2 Nq Nk (B1, B3)           dO r  T_B1 Nq dv + Nq dv (B1, B2)
               dV w  Nk dv                      O  r  Nq dv,   D  w Nq,   D  r Nq
               V  r  T_B2 Nk dv                 dP w  Nq Nk,   dP r  Nq Nk
               dS w  Nq Nk,   dS r  2 Nq Nk     K  r  T_B4 Nk d,   dQ w  Nq d
               Q  r  T_B5 Nq d,   dK w  Nk d

With M large enough that every T is 1 and rows fit (N = Nq = Nk, d = dv),
this is 4N^2 + 4Nd + N for the forward (the paper's 4Nd + 4N^2, plus the
lse L the API returns) and 7N^2 + 9Nd + 2N for the backward (the derived
8Nd + 7N^2, plus O read and D written/read for D = rowsum(dO * O)).

FLOPs counted (2 per multiply-add): forward 2 Nq Nk (d + dv), backward
4 Nq Nk (d + dv). Exponentials: Nq Nk per softmax sweep that computes exp.
"""

from __future__ import annotations

import numba
import numpy as np

from refattn import memory
from refattn.kernels.common import (
    close_step,
    finish,
    grad_input,
    grad_outputs,
    prepare,
    readonly,
    run_with_trace,
    score_tile,
    step_state,
    warn_if_costly,
)
from refattn.kernels.contract import KernelResult, Plan
from refattn.validation import check_product_range

__all__ = ["standard_forward", "standard_backward", "plan_forward", "plan_backward",
           "matmul_blocks", "row_blocks", "SLOT_NAMES", "FORWARD_PASSES", "BACKWARD_PASSES"]

SLOT_ROWS, SLOT_COLS, SLOT_TILE, SLOT_ACC, SLOT_STATS, SLOT_TILE2, SLOT_MASK, SLOT_ROWS2 = range(8)
SLOT_NAMES = ("outer rows", "inner rows", "tile", "accumulator", "row stats", "second tile",
              "mask tile", "second outer rows")
FORWARD_PASSES = ("F1 S=QK^T", "F2 softmax", "F3 O=PV")
BACKWARD_PASSES = ("B1 dV=P^T dO", "B2 dP=dO V^T", "B3 dS", "B4 dQ=dS K", "B5 dK=dS^T Q")


# ---------------------------------------------------------------------------
# Plans (Python): block sizes from M, refused before any work if they do not fit
# ---------------------------------------------------------------------------
def matmul_blocks(n_outer, n_inner, a, b, t, M, what):
    """(R, C) of a matrix-product pass (see the module docstring), or SramTooSmall."""
    c = min(n_inner, max(1, M // (4 * b)))
    r = min(n_outer, (M - c * b) // (a + t * c))
    if r < 1:
        c = 1
        r = min(n_outer, (M - b) // (a + t))
    need = max(r, 1) * a + c * b + t * max(r, 1) * c
    memory.require_fits(need, memory.Sram(M), what)
    return int(r), int(c)


def row_blocks(n_rows, n_cols, k, s, M, what):
    """(R, C) of a row pass: whole rows if they fit, else one row in chunks of C."""
    if M >= k * n_cols + s:
        return int(min(n_rows, M // (k * n_cols + s))), int(n_cols)
    c = (M - s) // k
    memory.require_fits(max(c, 1) * k + s, memory.Sram(M), what)
    return 1, int(c)


def plan_forward(nq, nk, d, dv, M, has_mask=False):
    """{pass: (R, C)} of the forward for SRAM capacity M (elements)."""
    where = f"standard_forward (Nq={nq}, Nk={nk}, d={d}, dv={dv})"
    return {
        "F1": matmul_blocks(nq, nk, d, d, 2 if has_mask else 1, M, f"{where} pass F1 (S = QK^T, smallest tile)"),
        "F2": row_blocks(nq, nk, 1, 2, M, f"{where} pass F2 (softmax, one element and m, l)"),
        "F3": matmul_blocks(nq, nk, dv, dv, 1, M, f"{where} pass F3 (O = PV, smallest tile)"),
    }


def plan_backward(nq, nk, d, dv, M):
    """{pass: (R, C)} of the backward for SRAM capacity M (elements)."""
    where = f"standard_backward (Nq={nq}, Nk={nk}, d={d}, dv={dv})"
    return {
        "B1": matmul_blocks(nk, nq, dv, dv, 1, M, f"{where} pass B1 (dV = P^T dO, smallest tile)"),
        "B2": matmul_blocks(nq, nk, 2 * dv + 1, dv, 1, M, f"{where} pass B2 (dP = dO V^T, smallest tile)"),
        "B3": row_blocks(nq, nk, 2, 1, M, f"{where} pass B3 (dS, one element of P and dP and D)"),
        "B4": matmul_blocks(nq, nk, d, d, 1, M, f"{where} pass B4 (dQ = dS K, smallest tile)"),
        "B5": matmul_blocks(nk, nq, d, d, 1, M, f"{where} pass B5 (dK = dS^T Q, smallest tile)"),
    }


def _cdiv(a, b):
    return -(-a // b)


# ---------------------------------------------------------------------------
# Jitted passes. Each returns True if the run stopped (stop_after) inside it;
# info = [pass index, head, r0, r1, c0, c1] of the last step then (common.stop_here).
# ---------------------------------------------------------------------------
@numba.njit(cache=True)
def _sum64(x):
    """Sum of a 1-D array, accumulated in float64."""
    tot = 0.0
    for t in range(x.shape[0]):
        tot += x[t]
    return tot


@numba.njit(cache=True)
def _pass_scores(mem, dims, h, q, k, mask, has_mask, scale, causal_on, offset, R, C, s_hbm, info, compute):
    """F1: S[h] = scale * Q K^T with the causal/boolean mask as -inf; one step per R x C tile."""
    nq, nk, d = dims[1], dims[2], dims[3]
    s_buf = np.empty(R * C if compute else 0, q.dtype)
    cols = np.arange(nk)
    for r0 in range(0, nq, R):
        r1 = min(r0 + R, nq)
        memory.load(mem, memory.T_Q, SLOT_ROWS, r0, r1, 0, d)  # Q block (rows, d)
        for c0 in range(0, nk, C):
            c1 = min(c0 + C, nk)
            memory.load(mem, memory.T_K, SLOT_COLS, c0, c1, 0, d)  # K block (w, d)
            if has_mask:
                memory.load(mem, memory.T_MASK, SLOT_MASK, r0, r1, c0, c1)
            if compute:  # S^T (w, rows) unscaled, masked entries -inf; S = eff * st^T
                st, eff = score_tile(q[h, r0:r1], k[h, c0:c1], c1 - c0, s_buf, scale, r0, cols[c0:c1], causal_on,
                                     offset, mask, has_mask, h)
                s_hbm[h, r0:r1, c0:c1] = st.T * eff
            memory.count_flops(mem, 2 * (r1 - r0) * (c1 - c0) * d, 0)
            memory.hold(mem, memory.T_S, SLOT_TILE, r0, r1, c0, c1)
            memory.store(mem, memory.T_S, SLOT_TILE, r0, r1, c0, c1)
            if close_step(mem, info, 0, h, r0, r1, c0, c1, r1 == nq and c1 == nk):
                return True
    return False


@numba.njit(cache=True)
def _pass_softmax(mem, dims, h, R, C, s_hbm, p_hbm, lse, info, compute):
    """F2: P[h] = softmax(S[h]) row-wise, lse = m + log l; whole rows, or two sweeps per row."""
    nq, nk = dims[1], dims[2]
    ninf = -np.inf
    if C == nk:  # whole rows fit: one read and one write of S / P per element
        for r0 in range(0, nq, R):
            r1 = min(r0 + R, nq)
            memory.load(mem, memory.T_S, SLOT_TILE, r0, r1, 0, nk)  # S rows (rows, Nk)
            memory.hold(mem, memory.T_L, SLOT_STATS, r0, r1, 0, 2)  # m, l per row
            for i in range(r0, r1 if compute else r0):
                row = s_hbm[h, i]
                m = row.max()
                if m == ninf:  # fully masked row
                    p_hbm[h, i] = 0.0
                    lse[h, i] = ninf
                    continue
                e = np.exp(row - m)
                tot = _sum64(e)  # float64 denominator (module docstring, "Precision")
                p_hbm[h, i] = e / tot
                lse[h, i] = m + np.log(tot)
            memory.count_flops(mem, 0, (r1 - r0) * nk)
            memory.hold(mem, memory.T_P, SLOT_TILE, r0, r1, 0, nk)  # P replaces S on chip
            memory.store(mem, memory.T_P, SLOT_TILE, r0, r1, 0, nk)
            memory.store(mem, memory.T_L, SLOT_STATS, r0, r1, 0, 1)
            if close_step(mem, info, 1, h, r0, r1, 0, nk, r1 == nq):
                return True
    else:  # one row at a time in chunks of C: sweep 1 (online m, l), sweep 2 (P = exp(S - L))
        for i in range(nq):
            memory.hold(mem, memory.T_L, SLOT_STATS, i, i + 1, 0, 2)
            m = ninf
            tot = 0.0
            for c0 in range(0, nk, C):
                c1 = min(c0 + C, nk)
                memory.load(mem, memory.T_S, SLOT_TILE, i, i + 1, c0, c1)
                m_new = ninf
                if compute:
                    chunk = s_hbm[h, i, c0:c1]
                    m_new = max(m, chunk.max())
                if m_new != ninf:
                    alpha = 0.0 if m == ninf else np.exp(m - m_new)
                    tot = alpha * tot + _sum64(np.exp(chunk - m_new))
                    m = m_new
                memory.count_flops(mem, 0, c1 - c0)
                if c1 == nk and compute:
                    lse[h, i] = ninf if tot == 0.0 else m + np.log(tot)
                if c1 == nk:
                    memory.store(mem, memory.T_L, SLOT_STATS, i, i + 1, 0, 1)
                if close_step(mem, info, 1, h, i, i + 1, c0, c1, False):
                    return True
            L = lse[h, i] if compute else ninf
            for c0 in range(0, nk, C):
                c1 = min(c0 + C, nk)
                memory.load(mem, memory.T_S, SLOT_TILE, i, i + 1, c0, c1)
                if not compute:
                    pass
                elif L == ninf:
                    p_hbm[h, i, c0:c1] = 0.0
                else:
                    p_hbm[h, i, c0:c1] = np.exp(s_hbm[h, i, c0:c1] - L)
                memory.count_flops(mem, 0, c1 - c0)
                memory.hold(mem, memory.T_P, SLOT_TILE, i, i + 1, c0, c1)
                memory.store(mem, memory.T_P, SLOT_TILE, i, i + 1, c0, c1)
                if close_step(mem, info, 1, h, i, i + 1, c0, c1, i == nq - 1 and c1 == nk):
                    return True
    return False


@numba.njit(cache=True)
def _pass_matmul(mem, dims, h, pas, tile_t, tile_hbm, inner_t, inner, out_t, out, factor, R, C, acc, info,
                 transposed, w_out, compute):
    """out[h] = factor * T @ inner[h] with T = tile[h] (``transposed`` False) or tile[h]^T (True).

    F3 (O = P V), B4 (dQ = scale dS K); transposed: B1 (dV = P^T dO), B5
    (dK = scale dS^T Q). R output rows (query rows, or key rows when
    transposed) accumulate on chip over C-wide blocks of the other axis; one
    step per tile, the accumulator stored after the last tile of its block.
    The tile's events name query rows x key columns either way.
    """
    nq, nk = dims[1], dims[2]
    n_out, n_in = (nk, nq) if transposed else (nq, nk)
    for a0 in range(0, n_out, R):
        a1 = min(a0 + R, n_out)
        acc[:] = 0.0
        memory.hold(mem, out_t, SLOT_ACC, a0, a1, 0, w_out)  # accumulator (a1 - a0, w_out)
        for b0 in range(0, n_in, C):
            b1 = min(b0 + C, n_in)
            r0, r1, c0, c1 = (b0, b1, a0, a1) if transposed else (a0, a1, b0, b1)
            memory.load(mem, tile_t, SLOT_TILE, r0, r1, c0, c1)  # tile (queries, keys)
            memory.load(mem, inner_t, SLOT_COLS, b0, b1, 0, w_out)  # inner block (b1 - b0, w_out)
            if compute:
                t = np.ascontiguousarray(tile_hbm[h, r0:r1, c0:c1])
                if transposed:
                    acc[:a1 - a0, :w_out] += np.dot(t.T, inner[h, b0:b1])
                else:
                    acc[:a1 - a0, :w_out] += np.dot(t, inner[h, b0:b1])
            memory.count_flops(mem, 2 * (r1 - r0) * (c1 - c0) * w_out, 0)
            if b1 == n_in:
                if compute:
                    out[h, a0:a1] = acc[:a1 - a0, :w_out] * factor
                memory.store(mem, out_t, SLOT_ACC, a0, a1, 0, w_out)
            if close_step(mem, info, pas, h, r0, r1, c0, c1, a1 == n_out and b1 == n_in):
                return True
    return False


@numba.njit(cache=True)
def _pass_dp(mem, dims, h, do, o, v, R, C, dp_hbm, d_hbm, info, compute):
    """B2: D = rowsum(dO * O) (stored with the first tile of the row block); dP = dO V^T."""
    nq, nk, dv = dims[1], dims[2], dims[4]
    for r0 in range(0, nq, R):
        r1 = min(r0 + R, nq)
        memory.load(mem, memory.T_DO, SLOT_ROWS, r0, r1, 0, dv)  # dO block (rows, dv)
        memory.load(mem, memory.T_O, SLOT_ROWS2, r0, r1, 0, dv)  # O block (rows, dv)
        for i in range(r0, r1 if compute else r0):  # D = rowsum(dO * O), summed in float64
            acc_d = 0.0
            for t in range(dv):
                acc_d += np.float64(do[h, i, t]) * np.float64(o[h, i, t])
            d_hbm[h, i] = acc_d
        memory.hold(mem, memory.T_D, SLOT_STATS, r0, r1, 0, 1)
        memory.store(mem, memory.T_D, SLOT_STATS, r0, r1, 0, 1)
        do64 = do[h, r0:r1 if compute else r0].astype(np.float64)
        for c0 in range(0, nk, C):
            c1 = min(c0 + C, nk)
            memory.load(mem, memory.T_V, SLOT_COLS, c0, c1, 0, dv)
            if compute:
                dp_hbm[h, r0:r1, c0:c1] = np.dot(do64, v[h, c0:c1].astype(np.float64).T)  # summed in float64
            memory.count_flops(mem, 2 * (r1 - r0) * (c1 - c0) * dv, 0)
            memory.hold(mem, memory.T_DP, SLOT_TILE, r0, r1, c0, c1)
            memory.store(mem, memory.T_DP, SLOT_TILE, r0, r1, c0, c1)
            if close_step(mem, info, 1, h, r0, r1, c0, c1, r1 == nq and c1 == nk):
                return True
    return False


@numba.njit(cache=True)
def _pass_ds(mem, dims, h, R, C, p_hbm, dp_hbm, d_hbm, ds_hbm, info, compute):
    """B3: dS = P * (dP - D), elementwise by R x C tiles (whole rows when they fit)."""
    nq, nk = dims[1], dims[2]
    for r0 in range(0, nq, R):
        r1 = min(r0 + R, nq)
        memory.load(mem, memory.T_D, SLOT_STATS, r0, r1, 0, 1)
        for c0 in range(0, nk, C):
            c1 = min(c0 + C, nk)
            memory.load(mem, memory.T_P, SLOT_TILE, r0, r1, c0, c1)
            memory.load(mem, memory.T_DP, SLOT_TILE2, r0, r1, c0, c1)
            for i in range(r0, r1 if compute else r0):
                di = d_hbm[h, i]
                for j in range(c0, c1):
                    ds_hbm[h, i, j] = p_hbm[h, i, j] * (dp_hbm[h, i, j] - di)
            memory.hold(mem, memory.T_DS, SLOT_TILE2, r0, r1, c0, c1)  # dS replaces dP
            memory.store(mem, memory.T_DS, SLOT_TILE2, r0, r1, c0, c1)
            if close_step(mem, info, 2, h, r0, r1, c0, c1, r1 == nq and c1 == nk):
                return True
    return False


@numba.njit(cache=True)
def _forward(mem, dims, q, k, v, mask, has_mask, scale, causal_on, offset, plan, s_hbm, p_hbm, o, lse, acc,
             info, upto, compute):
    """Passes F1..F`upto` for every head (upto = 2 rebuilds P for the backward)."""
    for h in range(dims[0]):
        memory.set_head(mem, h)
        if _pass_scores(mem, dims, h, q, k, mask, has_mask, scale, causal_on, offset, plan[0], plan[1], s_hbm, info,
                        compute):
            return True
        if _pass_softmax(mem, dims, h, plan[2], plan[3], s_hbm, p_hbm, lse, info, compute):
            return True
        if upto >= 3 and _pass_matmul(mem, dims, h, 2, memory.T_P, p_hbm, memory.T_V, v, memory.T_O, o,
                                      1.0, plan[4], plan[5], acc, info, False, dims[4], compute):
            return True
    return False


@numba.njit(cache=True)
def _backward(mem, dims, q, k, v, o, do, scale, plan, p_hbm, dp_hbm, ds_hbm, d_hbm, dq, dk, dv, acc, info,
              compute):
    d, dv_ = dims[3], dims[4]
    for h in range(dims[0]):
        memory.set_head(mem, h)
        if _pass_matmul(mem, dims, h, 0, memory.T_P, p_hbm, memory.T_DO, do, memory.T_DV, dv, 1.0,
                        plan[0], plan[1], acc, info, True, dv_, compute):
            return True
        if _pass_dp(mem, dims, h, do, o, v, plan[2], plan[3], dp_hbm, d_hbm, info, compute):
            return True
        if _pass_ds(mem, dims, h, plan[4], plan[5], p_hbm, dp_hbm, d_hbm, ds_hbm, info, compute):
            return True
        if _pass_matmul(mem, dims, h, 3, memory.T_DS, ds_hbm, memory.T_K, k, memory.T_DQ, dq, scale,
                        plan[6], plan[7], acc, info, False, d, compute):
            return True
        if _pass_matmul(mem, dims, h, 4, memory.T_DS, ds_hbm, memory.T_Q, q, memory.T_DK, dk, scale,
                        plan[8], plan[9], acc, info, True, d, compute):
            return True
    return False


# ---------------------------------------------------------------------------
# Public wrappers
# ---------------------------------------------------------------------------
def _steps_matmul(n_outer, n_inner, rc):
    return _cdiv(n_outer, rc[0]) * _cdiv(n_inner, rc[1])


def _steps_softmax(nq, nk, rc):
    return _cdiv(nq, rc[0]) if rc[1] == nk else nq * 2 * _cdiv(nk, rc[1])


def _pass_footprint(name, rc, d, dv, has_mask):
    """{slot: elements} of one pass with blocks rc = (R, C) (module docstring, "Tiling")."""
    r, c = rc
    w = {"F1": d, "F3": dv, "B1": dv, "B4": d, "B5": d}
    if name == "F1":
        return {"outer rows": r * d, "inner rows": c * d, "tile": r * c, "mask tile": r * c if has_mask else 0}
    if name in ("F3", "B1", "B4", "B5"):
        return {"accumulator": r * w[name], "inner rows": c * w[name], "tile": r * c}
    if name == "F2":
        return {"tile": r * c, "row stats": 2 * r}
    if name == "B2":
        return {"outer rows": r * dv, "second outer rows": r * dv, "row stats": r, "inner rows": c * dv,
                "tile": r * c}
    return {"row stats": r, "tile": r * c, "second tile": r * c}  # B3


def _plan(kernel, passes, steps, nq, nk, d, dv, M, has_mask, heads, causal, step, extra=None) -> Plan:
    outer = {"F1": nq, "F2": nq, "F3": nq, "B1": nk, "B2": nq, "B3": nq, "B4": nq, "B5": nk}
    inner = {"F1": nk, "F2": nk, "F3": nk, "B1": nq, "B2": nk, "B3": nk, "B4": nk, "B5": nq}
    feet = [_pass_footprint(x, rc, d, dv, has_mask) for x, rc in passes.items()]
    blocks, tiles = {}, {}
    for x, (r, c) in passes.items():
        blocks[f"{x}.R"], blocks[f"{x}.C"] = r, c
        tiles[f"{x}.Tr"], tiles[f"{x}.Tc"] = _cdiv(outer[x], r), _cdiv(inner[x], c)
    details = {"passes": dict(passes), "causal": causal or "none", "masked": has_mask, "heads": heads}
    details.update(extra or {})
    return Plan(kernel=kernel, blocks=blocks, tiles=tiles, footprint=max(feet, key=lambda f: sum(f.values())),
                M=M, n_steps=steps, step=step, details=details)


def _run_p(p, passes, sram, stop_after=None, trace=False, upto=3):
    """Run the forward passes on prepared inputs; returns (mem, arrays, info).

    A count-only ``p`` (docs/contract.md) gets (1, 1, .) placeholders for S, P, O and L."""
    dt = p.q.dtype
    compute = not p.count_only
    hb, hq, hk = (p.batch, p.nq, p.nk) if compute else (1, 1, 1)
    s_hbm = np.zeros((hb, hq, hk), dt)
    p_hbm = np.zeros((hb, hq, hk), dt)
    o = np.zeros((hb, hq, p.dv), dt)
    lse = np.full((hb, hq), -np.inf, dt)
    acc = np.zeros((passes["F3"][0], p.dv))  # float64 accumulator
    info = np.zeros(6, np.int64)
    packed = np.array(passes["F1"] + passes["F2"] + passes["F3"], np.int64)
    args = (p.dims, *(readonly(x) for x in (p.q, p.k, p.v, p.mask)), p.has_mask, dt.type(p.scale),
            p.causal is not None, p.offset, packed, s_hbm, p_hbm, o, lse, acc, info, upto, compute)

    def call(mem):
        _forward(mem, *args)

    steps = _forward_steps(p, passes)
    mem = run_with_trace(call, sram, trace=trace, trace_estimate=6 * steps + 16, stop_after=stop_after)
    return mem, (s_hbm, p_hbm, o, lse, acc), info


def _forward_steps(p, passes):
    return p.batch * (_steps_matmul(p.nq, p.nk, passes["F1"]) + _steps_softmax(p.nq, p.nk, passes["F2"])
                      + _steps_matmul(p.nq, p.nk, passes["F3"]))


def standard_forward(q, k, v, *, sram, causal=False, scale=None, mask=None, trace=False,
                     stop_after=None, count_only=False) -> KernelResult:
    """Standard (three-pass) attention on the simulated hierarchy.

    Returns a :class:`~refattn.kernels.contract.KernelResult` with ``o``
    (..., Nq, dv) and ``lse`` (..., Nq) in the input dtype (float32 or
    float64); S and P stay in simulated HBM (``state.arrays["hbm"]`` shows them
    when stopped early). ``causal``: False, True (bottom-right) or "top_left";
    ``mask``: boolean, True = keep; ``sram``: Sram, int M or a chip name.
    ``plan.details["passes"]`` holds (R, C) of each pass. See the module
    docstring for the tiling, steps and the traffic closed form.
    ``count_only=True``: the same passes with the arithmetic skipped (same counts and
    trace, ``outputs`` empty, no N x N or N x d array allocated; docs/contract.md).
    A run that would allocate gigabytes warns first (:class:`~refattn.kernels.common.CostWarning`).
    """
    p = prepare(q, k, v, scale=scale, causal=causal, mask=mask, where="standard_forward", count_only=count_only)
    sram = memory.as_sram(sram)
    passes = plan_forward(p.nq, p.nk, p.d, p.dv, sram.capacity, p.has_mask)
    softmax = "whole rows" if passes["F2"][1] == p.nk else "two sweeps per row"
    plan = _plan("standard_forward", passes, _forward_steps(p, passes), p.nq, p.nk, p.d, p.dv, sram.capacity,
                 p.has_mask, p.batch, p.causal, "one tile of a pass (F1, F3: R x C; F2: a row block, or a chunk "
                 "of one row per sweep); passes in order, heads in turn", {"softmax": softmax})
    plan.check_stop_after(stop_after)
    warn_if_costly("standard_forward", plan, p, count_only=count_only, alloc_elements=2 * p.batch * p.nq * p.nk)
    traced = bool(trace) or stop_after is not None  # a stopped run always comes with its trace
    mem, (s_hbm, p_hbm, o, lse, acc), info = _run_p(p, passes, sram, stop_after, traced)

    def state_fn(mem_, trace_):
        if count_only:
            return step_state(mem_, sram, trace_, info, FORWARD_PASSES, {})
        return step_state(mem_, sram, trace_, info, FORWARD_PASSES,
                          {"accumulator": acc.copy(),
                           "hbm": {"S": s_hbm.copy(), "P": p_hbm.copy(), "O": o.copy(), "L": lse.copy()}})

    outputs = {} if count_only else {"o": p.restore(o), "lse": p.restore(lse)}
    return finish(mem, sram, outputs, plan=plan, slot_names=SLOT_NAMES, state_fn=state_fn)


def standard_backward(q, k, v, o, do, *, sram, causal=False, scale=None, mask=None, trace=False,
                      stop_after=None, count_only=False) -> KernelResult:
    """Gradients (dq, dk, dv) of standard attention, passes B1-B5 on the simulated hierarchy.

    ``o`` is the forward output and ``do`` the upstream gradient, both shaped
    (..., Nq, dv) like the output (any float dtype; cast to the inputs'). P is
    the one the forward with the same M stores (rebuilt off the counters; see
    the module docstring). The plan must fit M for both the forward (which
    produced P) and the backward. Gradients have the shapes of q, k, v (summed
    over broadcast leading dims). ``count_only=True``: the same passes with the
    arithmetic skipped (same counts and trace, ``outputs`` empty; docs/contract.md).
    """
    where = "standard_backward"
    p = prepare(q, k, v, scale=scale, causal=causal, mask=mask, where=where, count_only=count_only)
    compute = not count_only
    dt = p.q.dtype
    oshape = p.lead + (p.nq, p.dv)
    o_f = grad_input("o", o, oshape, dt, where)
    do_f = grad_input("do", do, oshape, dt, where)
    check_product_range(where, "dP = dO V^T", "do", do_f, "v", p.v if compute else np.asarray(v), 1.0, dt)
    if not compute:  # placeholders of the same types: the passes only count
        o_f, do_f = np.zeros((1, 1, p.dv), dt), np.zeros((1, 1, p.dv), dt)
    sram = memory.as_sram(sram)
    fpasses = plan_forward(p.nq, p.nk, p.d, p.dv, sram.capacity, p.has_mask)
    passes = plan_backward(p.nq, p.nk, p.d, p.dv, sram.capacity)
    steps = p.batch * (_steps_matmul(p.nk, p.nq, passes["B1"]) + _steps_matmul(p.nq, p.nk, passes["B2"])
                       + _steps_matmul(p.nq, p.nk, passes["B3"]) + _steps_matmul(p.nq, p.nk, passes["B4"])
                       + _steps_matmul(p.nk, p.nq, passes["B5"]))
    plan = _plan("standard_backward", passes, steps, p.nq, p.nk, p.d, p.dv, sram.capacity, False, p.batch,
                 p.causal, "one R x C tile of a pass (B1..B5); passes in order, heads in turn",
                 {"forward passes": dict(fpasses)})
    plan.check_stop_after(stop_after)
    warn_if_costly(where, plan, p, count_only=count_only, alloc_elements=4 * p.batch * p.nq * p.nk,
                   flops=2 * p.batch * p.nq * p.nk * (3 * p.d + 2 * p.dv))
    hb, hq, hk = (p.batch, p.nq, p.nk) if compute else (1, 1, 1)  # count-only: placeholders
    if compute:  # P as the forward stored it: passes F1-F2 of the same code on scratch counters (not counted).
        _, (_, p_hbm, _, _, _), _ = _run_p(p, fpasses, sram, upto=2)
    else:
        p_hbm = np.zeros((1, 1, 1), dt)

    dp_hbm = np.zeros((hb, hq, hk), dt)
    ds_hbm = np.zeros((hb, hq, hk), dt)
    d_hbm = np.zeros((hb, hq), dt)
    dq = np.zeros((hb, hq, p.d), dt)
    dk = np.zeros((hb, hk, p.d), dt)
    dv = np.zeros((hb, hk, p.dv), dt)
    acc = np.zeros((max(r for r, _ in passes.values()), max(p.d, p.dv)))  # float64 accumulator
    info = np.zeros(6, np.int64)
    packed = np.array(sum((passes[x] for x in ("B1", "B2", "B3", "B4", "B5")), ()), np.int64)
    args = (p.dims, *(readonly(x) for x in (p.q, p.k, p.v, o_f, do_f)), dt.type(p.scale), packed, p_hbm, dp_hbm,
            ds_hbm, d_hbm, dq, dk, dv, acc, info, compute)

    def call(mem):
        _backward(mem, *args)

    def state_fn(mem_, trace_):
        if not compute:
            return step_state(mem_, sram, trace_, info, BACKWARD_PASSES, {})
        hbm = {"P": p_hbm, "dP": dp_hbm, "D": d_hbm, "dS": ds_hbm, "dQ": dq, "dK": dk, "dV": dv}
        return step_state(mem_, sram, trace_, info, BACKWARD_PASSES,
                          {"accumulator": acc.copy(), "hbm": {n: x.copy() for n, x in hbm.items()}})

    traced = bool(trace) or stop_after is not None
    mem = run_with_trace(call, sram, trace=traced, trace_estimate=6 * steps + 16, stop_after=stop_after)
    outputs = grad_outputs(p, (np.shape(q), np.shape(k), np.shape(v)), dq=dq, dk=dk, dv=dv) if compute else {}
    return finish(mem, sram, outputs, plan=plan, slot_names=SLOT_NAMES, state_fn=state_fn)
