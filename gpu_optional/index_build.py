"""MInference vertical-slash index building on the device: Triton kernels, no host sync, all heads at once.

Same function as ``refattn.patterns.vertical_slash`` (read its docstring for the
choices), for every batch*head z at once, so a whole prefill step stays on the GPU.
Five stages, each a fixed number of launches whose sizes are known up front
(``L = min(last_q, Nq)`` estimated rows, ``off = Nk - Nq``, row r sees keys
``j <= qi[r] = Nk - L + r``)::

    1 _est_stats  grid (chunks, Z): online max m and sum l of scale*Q[-L:]K^T over a chunk of keys
    2 _est_probs  grid (Nk / BN, Z): merge the chunks' (m, l); P = exp(S - m) / l  (float32, causal) in
                  registers; vertical[c] = sum_r P[r, c] (each program owns its columns); the tile's share of
                  every diagonal it crosses (tl.gather of P's diagonals), written to a small buffer
    3 _slash_sum  grid (Nk / BS, Z): slash[delta] = sum of the shares of the <= UP / BN + 1 tiles that hold
                  delta, in tile order (deterministic: no atomics). The (Z, L, Nk) estimate is neither
                  written nor read back (``FUSED_SLASH``; else _est_probs writes it and _slash gathers it
                  along the diagonals, as :func:`vertical_slash_estimate` does)
    4 top-k       keys = score bits << 32 | ~index (unique; the first ``force_*`` indices +inf): one
                  torch.topk over both score rows, one sort (ties to the lower index exactly as the CPU's
                  stable sort), and PC, per row the count of chosen indices <= each index (a scatter, a
                  cumsum). Or (``TRITON_TOPK``) _select, grid (2, Z): radix select of the k-th largest key
                  (histogram passes), then a compaction in index order keeps the keys above it and the first
                  ties: the chosen indices come out sorted, with PC, in one launch
    5 _vs_index   grid (Nq / block, Z), run twice: COUNT the key blocks and single columns of each
                  query block, one cumsum gives the CSR offsets, then WRITE them there

Stage 5, per query block [m0, m1) (``last = m1 - 1 + off``). Chosen diagonal delta covers keys
``[max(m0 + off - delta, 0), min(last - delta, Nk - 1)]``: a range narrower than a block, so it touches
key blocks ``A = lo // block`` and ``B = hi // block`` (B is A or A + 1). Walking the chosen deltas in
*descending* order makes A and B non-decreasing, so the sorted, duplicate-free block list is::

    emit A_i  unless A_i == A_{i-1} or A_i == B_{i-1}
    emit B_i  unless B_i == A_i or B_i == B_{i-1}

positions by a prefix sum over the emits. This is the CPU's "merge the ranges, cover each merged range
with aligned blocks" (a merged range's blocks are exactly those its pieces touch). A chosen column
``c <= last`` (the first ``PC_vertical[last]`` chosen columns) is a single column unless its block is
listed: block kb is listed iff a chosen delta lies in ``[lo, hi] = [max(m0 + off - kb*block - block + 1,
m0 + off - Nk + 1, 0), min(last - kb*block, Nk - 1)]``, i.e. iff ``PC_slash[hi] - PC_slash[lo - 1] > 0``.

The index arrays are sized by the upper bounds (``min(2 * slash, Nk / block)`` blocks and ``vertical``
columns per query block), so no size travels to the host; only the first ``offsets[-1]`` entries are used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from gpu_optional._common import block_dim, precision
from gpu_optional.sparse import DeviceIndexSet
from refattn.validation import check_scale

__all__ = ["VerticalSlashIndex", "vertical_slash_estimate", "vertical_slash_index", "graphed_vertical_slash_index"]

MIN_VERTICAL, MIN_SLASH = 30, 50
#: slash scores summed from the probabilities kernel's registers (a share per tile, then _slash_sum) instead of
#: writing the (Z, L, Nk) float32 estimate and reading it back along the diagonals (_slash)
FUSED_SLASH = os.environ.get("GPU_OPTIONAL_FUSED_SLASH", "1") != "0"
#: the top-k in one Triton launch (:func:`_select`) instead of torch.topk + sort. Off: correct (tested on the
#: H200) but slow there, 0.72 ms at 32k and 2.9 ms at 128k (H = 4, benchmarks/h200_index_build_profile.log)
#: against ~0.15 / ~0.2 ms for torch's: one program per score row (8 programs for 4 heads) walking the row
#: four times, and tl.histogram with 2048 bins costs ~5 us per 1024 keys. A multi-program select is the next step.
TRITON_TOPK = os.environ.get("GPU_OPTIONAL_TRITON_TOPK", "0") == "1"
#: the radix passes count digits with tl.histogram (3 passes); else by comparison (8 passes of 4 bits)
SELECT_HISTOGRAM = os.environ.get("GPU_OPTIONAL_SELECT_HISTOGRAM", "1") != "0"


@dataclass(frozen=True)
class VerticalSlashIndex:
    index_set: DeviceIndexSet
    columns: torch.Tensor          # (Z, vertical_size) chosen key columns, sorted, int64
    offsets: torch.Tensor          # (Z, slash_size) chosen diagonal offsets, sorted, int64
    vertical_scores: torch.Tensor  # (Z, Nk) float32
    slash_scores: torch.Tensor     # (Z, Nk) float32, by offset delta


# ---------------------------------------------------------------- 1-3: estimate and scores
@triton.jit
def _load_last_rows(Q, stride_qn, rows, N_Q, L, offs_d, D: tl.constexpr):
    """The last L query rows, (LP, BLOCK_D); padded rows and lanes read 0."""
    return tl.load(Q + (N_Q - L + rows)[:, None] * stride_qn + offs_d[None, :],
                   mask=(rows[:, None] < L) & (offs_d[None, :] < D), other=0.0)


@triton.jit
def _scores(q, K, stride_kn, offs_n, offs_d, rows, N_K, L, scale,
            D: tl.constexpr, PREC: tl.constexpr):
    """scale * q K[offs_n]^T with the causal mask (j <= Nk - L + r): -inf where hidden. (LP, BN) float32."""
    k = tl.load(K + offs_n[:, None] * stride_kn + offs_d[None, :],
                mask=(offs_n[:, None] < N_K) & (offs_d[None, :] < D), other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale
    keep = (offs_n[None, :] <= (N_K - L + rows)[:, None]) & (offs_n[None, :] < N_K) & (rows[:, None] < L)
    return tl.where(keep, s, float("-inf"))


@triton.jit
def _est_stats(Q, K, MPART, LPART, stride_qz, stride_qn, stride_kz, stride_kn,
               N_Q, N_K, L, keys_per_chunk, scale,
               D: tl.constexpr, BLOCK_D: tl.constexpr, LP: tl.constexpr, BN: tl.constexpr,
               NCHUNK: tl.constexpr, PREC: tl.constexpr):
    chunk = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    rows = tl.arange(0, LP)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_last_rows(Q + z * stride_qz, stride_qn, rows, N_Q, L, offs_d, D)
    m = tl.full([LP], float("-inf"), tl.float32)
    l = tl.zeros([LP], tl.float32)
    lo = chunk * keys_per_chunk
    hi = tl.minimum(lo + keys_per_chunk, N_K)
    for start in range(lo, hi, BN):
        s = _scores(q, K + z * stride_kz, stride_kn, start + tl.arange(0, BN), offs_d, rows, N_K, L, scale, D, PREC)
        m_new = tl.maximum(m, tl.max(s, 1))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)          # a row with no key yet
        l = l * tl.exp(m - shift) + tl.sum(tl.exp(s - shift[:, None]), 1)
        m = m_new
    tl.store(MPART + (z * NCHUNK + chunk) * LP + rows, m)
    tl.store(LPART + (z * NCHUNK + chunk) * LP + rows, l)


@triton.jit
def _score_key(score, idx, FORCED):
    """Unique int64 sort key: score bits (monotone for score >= 0) then lower index first; forced -> +inf."""
    score = tl.where(idx < FORCED, float("inf"), score)
    bits = score.to(tl.int32, bitcast=True).to(tl.int64)
    return (bits << 32) + (2147483647 - idx.to(tl.int64))


@triton.jit
def _est_probs(Q, K, MPART, LPART, P, VERT, VKEY, SPART, stride_qz, stride_qn, stride_kz, stride_kn,
               N_Q, N_K, L, scale, FORCED,
               D: tl.constexpr, BLOCK_D: tl.constexpr, LP: tl.constexpr, BN: tl.constexpr,
               NCHUNK: tl.constexpr, PREC: tl.constexpr, WRITE_P: tl.constexpr, UP: tl.constexpr):
    nb = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    rows = tl.arange(0, LP)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = nb * BN + tl.arange(0, BN)
    # merge the chunks: M = max_c m_c, tot = sum_c l_c exp(m_c - M)
    part = (z * NCHUNK + tl.arange(0, NCHUNK))[:, None] * LP + rows[None, :]            # (NCHUNK, LP)
    m_c = tl.load(MPART + part)
    big = tl.max(m_c, 0)
    shift = tl.where(big == float("-inf"), 0.0, big)
    tot = tl.sum(tl.load(LPART + part) * tl.exp(m_c - shift[None, :]), 0)             # (LP,)
    q = _load_last_rows(Q + z * stride_qz, stride_qn, rows, N_Q, L, offs_d, D)
    s = _scores(q, K + z * stride_kz, stride_kn, offs_n, offs_d, rows, N_K, L, scale, D, PREC)
    p = tl.exp(s - shift[:, None]) / tl.where(tot > 0, tot, 1.0)[:, None]               # hidden: exp(-inf) = 0
    if WRITE_P:
        tl.store(P + (z * L + rows[:, None]) * N_K + offs_n[None, :], p,
                 mask=(rows[:, None] < L) & (offs_n[None, :] < N_K))
    vert = tl.sum(p, 0)                                                                   # (BN,)
    tl.store(VERT + z * N_K + offs_n, vert, mask=offs_n < N_K)
    tl.store(VKEY + z * N_K + offs_n, _score_key(vert, offs_n, FORCED), mask=offs_n < N_K)
    if UP > 0:
        # this tile's share of the slash scores: diagonal u holds the entries with r - c_local = u - (BN - 1)
        # (delta = Nk - L - nb*BN - BN + 1 + u); hidden and padded entries are 0 in p
        u = tl.arange(0, UP)
        src = rows[:, None] + (BN - 1) - u[None, :]                                       # (LP, UP) column
        on = (src >= 0) & (src < BN)
        g = tl.gather(p, tl.where(on, src, 0), axis=1)
        tl.store(SPART + (z * tl.num_programs(0) + nb) * UP + u, tl.sum(tl.where(on, g, 0.0), 0))


@triton.jit
def _slash(P, SLASH, SKEY, N_K, L, FORCED, LP: tl.constexpr, BS: tl.constexpr):
    nb = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    rows = tl.arange(0, LP)
    delta = nb * BS + tl.arange(0, BS)
    col = (N_K - L + rows)[:, None] - delta[None, :]                                      # (LP, BS)
    ok = (rows[:, None] < L) & (col >= 0) & (delta[None, :] < N_K)
    g = tl.load(P + (z * L + rows[:, None]) * N_K + col, mask=ok, other=0.0)
    sl = tl.sum(g, 0)
    tl.store(SLASH + z * N_K + delta, sl, mask=delta < N_K)
    tl.store(SKEY + z * N_K + delta, _score_key(sl, delta, FORCED), mask=delta < N_K)


@triton.jit
def _slash_sum(SPART, SLASH, SKEY, N_K, L, FORCED, n_kb,
               BN: tl.constexpr, UP: tl.constexpr, BS: tl.constexpr):
    """slash[delta] = the sum of the shares (_est_probs, UP > 0) of the few tiles whose diagonals hold delta,
    in tile order (deterministic): tile t holds it at u = delta - (Nk - L - BN + 1) + t*BN, 0 <= u < UP."""
    nb = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    delta = nb * BS + tl.arange(0, BS)
    base = delta - (N_K - L - BN + 1)
    first = tl.where(base < 0, (BN - 1 - base) // BN, 0)                    # first tile with u >= 0
    sl = tl.zeros([BS], tl.float32)
    for i in tl.static_range(UP // BN + 1):
        t = first + i
        u = base + t * BN
        ok = (delta < N_K) & (t < n_kb) & (u < UP)
        sl += tl.load(SPART + (z * n_kb + t) * UP + u, mask=ok, other=0.0)
    tl.store(SLASH + z * N_K + delta, sl, mask=delta < N_K)
    tl.store(SKEY + z * N_K + delta, _score_key(sl, delta, FORCED), mask=delta < N_K)


# ---------------------------------------------------------------- 4: top-k (radix select + compaction)
@triton.jit
def _digit_pass(KEY, n, prefix, k_rem, SHIFT: tl.constexpr, BITS: tl.constexpr, BLOCK: tl.constexpr,
                HIST: tl.constexpr):
    """One radix-select step: among the keys whose bits above SHIFT + BITS equal ``prefix``, the histogram of
    the next BITS bits; the k_rem-th largest key's digit is the largest digit b with count(digit >= b) >= k_rem.
    Returns (prefix extended by b, k_rem minus the candidates with a larger digit)."""
    BINS: tl.constexpr = 1 << BITS
    hist = tl.zeros([BINS], tl.int32)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        key = (tl.load(KEY + offs, mask=offs < n, other=0) >> 32).to(tl.int32)   # the score's bits
        cand = (offs < n) & ((key >> (SHIFT + BITS)) == prefix)
        digit = (key >> SHIFT) & (BINS - 1)
        if HIST:
            hist += tl.histogram(digit, BINS, mask=cand)
        else:   # counts by comparison, for few bins: (BLOCK, BINS) booleans
            hist += tl.sum(((digit[:, None] == tl.arange(0, BINS)[None, :]) & cand[:, None]).to(tl.int32), 0)
    b = tl.arange(0, BINS)
    at_least = tl.sum(hist, 0) - tl.cumsum(hist, 0) + hist                 # count(digit >= b)
    digit = tl.max(tl.where(at_least >= k_rem, b, -1), 0)
    return prefix * BINS + digit, k_rem - tl.sum(tl.where(b > digit, hist, 0), 0)


@triton.jit
def _select(KEYS, OUT, PC, Z, N_K, V, S, BLOCK: tl.constexpr, HIST: tl.constexpr):
    """Row 0 of KEYS (2, Z, Nk) int64: the V largest vertical keys; row 1: the S largest slash keys.

    The keys' upper halves are the float bits of scores >= 0 (bit 31 is 0), so three radix passes (11 + 10 +
    10 bits; HIST = False: eight passes counting by comparison) give the
    k-th largest key T and ``need``, how many keys equal to T the top k takes. A compaction pass in index
    order then keeps ``key > T`` and the first ``need`` keys equal to T (ties to the lower index, as the
    CPU's stable sort), writing the chosen indices sorted ascending: no sort at all. OUT holds the Z rows of
    V columns then the Z rows of S offsets; PC (2, Z, Nk) int32 gets, per row, the count of chosen indices
    <= each index (the index pass looks columns and blocks up in it)."""
    row = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    key_row = KEYS + (row * Z + z) * N_K
    k = tl.where(row == 0, V, S)
    thr = tl.full([], 0, tl.int32)
    if HIST:    # tl.histogram: 11 + 10 + 10 bits
        thr, need = _digit_pass(key_row, N_K, thr, k, 20, 11, BLOCK, HIST)
        thr, need = _digit_pass(key_row, N_K, thr, need, 10, 10, BLOCK, HIST)
        thr, need = _digit_pass(key_row, N_K, thr, need, 0, 10, BLOCK, HIST)
    else:       # counting by comparison: 7 x 4 + 3 bits
        thr, need = _digit_pass(key_row, N_K, thr, k, 27, 4, BLOCK, HIST)
        thr, need = _digit_pass(key_row, N_K, thr, need, 23, 4, BLOCK, HIST)
        thr, need = _digit_pass(key_row, N_K, thr, need, 19, 4, BLOCK, HIST)
        thr, need = _digit_pass(key_row, N_K, thr, need, 15, 4, BLOCK, HIST)
        thr, need = _digit_pass(key_row, N_K, thr, need, 11, 4, BLOCK, HIST)
        thr, need = _digit_pass(key_row, N_K, thr, need, 7, 4, BLOCK, HIST)
        thr, need = _digit_pass(key_row, N_K, thr, need, 3, 4, BLOCK, HIST)
        thr, need = _digit_pass(key_row, N_K, thr, need, 0, 3, BLOCK, HIST)
    out = OUT + tl.where(row == 0, z * V, Z * V + z * S)
    kept = tl.full([], 0, tl.int32)
    ties = tl.full([], 0, tl.int32)
    for start in range(0, N_K, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        valid = offs < N_K
        key = (tl.load(key_row + offs, mask=valid, other=0) >> 32).to(tl.int32)
        eq = (valid & (key == thr)).to(tl.int32)
        keep = ((valid & (key > thr)) | ((eq > 0) & (ties + tl.cumsum(eq, 0) - eq < need))).to(tl.int32)
        upto = kept + tl.cumsum(keep, 0)                                     # chosen indices <= offs
        tl.store(out + upto - keep, offs.to(tl.int64), mask=keep > 0)
        tl.store(PC + (row * Z + z) * N_K + offs, upto, mask=valid)
        kept += tl.sum(keep, 0)
        ties += tl.sum(eq, 0)


# ---------------------------------------------------------------- 5: the index set
@triton.jit
def _diag_blocks(OFFS, idx, S, m0, last, OFF, N_K, BLOCK: tl.constexpr):
    """Key blocks A, B touched by the idx-th largest chosen delta for rows [m0, ...]; ok: range not empty."""
    valid = (idx >= 0) & (idx < S)
    delta = tl.load(OFFS + (S - 1 - idx), mask=valid, other=0)
    lo = tl.maximum(m0 + OFF - delta, 0)
    hi = tl.minimum(last - delta, N_K - 1)
    ok = valid & (hi >= lo)
    return tl.where(ok, lo, 0) // BLOCK, tl.where(ok, hi, 0) // BLOCK, ok


@triton.jit
def _vs_index(OFFS, COLS, PC, COUNTS, CSR_B, CSR_C, BIDX, CIDX,
              N_Q, N_K, OFF, S, V, n_rows,
              BLOCK: tl.constexpr, S_PAD: tl.constexpr, BLOCK_C: tl.constexpr, WRITE: tl.constexpr):
    qb = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    row = z * tl.num_programs(0) + qb
    n_sets = tl.num_programs(1)
    m0 = qb * BLOCK
    last = tl.minimum(m0 + BLOCK, N_Q) - 1 + OFF
    # ---- key blocks from the chosen diagonals, walked in descending delta
    i = tl.arange(0, S_PAD)
    a, b, ok = _diag_blocks(OFFS + z * S, i, S, m0, last, OFF, N_K, BLOCK)
    a_prev, b_prev, ok_prev = _diag_blocks(OFFS + z * S, i - 1, S, m0, last, OFF, N_K, BLOCK)
    emit_a = (ok & ~(ok_prev & ((a == a_prev) | (a == b_prev)))).to(tl.int32)
    emit_b = (ok & (b != a) & ~(ok_prev & (b == b_prev))).to(tl.int32)
    pos_a = tl.cumsum(emit_a + emit_b, 0) - emit_a - emit_b
    if WRITE:
        base = tl.load(CSR_B + row)
        tl.store(BIDX + base + pos_a, a.to(tl.int32), mask=emit_a > 0)
        tl.store(BIDX + base + pos_a + emit_a, b.to(tl.int32), mask=emit_b > 0)
    else:
        tl.store(COUNTS + 1 + row, tl.sum(emit_a + emit_b, 0))
    # ---- chosen columns c <= last whose key block is not listed
    n_col = tl.full([], 0, tl.int32)
    if WRITE:
        base_c = tl.load(CSR_C + row)
    # columns are sorted: the first n_vis are <= last; PC's row 0 counts the chosen columns <= c
    n_vis = tl.load(PC + z * N_K + tl.minimum(last, N_K - 1), mask=last >= 0, other=0)
    for t in range(0, n_vis, BLOCK_C):
        offs = t + tl.arange(0, BLOCK_C)
        vis = offs < n_vis
        c = tl.load(COLS + z * V + offs, mask=vis, other=0)
        kb0 = (c // BLOCK) * BLOCK
        lo = tl.maximum(tl.maximum(m0 + OFF - kb0 - BLOCK + 1, m0 + OFF - N_K + 1), 0)
        hi = tl.minimum(last - kb0, N_K - 1)
        # listed iff a chosen delta lies in [lo, hi]: PC counts the chosen deltas <= each delta
        span = vis & (hi >= lo)
        pcs = PC + (n_sets + z) * N_K                                        # PC's row 1: chosen deltas
        n_in = tl.load(pcs + hi, mask=span, other=0) - tl.load(pcs + lo - 1, mask=span & (lo > 0), other=0)
        listed = span & (n_in > 0)
        keep = (vis & ~listed).to(tl.int32)
        if WRITE:
            tl.store(CIDX + base_c + n_col + tl.cumsum(keep, 0) - keep, c.to(tl.int32), mask=keep > 0)
        n_col += tl.sum(keep, 0)
    if not WRITE:
        tl.store(COUNTS + n_rows + 2 + row, n_col)


# ---------------------------------------------------------------- launchers
def _flat(x, name):
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(f"vertical_slash_index: {name} must be a torch tensor (..., N, d)")
    return x.reshape(-1, x.shape[-2], x.shape[-1]).contiguous()


def _estimate(q, k, last_q, scale, force_vertical, force_slash, write_p=False):
    """Stages 1-3. Returns (P (Z, L, Nk) if write_p or not FUSED_SLASH, vertical, slash, keys (2, Z, Nk))."""
    q3, k3 = _flat(q, "q"), _flat(k, "k")
    if q3.shape[0] != k3.shape[0] or q3.shape[2] != k3.shape[2]:
        raise ValueError(f"vertical_slash_index: q {tuple(q.shape)} and k {tuple(k.shape)} do not match")
    if q3.dtype != k3.dtype:
        raise TypeError(f"vertical_slash_index: q and k must share a dtype, got {q3.dtype} and {k3.dtype}")
    z, nq, d = q3.shape
    nk = k3.shape[1]
    if d > 256:
        raise ValueError(f"vertical_slash_index: head dims up to 256 are supported, got d={d}")
    scale = check_scale(scale, d, "vertical_slash_index")
    L = min(int(last_q), nq)
    if L > 256:
        raise ValueError(f"vertical_slash_index: last_q up to 256 is supported, got {last_q}")
    lp = max(16, triton.next_power_of_2(L))
    bn = 64 if lp <= 64 else 32
    n_kb = triton.cdiv(nk, bn)
    # split the keys among ~2 programs per SM (all heads together); a power of two for the merge
    nchunk = min(triton.next_power_of_2(max(1, 264 // z)), triton.next_power_of_2(n_kb), 256)
    keys_per_chunk = triton.cdiv(n_kb, nchunk) * bn
    dev, f32 = q3.device, torch.float32
    mpart = torch.empty((z, nchunk, lp), dtype=f32, device=dev)
    lpart = torch.empty_like(mpart)
    p = torch.empty((z, L, nk) if write_p or not FUSED_SLASH else (1,), dtype=f32, device=dev)
    vert, slash = torch.empty((z, nk), dtype=f32, device=dev), torch.empty((z, nk), dtype=f32, device=dev)
    keys = torch.empty((2, z, nk), dtype=torch.int64, device=dev)           # vertical, slash: one top-k call
    vkey, skey = keys[0], keys[1]
    common = dict(D=d, BLOCK_D=block_dim(d), LP=lp, BN=bn, NCHUNK=nchunk, PREC=precision(q3.dtype))
    strides = (q3.stride(0), q3.stride(1), k3.stride(0), k3.stride(1))
    _est_stats[(nchunk, z)](q3, k3, mpart, lpart, *strides, nq, nk, L, keys_per_chunk, scale, **common)
    # fused: the slash shares come from the probabilities kernel's registers, P need not be written or read
    fused = FUSED_SLASH and not write_p
    up = triton.next_power_of_2(bn + lp - 1) if fused else 0
    spart = torch.empty((z, n_kb, up) if fused else (1,), dtype=f32, device=dev)
    _est_probs[(n_kb, z)](q3, k3, mpart, lpart, p, vert, vkey, spart, *strides, nq, nk, L, scale,
                          min(force_vertical, nk), WRITE_P=not fused, UP=up, **common)
    bs = 64
    if fused:
        _slash_sum[(triton.cdiv(nk, bs), z)](spart, slash, skey, nk, L, min(force_slash, nk), n_kb, BN=bn, UP=up,
                                             BS=bs)
    else:
        _slash[(triton.cdiv(nk, bs), z)](p, slash, skey, nk, L, min(force_slash, nk), LP=lp, BS=bs)
    return p, vert, slash, keys


def vertical_slash_estimate(q, k, *, last_q=64, scale=None):
    """``(estimate (Z, L, Nk) float32, vertical (Z, Nk) float32, slash (Z, Nk) float32)``."""
    p, vert, slash, _ = _estimate(q, k, last_q, scale, 0, 0, write_p=True)
    return p, vert, slash


def _top(keys, vsize, ssize):
    """``(columns (Z, V), offsets (Z, S), PC (2, Z, Nk))``: the chosen indices, sorted ascending (int64), and
    per row the count of chosen indices <= each index (int32). No host sync either way.

    Default: one ``torch.topk`` over both rows (k = the larger size, largest first, on the unique keys), the
    tail beyond each row's size pushed past every index, one sort; PC by a scatter and a cumsum. With
    ``TRITON_TOPK``: the one-launch radix select :func:`_select` instead."""
    _, z, nk = keys.shape
    if TRITON_TOPK:
        out = torch.empty(z * (vsize + ssize), dtype=torch.int64, device=keys.device)
        pc = torch.empty((2, z, nk), dtype=torch.int32, device=keys.device)
        _select[(2, z)](keys, out, pc, z, nk, vsize, ssize, BLOCK=1024 if SELECT_HISTOGRAM else 256,
                        HIST=SELECT_HISTOGRAM, num_warps=8)
        return out[:z * vsize].view(z, vsize), out[z * vsize:].view(z, ssize), pc
    idx = torch.topk(keys.view(2 * z, nk), max(vsize, ssize), dim=1, sorted=True).indices.view(2, z, -1)
    idx[0, :, vsize:] = nk
    idx[1, :, ssize:] = nk
    chosen = torch.zeros((2, z, nk + 1), dtype=torch.int32, device=keys.device)   # column nk takes the tails
    chosen.scatter_(2, idx, 1)
    pc = chosen[:, :, :nk].cumsum(2, dtype=torch.int32)
    srt = torch.sort(idx, dim=2).values
    return srt[0, :, :vsize].contiguous(), srt[1, :, :ssize].contiguous(), pc


def vertical_slash_index(q, k, vertical_size, slash_size, *, last_q=64, block=64, scale=None,
                         force_vertical=30, force_slash=100) -> VerticalSlashIndex:
    """Vertical-slash index sets for every batch*head of ``q (..., Nq, d)``, ``k (..., Nk, d)``."""
    if int(last_q) < 1 or int(block) < 1:
        raise ValueError(f"vertical_slash_index: need last_q >= 1 and block >= 1, got {last_q}, {block}")
    if int(block) not in (16, 32, 64, 128):
        raise ValueError(f"vertical_slash_index: block must be 16, 32, 64 or 128, got {block}")
    _, vert, slash, keys = _estimate(q, k, last_q, scale, int(force_vertical), int(force_slash))
    z, nk = vert.shape
    nq = q.shape[-2]
    dev = vert.device
    vsize = min(nk, max(int(vertical_size), MIN_VERTICAL))
    ssize = min(nk, max(int(slash_size), MIN_SLASH))
    columns, offsets, pc = _top(keys, vsize, ssize)                        # (Z, V), (Z, S) int64
    nqb, nkb = triton.cdiv(nq, block), triton.cdiv(nk, block)
    n_rows = z * nqb
    # counts[0, 1 + row] = key blocks of row, counts[1, 1 + row] = single columns; cumsum -> CSR offsets
    counts = torch.zeros((2, n_rows + 1), dtype=torch.int32, device=dev)
    bidx = torch.empty(n_rows * min(2 * ssize, nkb), dtype=torch.int32, device=dev)
    cidx = torch.empty(n_rows * vsize, dtype=torch.int32, device=dev)
    args = (offsets, columns, pc, counts, counts[0], counts[1], bidx, cidx, nq, nk, nk - nq, ssize, vsize, n_rows)
    s_pad = max(16, triton.next_power_of_2(ssize))
    meta = dict(BLOCK=block, S_PAD=s_pad, BLOCK_C=256)
    _vs_index[(nqb, z)](*args, WRITE=False, **meta)
    counts.cumsum_(1)
    _vs_index[(nqb, z)](*args, WRITE=True, **meta)
    # (Z, nqb + 1) views: row z's last offset is row z+1's first
    boff = counts[0].as_strided((z, nqb + 1), (nqb, 1))
    coff = counts[1].as_strided((z, nqb + 1), (nqb, 1))
    iset = DeviceIndexSet(nq, nk, block, boff, bidx, coff, cidx)
    return VerticalSlashIndex(iset, columns, offsets, vert, slash)


def graphed_vertical_slash_index(q, k, vertical_size, slash_size, **kwargs):
    """The same build captured once in a CUDA graph, for a prefill that calls it layer after layer.

    Possible because nothing in the build waits for the host. ``q`` and ``k`` are read in place: write the
    next layer's queries and keys into them, call ``replay()``, and ``result`` (a :class:`VerticalSlashIndex`
    whose tensors the graph rewrites) holds the new index set. Returns ``(replay, result)``. A replay costs
    one launch instead of the ~15 launches (and their Python) of :func:`vertical_slash_index`.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture: compiles the kernels, sizes the allocator
        vertical_slash_index(q, k, vertical_size, slash_size, **kwargs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        result = vertical_slash_index(q, k, vertical_size, slash_size, **kwargs)
    return graph.replay, result
