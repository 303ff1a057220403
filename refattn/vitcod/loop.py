"""The jitted loop of :func:`refattn.vitcod.vitcod_forward` and the names of its counters.

What the loop does, step by step, what it counts and how the cycles follow is
written once, in :mod:`refattn.vitcod.kernel`'s docstring (and docs/vitcod.md);
this module holds the loop itself: :func:`run` over all heads, the denser
engine's GEMMs fold by fold on :func:`refattn.pe_array.fold_counts`, the
sparser engine's pieces, and :func:`close_stage`, which turns a step's counts
into port cycles and the step's cycles.
"""

from __future__ import annotations

import numba
import numpy as np

from refattn import memory
from refattn.kernels.common import finalise_rows
from refattn.memory import T_AE, T_IDX, T_K, T_KC, T_MASK, T_O, T_P, T_Q, T_QC, T_S, T_V
from refattn.pe_array import fold_counts

STAGES = ("load", "SDDMM", "softmax", "SpMM", "store")
ST_LOAD, ST_SDDMM, ST_SOFTMAX, ST_SPMM, ST_STORE = range(5)
SLOTS = ("Q", "Qc", "K", "Kc", "V", "idx", "mask", "S", "O", "AE")
S_Q, S_QC, S_K, S_KC, S_V, S_IDX, S_MASK, S_S, S_O, S_AE = range(len(SLOTS))
BUFFERS = ("Q", "K", "V", "index", "out")
#: which buffer each slot lives in
SLOT_BUFFER = {"Q": "Q", "Qc": "Q", "AE": "Q", "K": "K", "Kc": "K", "V": "V", "idx": "index", "mask": "index",
               "S": "out", "O": "out"}

#: Per (head, stage) counters of the loop: cycles, MACs, buffer -> PE element reads per engine, port cycles.
FIELDS = (
    "dense_cycles", "sparse_cycles", "decode_cycles", "dense_macs", "sparse_macs", "decode_macs",
    "dense_Q", "dense_K", "dense_V", "dense_S", "dense_out_writes",
    "sparse_Q", "sparse_K", "sparse_V", "sparse_idx", "sparse_S", "sparse_out_writes", "partial_reads",
    "sparse_Q_rows", "sparse_K_rows", "sparse_V_rows", "decode_Q", "decode_K",
    "port_Q", "port_K", "port_V", "port_idx", "port_out", "stage_cycles",
)
F = {name: i for i, name in enumerate(FIELDS)}
(F_DCYC, F_SCYC, F_DECCYC, F_DMAC, F_SMAC, F_DECMAC, F_DQ, F_DK, F_DV, F_DS, F_DOW, F_SQ, F_SK, F_SV, F_SIDX, F_SS,
 F_SOW, F_PART, F_SQR, F_SKR, F_SVR, F_DECQ, F_DECK, F_PQ, F_PK, F_PV, F_PIDX, F_POUT, F_STAGE) = range(len(FIELDS))
#: the resources a stage waits on, in the order the bound is reported
RESOURCES = ("dense engine", "sparse engine", "decoder", "Q buffer", "K buffer", "V buffer", "index buffer",
             "out buffer")
RES_FIELDS = (F_DCYC, F_SCYC, F_DECCYC, F_PQ, F_PK, F_PV, F_PIDX, F_POUT)


# ---------------------------------------------------------------------------
# The jitted loop
# ---------------------------------------------------------------------------
@numba.njit(cache=True)
def _ceil_div(a, b):
    return (a + b - 1) // b


@numba.njit(cache=True)
def _fold_product(df, a, b, c, r0, r1, c0, c1, m, n, k):
    """The arithmetic of one fold: C += the part of A @ B the fold holds (os: C[r0:r1, c0:c1] over all k;
    ws: C[:, c0:c1] over k in [r0, r1); is: C[c0:c1, :] over k in [r0, r1))."""
    if df == 0:
        for i in range(r0, r1):
            for j in range(c0, c1):
                s = c[i, j] - c[i, j]
                for t in range(k):
                    s += a[i, t] * b[t, j]
                c[i, j] += s
    elif df == 1:
        for i in range(m):
            for j in range(c0, c1):
                s = c[i, j] - c[i, j]
                for t in range(r0, r1):
                    s += a[i, t] * b[t, j]
                c[i, j] += s
    else:
        for i in range(c0, c1):
            for j in range(n):
                s = c[i, j] - c[i, j]
                for t in range(r0, r1):
                    s += a[i, t] * b[t, j]
                c[i, j] += s


@numba.njit(cache=True)
def _dense_gemm(df, a, b, c, m, n, k, rows, cols, compute, row, f_a, f_b):
    """Run ``(m x k) @ (k x n)`` on the rows x cols array fold by fold; count into ``row`` (a ctr row)."""
    if df == 0:
        sr, sc, t = m, n, k
    elif df == 1:
        sr, sc, t = k, n, m
    else:
        sr, sc, t = k, m, n
    cyc = 0
    for fc in range(_ceil_div(sc, cols)):
        c0 = fc * cols
        c1 = min(c0 + cols, sc)
        for fr in range(_ceil_div(sr, rows)):
            r0 = fr * rows
            r1 = min(r0 + rows, sr)
            fcyc, ar, br, cw, macs = fold_counts(df, r1 - r0, c1 - c0, t, rows, cols)
            cyc += fcyc
            row[f_a] += ar
            row[f_b] += br
            row[F_DOW] += cw
            row[F_DMAC] += macs
            if compute:
                _fold_product(df, a, b, c, r0, r1, c0, c1, m, n, k)
    row[F_DCYC] += cyc - 1  # SCALE-Sim's count: the index of the last busy cycle


@numba.njit(cache=True)
def _gather_cycles(rows, row_bytes, w, banks):
    """Port cycles to gather ``rows`` rows of ``row_bytes``: up to min(banks, W // row bytes) rows per access
    (at least one), each access ceil(row bytes / W) cycles."""
    per = min(banks, max(1, w // row_bytes))
    return _ceil_div(rows, per) * _ceil_div(row_bytes, w)


@numba.njit(cache=True)
def close_stage(row, w, db, d, dv, banks):
    """Port cycles of each buffer and the stage's cycles (the slowest resource), from the stage's counts."""
    row[F_PQ] = _ceil_div((row[F_DQ] + row[F_DECQ]) * db, w) + _gather_cycles(row[F_SQR], d * db, w, banks)
    row[F_PK] = _ceil_div((row[F_DK] + row[F_DECK]) * db, w) + _gather_cycles(row[F_SKR], d * db, w, banks)
    row[F_PV] = _ceil_div(row[F_DV] * db, w) + _gather_cycles(row[F_SVR], dv * db, w, banks)
    row[F_PIDX] = _ceil_div(row[F_SIDX], w)  # index reads are counted in bytes
    out = row[F_DS] + row[F_DOW] + row[F_SS] + row[F_SOW] + row[F_PART]
    row[F_POUT] = _ceil_div(out * db, w)
    best = 0
    for f in (F_DCYC, F_SCYC, F_DECCYC, F_PQ, F_PK, F_PV, F_PIDX, F_POUT):
        if row[f] > best:
            best = row[f]
    row[F_STAGE] = best


@numba.njit(cache=True)
def _note_buffers(mem, buf_of_slot, buf_peak):
    """Occupancy of each buffer now (the sum of its slots, counted by refattn.memory); keep the peak."""
    occ = np.zeros(buf_peak.shape[0], np.int64)
    for slot in range(buf_of_slot.shape[0]):
        if buf_of_slot[slot] >= 0:
            occ[buf_of_slot[slot]] += mem.slots[slot]
    for i in range(occ.shape[0]):
        if occ[i] > buf_peak[i]:
            buf_peak[i] = occ[i]


@numba.njit(cache=True)
def run(mem, ctr, q, k, v, codes_q, codes_k, dec, n_ae, scale, compute,
         perm, g_arr, dmask, indptr, indices, idx_off, pieces, piece_off, ld_arr, df_arr,
         hw_i, idx_elems, mask_elems, o, qp, kp, vp, kgt, sd, ss, m_, l_, acc, o_rows, lse_rows, line_busy,
         line_entries, has_part, buf_of_slot, buf_peak, st_info):
    """The whole run; see refattn.vitcod.kernel's docstring.

    ``hw_i`` = [lines, macs_per_line, W, data_bytes, latency, banks]."""
    nb, n, d = q.shape[0], q.shape[1], q.shape[2]
    dv = v.shape[2]
    n_lines, mpl, w, db, lat, banks = hw_i[0], hw_i[1], hw_i[2], hw_i[3], hw_i[4], hw_i[5]
    hc = dec.shape[1]
    zero = scale - scale
    for b in range(nb):
        memory.set_head(mem, b)
        g = g_arr[b]
        e_base = idx_off[b]
        nnz = idx_off[b + 1] - e_base
        ld = ld_arr[b]
        p0, p1 = piece_off[b], piece_off[b + 1]
        for i in range(line_busy.shape[0]):
            line_busy[i] = 0
            line_entries[i] = 0
        st_info[0] = b
        # ---- step 1: load (and decode) --------------------------------------------------------------
        row = ctr[b, ST_LOAD]
        if n_ae > 0:
            h = b % n_ae
            grp = b // n_ae
            if h == 0:
                memory.load(mem, T_QC, S_QC, 0, hc * n, 0, d)
                memory.load(mem, T_KC, S_KC, 0, hc * n, 0, d)
                memory.load(mem, T_AE, S_AE, 0, 2 * n_ae, 0, hc)
            if compute:
                for i in range(n):
                    src = perm[b, i]
                    for t in range(d):
                        sq = zero
                        sk = zero
                        for c in range(hc):
                            sq += dec[h, c] * codes_q[grp, c, src, t]
                            sk += dec[h, c] * codes_k[grp, c, src, t]
                        qp[i, t] = sq
                        kp[i, t] = sk
            memory.hold(mem, T_Q, S_Q, 0, n, 0, d)
            memory.hold(mem, T_K, S_K, 0, n, 0, d)
            row[F_DECQ] += hc * n * d
            row[F_DECK] += hc * n * d
            row[F_DECMAC] += 2 * n * d * hc
            row[F_DECCYC] += _ceil_div(2 * n * d * hc, n_lines * mpl)
            memory.count_flops(mem, 4 * n * d * hc, 0)
        else:
            memory.load(mem, T_Q, S_Q, 0, n, 0, d)
            memory.load(mem, T_K, S_K, 0, n, 0, d)
            if compute:
                for i in range(n):
                    for t in range(d):
                        qp[i, t] = q[b, perm[b, i], t]
                        kp[i, t] = k[b, perm[b, i], t]
        memory.load(mem, T_V, S_V, 0, n, 0, dv)
        if compute:
            for i in range(n):
                for t in range(dv):
                    vp[i, t] = v[b, perm[b, i], t]
        if nnz > 0:
            memory.load(mem, T_IDX, S_IDX, 0, 1, 0, idx_elems[b])
        if g > 0:
            memory.load(mem, T_MASK, S_MASK, 0, n, 0, mask_elems[b] // n)
        close_stage(row, w, db, d, dv, banks)
        st_info[1] = ST_LOAD
        _note_buffers(mem, buf_of_slot, buf_peak)
        if memory.end_step(mem):
            return
        # ---- step 2: SDDMM ---------------------------------------------------------------------------
        row = ctr[b, ST_SDDMM]
        if g > 0:
            if compute:
                for c in range(g):
                    for t in range(d):
                        kgt[t, c] = kp[c, t]
                for i in range(n):
                    for c in range(g):
                        sd[i, c] = zero
            _dense_gemm(df_arr[b, 0], qp, kgt, sd, n, g, d, mpl, ld, compute, row, F_DQ, F_DK)
            if compute:
                for i in range(n):
                    for c in range(g):
                        sd[i, c] = sd[i, c] * scale if dmask[b, i, c] else -np.inf
        for p in range(p0, p1):
            line, r, e0, e1 = pieces[p, 0], pieces[p, 1], pieces[p, 2], pieces[p, 3]
            row[F_SQ] += d
            row[F_SQR] += 1
            row[F_SIDX] += idx_elems[nb] * 2 + (e1 - e0) * idx_elems[nb + 1]
            for e in range(e0, e1):
                j = indices[e_base + e]
                row[F_SK] += d
                row[F_SKR] += 1
                row[F_SOW] += 1
                if compute:
                    s = zero
                    for t in range(d):
                        s += qp[r, t] * kp[j, t]
                    ss[e] = s * scale
            row[F_SMAC] += (e1 - e0) * d
            line_busy[ld + line] += (e1 - e0) * _ceil_div(d, mpl)
            line_entries[ld + line] += e1 - e0
        if nnz > 0:  # the busiest sparse line sets the engine's time
            row[F_SCYC] = line_busy.max() + lat
        memory.hold(mem, T_S, S_S, 0, n * g + nnz, 0, 1)  # N*G + nnz scores (flattened)
        memory.count_flops(mem, 2 * (n * g + nnz) * d, 0)
        close_stage(row, w, db, d, dv, banks)
        st_info[1] = ST_SDDMM
        _note_buffers(mem, buf_of_slot, buf_peak)
        if memory.end_step(mem):
            return
        # ---- step 3: softmax over both parts (not charged in cycles) ---------------------------------
        if compute:
            for i in range(n):
                mx = -np.inf
                for c in range(g):
                    mx = max(mx, sd[i, c])
                for e in range(indptr[b, i], indptr[b, i + 1]):
                    mx = max(mx, ss[e])
                shift = mx if mx != -np.inf else zero
                tot = zero
                for c in range(g):
                    pv = np.exp(sd[i, c] - shift)
                    sd[i, c] = pv
                    tot += pv
                for e in range(indptr[b, i], indptr[b, i + 1]):
                    pv = np.exp(ss[e] - shift)
                    ss[e] = pv
                    tot += pv
                m_[i] = mx
                l_[i] = tot
        memory.hold(mem, T_P, S_S, 0, n * g + nnz, 0, 1)  # P overwrites S
        memory.count_flops(mem, 0, n * g + nnz)
        for i in range(line_busy.shape[0]):
            line_busy[i] = 0
            line_entries[i] = 0
        st_info[1] = ST_SOFTMAX
        _note_buffers(mem, buf_of_slot, buf_peak)
        if memory.end_step(mem):
            return
        # ---- step 4: SpMM ----------------------------------------------------------------------------
        row = ctr[b, ST_SPMM]
        if compute:
            for i in range(n):
                for t in range(dv):
                    acc[i, t] = zero
        for i in range(n):
            has_part[i] = g > 0
        if g > 0:
            _dense_gemm(df_arr[b, 1], sd, vp, acc, n, dv, g, mpl, ld, compute, row, F_DS, F_DV)
        for p in range(p0, p1):
            line, r, e0, e1 = pieces[p, 0], pieces[p, 1], pieces[p, 2], pieces[p, 3]
            row[F_SIDX] += idx_elems[nb] * 2 + (e1 - e0) * idx_elems[nb + 1]
            for e in range(e0, e1):
                j = indices[e_base + e]
                row[F_SS] += 1
                row[F_SV] += dv
                row[F_SVR] += 1
                if compute:
                    for t in range(dv):
                        acc[r, t] += ss[e] * vp[j, t]
            if has_part[r]:
                row[F_PART] += dv
            has_part[r] = True
            row[F_SOW] += dv
            row[F_SMAC] += (e1 - e0) * dv
            line_busy[ld + line] += (e1 - e0) * _ceil_div(dv, mpl)
            line_entries[ld + line] += e1 - e0
        if nnz > 0:  # the busiest sparse line sets the engine's time
            row[F_SCYC] = line_busy.max()
        memory.hold(mem, T_O, S_O, 0, n, 0, dv)
        memory.count_flops(mem, 2 * (n * g + nnz) * dv, 0)
        close_stage(row, w, db, d, dv, banks)
        st_info[1] = ST_SPMM
        _note_buffers(mem, buf_of_slot, buf_peak)
        if memory.end_step(mem):
            return
        # ---- step 5: store O = acc / l (0 for an empty row) ----------------------------------------
        if compute:
            finalise_rows(acc, m_, l_, o_rows, lse_rows)
            for i in range(n):
                for t in range(dv):
                    o[b, perm[b, i], t] = o_rows[i, t]
        memory.store(mem, T_O, S_O, 0, n, 0, dv)
        for s in (S_Q, S_K, S_V, S_IDX, S_MASK, S_S, S_O):
            if mem.slots[s] > 0:
                memory.free(mem, s)
        if n_ae > 0 and b % n_ae == n_ae - 1:
            for s in (S_QC, S_KC, S_AE):
                memory.free(mem, s)
        for i in range(line_busy.shape[0]):
            line_busy[i] = 0
            line_entries[i] = 0
        st_info[1] = ST_STORE
        _note_buffers(mem, buf_of_slot, buf_peak)
        if memory.end_step(mem):
            return
