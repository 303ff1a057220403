"""Dense FlashAttention-2 in Triton: forward, backward with recomputation, autograd.

Forward (FlashAttention-2, Algorithm 1; docs/algorithms.md, FlashAttention forward). One program
per (query block of BLOCK_M rows, batch*head z)::

    load Q_i                                   # (BLOCK_M, d) stays on chip
    m = -inf, l = 0, acc = 0                   # float32, acc unnormalised
    for each key block j (BLOCK_N keys):       # causal: only blocks a row can see
        S = (scale*log2 e) * Q_i K_j^T         # base-2 logits: exp2 instead of exp
        m_new = max(m, rowmax S)
        P = exp2(S - m_new);  alpha = exp2(m - m_new)   # rescale, NOT inverted (FA2 erratum)
        l = alpha*l + rowsum P;  acc = alpha*acc + P V_j
    O_i = acc / l;   LSE_i = (m + log2 l) * ln 2        # natural-log LSE

Hopper (sm_90) specifics, each measured in benchmarks/h200_dense_ab.log (numbers at the switches below):
Q, K and V tiles arrive by TMA bulk copies through host tensor descriptors (``TMA``), and the scale is folded into
exp2's argument (one FMA per logit). Tried and dropped: warp specialisation and causal heaviest-first tile
order (both slower), TMA in the backward, a fused atomic-dQ backward and a persistent forward grid (not faster
in every case; switches kept, tested).

Key blocks split in two loops: the blocks every row of the query block sees
in full (no mask at all) and the rest (boundary of Nk, causal diagonal),
which apply the element mask. A row with no visible key keeps m = -inf: the
shift uses 0 there, so it ends with O = 0 and LSE = -inf, never NaN.

Causal is bottom-right aligned (key j visible to query i iff j <= i + Nk - Nq),
refattn's convention; ``causal="top_left"`` gives PyTorch's ``is_causal``.

Backward (FlashAttention-2's order, recomputing P from the saved LSE):
a preprocessing pass writes D_i = rowsum(dO_i * O_i) and LSE in base 2; one
kernel per key block accumulates dK_j, dV_j over query blocks; one kernel per
query block accumulates dQ_i over key blocks (no atomics: deterministic)::

    P = exp2(S - LSE2);  dV += P^T dO;  dP = dO V^T;  dS = P * (dP - D)
    dK += scale * dS^T Q;  dQ += scale * dS K

Shapes: q (..., Nq, d), k (..., Nk, d), v (..., Nk, dv), leading dims equal;
head dims up to 256, any value (tiles are padded to a power of two and masked).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from gpu_optional._common import (
    INTERPRET,
    LOG2E,
    TMA_DEFAULT,
    block_dim,
    check_qkv,
    configs,
    descriptor,
    descriptor_hook,
    flatten,
    precision,
    prune_for_head_dim,
    tma_ok,
)

__all__ = ["flash_attention", "flash_forward", "flash_backward", "FlashAttentionFunction"]


# ---------------------------------------------------------------- switches (module level: the A/B script and
# the tests flip them; each is a constexpr of the kernels, so both settings compile side by side)
# Measured on the H200, bf16, N = 8192, same run, against the pointer path (benchmarks/h200_dense_ab.log):
#: forward: read the Q, K, V tiles through host tensor descriptors (TMA bulk copies) where :func:`tma_ok`
#: allows: -5 to -8 % time at d = 128 (2.19 -> 2.02 ms), -10 % causal (1.20 -> 1.08 ms); at d = 64 -2 %,
#: causal 0 to +1 % (two runs: h200_dense_ab_sweep1.log and h200_dense_ab.log).
TMA = TMA_DEFAULT
#: backward: the same for the Q, dO tiles of the dK/dV kernel and the K, V tiles of the dQ kernel: +0 to +4 %
#: time with the same configs, -1 to -4 % with others in some cases; mixed and near the spread, so off.
TMA_BWD = False
#: backward in one pass over key blocks, dQ added with float32 atomics (not deterministic), instead of a
#: second kernel over query blocks (deterministic; recomputes S and dP): 9-34 % slower (d = 128: 9.5 vs
#: 7.1 ms), as the (BLOCK_M, d) float32 atomics of every step cost more than the two matmuls they save; off.
FUSED_BWD = False
#: forward on a persistent grid: PERSISTENT programs per SM, each looping over (query block, head) work units
#: with a static stride; causal units pair a heavy query block with a light one (see ``_fwd_kernel``). 0: one
#: program per query block and head, scheduled by the hardware. Measured with the shipped configs, two repeats
#: each (h200_dense_persistent.log): d = 128 -2.8 % time (1.96 vs 2.02 ms; repeat spread 2.1 %), causal -3.1 %
#: (spread 6.6 %); d = 64 +39 % with 1 program per SM (the hardware grid runs several ~66 KB programs per SM),
#: +6 % with 2, causal +32 % / +3 %. It loses at d = 64 and wins at d = 128 by about the spread: off.
PERSISTENT = 0


# ---------------------------------------------------------------- tile helpers
@triton.jit
def _load_rows(ptrs, rows, n_rows, cols, n_cols, CHECK_ROWS: tl.constexpr, CHECK_COLS: tl.constexpr):
    """Load a (rows, cols) tile; masked lanes read 0."""
    if CHECK_ROWS:
        if CHECK_COLS:
            x = tl.load(ptrs, mask=(rows[:, None] < n_rows) & (cols[None, :] < n_cols), other=0.0)
        else:
            x = tl.load(ptrs, mask=rows[:, None] < n_rows, other=0.0)
    else:
        if CHECK_COLS:
            x = tl.load(ptrs, mask=cols[None, :] < n_cols, other=0.0)
        else:
            x = tl.load(ptrs)
    return x


@triton.jit
def _tile(X, row0, start, rows, n_rows, cols, n_cols, stride,
          CHECK_ROWS: tl.constexpr, CHECK_COLS: tl.constexpr, TMA: tl.constexpr):
    """Rows [start, start + len(rows)) of one head, columns ``cols``.

    TMA: ``X`` is a tensor descriptor over (Z*N, d), ``row0 = z*N``; one bulk copy fills the tile; columns
    >= d and rows past Z*N read 0, rows past N read the next head (callers make their P zero).
    Otherwise ``X`` points at the head's row 0 and masked lanes read 0.
    """
    if TMA:
        x = X.load([row0 + start, 0])
    else:
        x = _load_rows(X + rows[:, None] * stride + cols[None, :], rows, n_rows, cols, n_cols, CHECK_ROWS, CHECK_COLS)
    return x


# ---------------------------------------------------------------- forward
@triton.jit
def _fwd_step(acc, l_i, m_i, q, K, V, kv_row0, stride_kn, stride_vn, offs_m, offs_d, offs_dv, start_n,
              qk_scale, N_K, OFFSET,
              D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
              BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr,
              TMA: tl.constexpr):
    """One key block of the online softmax."""
    start_n = tl.multiple_of(start_n, BLOCK_N)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k = _tile(K, kv_row0, start_n, offs_n, N_K, offs_d, D, stride_kn, MASKED, BLOCK_D != D, TMA)   # (BLOCK_N, BLOCK_D)
    v = _tile(V, kv_row0, start_n, offs_n, N_K, offs_dv, DV, stride_vn, MASKED, BLOCK_DV != DV, TMA)
    s = tl.dot(q, tl.trans(k), input_precision=PREC)                            # (BLOCK_M, BLOCK_N), unscaled
    if MASKED:
        keep = offs_n[None, :] < N_K
        if CAUSAL:
            keep = keep & (offs_n[None, :] <= offs_m[:, None] + OFFSET)
        s = tl.where(keep, s, float("-inf"))
        if TMA:  # rows past N_K belong to the next head: P is 0 there, and 0 * V must stay 0
            v = tl.where(offs_n[:, None] < N_K, v, 0.0)
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)                 # fully masked row so far
    else:
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        m_shift = m_new
    # scale * log2 e folded into the exponent: one FMA per logit instead of a multiply and a subtract
    # (-1 to -4 % time at d = 64 and 128, against the kernel that scaled S first)
    p = tl.math.exp2(s * qk_scale - m_shift[:, None])
    alpha = tl.math.exp2(m_i - m_shift)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PREC)
    return acc, l_i, m_new


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, K, V, kv_row0, stride_kn, stride_vn, offs_m, offs_d, offs_dv, lo, hi,
               qk_scale, N_K, OFFSET,
               D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
               BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr,
               TMA: tl.constexpr):
    """Online softmax over key blocks [lo, hi) (lo, hi multiples of BLOCK_N)."""
    for start_n in range(lo, hi, BLOCK_N):
        acc, l_i, m_i = _fwd_step(acc, l_i, m_i, q, K, V, kv_row0, stride_kn, stride_vn, offs_m, offs_d,
                                  offs_dv, start_n, qk_scale, N_K, OFFSET, D, DV, BLOCK_D, BLOCK_DV, BLOCK_N,
                                  MASKED, CAUSAL, PREC, TMA)
    return acc, l_i, m_i


@triton.jit
def _fwd_tile(Q, K, V, O, LSE, pid_m, z,
              stride_qz, stride_qn, stride_kz, stride_kn, stride_vz, stride_vn, stride_oz, stride_on,
              N_Q, N_K, OFFSET, qk_scale,
              D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
              CAUSAL: tl.constexpr, PREC: tl.constexpr, TMA: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Query block ``pid_m`` of head ``z``: O_i and LSE_i (the algorithm of the module docstring)."""
    z = z.to(tl.int64)
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    if TMA:
        q_row0 = (z * N_Q).to(tl.int32)
        kv_row0 = (z * N_K).to(tl.int32)
    else:
        Q += z * stride_qz
        K += z * stride_kz
        V += z * stride_vz
        q_row0 = 0
        kv_row0 = 0
    q = _tile(Q, q_row0, start_m, offs_m, N_Q, offs_d, D, stride_qn, True, BLOCK_D != D, TMA)   # (BLOCK_M, BLOCK_D)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    if CAUSAL:
        # keys visible to some row of the block: j < start_m + BLOCK_M + OFFSET
        hi = tl.maximum(tl.minimum(N_K, start_m + BLOCK_M + OFFSET), 0)
        # keys visible to every row of the block: j <= start_m + OFFSET
        full = tl.maximum(tl.minimum(start_m + OFFSET + 1, N_K), 0) // BLOCK_N * BLOCK_N
    else:
        hi = N_K
        full = N_K // BLOCK_N * BLOCK_N
    # two loops: no mask at all on the blocks every row sees in full, the element mask only on the rest
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K, V, kv_row0, stride_kn, stride_vn, offs_m, offs_d, offs_dv,
                               0, full, qk_scale, N_K, OFFSET, D, DV, BLOCK_D, BLOCK_DV, BLOCK_N,
                               False, CAUSAL, PREC, TMA)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K, V, kv_row0, stride_kn, stride_vn, offs_m, offs_d, offs_dv,
                               full, hi, qk_scale, N_K, OFFSET, D, DV, BLOCK_D, BLOCK_DV, BLOCK_N,
                               True, CAUSAL, PREC, TMA)
    has = l_i > 0
    o = acc / tl.where(has, l_i, 1.0)[:, None]
    lse = tl.where(has, (m_i + tl.math.log2(tl.where(has, l_i, 1.0))) / 1.4426950408889634, float("-inf"))
    O += z * stride_oz
    o_ptrs = O + offs_m[:, None] * stride_on + offs_dv[None, :]
    tl.store(o_ptrs, o.to(O.dtype.element_ty), mask=(offs_m[:, None] < N_Q) & (offs_dv[None, :] < DV))
    tl.store(LSE + z * N_Q + offs_m, lse, mask=offs_m < N_Q)


@triton.autotune(
    # H200 picks (benchmarks/h200_dense_ab.log): (128, 128, 8, 3) at d = 128, (128, 64, 8, 3 or 4) at d = 64.
    # Deeper pipelines do not pay: 4 stages of 128 x 128 K, V tiles need 296 KB of shared memory at d = 128
    # (227 KB exist); (128, 64, 8, 4) ran 3 % slower than 3 stages at d = 128, -1 to +3 % at d = 64.
    configs=configs([(128, 128, 8, 3), (128, 64, 8, 3), (128, 64, 8, 4)],
                    (128, 64, 8, 3), (32, 16, 4, 1),
                    pre_hook=descriptor_hook({"Q": ("BLOCK_M", "BLOCK_D"), "K": ("BLOCK_N", "BLOCK_D"),
                                              "V": ("BLOCK_N", "BLOCK_DV")})),
    key=["BLOCK_D", "BLOCK_DV", "CAUSAL", "PREC", "TMA", "PERSISTENT"],  # once per head dim (the bench: N = 8192)
    prune_configs_by={"early_config_prune": prune_for_head_dim},
)
@triton.jit(do_not_specialize=["Z"])  # one binary whatever the head count (1, or a multiple of 16: no recompile)
def _fwd_kernel(Q, K, V, O, LSE,
                stride_qz, stride_qn, stride_kz, stride_kn, stride_vz, stride_vn, stride_oz, stride_on,
                N_Q, N_K, OFFSET, qk_scale, Z,
                D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                CAUSAL: tl.constexpr, PREC: tl.constexpr, TMA: tl.constexpr, PERSISTENT: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Grid (query blocks, Z): one tile per program. PERSISTENT: a 1-D grid of a few programs per SM, program p
    taking work units p, p + P, p + 2P, ... (P programs; a static stride, no atomics), heads in order so that
    the programs running together share K and V in L2. A unit is one query block, or causal, the pair of
    query blocks (i, n_m - 1 - i) of a head: the pair sees about n_m + 1 key blocks whatever i, so every
    unit costs the same and the programs finish together (the middle block of an odd n_m is a unit alone)."""
    if PERSISTENT:
        n_m = tl.cdiv(N_Q, BLOCK_M)
        if CAUSAL:
            per_z = (n_m + 1) // 2                                              # units per head
        else:
            per_z = n_m
        for unit in range(tl.program_id(0), per_z * Z, tl.num_programs(0)):
            z = unit // per_z
            i = unit % per_z
            if CAUSAL:
                # the query blocks i and n_m - 1 - i, or i alone when they coincide
                for pid_m in range(i, n_m - i, tl.maximum(n_m - 1 - 2 * i, 1)):
                    _fwd_tile(Q, K, V, O, LSE, pid_m, z, stride_qz, stride_qn, stride_kz, stride_kn, stride_vz,
                              stride_vn, stride_oz, stride_on, N_Q, N_K, OFFSET, qk_scale, D, DV, BLOCK_D,
                              BLOCK_DV, CAUSAL, PREC, TMA, BLOCK_M, BLOCK_N)
            else:
                _fwd_tile(Q, K, V, O, LSE, i, z, stride_qz, stride_qn, stride_kz, stride_kn, stride_vz, stride_vn,
                          stride_oz, stride_on, N_Q, N_K, OFFSET, qk_scale, D, DV, BLOCK_D, BLOCK_DV, CAUSAL,
                          PREC, TMA, BLOCK_M, BLOCK_N)
    else:
        _fwd_tile(Q, K, V, O, LSE, tl.program_id(0), tl.program_id(1), stride_qz, stride_qn, stride_kz, stride_kn,
                  stride_vz, stride_vn, stride_oz, stride_on, N_Q, N_K, OFFSET, qk_scale, D, DV, BLOCK_D,
                  BLOCK_DV, CAUSAL, PREC, TMA, BLOCK_M, BLOCK_N)


# ---------------------------------------------------------------- backward
@triton.jit
def _bwd_preprocess(O, DO, LSE, DELTA, LSE2, stride_z, stride_n, N_Q,
                    DV: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr):
    """D_i = rowsum(dO_i * O_i); LSE2 = LSE * log2 e, with -inf (empty row) -> +inf so P = 0."""
    pid_m = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)
    msk = (offs_m[:, None] < N_Q) & (offs_dv[None, :] < DV)
    ptrs = z * stride_z + offs_m[:, None] * stride_n + offs_dv[None, :]
    o = tl.load(O + ptrs, mask=msk, other=0.0).to(tl.float32)
    do = tl.load(DO + ptrs, mask=msk, other=0.0).to(tl.float32)
    row = z * N_Q + offs_m
    tl.store(DELTA + row, tl.sum(o * do, 1), mask=offs_m < N_Q)
    lse = tl.load(LSE + row, mask=offs_m < N_Q, other=0.0)
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    tl.store(LSE2 + row, lse2, mask=offs_m < N_Q)


@triton.jit
def _dkdv_inner(dk, dv, k, v, Q, DO, DQ, q_row0, LSE2, DELTA, stride_qn, stride_don, offs_n, offs_d, offs_dv,
                lo, hi, qk_scale, scale, N_Q, OFFSET,
                D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                BLOCK_M: tl.constexpr, MASKED: tl.constexpr, ROWS: tl.constexpr, PREC: tl.constexpr,
                TMA: tl.constexpr, FUSED_DQ: tl.constexpr):
    """Accumulate dK_j, dV_j over query blocks [lo, hi); FUSED_DQ: also add scale * dS K_j to dQ atomically.
    MASKED: the causal mask; ROWS: the blocks may pass N_Q. Rows >= N_Q read LSE2 = +inf (P, dS = 0) and
    Q = dO = 0."""
    arange_m = tl.arange(0, BLOCK_M)
    for start_m in range(lo, hi, BLOCK_M):
        start_m = tl.multiple_of(start_m, BLOCK_M)
        offs_m = start_m + arange_m
        q = _tile(Q, q_row0, start_m, offs_m, N_Q, offs_d, D, stride_qn, ROWS, BLOCK_D != D, TMA)  # (BLOCK_M, BLOCK_D)
        do = _tile(DO, q_row0, start_m, offs_m, N_Q, offs_dv, DV, stride_don, ROWS, BLOCK_DV != DV, TMA)
        if TMA and ROWS:  # the next head's rows: zero, so that 0 * dO and 0 * Q stay 0
            q = tl.where(offs_m[:, None] < N_Q, q, 0.0)
            do = tl.where(offs_m[:, None] < N_Q, do, 0.0)
        lse2 = tl.load(LSE2 + offs_m, mask=offs_m < N_Q, other=float("inf"))
        delta = tl.load(DELTA + offs_m, mask=offs_m < N_Q, other=0.0)
        s_t = tl.dot(k, tl.trans(q), input_precision=PREC) * qk_scale           # (BLOCK_N, BLOCK_M)
        p_t = tl.math.exp2(s_t - lse2[None, :])
        if MASKED:
            p_t = tl.where(offs_n[:, None] <= offs_m[None, :] + OFFSET, p_t, 0.0)
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=PREC)
        dp_t = tl.dot(v, tl.trans(do), input_precision=PREC)                    # (BLOCK_N, BLOCK_M)
        ds_t = (p_t * (dp_t - delta[None, :])).to(q.dtype)
        dk = tl.dot(ds_t, q, dk, input_precision=PREC)
        if FUSED_DQ:
            # dQ_i += scale * dS_ij K_j: every key block adds to the same rows, so in float32 atomics
            dq = tl.dot(tl.trans(ds_t), k, input_precision=PREC) * scale     # (BLOCK_M, BLOCK_D)
            tl.atomic_add(DQ + offs_m[:, None] * D + offs_d[None, :], dq,
                          mask=(offs_m[:, None] < N_Q) & (offs_d[None, :] < D), sem="relaxed")
    return dk, dv


_DKDV_HOOK = descriptor_hook({"Q": ("BLOCK_M", "BLOCK_D"), "DO": ("BLOCK_M", "BLOCK_DV")})


@triton.autotune(
    # H200 picks (benchmarks/h200_dense_ab.log): (64, 128, 8, 3) or (128, 128, 8, 2) at d = 128, (32 or 64,
    # 128, 4, 3) at d = 64
    configs=configs([(64, 128, 8, 3), (32, 128, 4, 3), (64, 128, 4, 3), (128, 128, 8, 2), (64, 64, 4, 3)],
                    (64, 128, 8, 3),
                    (16, 32, 4, 1), pre_hook=_DKDV_HOOK),
    key=["BLOCK_D", "BLOCK_DV", "CAUSAL", "PREC", "TMA", "FUSED_DQ"],
    prune_configs_by={"early_config_prune": prune_for_head_dim},
    reset_to_zero=["DQ"],  # the fused kernel adds into DQ: autotuning's trial runs must start from 0 too
)
@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, LSE2, DELTA, DK, DV_, DQ,
                     stride_qz, stride_qn, stride_kz, stride_kn, stride_vz, stride_vn, stride_doz, stride_don,
                     N_Q, N_K, OFFSET, qk_scale, scale,
                     D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                     CAUSAL: tl.constexpr, PREC: tl.constexpr, TMA: tl.constexpr, FUSED_DQ: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One program per key block j: dK_j, dV_j (and, FUSED_DQ, dQ's share of every query block)."""
    pid_n = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    k = _load_rows(K + z * stride_kz + offs_n[:, None] * stride_kn + offs_d[None, :], offs_n, N_K, offs_d, D,
                   True, BLOCK_D != D)                                           # (BLOCK_N, BLOCK_D)
    v = _load_rows(V + z * stride_vz + offs_n[:, None] * stride_vn + offs_dv[None, :], offs_n, N_K, offs_dv, DV,
                   True, BLOCK_DV != DV)                                         # (BLOCK_N, BLOCK_DV)
    if TMA:
        q_row0 = (z * N_Q).to(tl.int32)
    else:
        Q += z * stride_qz
        DO += z * stride_doz
        q_row0 = 0
    LSE2 += z * N_Q
    DELTA += z * N_Q
    DQ += z * N_Q * D
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    end = tl.cdiv(N_Q, BLOCK_M) * BLOCK_M
    full_end = N_Q // BLOCK_M * BLOCK_M                                          # end of the full query blocks
    if CAUSAL:
        # rows that see key start_n: i >= start_n - OFFSET; rows that see the whole block:
        # i >= start_n + BLOCK_N - 1 - OFFSET.
        lo = tl.minimum(tl.maximum(start_n - OFFSET, 0) // BLOCK_M * BLOCK_M, end)
        mid = tl.minimum(tl.cdiv(tl.maximum(start_n + BLOCK_N - 1 - OFFSET, 0), BLOCK_M) * BLOCK_M, end)
        mid = tl.maximum(mid, lo)
        dk, dv = _dkdv_inner(dk, dv, k, v, Q, DO, DQ, q_row0, LSE2, DELTA, stride_qn, stride_don, offs_n, offs_d,
                             offs_dv, lo, mid, qk_scale, scale, N_Q, OFFSET, D, DV, BLOCK_D, BLOCK_DV, BLOCK_M,
                             True, True, PREC, TMA, FUSED_DQ)
    else:
        mid = 0
    if TMA:
        # the tail query block on its own: only there are the next head's rows zeroed (ROWS)
        dk, dv = _dkdv_inner(dk, dv, k, v, Q, DO, DQ, q_row0, LSE2, DELTA, stride_qn, stride_don, offs_n, offs_d,
                             offs_dv, mid, full_end, qk_scale, scale, N_Q, OFFSET, D, DV, BLOCK_D, BLOCK_DV,
                             BLOCK_M, False, False, PREC, TMA, FUSED_DQ)
        mid = tl.maximum(mid, full_end)
    dk, dv = _dkdv_inner(dk, dv, k, v, Q, DO, DQ, q_row0, LSE2, DELTA, stride_qn, stride_don, offs_n, offs_d,
                         offs_dv, mid, end, qk_scale, scale, N_Q, OFFSET, D, DV, BLOCK_D, BLOCK_DV, BLOCK_M,
                         False, True, PREC, TMA, FUSED_DQ)
    dk = dk * scale
    row_ok = offs_n[:, None] < N_K
    tl.store(DK + z * stride_kz + offs_n[:, None] * stride_kn + offs_d[None, :], dk.to(DK.dtype.element_ty),
             mask=row_ok & (offs_d[None, :] < D))
    tl.store(DV_ + z * stride_vz + offs_n[:, None] * stride_vn + offs_dv[None, :], dv.to(DV_.dtype.element_ty),
             mask=row_ok & (offs_dv[None, :] < DV))


@triton.jit
def _dq_inner(dq, q, do, lse2, delta, K, V, kv_row0, stride_kn, stride_vn, offs_m, offs_d, offs_dv, lo, hi,
              qk_scale, N_K, OFFSET,
              D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
              BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr,
              TMA: tl.constexpr):
    arange_n = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + arange_n
        k = _tile(K, kv_row0, start_n, offs_n, N_K, offs_d, D, stride_kn, MASKED, BLOCK_D != D, TMA)
        v = _tile(V, kv_row0, start_n, offs_n, N_K, offs_dv, DV, stride_vn, MASKED, BLOCK_DV != DV, TMA)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale            # (BLOCK_M, BLOCK_N)
        p = tl.math.exp2(s - lse2[:, None])
        if MASKED:
            keep = offs_n[None, :] < N_K
            if CAUSAL:
                keep = keep & (offs_n[None, :] <= offs_m[:, None] + OFFSET)
            p = tl.where(keep, p, 0.0)
            if TMA:  # rows past N_K belong to the next head: zero, so that dP and dS K stay finite (dS = 0)
                k = tl.where(offs_n[:, None] < N_K, k, 0.0)
                v = tl.where(offs_n[:, None] < N_K, v, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PREC)
    return dq


@triton.autotune(
    # H200 picks (benchmarks/h200_dense_ab.log): (128, 128, 8, 2) or (128, 64, 8, 3) at d = 128, (128, 64, 4 or
    # 8, 3) at d = 64
    configs=configs([(128, 64, 8, 3), (128, 64, 4, 3), (128, 32, 4, 3), (128, 128, 8, 2), (64, 64, 4, 3)],
                    (128, 64, 8, 3),
                    (32, 16, 4, 1),
                    pre_hook=descriptor_hook({"K": ("BLOCK_N", "BLOCK_D"), "V": ("BLOCK_N", "BLOCK_DV")})),
    key=["BLOCK_D", "BLOCK_DV", "CAUSAL", "PREC", "TMA"],  # tuned once per head dim; the bench tunes at N = 8192
    prune_configs_by={"early_config_prune": prune_for_head_dim},
)
@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, LSE2, DELTA, DQ,
                   stride_qz, stride_qn, stride_kz, stride_kn, stride_vz, stride_vn, stride_doz, stride_don,
                   N_Q, N_K, OFFSET, qk_scale, scale,
                   D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                   CAUSAL: tl.constexpr, PREC: tl.constexpr, TMA: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = _load_rows(Q + z * stride_qz + offs_m[:, None] * stride_qn + offs_d[None, :], offs_m, N_Q, offs_d, D,
                   True, BLOCK_D != D)
    do = _load_rows(DO + z * stride_doz + offs_m[:, None] * stride_don + offs_dv[None, :], offs_m, N_Q,
                    offs_dv, DV, True, BLOCK_DV != DV)
    lse2 = tl.load(LSE2 + z * N_Q + offs_m, mask=offs_m < N_Q, other=float("inf"))
    delta = tl.load(DELTA + z * N_Q + offs_m, mask=offs_m < N_Q, other=0.0)
    if TMA:
        kv_row0 = (z * N_K).to(tl.int32)
    else:
        K += z * stride_kz
        V += z * stride_vz
        kv_row0 = 0
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if CAUSAL:
        hi = tl.maximum(tl.minimum(N_K, start_m + BLOCK_M + OFFSET), 0)
        full = tl.maximum(tl.minimum(start_m + OFFSET + 1, N_K), 0) // BLOCK_N * BLOCK_N
    else:
        hi = N_K
        full = N_K // BLOCK_N * BLOCK_N
    dq = _dq_inner(dq, q, do, lse2, delta, K, V, kv_row0, stride_kn, stride_vn, offs_m, offs_d, offs_dv, 0, full,
                   qk_scale, N_K, OFFSET, D, DV, BLOCK_D, BLOCK_DV, BLOCK_N, False, CAUSAL, PREC, TMA)
    dq = _dq_inner(dq, q, do, lse2, delta, K, V, kv_row0, stride_kn, stride_vn, offs_m, offs_d, offs_dv, full, hi,
                   qk_scale, N_K, OFFSET, D, DV, BLOCK_D, BLOCK_DV, BLOCK_N, True, CAUSAL, PREC, TMA)
    dq = dq * scale
    tl.store(DQ + z * stride_qz + offs_m[:, None] * stride_qn + offs_d[None, :], dq.to(DQ.dtype.element_ty),
             mask=(offs_m[:, None] < N_Q) & (offs_d[None, :] < D))


# ---------------------------------------------------------------- launchers
def _operands(tma, block_dims, *tensors):
    """The tensors themselves (pointer path) or tensor descriptors over them (TMA path)."""
    if not tma:
        return tensors
    return tuple(descriptor(x, 16, bd) for x, bd in zip(tensors, block_dims))


def sm_count(device) -> int:
    """Streaming multiprocessors of ``device`` (132 on the H200); 2 under the interpreter, so that the tests'
    persistent programs each loop over several work units."""
    return 2 if INTERPRET else torch.cuda.get_device_properties(device).multi_processor_count


def _fwd_grid(nq, z, causal, device):
    """The forward's launch grid for a config: (query blocks, z), or PERSISTENT > 0: PERSISTENT programs per SM,
    no more than there are work units (query blocks, causal: pairs of them, per head)."""
    if not PERSISTENT:
        return lambda meta: (triton.cdiv(nq, meta["BLOCK_M"]), z)
    programs = PERSISTENT * sm_count(device)

    def grid(meta):
        n_m = triton.cdiv(nq, meta["BLOCK_M"])
        return (min(programs, z * ((n_m + 1) // 2 if causal else n_m)),)
    return grid


def flash_forward(q, k, v, *, causal=False, scale=None, check_finite=True):
    """Forward only. Returns ``(o, lse)``: o like q but with dv, lse float32 (..., Nq), natural log."""
    mode, offset, scale, lead = check_qkv(q, k, v, causal, scale, "gpu_optional.flash_forward",
                                          check_finite=check_finite)
    q3, k3, v3 = flatten(q), flatten(k), flatten(v)
    z, nq, d = q3.shape
    nk, dv = k3.shape[1], v3.shape[2]
    o = torch.empty((z, nq, dv), dtype=q.dtype, device=q.device)
    lse = torch.empty((z, nq), dtype=torch.float32, device=q.device)
    bd, bdv = block_dim(d), block_dim(dv)
    tma = TMA and tma_ok(q3, k3, v3)
    qa, ka, va = _operands(tma, (bd, bd, bdv), q3, k3, v3)
    _fwd_kernel[_fwd_grid(nq, z, mode is not None, q.device)](
        qa, ka, va, o, lse, q3.stride(0), q3.stride(1), k3.stride(0), k3.stride(1), v3.stride(0), v3.stride(1),
        o.stride(0), o.stride(1), nq, nk, offset, scale * LOG2E, z,
        D=d, DV=dv, BLOCK_D=bd, BLOCK_DV=bdv, CAUSAL=mode is not None, PREC=precision(q.dtype), TMA=tma,
        PERSISTENT=PERSISTENT > 0)
    return o.reshape(*lead, nq, dv), lse.reshape(*lead, nq)


def flash_backward(q, k, v, o, lse, do, *, causal=False, scale=None):
    """Gradients ``(dq, dk, dv)`` of ``sum(O * dO)`` by recomputation, from the forward's ``o`` and ``lse``."""
    mode, offset, scale, lead = check_qkv(q, k, v, causal, scale, "gpu_optional.flash_backward",
                                          check_finite=False)
    if do.shape != o.shape:
        raise ValueError(f"gpu_optional.flash_backward: do has shape {tuple(do.shape)}, expected {tuple(o.shape)}")
    q3, k3, v3 = flatten(q), flatten(k), flatten(v)
    o3, do3 = flatten(o), flatten(do.to(o.dtype))
    z, nq, d = q3.shape
    nk, dv = k3.shape[1], v3.shape[2]
    lse3 = lse.reshape(z, nq).contiguous()
    delta = torch.empty((z, nq), dtype=torch.float32, device=q.device)
    lse2 = torch.empty_like(delta)
    bd, bdv = block_dim(d), block_dim(dv)
    pre_m = 64 if bdv <= 128 else 32
    _bwd_preprocess[(triton.cdiv(nq, pre_m), z)](o3, do3, lse3, delta, lse2, o3.stride(0), o3.stride(1), nq,
                                                  DV=dv, BLOCK_DV=bdv, BLOCK_M=pre_m)
    dk = torch.empty_like(k3)
    dv_ = torch.empty_like(v3)
    tma = TMA_BWD and tma_ok(q3, k3, v3, do3)
    common = dict(D=d, DV=dv, BLOCK_D=bd, BLOCK_DV=bdv, CAUSAL=mode is not None, PREC=precision(q.dtype), TMA=tma)
    strides = (q3.stride(0), q3.stride(1), k3.stride(0), k3.stride(1), v3.stride(0), v3.stride(1),
               do3.stride(0), do3.stride(1))
    qa, doa = _operands(tma, (bd, bdv), q3, do3)
    # FUSED_BWD: float32 dQ accumulated by atomics, (Z, Nq, d) contiguous; else a placeholder never touched
    dq32 = torch.zeros((z, nq, d) if FUSED_BWD else (1,), dtype=torch.float32, device=q.device)
    _bwd_dkdv_kernel[lambda m: (triton.cdiv(nk, m["BLOCK_N"]), z)](
        qa, k3, v3, doa, lse2, delta, dk, dv_, dq32, *strides, nq, nk, offset, scale * LOG2E, scale,
        FUSED_DQ=FUSED_BWD, **common)
    if FUSED_BWD:
        dq = dq32.to(q.dtype)
    else:
        dq = torch.empty_like(q3)
        ka, va = _operands(tma, (bd, bdv), k3, v3)
        _bwd_dq_kernel[lambda m: (triton.cdiv(nq, m["BLOCK_M"]), z)](
            q3, ka, va, do3, lse2, delta, dq, *strides, nq, nk, offset, scale * LOG2E, scale, **common)
    return dq.reshape(q.shape), dk.reshape(k.shape), dv_.reshape(v.shape)


class FlashAttentionFunction(torch.autograd.Function):
    """``o = FlashAttentionFunction.apply(q, k, v, causal, scale)``; ``loss.backward()`` runs the Triton backward."""

    @staticmethod
    def forward(ctx, q, k, v, causal=False, scale=None):
        o, lse = flash_forward(q, k, v, causal=causal, scale=scale, check_finite=False)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal, ctx.scale = causal, scale
        ctx.mark_non_differentiable(lse)
        return o, lse

    @staticmethod
    def backward(ctx, do, _dlse):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = flash_backward(q, k, v, o, lse, do.contiguous(), causal=ctx.causal, scale=ctx.scale)
        return dq, dk, dv, None, None


def flash_attention(q, k, v, *, causal=False, scale=None, check_finite=True):
    """FlashAttention on torch tensors. Returns ``(o, lse)``; differentiable in q, k, v through ``o``.

    ``causal``: False, True / "bottom_right" (refattn's convention) or "top_left".
    ``lse`` is float32 in natural-log units; -inf for a row that sees no key.
    """
    check_qkv(q, k, v, causal, scale, "gpu_optional.flash_attention", check_finite=check_finite)
    return FlashAttentionFunction.apply(q, k, v, causal, scale)
