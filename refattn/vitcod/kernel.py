"""ViTCoD's split sparse/dense attention as a counted, steppable kernel (docs/vitcod.md).

The kernel runs one attention head after another on a ViTCoD-like accelerator
(:class:`~refattn.vitcod.hardware.Hardware`): ``L`` MAC lines of 8 MACs, split
between a *denser engine* (an 8 x Ld systolic PE array, :mod:`refattn.pe_array`)
and a *sparser engine* (Ls independent MAC lines reading index lists). Data
moves through :mod:`refattn.memory` (HBM <-> on-chip buffers, counted per
tensor) and through the kernel's own buffer -> PE counters (``ctr`` below),
from which the cycles follow.

Per head (N tokens, head dim d, value dim dv; after the split: permutation
``perm``, G dense (global) columns, ``nnz`` sparse entries in CSR lists, cut
into *pieces* dealt to the sparse lines), five steps::

    1 load     HBM -> buffers: K (N*d), V (N*dv), Q (N*d), the index lists
               (nnz column ids + N + 1 row pointers) and the dense part's
               mask (N * ceil(G/8) bytes). With the auto-encoder: at the first
               head of a group of H heads, the codes Qc, Kc (Hc*N*d each) and
               the decoder weights (2*H*Hc); then Q and K of this head are
               decoded on chip on all L lines (2*N*d*Hc MACs).
    2 SDDMM    denser engine: S_G = Q K_G^T (N x G) on the 8 x Ld array, fold
               by fold (the dataflow of fewest cycles), pruned entries -> -inf;
               sparser engine: for every piece (row i, entries e0..e1) on its
               line: read q_i once, then per entry gather k_j and form q_i.k_j.
    3 softmax  one softmax per row over both parts (not charged in cycles, as
               in ViTCoD; exponentials counted).
    4 SpMM     denser engine: O_G = P_G V_G (N x dv) on the array; sparser
               engine: per entry gather v_j, o_i += p_ij v_j, and the piece's
               partial o_i (dv) goes to the output buffer, adding to a partial
               already there.
    5 store    O = acc / l (0 for a row with nothing kept) written to HBM.

``n_steps = 5 * heads``. Designs (``design=``), all through this loop on the
same hardware: ``"split"`` (ViTCoD: global tokens -> the denser engine, lines
in proportion to the MACs of each part), ``"dense"`` (G = N: every score on
the denser engine with all L lines; the mask is applied on chip) and
``"sparse"`` (G = 0: every kept entry on the sparser engine with all L lines).

HBM traffic (elements of ``data_bytes``; per head, summed over heads)::

    Q reads N*d, K reads N*d            (with the auto-encoder instead, per group of H heads:
                                         Qc reads Hc*N*d, Kc reads Hc*N*d, AE reads 2*H*Hc)
    V reads N*dv;  O writes N*dv
    idx reads  nnz*cb + (N + 1)*pb       if nnz > 0 (cb = 1 byte if N <= 256 else 2, pb = 2 bytes)
    mask reads N*ceil(G/8)               if G > 0  (bits of the dense part, in bytes)

Buffer -> PE reads (elements), per head, counted by the loop (``FIELDS``)::

    dense SDDMM   Q, K_G, S writes: simulate_gemm(N, G, d, rows=8, cols=Ld) A, B reads, C writes
    dense SpMM    P_G, V_G, O writes: simulate_gemm(N, dv, G, rows=8, cols=Ld) A, B reads, C writes
    sparse SDDMM  Q: d per piece (a gathered row), K: d per entry (gathered rows), S writes 1 per entry
    sparse SpMM   P: 1 per entry, V: dv per entry (gathered rows), O writes dv per piece,
                  partial-sum reads dv per piece whose row already has a partial (a dense part or an
                  earlier piece)
    index         cb per entry + 2*pb per piece, in SDDMM and again in SpMM
    decoder       Qc, Kc reads Hc*N*d each; its MACs 2*N*d*Hc per head

Cycles of a stage (SDDMM, SpMM; the load stage has the decoder) are the
largest of: the dense engine's array cycles (SCALE-Sim's count of its folds),
the busiest sparse line (entries * ceil(d/8) + 7 for SDDMM, entries *
ceil(dv/8) for SpMM), the decoder (ceil(MACs / (L*8))) and each buffer port:
``ceil(streamed bytes / W) + ceil(gathered rows / a) * ceil(row bytes / W)``,
with W = ``buffer_read_bytes`` and ``a = min(buffer_banks, max(1, W // row
bytes))`` rows per access (one address per bank and cycle: with one bank a
gathered row narrower than the port wastes the rest of it): the engines, the
ports and the decoder overlap, and the slowest sets the stage. HBM transfers overlap the compute too (double
buffering): ``total = max(ceil(HBM bytes / bytes per cycle), sum of stages)``.

On-chip buffers (bytes, checked per buffer before any work; the plan is
refused with :class:`refattn.memory.SramTooSmall` naming the buffer)::

    Q buffer  N*d (+ Hc*N*d codes + 2*H*Hc weights with the auto-encoder)
    K buffer  N*d (+ Hc*N*d codes)
    V buffer  N*dv
    index     idx + mask elements above
    out       N*G + nnz scores, N*dv output accumulator

``state.arrays`` of a stopped run: ``perm`` (N,), ``s_dense`` (N, G) scores
(probabilities after softmax), ``s_sparse`` (nnz,), ``m``, ``l`` (N,),
``o_partial`` (N, dv) accumulator (rows in permuted order), ``line_engine``
(L,) 0 dense / 1 sparse / -1 idle, ``line_entries`` and ``line_cycles`` (L,)
what each MAC line did in this step, ``pieces`` (P, 4) [sparse line, row, e0,
e1] of this head, ``counters`` {field: count} of this step.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from refattn import memory
from refattn.kernels.common import prepare, run_with_trace
from refattn.kernels.contract import KernelResult, Plan, StepState
from refattn.pe_array import DATAFLOWS, DF_CODE, simulate_gemm
from refattn.vitcod.autoencoder import HeadAutoencoder
from refattn.vitcod.hardware import Hardware
from refattn.vitcod.loop import (
    BUFFERS,
    F_DCYC,
    F_DECMAC,
    F_DMAC,
    F_SMAC,
    F_STAGE,
    FIELDS,
    RES_FIELDS,
    RESOURCES,
    SLOT_BUFFER,
    SLOTS,
    ST_LOAD,
    ST_SDDMM,
    ST_SPMM,
    STAGES,
    F,
    run,
)
from refattn.vitcod.reorder import Split, split_mask

__all__ = ["DESIGNS", "F", "FIELDS", "RESOURCES", "SLOTS", "STAGES", "ST_SDDMM", "ST_SPMM", "VitcodResult",
           "buffer_needs", "deal_pieces", "line_split", "vitcod_forward"]
DESIGNS = ("split", "dense", "sparse")


def line_split(dense_work: int, sparse_work: int, lines: int) -> tuple[int, int]:
    """Lines for (denser, sparser) engines in proportion to their MACs (ViTCoD's rule), each >= 1 if it has work."""
    if dense_work <= 0:
        return 0, lines
    if sparse_work <= 0:
        return lines, 0
    ld = int(round(lines * dense_work / (dense_work + sparse_work)))
    ld = min(max(ld, 1), lines - 1)
    return ld, lines - ld


def deal_pieces(row_nnz, indptr, n_lines: int) -> np.ndarray:
    """Cut rows into pieces of at most ceil(nnz / n_lines) entries and deal them, largest first, to the
    least-loaded line (ties: the lower line). Returns (P, 4) int64 [line, row, e0, e1], by line then order."""
    nnz = int(np.sum(row_nnz))
    if nnz == 0:
        return np.zeros((0, 4), np.int64)
    chunk = -(-nnz // n_lines)
    pieces = []
    for i, x in enumerate(row_nnz):
        for e0 in range(int(indptr[i]), int(indptr[i]) + int(x), chunk):
            pieces.append((i, e0, min(e0 + chunk, int(indptr[i]) + int(x))))
    pieces.sort(key=lambda p: (-(p[2] - p[1]), p[0], p[1]))
    heap = [(0, line) for line in range(n_lines)]
    out = []
    for order, (row, e0, e1) in enumerate(pieces):
        load, line = heapq.heappop(heap)
        out.append((line, order, row, e0, e1))
        heapq.heappush(heap, (load + e1 - e0, line))
    out.sort()
    return np.array([(line, row, e0, e1) for line, _, row, e0, e1 in out], np.int64)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def best_dataflow(m: int, n: int, k: int, rows: int, cols: int) -> str:
    """The dataflow with the fewest cycles for ``(m x k) @ (k x n)`` (ties: os, ws, is)."""
    return min(DATAFLOWS, key=lambda df: simulate_gemm(m, n, k, rows=rows, cols=cols, dataflow=df).cycles)


# ---------------------------------------------------------------------------
# Python: the plan, the run, the result
# ---------------------------------------------------------------------------
@dataclass
class VitcodResult(KernelResult):
    """A :class:`~refattn.kernels.contract.KernelResult` with the engine counters.

    ``counters``: int64 (heads, 5 steps, len(FIELDS)) as counted by the loop;
    ``cycles``: totals (see :func:`summarise`); ``hw``: the hardware;
    ``peak_buffers``: the peak bytes each buffer held (its slots' occupancy, counted at
    the end of every step), never more than the buffer (the plan refuses that).
    """

    counters: np.ndarray | None = None
    hw: Hardware | None = None
    peak_buffers: dict | None = None

    def counter(self, name: str, stage: str | None = None) -> int:
        """Sum of counter ``name`` over heads (and over steps, or one step by name)."""
        c = self.counters[:, :, F[name]]
        return int(c.sum() if stage is None else c[:, STAGES.index(stage)].sum())


def _design_split(sp: Split, design: str) -> Split:
    if design == "split":
        return sp
    mask = sp.mask()
    n = sp.n
    ident = np.arange(n, dtype=np.int64)
    if design == "dense":
        return Split(n, ident, ident, n, mask.copy(), np.zeros(n + 1, np.int64), np.zeros(0, np.int64))
    indptr = np.zeros(n + 1, np.int64)
    indptr[1:] = np.cumsum(mask.sum(axis=1))
    return Split(n, ident, ident, 0, np.zeros((n, 0), bool), indptr, np.nonzero(mask)[1].astype(np.int64))


def _splits(split, nb: int, n: int, lead: tuple, threshold) -> list:
    if isinstance(split, Split):
        sps = [split] * nb
    elif isinstance(split, (list, tuple)) and all(isinstance(s, Split) for s in split):
        if len(split) != nb:
            raise ValueError(f"vitcod_forward: {len(split)} splits given for {nb} heads")
        sps = list(split)
    else:
        mask = np.asarray(split)
        if mask.dtype != np.bool_:
            raise TypeError(f"vitcod_forward: split must be a Split, a list of Splits or a bool keep-mask, "
                            f"got {type(split).__name__} of dtype {mask.dtype}")
        try:
            mask = np.broadcast_to(mask, lead + (n, n)).reshape(nb, n, n)
        except ValueError:
            raise ValueError(f"vitcod_forward: mask of shape {mask.shape} does not fit heads {lead} x ({n}, {n})") \
                from None
        sps = [split_mask(mk, threshold) for mk in mask]
    for s in sps:
        if s.n != n:
            raise ValueError(f"vitcod_forward: a split is for N = {s.n} tokens, q has N = {n}")
    return sps


def buffer_needs(n, d, dv, g, nnz, hw: Hardware, hc: int = 0, heads: int = 0) -> dict:
    """Bytes each buffer must hold for one head (module docstring)."""
    db = hw.data_bytes
    cb = hw.column_index_bytes(n)
    idx = (nnz * cb + (n + 1) * hw.row_pointer_bytes) if nnz else 0
    mask = n * -(-g // 8) if g else 0
    return {"Q": (n * d + hc * n * d + 2 * heads * hc) * db, "K": (n * d + hc * n * d) * db, "V": n * dv * db,
            "index": idx + mask, "out": (n * g + nnz + n * dv) * db}


def vitcod_forward(q, k, v, split, *, hw: Hardware | None = None, design: str = "split",
                   autoencoder: HeadAutoencoder | None = None, threshold: int | None = None, scale=None,
                   trace: bool = False, stop_after: int | None = None, count_only: bool = False) -> VitcodResult:
    """ViTCoD's split attention on the simulated accelerator (see the module docstring).

    ``q, k``: (..., N, d), ``v``: (..., N, dv), self-attention (equal N).
    ``split``: a bool keep-mask (..., N, N) (True = kept; split per head with
    ``threshold``, :func:`refattn.vitcod.reorder.split_mask`), one
    :class:`~refattn.vitcod.reorder.Split` for every head, or a list of one
    per flattened head. ``design``: "split", "dense" or "sparse" (module
    docstring). ``autoencoder``: a :class:`~refattn.vitcod.autoencoder.HeadAutoencoder`
    over the head axis (axis -3 of q, k): Q and K reach the chip as its codes
    and are decoded there; the output is then attention on the decoded Q, K.
    ``count_only``: the same loop and counts without the arithmetic (no outputs).
    Returns a :class:`VitcodResult` with ``o`` (..., N, dv) in the input dtype.
    """
    hw = hw or Hardware()
    if not isinstance(hw, Hardware):
        raise TypeError(f"vitcod_forward: hw must be a refattn.vitcod.Hardware, got {type(hw).__name__}")
    if design not in DESIGNS:
        raise ValueError(f"vitcod_forward: design must be one of {DESIGNS}, got {design!r}")
    p = prepare(q, k, v, scale=scale, where="vitcod_forward")
    nb, n, d, dv = p.batch, p.nq, p.d, p.dv
    if p.nk != n:
        raise ValueError(f"vitcod_forward: self-attention only, q has N = {n} rows and k has {p.nk}")
    n_ae, hc = 0, 0
    if autoencoder is not None:
        if not isinstance(autoencoder, HeadAutoencoder):
            raise TypeError("vitcod_forward: autoencoder must be a refattn.vitcod.HeadAutoencoder")
        n_ae, hc = autoencoder.heads, autoencoder.bottleneck
        if len(p.lead) < 1 or p.lead[-1] != n_ae:
            raise ValueError(f"vitcod_forward: the auto-encoder is for H = {n_ae} heads on axis -3 of q and k, "
                             f"got leading shape {p.lead}")
    sps = [_design_split(s, design) for s in _splits(split, nb, n, p.lead, threshold)]

    # ---- the plan: line split, pieces, dense dataflows, buffers ----------------------------------------
    L, mpl = hw.lines, hw.macs_per_line
    g_arr = np.array([s.g for s in sps], np.int64)
    nnz_arr = np.array([s.nnz for s in sps], np.int64)
    ld_arr, ls_arr = np.zeros(nb, np.int64), np.zeros(nb, np.int64)
    df_arr = np.zeros((nb, 2), np.int64)
    piece_list = []
    for b, s in enumerate(sps):
        ld, ls = line_split(n * s.g * (d + dv), s.nnz * (d + dv), L)
        ld_arr[b], ls_arr[b] = ld, ls
        if s.g:
            df_arr[b] = (DF_CODE[best_dataflow(n, s.g, d, mpl, ld)], DF_CODE[best_dataflow(n, dv, s.g, mpl, ld)])
        piece_list.append(deal_pieces(s.row_nnz, s.indptr, ls) if s.nnz else np.zeros((0, 4), np.int64))
    piece_off = np.zeros(nb + 1, np.int64)
    piece_off[1:] = np.cumsum([len(x) for x in piece_list])
    pieces = np.concatenate(piece_list) if piece_off[-1] else np.zeros((0, 4), np.int64)
    idx_off = np.zeros(nb + 1, np.int64)
    idx_off[1:] = np.cumsum(nnz_arr)
    indices = np.concatenate([s.indices for s in sps]).astype(np.int64) if idx_off[-1] else np.zeros(0, np.int64)
    indptr = np.stack([s.indptr for s in sps]).astype(np.int64)
    perm = np.stack([s.perm for s in sps]).astype(np.int64)
    gmax = int(g_arr.max())
    dmask = np.zeros((nb, n, max(gmax, 1)), np.bool_)
    for b, s in enumerate(sps):
        dmask[b, :, : s.g] = s.dense_mask

    db = hw.data_bytes
    cb, pb = hw.column_index_bytes(n), hw.row_pointer_bytes
    needs = []
    for b, s in enumerate(sps):
        need = buffer_needs(n, d, dv, s.g, s.nnz, hw, hc, n_ae)
        for name, cap in hw.buffers().items():
            if need[name] > cap:
                raise memory.SramTooSmall(
                    f"vitcod_forward: the {name} buffer holds {cap} bytes, but head {b} needs {need[name]} "
                    f"(N = {n}, d = {d}, dv = {dv}, G = {s.g}, nnz = {s.nnz}); this model does not tile a head "
                    f"across buffer refills")
        needs.append(need)
    # elements (of data_bytes) of the index lists and of the dense-part mask, per head; then the per-entry
    # and per-piece index elements (column id, row pointer) the engine reads
    idx_elems = np.array([-(-(s.nnz * cb + (n + 1) * pb) // db) if s.nnz else 0 for s in sps] + [pb, cb],
                         np.int64)
    mask_elems = np.array([n * -(-_cdiv(s.g, 8) // db) for s in sps], np.int64)  # N rows of ceil(G/8) bytes
    footprint = {
        "Q": n * d, "Qc": hc * n * d, "K": n * d, "Kc": hc * n * d, "V": n * dv,
        "idx": int(idx_elems[:nb].max()), "mask": int(mask_elems.max()),
        "S": int(max(n * s.g + s.nnz for s in sps)), "O": n * dv, "AE": 2 * n_ae * hc,
    }
    capacity = sum(hw.buffers().values()) // db
    n_steps = len(STAGES) * nb
    plan = Plan(
        kernel=f"vitcod_forward/{design}",
        blocks={"lines": L, "macs_per_line": mpl, "read_width": hw.buffer_read_bytes},
        tiles={"heads": nb, "steps_per_head": len(STAGES)}, footprint={k_: v_ for k_, v_ in footprint.items() if v_},
        M=capacity, n_steps=n_steps,
        step="one stage of one head: load (+ decode), SDDMM, softmax, SpMM, store",
        details={
            "design": design, "autoencoder": (n_ae, hc) if n_ae else None,
            "heads": [{"g": int(s.g), "nnz": int(s.nnz), "dense_lines": int(ld_arr[b]),
                       "sparse_lines": int(ls_arr[b]), "pieces": int(piece_off[b + 1] - piece_off[b]),
                       "dense_array": (mpl, int(ld_arr[b])),
                       "dense_sddmm": (n, int(s.g), d, DATAFLOWS[df_arr[b, 0]]) if s.g else None,
                       "dense_spmm": (n, dv, int(s.g), DATAFLOWS[df_arr[b, 1]]) if s.g else None,
                       "buffers": needs[b]}
                      for b, s in enumerate(sps)],
            "buffers": hw.buffers(),
        },
    )
    plan.require_fits(f"vitcod_forward ({design})")
    plan.check_stop_after(stop_after)

    # ---- the run --------------------------------------------------------------------------------------
    dt = p.q.dtype
    sc = dt.type(p.scale)
    compute = not count_only
    if n_ae:
        grp = nb // n_ae
        q4 = p.q.reshape(grp, n_ae, n, d).astype(np.float64)
        k4 = p.k.reshape(grp, n_ae, n, d).astype(np.float64)
        codes_q = np.einsum("ch,ghnd->gcnd", autoencoder.encoder, q4).astype(dt)  # written by the producer
        codes_k = np.einsum("ch,ghnd->gcnd", autoencoder.encoder, k4).astype(dt)
        dec = autoencoder.decoder.astype(dt)
    else:
        codes_q = codes_k = np.zeros((1, 1, 1, 1), dt)
        dec = np.zeros((1, 1), dt)
    nnz_max = max(int(nnz_arr.max()), 1)
    # count-only runs allocate no N x dv output (docs/contract.md); the rest are the on-chip buffers
    work = dict(o=np.zeros((nb, n, dv) if compute else (1, 1, 1), dt), qp=np.zeros((n, d), dt), kp=np.zeros((n, d), dt),
                vp=np.zeros((n, dv), dt), kgt=np.zeros((d, max(gmax, 1)), dt), sd=np.zeros((n, max(gmax, 1)), dt),
                ss=np.zeros(nnz_max, dt), m_=np.full(n, -np.inf, dt), l_=np.zeros(n, dt), acc=np.zeros((n, dv), dt),
                o_rows=np.zeros((n, dv), dt), lse_rows=np.zeros(n, dt))
    hw_i = np.array([L, mpl, hw.buffer_read_bytes, db, hw.sparse_reduction_latency, hw.buffer_banks], np.int64)
    stepped = stop_after is not None
    traced = bool(trace) or stepped  # stepping always records the trace (docs/contract.md)
    sram = memory.Sram(capacity, db)
    buf_of_slot = np.full(memory.N_SLOTS, -1, np.int64)
    for i, name in enumerate(SLOTS):
        buf_of_slot[i] = BUFFERS.index(SLOT_BUFFER[name])
    box = {}

    def call(mem):
        ctr = np.zeros((nb, len(STAGES), len(FIELDS)), np.int64)
        line_busy, line_entries = np.zeros(L, np.int64), np.zeros(L, np.int64)
        st_info = np.zeros(2, np.int64)
        buf_peak = np.zeros(len(BUFFERS), np.int64)
        for x in work.values():
            x.fill(0)
        run(mem, ctr, p.q, p.k, p.v, codes_q, codes_k, dec, n_ae, sc, compute, perm, g_arr, dmask, indptr,
             indices, idx_off, pieces, piece_off, ld_arr, df_arr, hw_i, idx_elems, mask_elems, work["o"], work["qp"],
             work["kp"], work["vp"], work["kgt"], work["sd"], work["ss"], work["m_"], work["l_"], work["acc"],
             work["o_rows"], work["lse_rows"], line_busy, line_entries, np.zeros(n, np.bool_), buf_of_slot, buf_peak,
             st_info)
        box.update(ctr=ctr, line_busy=line_busy, line_entries=line_entries, st_info=st_info, buf_peak=buf_peak)

    mem = run_with_trace(call, sram, trace=traced, trace_estimate=nb * 20 + 8, stop_after=stop_after)
    ctr = box["ctr"]
    peak = int(mem.sram[1])
    assert peak <= capacity, "vitcod_forward exceeded its buffers: a kernel bug"
    traffic = memory.Traffic.from_counts(mem.counts, db)
    trace_obj = memory.make_trace(mem, SLOTS) if traced else None
    stopped = bool(stepped and mem.cursor[1] == mem.cursor[2])
    outputs = {} if count_only else {"o": p.restore(work["o"])}
    result = VitcodResult(
        outputs=outputs, traffic=traffic, peak_sram=peak, sram=sram, flops=int(mem.ops[memory.OP_FLOPS]),
        exps=int(mem.ops[memory.OP_EXP]), n_steps=int(mem.cursor[1]), plan=plan, trace=trace_obj, stopped=stopped,
        counters=ctr, hw=hw, peak_buffers={name: int(x) * db for name, x in zip(BUFFERS, box["buf_peak"])},
    )
    result.cycles = summarise(ctr, traffic, hw, ld_arr, ls_arr)
    if stopped:
        result.state = _state(int(stop_after), box["st_info"], sps, piece_list, ld_arr, ls_arr, work,
                              box["line_busy"], box["line_entries"], ctr, trace_obj, traffic)
    return result


def _state(step, st_info, sps, piece_list, ld_arr, ls_arr, work, line_busy, line_entries, ctr, trace, traffic):
    """The StepState after ``step``: what each engine and MAC line did in it (module docstring)."""
    b, stage = int(st_info[0]), int(st_info[1])
    s = sps[b]
    n, g, nnz = s.n, s.g, s.nnz
    eng = np.full(len(line_busy), -1, np.int64)
    eng[: ld_arr[b]] = 0
    eng[ld_arr[b]: ld_arr[b] + ls_arr[b]] = 1
    row = ctr[b, stage]
    busy = line_busy.copy()
    if stage in (ST_SDDMM, ST_SPMM) and g:  # the dense lines are the array's columns: busy for its cycles
        busy[: ld_arr[b]] = row[F_DCYC]
    arrays = {
        "perm": s.perm.copy(), "s_dense": work["sd"][:, :g].copy(), "s_sparse": work["ss"][:nnz].copy(),
        "m": work["m_"].copy(), "l": work["l_"].copy(), "o_partial": work["acc"].copy(),
        "line_engine": eng, "line_entries": line_entries.copy(), "line_cycles": busy,
        "pieces": piece_list[b].copy(), "counters": {name: int(row[i]) for i, name in enumerate(FIELDS)},
    }
    return StepState(step=step, phase=STAGES[stage], head=b, rows=(0, n), cols=(0, n), sram=trace.sram_at(step),
                     traffic=traffic, arrays=arrays)


def summarise(ctr, traffic: memory.Traffic, hw: Hardware, ld_arr, ls_arr) -> dict:
    """Totals from the loop's counters: cycles per stage, HBM cycles, bound, utilisation per engine."""
    stage = ctr[:, :, F_STAGE]
    compute = int(stage.sum())
    hbm = hw.transfer_cycles(traffic.total * hw.data_bytes)
    # which resource set each (head, stage)'s cycles
    res = np.array(RES_FIELDS)
    bound_cycles = dict.fromkeys(RESOURCES, 0)
    for b in range(ctr.shape[0]):
        for st in range(ctr.shape[1]):
            if stage[b, st]:
                which = RESOURCES[int(np.argmax(ctr[b, st, res]))]
                bound_cycles[which] += int(stage[b, st])
    engine_cyc = sum(v for k_, v in bound_cycles.items() if k_ in ("dense engine", "sparse engine", "decoder"))
    buffer_cyc = compute - engine_cyc
    if hbm > compute:
        bound = "memory"
    else:
        bound = "buffer" if buffer_cyc > engine_cyc else "compute"
    mm = slice(ST_SDDMM, ST_SPMM + 1)
    cyc_mm = ctr[:, mm, F_STAGE].sum(axis=1)  # per head
    mpl = hw.macs_per_line
    util = {}
    for name, f, lines in (("dense", F_DMAC, ld_arr), ("sparse", F_SMAC, ls_arr)):
        cap = int((lines * mpl * cyc_mm).sum())
        util[name] = int(ctr[:, :, f].sum()) / cap if cap else 0.0
    macs = int(ctr[:, :, F_DMAC].sum() + ctr[:, :, F_SMAC].sum() + ctr[:, :, F_DECMAC].sum())
    util["all"] = macs / (hw.macs * compute) if compute else 0.0
    return {
        "total": max(hbm, compute), "hbm": hbm, "compute": compute,
        "decode": int(ctr[:, ST_LOAD, F_STAGE].sum()), "sddmm": int(ctr[:, ST_SDDMM, F_STAGE].sum()),
        "spmm": int(ctr[:, ST_SPMM, F_STAGE].sum()), "bound": bound, "bound_cycles": bound_cycles,
        "utilization": util, "macs": macs,
    }
