"""MInference vertical-slash index building on the device: Triton kernels, no host sync, all heads at once.

Same function as ``refattn.patterns.vertical_slash`` (read its docstring for the
choices), for every batch*head z at once, so a whole prefill step stays on the GPU.
Five stages, each a fixed number of launches whose sizes are known up front
(``L = min(last_q, Nq)`` estimated rows, ``off = Nk - Nq``, row r sees keys
``j <= qi[r] = Nk - L + r``)::

    1 _est_stats  grid (chunks, Z): online max m and sum l of scale*Q[-L:]K^T over a chunk of keys
    2 _est_probs  grid (Nk / (BN TILES), Z): merge the chunks' (m, l); per key tile, P = exp(S - m) / l
                  (float32, causal) in registers; vertical[c] = sum_r P[r, c] (each program owns its columns);
                  the tile's share of every diagonal it crosses (tl.gather of P's diagonals), to a small buffer
    3 _slash_sum  grid (Nk / BS, Z): slash[delta] = sum of the shares of the <= UP / BN + 1 tiles that hold
                  delta, in tile order (deterministic: no atomics). The (Z, L, Nk) estimate is neither
                  written nor read back (``FUSED_SLASH``; else _est_probs writes it and _slash gathers it
                  along the diagonals, as :func:`vertical_slash_estimate` does)
    4 top-k       the k-th largest key of each score row (key = the score's float bits, the first
                  ``force_*`` indices +inf; ties to the lower index, as the CPU's stable sort) by a radix select
                  over many programs per row: _radix_hist grid (chunks, 2Z) x 4 passes of 8/8/8/7 bits, then
                  _compact grid (chunks, 2Z) writes the chosen indices sorted and PC, per row the count of
                  chosen indices <= each index. Both score rows of every head in the same launches. Or
                  (``TORCH_TOPK``) one torch.topk + sort on unique int64 keys, PC by a scatter and a cumsum.
                  Measured (H200, H = 4): 4 x 4.4 + 9.1 us at 32k, 4 x 8.2 + 13.6 us at 128k (device);
                  the build took 0.304 / 0.692 ms as a CUDA graph with torch's top-k, 0.125 / 0.363 with this.
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
#: the top-k by torch.topk + sort (the previous default, kept for comparison; a test proves both agree) instead
#: of the multi-program radix select (_radix_hist, _compact). The radix select took the whole build from 0.304 to
#: 0.125 ms at 32k and from 0.692 to 0.363 ms at 128k (H = 4, vertical 1000, as a CUDA graph, H200)
TORCH_TOPK = os.environ.get("GPU_OPTIONAL_TORCH_TOPK", "0") == "1"
#: radix select: keys per inner step, and at most this many chunks (programs) per score row
SELECT_BLOCK, SELECT_CHUNKS = 512, 64
#: probabilities kernel: aim at this many programs (~4 per SM), each over 1 to 16 key tiles
EST_PROGRAMS = 512


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
def _est_probs(Q, K, MPART, LPART, P, VERT, SPART, stride_qz, stride_qn, stride_kz, stride_kn,
               N_Q, N_K, L, scale, n_kb,
               D: tl.constexpr, BLOCK_D: tl.constexpr, LP: tl.constexpr, BN: tl.constexpr,
               NCHUNK: tl.constexpr, PREC: tl.constexpr, WRITE_P: tl.constexpr, UP: tl.constexpr,
               TILES: tl.constexpr):
    """TILES consecutive (LP, BN) key tiles per program, so the chunks' (m, l) merge (NCHUNK x LP values of m
    and l, as many exps) and the query rows are loaded once per program, not once per tile. Predicted to take
    the 128k pass from 159 us towards its floor (reading K once, ~31 us); measured (H200, H = 4, bf16,
    benchmarks/h200_index_build_profile.log) 43 us at 32k and 149 us at 128k: the merge was not the cost.
    _est_stats does the same dot and exps in 52 us at 128k, so the rest is the column sum, the diagonal
    gather (LP x UP) and its row sum; untried: a cheaper diagonal sum."""
    pid = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    rows = tl.arange(0, LP)
    offs_d = tl.arange(0, BLOCK_D)
    # merge the chunks: M = max_c m_c, tot = sum_c l_c exp(m_c - M)
    part = (z * NCHUNK + tl.arange(0, NCHUNK))[:, None] * LP + rows[None, :]            # (NCHUNK, LP)
    m_c = tl.load(MPART + part)
    big = tl.max(m_c, 0)
    shift = tl.where(big == float("-inf"), 0.0, big)
    tot = tl.sum(tl.load(LPART + part) * tl.exp(m_c - shift[None, :]), 0)             # (LP,)
    inv = 1.0 / tl.where(tot > 0, tot, 1.0)
    q = _load_last_rows(Q + z * stride_qz, stride_qn, rows, N_Q, L, offs_d, D)
    for t in range(TILES):
        nb = pid * TILES + t
        offs_n = nb * BN + tl.arange(0, BN)
        s = _scores(q, K + z * stride_kz, stride_kn, offs_n, offs_d, rows, N_K, L, scale, D, PREC)
        p = tl.exp(s - shift[:, None]) * inv[:, None]                                    # hidden: exp(-inf) = 0
        if WRITE_P:
            tl.store(P + (z * L + rows[:, None]) * N_K + offs_n[None, :], p,
                     mask=(rows[:, None] < L) & (offs_n[None, :] < N_K))
        tl.store(VERT + z * N_K + offs_n, tl.sum(p, 0), mask=offs_n < N_K)
        if UP > 0:
            # this tile's share of the slash scores: diagonal u holds the entries with r - c_local = u - (BN - 1)
            # (delta = Nk - L - nb*BN - BN + 1 + u); hidden and padded entries are 0 in p
            u = tl.arange(0, UP)
            src = rows[:, None] + (BN - 1) - u[None, :]                                   # (LP, UP) column
            on = (src >= 0) & (src < BN)
            g = tl.gather(p, tl.where(on, src, 0), axis=1)
            tl.store(SPART + (z * n_kb + nb) * UP + u, tl.sum(tl.where(on, g, 0.0), 0),
                     mask=nb * UP + u < n_kb * UP)                    # (a vector mask: the interpreter)


@triton.jit
def _slash(P, SLASH, N_K, L, LP: tl.constexpr, BS: tl.constexpr):
    nb = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    rows = tl.arange(0, LP)
    delta = nb * BS + tl.arange(0, BS)
    col = (N_K - L + rows)[:, None] - delta[None, :]                                      # (LP, BS)
    ok = (rows[:, None] < L) & (col >= 0) & (delta[None, :] < N_K)
    g = tl.load(P + (z * L + rows[:, None]) * N_K + col, mask=ok, other=0.0)
    tl.store(SLASH + z * N_K + delta, tl.sum(g, 0), mask=delta < N_K)


@triton.jit
def _slash_sum(SPART, SLASH, N_K, L, n_kb,
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


# ---------------------------------------------------------------- 4: top-k (multi-program radix select)
# A score row's keys are its float32 scores' bits as int32 (scores >= 0, so bit 31 is 0 and the integer order is
# the float order), the first ``forced`` indices set to +inf's bits. Radix digits, high to low: bits 23-30
# (the exponent), 15-22, 7-14, 0-6. The k-th largest key T is found digit by digit; keys equal to T are taken
# in index order, so the chosen set is the CPU's stable top-k.
@triton.jit
def _row_keys(SCORES, row, offs, N_K, FV, FS, Z):
    """(keys int32, valid) of score row ``row`` (rows < Z vertical, forced FV; else slash, forced FS)."""
    valid = offs < N_K
    bits = tl.load(SCORES + row * N_K + offs, mask=valid, other=0.0).to(tl.int32, bitcast=True)
    forced = tl.where(row < Z, FV, FS)
    return tl.where(offs < forced, 0x7F800000, bits), valid


@triton.jit
def _pick_digit(hist, prefix, k_rem, BITS: tl.constexpr):
    """From the histogram (2**BITS,) of the next digit among the keys matching ``prefix``: the k_rem-th largest
    key's digit is the largest b with count(digit >= b) >= k_rem. Returns (prefix extended by b, k_rem minus
    the keys with a larger digit)."""
    b = tl.arange(0, 1 << BITS)
    at_least = tl.sum(hist, 0) - tl.cumsum(hist, 0) + hist
    digit = tl.max(tl.where(at_least >= k_rem, b, -1), 0)
    return (prefix << BITS) + digit, k_rem - tl.sum(tl.where(b > digit, hist, 0), 0)


@triton.jit
def _walk(HIST, row, k, R, PASSES: tl.constexpr):
    """(prefix, k_rem) after the first PASSES 8-bit digits, from the global histograms HIST (3, R, 256)."""
    prefix = tl.full([], 0, tl.int32)
    k_rem = k
    for p in tl.static_range(PASSES):
        hist = tl.load(HIST + (p * R + row) * 256 + tl.arange(0, 256))
        prefix, k_rem = _pick_digit(hist, prefix, k_rem, 8)
    return prefix, k_rem


@triton.jit
def _radix_hist(SCORES, HIST, HLAST, ABOVE, N_K, Z, V, S, FV, FS, chunk,
                PASS: tl.constexpr, SHIFT: tl.constexpr, BITS: tl.constexpr, BLOCK: tl.constexpr,
                NCH: tl.constexpr):
    """Radix pass PASS (0-3) over one chunk of one score row, grid (chunks, 2Z): the digits of PASS of the keys
    whose higher digits equal the k-th largest key's (found from the earlier passes' histograms, recomputed by
    every program: 256 counts a pass). Passes 0-2 add the chunk's 256-bin histogram to the row's (HIST, atomics,
    zeroed before); pass 3 (7 bits) stores the chunk's own histogram (HLAST (2Z, NCH, 128)) and ABOVE, the
    chunk's count of keys whose higher digits are larger, for the compaction's offsets. 256 bins, since
    tl.histogram's cost grows with the bins (2048 bins: ~5 us per 1024 keys on the H200). Measured 4.4 us a
    pass at 32k and 8.2 us at 128k (H = 4, both rows: 512 programs), launch-bound at 32k."""
    c = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64)
    R = 2 * Z
    k = tl.where(row < Z, V, S)
    prefix, k_rem = _walk(HIST, row, k, R, PASS)
    BINS: tl.constexpr = 1 << BITS
    hist = tl.zeros([BINS], tl.int32)
    above = tl.full([], 0, tl.int32)
    for start in range(c * chunk, c * chunk + chunk, BLOCK):
        key, valid = _row_keys(SCORES, row, start + tl.arange(0, BLOCK), N_K, FV, FS, Z)
        high = key >> (SHIFT + BITS)
        cand = valid & (high == prefix)
        hist += tl.histogram((key >> SHIFT) & (BINS - 1), BINS, mask=cand)
        above += tl.sum((valid & (high > prefix)).to(tl.int32), 0)
    if PASS < 3:
        tl.atomic_add(HIST + (PASS * R + row) * 256 + tl.arange(0, 256), hist, sem="relaxed")
    else:
        tl.store(HLAST + (row * NCH + c) * 128 + tl.arange(0, 128), hist)
        tl.store(ABOVE + row * NCH + c, above)


@triton.jit
def _compact(SCORES, HIST, HLAST, ABOVE, OUT, PC, N_K, Z, V, S, FV, FS, chunk,
             BLOCK: tl.constexpr, NCH: tl.constexpr):
    """Grid (chunks, 2Z): the last digit from the chunks' histograms gives T, the k-th largest key, and
    ``need``, how many keys equal to T the top k takes; the earlier chunks' counts give this chunk's first
    output slot and ties. Keeps ``key > T`` and the first ``need`` keys equal to T in index order, writing
    the chosen indices sorted ascending (no sort) into OUT (Z rows of V columns, then Z rows of S offsets)
    and PC (2Z, Nk): per row the count of chosen indices <= each index. Measured 9.1 us at 32k, 13.6 us at
    128k (H200, H = 4)."""
    c = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64)
    R = 2 * Z
    k = tl.where(row < Z, V, S)
    prefix, k_rem = _walk(HIST, row, k, R, 3)
    chunks = tl.arange(0, NCH)
    h = tl.load(HLAST + (row * NCH + chunks[:, None]) * 128 + tl.arange(0, 128)[None, :])   # (NCH, 128)
    thr, need = _pick_digit(tl.sum(h, 0), prefix, k_rem, 7)
    b = tl.arange(0, 128)[None, :]
    before = chunks[:, None] < c
    kept = tl.sum(tl.sum(tl.where(before & (b > (thr & 127)), h, 0), 1), 0)
    kept += tl.sum(tl.where(chunks < c, tl.load(ABOVE + row * NCH + chunks), 0), 0)
    ties = tl.sum(tl.sum(tl.where(before & (b == (thr & 127)), h, 0), 1), 0)
    kept += tl.minimum(ties, need)                                         # the earlier chunks' ties taken
    out = OUT + tl.where(row < Z, row * V, Z * V + (row - Z) * S)
    for start in range(c * chunk, c * chunk + chunk, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        key, valid = _row_keys(SCORES, row, offs, N_K, FV, FS, Z)
        eq = (valid & (key == thr)).to(tl.int32)
        keep = ((valid & (key > thr)) | ((eq > 0) & (ties + tl.cumsum(eq, 0) - eq < need))).to(tl.int32)
        upto = kept + tl.cumsum(keep, 0)                                     # chosen indices <= offs
        tl.store(out + upto - keep, offs.to(tl.int64), mask=keep > 0)
        tl.store(PC + row * N_K + offs, upto, mask=valid)
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


def _estimate(q, k, last_q, scale, write_p=False):
    """Stages 1-3. Returns (P (Z, L, Nk) if write_p or not FUSED_SLASH, scores (2, Z, Nk): vertical, slash)."""
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
    # probabilities: ~4 programs per SM, each over `tiles` key tiles (1 to 16)
    tiles = max(1, min(16, triton.next_power_of_2(n_kb * z) // EST_PROGRAMS))
    dev, f32 = q3.device, torch.float32
    mpart = torch.empty((z, nchunk, lp), dtype=f32, device=dev)
    lpart = torch.empty_like(mpart)
    p = torch.empty((z, L, nk) if write_p or not FUSED_SLASH else (1,), dtype=f32, device=dev)
    scores = torch.empty((2, z, nk), dtype=f32, device=dev)              # vertical, slash: one top-k
    common = dict(D=d, BLOCK_D=block_dim(d), LP=lp, BN=bn, NCHUNK=nchunk, PREC=precision(q3.dtype))
    strides = (q3.stride(0), q3.stride(1), k3.stride(0), k3.stride(1))
    _est_stats[(nchunk, z)](q3, k3, mpart, lpart, *strides, nq, nk, L, keys_per_chunk, scale, **common)
    # fused: the slash shares come from the probabilities kernel's registers, P need not be written or read
    fused = FUSED_SLASH and not write_p
    up = triton.next_power_of_2(bn + lp - 1) if fused else 0
    spart = torch.empty((z, n_kb, up) if fused else (1,), dtype=f32, device=dev)
    _est_probs[(triton.cdiv(n_kb, tiles), z)](q3, k3, mpart, lpart, p, scores[0], spart, *strides, nq, nk, L,
                                              scale, n_kb, WRITE_P=not fused, UP=up, TILES=tiles, **common)
    bs = 64
    if fused:
        _slash_sum[(triton.cdiv(nk, bs), z)](spart, scores[1], nk, L, n_kb, BN=bn, UP=up, BS=bs)
    else:
        _slash[(triton.cdiv(nk, bs), z)](p, scores[1], nk, L, LP=lp, BS=bs)
    return p, scores


def vertical_slash_estimate(q, k, *, last_q=64, scale=None):
    """``(estimate (Z, L, Nk) float32, vertical (Z, Nk) float32, slash (Z, Nk) float32)``."""
    p, scores = _estimate(q, k, last_q, scale, write_p=True)
    return p, scores[0], scores[1]


def _top(scores, vsize, ssize, force_vertical, force_slash):
    """``(columns (Z, V), offsets (Z, S), PC (2, Z, Nk))`` from ``scores`` (2, Z, Nk) float32 (vertical,
    slash; >= 0): the chosen indices, sorted ascending (int64), and per row the count of chosen indices <= each
    index (int32). No host sync either way.

    Default: the radix select, 4 + 1 launches for every row of every head (:func:`_radix_hist`,
    :func:`_compact`). ``TORCH_TOPK``: one ``torch.topk`` over both rows on unique int64 keys (score bits, then
    the lower index first; k = the larger size), the tail beyond each row's size pushed past every index, one
    sort; PC by a scatter and a cumsum."""
    _, z, nk = scores.shape
    fv, fs = min(force_vertical, nk), min(force_slash, nk)
    dev = scores.device
    if not TORCH_TOPK:
        nch = min(SELECT_CHUNKS, triton.next_power_of_2(triton.cdiv(nk, SELECT_BLOCK)))
        chunk = triton.cdiv(triton.cdiv(nk, nch), SELECT_BLOCK) * SELECT_BLOCK
        hist = torch.zeros((3, 2 * z, 256), dtype=torch.int32, device=dev)
        hlast = torch.empty((2 * z, nch, 128), dtype=torch.int32, device=dev)
        above = torch.empty((2 * z, nch), dtype=torch.int32, device=dev)
        out = torch.empty(z * (vsize + ssize), dtype=torch.int64, device=dev)
        pc = torch.empty((2, z, nk), dtype=torch.int32, device=dev)
        args = (scores, hist, hlast, above)
        sizes = (nk, z, vsize, ssize, fv, fs, chunk)
        for pss, (shift, bits) in enumerate(((23, 8), (15, 8), (7, 8), (0, 7))):
            _radix_hist[(nch, 2 * z)](*args, *sizes, PASS=pss, SHIFT=shift, BITS=bits, BLOCK=SELECT_BLOCK, NCH=nch)
        _compact[(nch, 2 * z)](*args, out, pc, *sizes, BLOCK=SELECT_BLOCK, NCH=nch)
        return out[:z * vsize].view(z, vsize), out[z * vsize:].view(z, ssize), pc
    s = scores.clone()
    s[0, :, :fv] = float("inf")
    s[1, :, :fs] = float("inf")
    keys = (s.view(torch.int32).to(torch.int64) << 32) + (2147483647 - torch.arange(nk, device=dev))
    idx = torch.topk(keys.view(2 * z, nk), max(vsize, ssize), dim=1, sorted=True).indices.view(2, z, -1)
    idx[0, :, vsize:] = nk
    idx[1, :, ssize:] = nk
    chosen = torch.zeros((2, z, nk + 1), dtype=torch.int32, device=dev)   # column nk takes the tails
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
    _, scores = _estimate(q, k, last_q, scale)
    vert, slash = scores[0], scores[1]
    z, nk = vert.shape
    nq = q.shape[-2]
    dev = vert.device
    vsize = min(nk, max(int(vertical_size), MIN_VERTICAL))
    ssize = min(nk, max(int(slash_size), MIN_SLASH))
    columns, offsets, pc = _top(scores, vsize, ssize, int(force_vertical), int(force_slash))  # (Z, V), (Z, S)
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
