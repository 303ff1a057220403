"""FlashAttention forward on the simulated SRAM/HBM hierarchy: FA1 and FA2 loop orders.

Both variants compute exact attention tile by tile, never forming the (Nq, Nk)
score matrix in HBM. Every transfer goes through :mod:`refattn.memory`, so the
counts below are produced by the loops themselves; ``tests/kernels`` checks
them against these closed forms exactly.

Notation (per head): ``Nq, Nk`` rows of q and k, ``d`` head dim of q/k, ``dv``
of v; blocks ``Br`` (query rows) x ``Bc`` (key columns); ``Tr = ceil(Nq/Br)``,
``Tc = ceil(Nk/Bc)``; the last block of each may be partial. Query block i is
rows ``[i*Br, min((i+1)*Br, Nq))`` (``br_i`` rows); key block j likewise.

FA1 (FlashAttention, Algorithm 1; outer loop over key blocks)::

    init:  O = 0, l = 0, m = -inf written to HBM                        (line 2)
    for j in 0..Tc-1:                                                   (line 5)
        load K_j, V_j (at the first visible tile of column j)           (line 6)
        for i in 0..Tr-1:                                               (line 7)
            load Q_i, O_i, l_i, m_i                                     (line 8)
            S = scale * Q_i K_j^T                   (Br x Bc, on chip)  (line 9)
            m~ = rowmax(S); P~ = exp(S - m~); l~ = rowsum(P~)           (line 10)
            m_new = max(m_i, m~); l_new = e^(m_i-m_new) l_i + e^(m~-m_new) l~   (line 11)
            O_i = diag(l_new)^-1 (diag(l_i) e^(m_i-m_new) O_i + e^(m~-m_new) P~ V_j)  (line 12)
            write O_i, l_i = l_new, m_i = m_new to HBM                  (lines 12-13)
    finalise: for each i: load l_i, m_i, write L_i = m_i + log(l_i)   (for the backward)

FA2 (FlashAttention-2, Algorithm 1; outer loop over query blocks)::

    for i in 0..Tr-1:
        load Q_i (at its first visible tile); O~ = 0, l = 0, m = -inf on chip
        for j in 0..Tc-1:
            load K_j, V_j
            S = scale * Q_i K_j^T; m_new = max(m, rowmax(S))
            P~ = exp(S - m_new); l = e^(m - m_new) l + rowsum(P~)
            O~ = e^(m - m_new) O~ + P~ V_j        (the factor is NOT inverted: paper erratum)
            m = m_new
        O_i = O~ / l; L_i = m + log(l); write O_i, L_i to HBM

Masks. ``causal`` is bottom-right aligned by default (key c visible to query r
iff ``c <= r + off``, ``off = Nk - Nq``; ``"top_left"``: ``off = 0``). A tile
whose first key column lies beyond the last row's horizon (``c0 > r1 - 1 + off``)
is *skipped*: no loads, no compute, one ``skip`` event. Tiles crossing the
diagonal are masked element-wise on chip. An optional boolean ``mask`` (True =
keep) is read tile by tile from HBM (tensor ``mask``) for every visited tile.
Masked scores are -inf; a row whose running max is -inf uses 0 as the shift
(docs/design.md), so a fully masked row gives O = 0 and L = -inf, never NaN.

Variants (docs/variants.md; refattn/kernels/variant_args.py). A sliding
``window=(left, right)`` and causal masking together make a *band*: key c is
visible to query r iff ``r + lo <= c <= r + off``, with ``off`` the smallest of
the causal offset and ``Nk - Nq + right``, and ``lo = Nk - Nq - left`` (each
edge only when bounded). Tiles wholly outside the band are skipped (a ``skip``
event in the trace, nothing loaded), tiles crossing an edge are masked
element-wise, tiles inside it are not masked at all. ``softcap`` and
``alibi_slopes`` change the score tile only (cap, then bias, then masks).
GQA (``num_kv_heads``, ``G = Hq / Hkv`` query heads per KV head): query head b
reads KV head ``b // G`` from an HBM array of ``Hkv`` heads. FA1 runs the G
query heads of a group inside its key-block loop, so K_j and V_j are read once
per KV head; FA2 keeps the paper's loop, whose on-chip state is one query
head's row block, so it reads K_j and V_j once per query head and query block
(reading them once per group would need the G heads' Q_i, O_i, m, l on chip
together, G times the footprint: FlashAttention-3's packed-GQA layout, not
modelled here).

Variable-length (packed) batches (``cu_seqlens_q``, ``cu_seqlens_k``; docs/variants.md),
as FlashAttention's varlen kernels do them: the loops walk a *tile layout*
(refattn/kernels/variant_args.py), the same tables for every problem. A
rectangular problem is one segment ``[0, Nq) x [0, Nk)``; a packed batch has one
segment per sequence b, query rows ``[cu_q[b], cu_q[b+1])`` against key rows
``[cu_k[b], cu_k[b+1])``, then the padding queries (rows after ``cu_q[-1]``, no
keys) and the padding keys (after ``cu_k[-1]``, no queries). Row and key blocks
are cut per segment (each segment's last block may be partial), so no tile
crosses a sequence boundary and the keys of another sequence are never loaded;
causal, the window and ALiBi use the sequence's own ``Nq_b``, ``Nk_b``. The
order is that of the segments: FA2 runs head by head, segment by segment, the
row blocks of a segment against its key blocks; FA1 runs, per KV head, each
segment's key blocks against that segment's row blocks. A row block whose
segment has no keys (an empty sequence's queries, the padding rows) is one step
with one empty tile, skipped (a ``skip`` event with ``c0 = c1``), in which FA2
writes O = 0 and L = -inf; FA1 writes them in its init and finalise steps, like
every row. So the outputs of padding rows are 0 and -inf, written by the kernel.

Precision: m, l and the accumulator are kept in the input dtype (float32 or
float64). Outputs: ``o`` (..., Nq, dv) and ``lse`` (..., Nq), both in the
**input dtype** (natural log).

Block sizes (``block=None``). FA1 follows the paper: ``Bc = ceil(M/(4d))``,
``Br = min(ceil(M/(4d)), d)``. FA2 swaps the roles, because its outer loop is
over query blocks and its traffic falls with Br: ``Br = ceil(M/(4d))``,
``Bc = min(ceil(M/(4d)), d)``. Then each block is clipped to its N, and while
the on-chip footprint (below) exceeds M the larger block is halved (rounding
up; the inner-loop block on ties). If even Br = Bc = 1 does not fit, or an
explicit ``block`` does not fit, :class:`refattn.memory.SramTooSmall` is raised.
Explicit blocks larger than N are clipped to N. In a packed batch N is the
longest segment's (``max_s Nq_s``, ``max_s Nk_s``), and the plan's ``Tr``, ``Tc``
count the row and key blocks of all segments (``sum_s Tr_s``, ``sum_s Tc_s``).

On-chip footprint (slots ``SLOTS``; P overwrites S in place in slot ``S_ij``,
P~V_j accumulates into O_i as a matrix unit would; per-row scalars such as
m~, l~ and the rescale factors live in registers and are not counted)::

    F = Br*d (Q_i) + Bc*d (K_j) + Bc*dv (V_j) + Br*Bc (S_ij) + Br*dv (O_i)
        + 2*Br (m_i, l_i) [+ Br*Bc (mask_ij) with a mask]

(L_i overwrites m_i on chip before it is written.)

Steps (numbered 1..n_steps; what ``stop_after`` and the trace count; docs/contract.md):

* FA2 (phase "main"): one step per (query block i, key block j) tile, i outer,
  j inner, heads one after another: ``n_steps = B*Tr*Tc``; for a packed batch
  ``B * sum_s Tr_s * max(Tc_s, 1)`` over the segments s (``Tr_s``, ``Tc_s``
  their row and key blocks; a segment without keys has one empty tile per row block). A skipped tile is a
  step with one ``skip`` event. The load of Q_i belongs to the step of its
  first visible tile; the final write of O_i and L_i belongs to the step of
  tile (i, Tc-1).
* FA1: per KV head, one initialisation step for its G query heads (phase
  "init"), then one step per tile (j outer, then the group's query heads, then
  i; "main"), then one finalise step ("finalise"):
  ``n_steps = (B/G)*(G*Tr*Tc + 2)`` (``B*(Tr*Tc + 2)`` without GQA); for a
  packed batch ``(B/G)*(G * sum_s Tr_s*Tc_s + 2)``. K_j and
  V_j are released in the step of the group's last tile of column j.

``result.state.arrays`` of a stopped run: ``m``, ``l`` (the rows' running max
and sum), ``o_partial`` (FA2: the unnormalised accumulator O~, or O_i once the
row block is finalised; FA1: O_i as it stands in HBM) and ``o_normalised``.

HBM traffic closed forms (per head; ``B`` query heads multiply every term,
except the K and V reads of FA1, which ``B/G`` KV heads multiply). The key
blocks visible to query block i (rows ``[r0_i, r1_i)``) form a contiguous range
``a_i <= j < b_i`` (the band is a diagonal strip):
``a_i = floor(max(r0_i + lo, 0)/Bc)`` (0 without a left edge) and
``b_i = clip(floor((r1_i - 1 + off)/Bc) + 1, 0, Tc)`` (``Tc`` without an upper
edge); ``J_i = max(b_i - a_i, 0)`` tiles. Without a window ``a_i = 0``: the
prefix ``j < J_i`` of the causal case. Then

    R  = sum_i br_i * J_i                 (tile-rows visited)
    C  = sum_i cols_i,  cols_i = min(b_i*Bc, Nk) - a_i*Bc  (0 if J_i = 0)   (tile-columns visited)
    A  = sum_i br_i * cols_i              (tile area visited)
    Qr = sum_{i: J_i > 0} br_i            (query rows with any visible tile)
    Kc = key rows in the union of the ranges [a_i*Bc, min(b_i*Bc, Nk))   (any visible tile)

    FA2:  Q reads d*Qr;  K reads d*C;  V reads dv*C;  O writes Nq*dv;  L writes Nq;
          mask reads A (with a mask).
          No causal, no mask: Nq*d + Tr*Nk*(d + dv) + Nq*dv + Nq  (docs/algorithms.md).
    FA1:  K reads d*Kc;  V reads dv*Kc (per KV head);  Q reads d*R;
          O reads dv*R, O writes Nq*dv + dv*R;  l reads R + Nq, l writes Nq + R;
          m reads R + Nq, m writes Nq + R;  L writes Nq;  mask reads A.
          No causal: Nk*(d + dv) + Tc*Nq*(d + 2*dv + 4) + Nq*(dv + 5).

Packed batches: the same closed forms, with ``Nq``, ``Nk`` the packed totals
(padding included) and R, C, A, Qr, Kc summed over the sequences, each
sequence's terms being those of the rectangular problem ``(Nq_b, Nk_b)`` alone
(its band, its blocks cut from ``cu_q[b]`` and ``cu_k[b]``). Padding query rows
and the queries of a sequence without keys visit no tile: they cost only their
share of the ``Nq`` terms (FA2: ``O`` writes ``dv``, ``L`` writes 1 per row;
FA1: ``O`` writes ``dv``, ``l`` and ``m`` a read and a write each, ``L`` a write).
Padding keys cost nothing in the forward. So, without causal, window or mask,
FA2 reads ``sum_b (Nq_b*d + Tr_b*Nk_b*(d + dv))`` and writes ``Nq*(dv + 1)``.

A window of w = left + right + 1 keys makes J_i about (Br + w)/Bc + 1 instead
of Tc: FA2's K and V traffic falls from Tr*Nk*(d + dv) to about
Nq*(1 + (w + Bc)/Br)*(d + dv), independent of Nk.

FLOPs: 2*br*bc*(d + dv) per visited tile; exponentials br*bc + br (FA2) or
br*bc + 2*br (FA1) per visited tile (the softcap's tanh and the ALiBi bias are
not counted).
"""

from __future__ import annotations

import numba
import numpy as np

from refattn import memory
from refattn.kernels.common import (
    balanced_order,
    close_step,
    enter_tile,
    finalise_rows,
    finish,
    load_kv_once,
    new_tasks,
    online_update,
    plan_blocks,
    readonly,
    reduce_tasks,
    run_with_trace,
    score_tile,
    step_state,
    stop_here,
    task_mem,
    warn_if_costly,
)
from refattn.kernels.contract import Plan
from refattn.kernels.variant_args import block_counts, prepare_variants
from refattn.memory import (
    T_K,
    T_L,
    T_LSUM,
    T_M,
    T_MASK,
    T_O,
    T_P,
    T_Q,
    T_S,
    T_V,
    count_flops,
    free_all,
    hold,
    load,
    set_head,
    store,
)

__all__ = ["flash_forward", "SLOTS", "VARIANTS", "forward_footprint", "forward_plan"]

VARIANTS = ("fa1", "fa2")
SLOTS = ("Q_i", "K_j", "V_j", "S_ij", "O_i", "m_i", "l_i", "mask_ij")
S_Q, S_K, S_V, S_S, S_O, S_M, S_L, S_MASK = range(len(SLOTS))
FA1_PHASES = ("init", "main", "finalise")
FA2_PHASES = ("main",)

#: Untraced full (not count-only) FA2 runs with at least this much work (B*Nq*Nk*(d+dv)) and two or more
#: (head, query block) tasks use the parallel driver; smaller ones the serial one.
#: Both run the same ``_fa2_row``; tests prove they agree bit for bit.
PARALLEL_MIN_WORK = 1 << 22


# ---------------------------------------------------------------------------
# Plan: block sizes and on-chip footprint (Python, before any work starts)
# ---------------------------------------------------------------------------
def slot_footprint(br: int, bc: int, d: int, dv: int, has_mask: bool) -> dict:
    """{slot: elements} on chip at the peak of one tile (see module docstring)."""
    return {"Q_i": br * d, "K_j": bc * d, "V_j": bc * dv, "S_ij": br * bc, "O_i": br * dv, "m_i": br, "l_i": br,
            "mask_ij": br * bc if has_mask else 0}


def forward_footprint(br: int, bc: int, d: int, dv: int, has_mask: bool) -> int:
    """Elements on chip at the peak of one tile (the sum of :func:`slot_footprint`)."""
    return sum(slot_footprint(br, bc, d, dv, has_mask).values())


def forward_plan(nb, nq, nk, d, dv, sram, *, variant="fa2", has_mask=False, causal=None, block=None, group=1,
                 variants=None, seqlens=None) -> Plan:
    """The :class:`Plan` of one forward run (block sizes by the rule of the module docstring).

    ``group``: query heads per KV head (GQA); ``variants``: recorded in ``details``; ``seqlens``:
    ``[(Nq_s, Nk_s)]`` of the segments of a packed batch (refattn/kernels/variant_args.py; None: one
    segment ``(Nq, Nk)``): blocks are clipped to the longest, and ``Tr``, ``Tc`` count the blocks of all."""
    seqlens = [(nq, nk)] if seqlens is None else seqlens
    bq, bk = plan_blocks(max(max(a for a, _ in seqlens), 1), max(max(b for _, b in seqlens), 1), d, dv, sram,
                         rule="kv_outer" if variant == "fa1" else "q_outer",
                         footprint=lambda br, bc: forward_footprint(br, bc, d, dv, has_mask), block=block,
                         what=f"flash_forward ({variant}{', with mask' if has_mask else ''})")
    trs, tcs = block_counts(seqlens, bq, bk)
    tr, tc = sum(trs), sum(tcs)
    if variant == "fa2":
        n_steps = nb * sum(a * max(b, 1) for a, b in zip(trs, tcs))
        step = "one (query block i, key block j) tile; i outer, j inner, heads in turn"
    else:
        n_steps = nb // group * (group * sum(a * b for a, b in zip(trs, tcs)) + 2)
        step = ("per KV head: the initialisation of its query heads, one (key block j, query head, query block i) "
                "tile each (j outer), the finalisation")
    return Plan(kernel=f"flash_forward/{variant}", blocks={"Br": bq, "Bc": bk}, tiles={"Tr": tr, "Tc": tc},
                footprint=slot_footprint(bq, bk, d, dv, has_mask), M=sram.capacity, n_steps=n_steps, step=step,
                details={"variant": variant, "causal": causal or "none", "masked": has_mask, "heads": nb,
                         **(variants or {})})


# ---------------------------------------------------------------------------
# FA2: one query block (all its tiles); the serial and parallel drivers share it
# ---------------------------------------------------------------------------
@numba.njit(cache=True)
def _fa2_row(mem, dims, b, t, q, k, v, mask, has_mask, scale, tiles, vt, bq, bk, o, lse, st_m, st_l, st_o,
             info, compute):
    """Row block ``rblocks[t]`` of query head b against the key blocks of its segment (the tile layout:
    refattn/kernels/variant_args.py). A segment without keys has one empty tile, skipped, so the block
    is still finalised (O = 0, L = -inf) in a step of its own."""
    nb, nq, nk, d, dv = dims
    group, softcap, slopes = vt[0], vt[3], vt[4]  # variants (refattn/kernels/variant_args.py)
    seqs, rblocks, cblocks = tiles
    h = b // group  # the KV head of query head b
    s, r0, r1 = rblocks[t, 0], rblocks[t, 1], rblocks[t, 2]
    causal, off, lo, aoff = seqs[s, 4], seqs[s, 5], seqs[s, 6], seqs[s, 7]
    cb0, cb1 = seqs[s, 10], seqs[s, 11]
    tc = max(cb1 - cb0, 1)  # (an empty segment: one empty tile)
    br = r1 - r0
    set_head(mem, b)
    nbr = br if compute else 0  # count-only runs keep no arrays
    acc = np.zeros((nbr, dv), q.dtype)  # (br, dv) unnormalised O~
    m = np.full(nbr, -np.inf, q.dtype)  # (br,) running max
    l = np.zeros(nbr, q.dtype)  # (br,) running sum
    s_buf = np.empty(nbr * bk, q.dtype)  # the S^T / P~^T tile
    work = np.empty((4, nbr), q.dtype)
    pv = np.empty((nbr, dv), q.dtype)
    cols = np.empty(bk, np.int64)
    hold(mem, T_O, S_O, r0, r1, 0, dv)
    hold(mem, T_M, S_M, r0, r1, 0, 1)
    hold(mem, T_LSUM, S_L, r0, r1, 0, 1)
    q_loaded = False
    for j in range(tc):
        c0 = c1 = seqs[s, 2]
        if cb1 > cb0:
            c0, c1 = cblocks[cb0 + j, 1], cblocks[cb0 + j, 2]
        bc = c1 - c0
        vis = enter_tile(mem, r0, r1, c0, c1, causal, off, lo)
        if vis != 0:
            if not q_loaded:
                load(mem, T_Q, S_Q, r0, r1, 0, d)
                q_loaded = True
            load(mem, T_K, S_K, c0, c1, 0, d)
            load(mem, T_V, S_V, c0, c1, 0, dv)
            if has_mask:
                load(mem, T_MASK, S_MASK, r0, r1, c0, c1)
            hold(mem, T_S, S_S, r0, r1, c0, c1)
            if compute:
                for u in range(bc):
                    cols[u] = c0 + u
                st, eff = score_tile(q[b, r0:r1], k[h, c0:c1], bc, s_buf, scale, r0, cols, vis == 2, off,
                                     mask, has_mask, b, lo, softcap, slopes[b], aoff)
                online_update(st, v[h, c0:c1], eff, m, l, acc, work, pv)
            hold(mem, T_P, S_S, r0, r1, c0, c1)  # P~ overwrites S
            count_flops(mem, 2 * br * bc * (d + dv), br * bc + br)
        if j == tc - 1:  # finalise query block i: O_i = O~ / l, L_i = m + log l
            if compute:
                finalise_rows(acc, m, l, o[b, r0:r1], lse[b, r0:r1])
            hold(mem, T_L, S_M, r0, r1, 0, 1)  # L overwrites m on chip
            store(mem, T_O, S_O, r0, r1, 0, dv)
            store(mem, T_L, S_M, r0, r1, 0, 1)
            free_all(mem)
        if stop_here(mem, info, 0, b, r0, r1, c0, c1):
            if compute:
                st_m[:br] = m
                st_l[:br] = l
                if j == tc - 1:
                    st_o[:br] = o[b, r0:r1]
                else:
                    st_o[:br] = acc
            return True
    return False


@numba.njit(cache=True)
def _fa2_serial(mem, dims, q, k, v, mask, has_mask, scale, tiles, vt, bq, bk, o, lse, st_m, st_l, st_o, info,
                compute):
    nb = dims[0]
    nrb = tiles[1].shape[0]
    for b in range(nb):
        for t in range(nrb):
            if _fa2_row(mem, dims, b, t, q, k, v, mask, has_mask, scale, tiles, vt, bq, bk,
                        o, lse, st_m, st_l, st_o, info, compute):
                return


@numba.njit(cache=True, parallel=True)
def _fa2_parallel(mem, dims, q, k, v, mask, has_mask, scale, tiles, vt, bq, bk, o, lse, st_m, st_l, st_o,
                  info, compute, tasks):
    """The same rows as :func:`_fa2_serial`, one task per (head, query block), each
    with its own counters (``tasks``), reduced afterwards in task order."""
    nb = dims[0]
    nrb = tiles[1].shape[0]
    for t in numba.prange(nb * nrb):
        _fa2_row(task_mem(tasks, t), dims, t // nrb, balanced_order(t % nrb, nrb), q, k, v, mask, has_mask, scale,
                 tiles, vt, bq, bk, o, lse, st_m, st_l, st_o, info, compute)
    reduce_tasks(mem, tasks)


# ---------------------------------------------------------------------------
# FA1: outer loop over key blocks; O, l, m live in HBM between tiles
# ---------------------------------------------------------------------------
@numba.njit(cache=True)
def _fa1(mem, dims, q, k, v, mask, has_mask, scale, tiles, vt, bq, bk, o, lse, lh, mh, info, compute):
    nb, nq, nk, d, dv = dims
    group, softcap, slopes = vt[0], vt[3], vt[4]  # variants (refattn/kernels/variant_args.py)
    seqs, rblocks, cblocks = tiles
    nrb = rblocks.shape[0]
    nbq = bq if compute else 0  # count-only runs keep no arrays
    s_buf = np.empty(nbq * bk, q.dtype)
    cols = np.empty(bk, np.int64)
    mt_buf = np.empty(nbq, q.dtype)  # m~ of the tile (registers)
    lt_buf = np.empty(nbq, q.dtype)  # l~
    pv_buf = np.empty((nbq, dv), q.dtype)  # P~ V_j
    tmp_buf = np.empty((nbq, dv), q.dtype)
    work = np.empty((4, nbq), q.dtype)
    for h in range(nb // group):  # KV head h serves query heads h*group .. h*group + group - 1
        b0 = h * group
        # step: initialise O = 0, l = 0, m = -inf in HBM for the group's heads (Algorithm 1, line 2)
        for b in range(b0, b0 + group):
            set_head(mem, b)
            for t in range(nrb):
                r0, r1 = rblocks[t, 1], rblocks[t, 2]
                if compute:
                    o[b, r0:r1] = 0
                    lh[b, r0:r1] = 0
                    mh[b, r0:r1] = -np.inf
                hold(mem, T_O, S_O, r0, r1, 0, dv)
                hold(mem, T_LSUM, S_L, r0, r1, 0, 1)
                hold(mem, T_M, S_M, r0, r1, 0, 1)
                store(mem, T_O, S_O, r0, r1, 0, dv)
                store(mem, T_LSUM, S_L, r0, r1, 0, 1)
                store(mem, T_M, S_M, r0, r1, 0, 1)
                free_all(mem)
        if stop_here(mem, info, 0, b0, 0, nq, 0, 0):
            return
        for s in range(seqs.shape[0]):  # segment s: its key blocks j against its row blocks i
            causal, off, lo, aoff = seqs[s, 4], seqs[s, 5], seqs[s, 6], seqs[s, 7]
            rb0, rb1 = seqs[s, 8], seqs[s, 9]
            for jb in range(seqs[s, 10], seqs[s, 11]):
                c0, c1 = cblocks[jb, 1], cblocks[jb, 2]
                bc = c1 - c0
                for u in range(bc):
                    cols[u] = c0 + u
                kv_loaded = False  # K_j, V_j stay on chip for every query head of the group
                for b in range(b0, b0 + group):
                    set_head(mem, b)
                    for t in range(rb0, rb1):
                        r0, r1 = rblocks[t, 1], rblocks[t, 2]
                        br = r1 - r0
                        vis = enter_tile(mem, r0, r1, c0, c1, causal, off, lo)
                        if vis != 0:
                            kv_loaded = load_kv_once(mem, kv_loaded, S_K, S_V, c0, c1, d, dv)
                            load(mem, T_Q, S_Q, r0, r1, 0, d)
                            load(mem, T_O, S_O, r0, r1, 0, dv)
                            load(mem, T_LSUM, S_L, r0, r1, 0, 1)
                            load(mem, T_M, S_M, r0, r1, 0, 1)
                            if has_mask:
                                load(mem, T_MASK, S_MASK, r0, r1, c0, c1)
                            hold(mem, T_S, S_S, r0, r1, c0, c1)
                            if compute:
                                st, eff = score_tile(q[b, r0:r1], k[h, c0:c1], bc, s_buf, scale, r0, cols,
                                                     vis == 2, off, mask, has_mask, b, lo, softcap, slopes[b], aoff)
                                mt, lt, pv = mt_buf[:br], lt_buf[:br], pv_buf[:br]
                                mt[:] = -np.inf
                                lt[:] = 0
                                pv[:] = 0
                                # m~, l~, P~ V_j of this tile (lines 9-10)
                                online_update(st, v[h, c0:c1], eff, mt, lt, pv, work, tmp_buf[:br])
                                zero = scale - scale
                                for r in range(br):  # merge with the running m_i, l_i, O_i (lines 11-12)
                                    mi, li = mh[b, r0 + r], lh[b, r0 + r]
                                    mnew = max(mi, mt[r])
                                    shift = zero
                                    if mnew != -np.inf:
                                        shift = mnew
                                    a_old = np.exp(mi - shift)
                                    a_new = np.exp(mt[r] - shift)
                                    lnew = a_old * li + a_new * lt[r]
                                    if lnew > 0:
                                        c_old = li * a_old / lnew
                                        c_new = a_new / lnew
                                        for x in range(dv):
                                            o[b, r0 + r, x] = c_old * o[b, r0 + r, x] + c_new * pv[r, x]
                                    mh[b, r0 + r] = mnew
                                    lh[b, r0 + r] = lnew
                            hold(mem, T_P, S_S, r0, r1, c0, c1)
                            count_flops(mem, 2 * br * bc * (d + dv), br * bc + 2 * br)
                            store(mem, T_O, S_O, r0, r1, 0, dv)
                            store(mem, T_LSUM, S_L, r0, r1, 0, 1)
                            store(mem, T_M, S_M, r0, r1, 0, 1)
                        if close_step(mem, info, 1, b, r0, r1, c0, c1, t == rb1 - 1 and b == b0 + group - 1):
                            return
        # step: finalise L = m + log l for the backward, for the group's heads
        for b in range(b0, b0 + group):
            set_head(mem, b)
            for t in range(nrb):
                r0, r1 = rblocks[t, 1], rblocks[t, 2]
                load(mem, T_LSUM, S_L, r0, r1, 0, 1)
                load(mem, T_M, S_M, r0, r1, 0, 1)
                if compute:
                    for r in range(r0, r1):
                        lse[b, r] = mh[b, r] + np.log(lh[b, r]) if lh[b, r] > 0 else -np.inf
                hold(mem, T_L, S_M, r0, r1, 0, 1)  # L overwrites m on chip
                store(mem, T_L, S_M, r0, r1, 0, 1)
                free_all(mem)
        if stop_here(mem, info, 2, b0, 0, nq, 0, nk):
            return


# ---------------------------------------------------------------------------
# Public wrapper
# ---------------------------------------------------------------------------
def flash_forward(q, k, v, *, sram, variant="fa2", causal=False, scale=None, mask=None, block=None,
                  trace=False, stop_after=None, count_only=False, num_kv_heads=None, window=None, softcap=None,
                  alibi_slopes=None, cu_seqlens_q=None, cu_seqlens_k=None):
    """FlashAttention forward on the simulated hierarchy (see the module docstring).

    Returns a :class:`~refattn.kernels.contract.KernelResult` with outputs
    ``o`` (..., Nq, dv) and ``lse`` (..., Nq), both in the input dtype.
    ``sram``: an :class:`~refattn.memory.Sram`, an int M (elements) or a chip
    preset name. ``variant``: "fa1" or "fa2". ``causal``: False, True (=
    "bottom_right") or "top_left". ``mask``: bool (..., Nq, Nk), True = keep.
    ``block``: (Br, Bc) or None for the rule in the module docstring.
    ``stop_after=k``: stop after step k (1 <= k <= n_steps) and return
    ``result.state``; the trace is then always recorded.
    ``count_only=True``: the same loop with the arithmetic skipped (same traffic,
    peak SRAM, FLOPs, exps, steps and trace; ``outputs`` empty, no (N, d) array
    allocated; docs/contract.md). A stopped count-only run has empty ``state.arrays``.
    Variants (docs/variants.md, as in :func:`refattn.reference.attention`):
    ``num_kv_heads`` (GQA/MQA; k, v ``(..., Hkv, Nk, .)``), ``window=(left, right)``,
    ``softcap``, ``alibi_slopes``, and ``cu_seqlens_q``/``cu_seqlens_k`` (a packed batch on
    axis -2; tiles cut per sequence, padding rows written as O = 0, L = -inf: module docstring).
    """
    if variant not in VARIANTS:
        raise ValueError(f"flash_forward: variant must be one of {VARIANTS}, got {variant!r}")
    p, kv = prepare_variants(q, k, v, scale=scale, causal=causal, mask=mask, num_kv_heads=num_kv_heads,
                             window=window, softcap=softcap, alibi_slopes=alibi_slopes, cu_seqlens_q=cu_seqlens_q,
                             cu_seqlens_k=cu_seqlens_k, where="flash_forward", count_only=count_only,
                             allow_varlen=True)
    sram = memory.as_sram(sram)
    nb, nq, nk, d, dv = p.dims
    has_mask = p.has_mask
    plan = forward_plan(nb, nq, nk, d, dv, sram, variant=variant, has_mask=has_mask, causal=p.causal, block=block,
                        group=kv.group, variants=kv.details, seqlens=kv.seqlens)
    plan.check_stop_after(stop_after)
    bq, bk, tr, tc = plan.blocks["Br"], plan.blocks["Bc"], plan.tiles["Tr"], plan.tiles["Tc"]
    tiles = kv.layout(bq, bk)  # (seqs, rblocks, cblocks): the tile tables of refattn/kernels/variant_args.py
    area = sum(a * b for a, b in kv.seqlens)  # Nq * Nk, or sum_b Nq_b * Nk_b of a packed batch
    warn_if_costly("flash_forward", plan, p, count_only=count_only, flops=2 * nb * area * (d + dv))

    dt = p.q.dtype
    compute = not count_only
    hb, hq = (nb, nq) if compute else (1, 1)  # count-only: placeholders, never touched
    o = np.zeros((hb, hq, dv), dt)  # HBM
    lse = np.zeros((hb, hq), dt)  # HBM
    info = np.zeros(6, np.int64)
    traced = bool(trace) or stop_after is not None

    ins = (readonly(x) for x in (p.q, kv.k, kv.v, p.mask))
    common = (p.dims, *ins, has_mask, dt.type(p.scale), tiles, kv.vt(dt), bq, bk, o, lse)
    if variant == "fa2":
        sq = bq if compute else 0
        st_m, st_l, st_o = np.zeros(sq, dt), np.zeros(sq, dt), np.zeros((sq, dv), dt)
        args = (*common, st_m, st_l, st_o, info, compute)

        def call(mem):
            o.fill(0)
            lse.fill(0)
            ntask = nb * tr
            if traced or not compute or ntask < 2 or nb * area * (d + dv) < PARALLEL_MIN_WORK:
                _fa2_serial(mem, *args)
            else:
                _fa2_parallel(mem, *args, new_tasks(ntask, sram.capacity))

        estimate = plan.n_steps * 8 + nb * tr * 16
        rblocks, seqs = tiles[1], tiles[0]

        def state_arrays(r0, r1, c1):
            if not compute:
                return {}
            n = r1 - r0
            seg = rblocks[(rblocks[:, 1] == r0) & (rblocks[:, 2] == r1), 0][0]
            return {"m": st_m[:n].copy(), "l": st_l[:n].copy(), "o_partial": st_o[:n].copy(),
                    "o_normalised": c1 == seqs[seg, 3]}  # the row block's last key block was done
    else:
        lh, mh = np.zeros((hb, hq), dt), np.zeros((hb, hq), dt)  # HBM l and m
        args = (*common, lh, mh, info, compute)

        def call(mem):
            _fa1(mem, *args)

        estimate = plan.n_steps * 14 + nb * (tc * 10 + tr * 20 + 8)

        def state_arrays(r0, r1, c1):
            if not compute:
                return {}
            b = int(info[1])
            return {"m": mh[b, r0:r1].copy(), "l": lh[b, r0:r1].copy(), "o_partial": o[b, r0:r1].copy(),
                    "o_normalised": True}

    def state_fn(mem, tr_):
        r0, r1, c1 = int(info[2]), int(info[3]), int(info[5])
        return step_state(mem, sram, tr_, info, FA2_PHASES if variant == "fa2" else FA1_PHASES,
                          state_arrays(r0, r1, c1))

    mem = run_with_trace(call, sram, trace=traced, trace_estimate=estimate, stop_after=stop_after)
    outputs = {"o": p.restore(o), "lse": p.restore(lse)} if compute else {}
    return finish(mem, sram, outputs, plan=plan, slot_names=SLOTS, state_fn=state_fn)
