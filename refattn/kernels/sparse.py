"""One sparse flash kernel that runs any :class:`~refattn.index_set.IndexSet`.

This is MInference's kernel on the simulated hierarchy: FlashAttention-2's
loop (a query block stays on chip, the key side streams past it with an
online softmax), but the key side is *only what the index set lists* for
that query block:

1. its **key blocks** (``block`` consecutive keys each), and
2. its **single columns**, gathered ``block`` at a time into one dense tile
   (MInference's vertical lines), so the tile product runs on a full tile.

Algorithm, per query block ``qb`` (rows ``[r0, r1)``) of query head h (FA2 order, as in
FlashAttention-2 Algorithm 1 with the inner loop restricted to the set); ``band`` is
the causal mask and the sliding window together (below)::

    read the 4 offsets of row qb (block_offsets[qb:qb+2], column_offsets[qb:qb+2])   idx: 4
    load Q[r0:r1]                                                                  Q: rows*d
    m = -inf, l = 0, acc = 0                                  (on chip)
    for kb in blocks_of(qb):                      # one STEP per key block
        read kb                                                                    idx: 1
        if the band hides the whole tile: skip (no K/V read; a skip event)
        load K[c0:c1], V[c0:c1] of KV head h // G                                  K: w*d, V: w*dv
        S = scale * Q K^T [softcap, ALiBi bias], band mask if the tile crosses an edge
        m_new = max(m, rowmax S);  P = exp(S - m_new);  alpha = exp(m - m_new)
        l = alpha*l + rowsum P;  acc = alpha*acc + P V
    for each tile of up to `block` entries of columns_of(qb):   # one STEP per tile
        read the tile's column ids                                                 idx: n
        drop the columns the band hides for every row of the block (skip events)
        gather the remaining g columns of K and V (one load per column)           K: g*d, V: g*dv
        same online-softmax update on the (rows x g) tile, band-masked
    O = acc / l (0 where l == 0);  lse = m + log l (-inf where l == 0)
    store O[r0:r1], lse[r0:r1]                                                     O: rows*dv, L: rows

Variants (docs/variants.md; the kernel takes them through
:func:`refattn.kernels.variant_args.prepare_variants`, as the flash kernels do).
The index set and the variants are and-ed: the kernel computes attention under
the mask (index set's keep mask) AND (causal) AND (window).

* **Band.** Causal masking and ``window=(left, right)`` make one band of keys per
  query row: key c is visible to row r iff ``r + lo <= c <= r + off`` (``off``
  the smaller of the causal offset and ``Nk - Nq + right``, ``lo = Nk - Nq - left``,
  each edge only when bounded). A listed key block wholly outside the band for
  the block's rows is skipped (:func:`~refattn.kernels.common.enter_tile`: a
  ``skip`` event, no K/V load, no FLOPs); one crossing an edge is masked element
  by element; one inside it is not masked. A listed column c is visible to some
  row of the block iff ``r0 + lo <= c <= r1 - 1 + off``; the others are never
  gathered. Their ids are still read (the kernel reads an id to test it).
* **softcap, ALiBi** change the score tile only (cap, then bias, then masks:
  :func:`~refattn.kernels.common.score_tile`); no extra traffic or on-chip space.
* **GQA/MQA** (``num_kv_heads = Hkv``, ``G = Hq / Hkv``): query head h reads KV
  head ``h // G`` from an HBM array of ``Hkv`` heads, **once per query head** (per
  query block and listed entry, as without GQA). Why not once per group: the
  on-chip state is one query head's row block (Q, m, l, acc), and the G heads of
  a group in general list different blocks and columns (MInference builds one set
  per query head from its own scores); sharing one K/V load would need the G heads' state on
  chip together (G times the Q, S and O slots) and a merged walk of G index lists,
  FlashAttention-3's packed-GQA layout, not modelled here. The counts are
  therefore those of the same run with each KV head repeated for its group.
* **varlen** (``cu_seqlens``) is refused: an index set covers one rectangular
  ``(Nq, Nk)`` problem per head.

Trace: loads name the key rows they read (one event per gathered column);
the compute event of a key block names query rows x key columns, that of a
gathered tile names query rows x the positions ``[first, first+g)`` in
``column_indices`` it used (its visible entries). A key block the band hides is
one ``skip`` event (query rows x its key columns); the hidden columns of a
gathered tile form a run before and/or after its visible ones (the band is an
interval of keys, the ids are sorted), each run one ``skip`` event naming query
rows x key columns ``[first id, last id + 1)`` of the run (the whole tile's ids
when it has no visible column).

Steps (numbered 1..n_steps, docs/contract.md): one step per listed key block
(phase "key blocks") and one per gathered column tile ("columns"), hidden ones
too, so step numbers follow the index set; a query block that lists nothing
is one step of its own (it writes its zero rows). The write of O and L
belongs to the last step of the query block. ``n_steps = sum over heads and
query blocks of max(1, nb(qb) + ceil(nc(qb) / block))``. ``stop_after=k``
stops after step k; ``result.state`` has ``rows``, ``cols`` (key columns of a
key block, or the positions ``[t, t_end)`` in ``column_indices`` of a gathered
tile) and ``arrays``: ``m``, ``l``, ``o_partial`` (the unnormalised
accumulator, or O once the block is finalised: ``o_normalised``), and
``columns`` (the key column ids of a gathered tile).

HBM traffic closed form (elements; ``rows_q`` = rows of query block qb,
``w(kb)`` = width of key block kb; ``vis(kb)`` = key block kb holds at least one
entry of the band in the block's rows, i.e. ``kb*block <= r1 - 1 + off`` and
``min((kb+1)*block, Nk) - 1 >= r0 + lo``; ``vis(c)`` = ``r0 + lo <= c <= r1 - 1 + off``;
without causal and window every entry is visible)::

    idx reads = sum_qb (4 + nb(qb) + nc(qb))          (hidden entries included)
    Q reads   = nq * d                     (once per query block, even one the band hides wholly)
    K reads   = d  * sum_qb (sum_{kb listed, vis} w(kb) + #{c listed, vis})
    V reads   = dv * (the same sum)
    O writes  = nq * dv,   L writes = nq
    FLOPs     = 2 * (d + dv) * sum_qb rows_q * (the same sum)
    exps      = sum_qb rows_q * (the same sum)

(the same counts times the number of query heads, under GQA too; the softcap's
tanh and the ALiBi bias are not counted, as in the flash kernels). The window's
saving is the K, V, FLOP and exp terms of the listed entries outside the band:
with a window of w = left + right + 1 keys, at most ``ceil((block + w - 1) / block) + 1``
key blocks and ``block + w - 1`` columns per query block are loaded, whatever
the set lists (w counts both sides of the window, bounded). The FLOPs equal
:meth:`IndexSet.flops` when no listed entry is hidden, which is the case for
the sets the MInference patterns build under plain causal masking.

On-chip footprint (elements, checked against M before any work; the same with
every variant)::

    Q block*d + K block*d + V block*dv + S block*block + acc block*dv + m, l 2*block + idx max(block, 4)

Heads: q, k, v may have leading (batch/head) dims; ``index_set`` is one
IndexSet for all of them or a list/tuple with one per flattened query head.

The tile arithmetic is the shared one of :mod:`refattn.kernels.common`
(``score_tile``, ``online_update``, ``finalise_rows``, ``visibility``), as in FA2.

Speed: the fast path runs the query blocks of all heads in a ``prange``,
each task with its own counters (summed in a fixed order afterwards, so the
counts are deterministic; the same reduction as FA2's) and BLAS on the tiles.
With ``trace`` or ``stop_after`` the *same* per-block function runs serially
on one set of counters.
"""

from __future__ import annotations

import numba
import numpy as np

from refattn import memory
from refattn.index_set import IndexSet
from refattn.kernels.common import (
    close_step,
    enter_tile,
    finalise_rows,
    finish,
    new_tasks,
    online_update,
    readonly,
    reduce_tasks,
    run_with_trace,
    score_tile,
    step_state,
    task_mem,
    visibility,
)
from refattn.kernels.contract import Plan
from refattn.kernels.variant_args import prepare_variants

__all__ = ["sparse_forward", "SLOT_NAMES", "footprint", "slot_footprint"]

SLOT_Q, SLOT_K, SLOT_V, SLOT_S, SLOT_O, SLOT_M, SLOT_L, SLOT_IDX = range(8)
SLOT_NAMES = ("Q", "K", "V", "S", "O_acc", "m", "l", "idx")
PHASES = ("key blocks", "columns")


def slot_footprint(block: int, d: int, dv: int) -> dict:
    """{slot: elements} the kernel holds at its peak (see module docstring)."""
    return {"Q": block * d, "K": block * d, "V": block * dv, "S": block * block, "O_acc": block * dv,
            "m": block, "l": block, "idx": max(block, 4)}


def footprint(block: int, d: int, dv: int) -> int:
    """On-chip elements the kernel holds at its peak (the sum of :func:`slot_footprint`)."""
    return sum(slot_footprint(block, d, dv).values())


@numba.njit(cache=True)
def _query_block(mem, dims, q, k, v, bo, bi, co, ci, h, qb, block, scale, band, off, vt,
                 o, lse, m_i, l_i, acc, info, compute):
    """All steps of query block qb of (query) head h. Returns True if stopped (state in m_i, l_i, acc, info).
    ``band, off`` and ``vt``: the variants (refattn/kernels/variant_args.py). ``compute`` False: count
    only (docs/contract.md), no arithmetic and no gathers."""
    nb, nq, nk, d, dv = dims
    group, lo, aoff, softcap, slopes = vt
    hk = h // group  # the KV head of query head h (GQA)
    r0 = qb * block
    r1 = min(r0 + block, nq)
    rows = r1 - r0
    nblock = block if compute else 0  # count-only runs keep no arrays
    kt = np.empty((nblock, d), q.dtype)  # gathered key rows
    vt_ = np.empty((nblock, dv), q.dtype)
    s_flat = np.empty(nblock * nblock, q.dtype)  # S^T tile, viewed as (n, rows)
    work = np.empty((4, nblock), q.dtype)
    pv = np.empty((min(rows, nblock), dv), q.dtype)
    cols = np.empty(block, np.int64)
    no_mask = np.ones((1, 1, 1), np.bool_)
    m = m_i[:rows]
    l = l_i[:rows]
    a = acc[:rows]
    if compute:
        m[:] = -np.inf
        l[:] = 0
        a[:] = 0

    b0, b1 = bo[h, qb], bo[h, qb + 1]
    c0, c1 = co[h, qb], co[h, qb + 1]
    nblk = b1 - b0
    nsteps = max(1, nblk + (c1 - c0 + block - 1) // block)
    memory.load(mem, memory.T_IDX, SLOT_IDX, qb, qb + 2, 0, 2)  # both offset pairs: 4 elements
    memory.load(mem, memory.T_Q, SLOT_Q, r0, r1, 0, d)
    memory.hold(mem, memory.T_O, SLOT_O, r0, r1, 0, dv)
    memory.hold(mem, memory.T_M, SLOT_M, r0, r1, 0, 1)
    memory.hold(mem, memory.T_LSUM, SLOT_L, r0, r1, 0, 1)

    for step in range(nsteps):
        phase, cs, ce = 0, 0, 0
        if step < nblk:  # ---- a listed key block
            t = b0 + step
            kb = bi[t]
            k0 = kb * block
            k1 = min(k0 + block, nk)
            w = k1 - k0
            cs, ce = k0, k1
            memory.load(mem, memory.T_IDX, SLOT_IDX, t, t + 1, 0, 1)
            vis = enter_tile(mem, r0, r1, k0, k1, band, off, lo)  # 0: outside the band, skipped
            if vis != 0:
                memory.load(mem, memory.T_K, SLOT_K, k0, k1, 0, d)
                memory.load(mem, memory.T_V, SLOT_V, k0, k1, 0, dv)
                memory.hold(mem, memory.T_S, SLOT_S, r0, r1, k0, k1)
                if compute:
                    for j in range(w):
                        cols[j] = k0 + j
                    st, eff = score_tile(q[h, r0:r1], k[hk, k0:k1], w, s_flat, scale, r0, cols, vis == 2, off,
                                         no_mask, False, h, lo, softcap, slopes[h], aoff)
                    online_update(st, v[hk, k0:k1], eff, m, l, a, work, pv)
                memory.count_flops(mem, 2 * rows * w * (d + dv), rows * w)
        elif nblk + (c1 - c0) > 0:  # ---- single columns, gathered `block` at a time
            phase = 1
            t = c0 + (step - nblk) * block
            t_end = min(t + block, c1)
            cs, ce = t, t_end
            memory.load(mem, memory.T_IDX, SLOT_IDX, t, t_end, 0, 1)
            # the band shows column c to some row of the block iff r0 + lo <= c <= r1 - 1 + off: the visible
            # entries of this sorted tile are one run ci[first:first+g]; the hidden ones before and after
            # it are each named by one skip event (key columns of the run) and never loaded
            first, g = t, 0
            for u in range(t, t_end):
                c = ci[u]
                if visibility(r0, r1, c, c + 1, band, off, lo) == 0:
                    continue
                if g == 0:
                    first = u
                    if u > t:
                        memory.skip(mem, r0, r1, ci[t], ci[u - 1] + 1)
                    memory.load(mem, memory.T_K, SLOT_K, c, c + 1, 0, d)
                    memory.load(mem, memory.T_V, SLOT_V, c, c + 1, 0, dv)
                else:
                    memory.load_more(mem, memory.T_K, SLOT_K, c, c + 1, 0, d)
                    memory.load_more(mem, memory.T_V, SLOT_V, c, c + 1, 0, dv)
                if compute:
                    for x in range(d):  # gather one key row and one value row (of KV head hk)
                        kt[g, x] = k[hk, c, x]
                    for x in range(dv):
                        vt_[g, x] = v[hk, c, x]
                cols[g] = c
                g += 1
            if g > 0:
                # a gathered tile's S event names entries [first, first+g) of column_indices (not key columns)
                memory.hold(mem, memory.T_S, SLOT_S, r0, r1, first, first + g)
                if compute:
                    st, eff = score_tile(q[h, r0:r1], kt, g, s_flat, scale, r0, cols, band != 0, off, no_mask,
                                         False, h, lo, softcap, slopes[h], aoff)
                    online_update(st, vt_, eff, m, l, a, work, pv)
                memory.count_flops(mem, 2 * rows * g * (d + dv), rows * g)
                if first + g < t_end:
                    memory.skip(mem, r0, r1, ci[first + g], ci[t_end - 1] + 1)
            else:
                memory.skip(mem, r0, r1, ci[t], ci[t_end - 1] + 1)
        if step == nsteps - 1:  # ---- finish: O = acc / l, lse = m + log l (empty rows: 0 and -inf)
            if compute:
                finalise_rows(a, m, l, o[h, r0:r1], lse[h, r0:r1])
            memory.store(mem, memory.T_O, SLOT_O, r0, r1, 0, dv)
            memory.store(mem, memory.T_L, SLOT_L, r0, r1, 0, 1)
        if close_step(mem, info, phase, h, r0, r1, cs, ce, step == nsteps - 1):
            return True
    return False


@numba.njit(cache=True)
def _run_serial(mem, dims, q, k, v, bo, bi, co, ci, block, scale, band, off, vt, o, lse, compute,
                m_i, l_i, acc, info):
    """Traced / stepped / count-only path: the same per-block function, one block after another."""
    heads, nq = dims[0], dims[1]
    nqb = (nq + block - 1) // block
    for h in range(heads):
        memory.set_head(mem, h)
        for qb in range(nqb):
            if _query_block(mem, dims, q, k, v, bo, bi, co, ci, h, qb, block, scale, band, off, vt,
                            o, lse, m_i, l_i, acc, info, compute):
                return


@numba.njit(cache=True, parallel=True)
def _run_parallel(mem, dims, q, k, v, bo, bi, co, ci, block, scale, band, off, vt, o, lse, compute, tasks):
    """Fast path: all (head, query block) tasks in a prange, per-task counters reduced in order."""
    nq, dv = dims[1], dims[4]
    nqb = (nq + block - 1) // block
    for t in numba.prange(tasks.counts.shape[0]):
        h = t // nqb
        tm = task_mem(tasks, t)
        memory.set_head(tm, h)
        _query_block(tm, dims, q, k, v, bo, bi, co, ci, h, t - h * nqb, block, scale, band, off, vt, o, lse,
                     np.empty(block, q.dtype), np.empty(block, q.dtype), np.empty((block, dv), q.dtype),
                     np.zeros(6, np.int64), compute)
    reduce_tasks(mem, tasks)


def _index_arrays(index_set, heads, nq, nk):
    """Validate the index set(s); return per-head (heads, nqb+1) offsets and flat indices."""
    sets = list(index_set) if isinstance(index_set, (list, tuple)) else [index_set] * heads
    if len(sets) != heads:
        raise ValueError(f"sparse_forward: got {len(sets)} index sets for {heads} heads (give one, or one per head)")
    for i, s in enumerate(sets):
        if not isinstance(s, IndexSet):
            raise TypeError(f"sparse_forward: index_set[{i}] must be an IndexSet, got {type(s).__name__}")
        if (s.nq, s.nk) != (nq, nk):
            raise ValueError(f"sparse_forward: index set {i} was built for (nq, nk) = ({s.nq}, {s.nk}), "
                             f"but q, k have Nq = {nq}, Nk = {nk}")
        if s.block != sets[0].block:
            raise ValueError(f"sparse_forward: index sets use different blocks ({s.block} vs {sets[0].block})")
    nqb = sets[0].n_query_blocks
    bo = np.empty((heads, nqb + 1), np.int64)
    co = np.empty((heads, nqb + 1), np.int64)
    if not isinstance(index_set, (list, tuple)):
        bo[:] = index_set.block_offsets
        co[:] = index_set.column_offsets
        return sets[0].block, bo, index_set.block_indices.copy(), co, index_set.column_indices.copy()
    bbase = cbase = 0
    for h, s in enumerate(sets):
        bo[h] = s.block_offsets + bbase
        co[h] = s.column_offsets + cbase
        bbase += s.n_blocks
        cbase += s.n_strips
    bi = np.concatenate([s.block_indices for s in sets]).astype(np.int64)
    ci = np.concatenate([s.column_indices for s in sets]).astype(np.int64)
    return sets[0].block, bo, bi, co, ci


def sparse_plan(block, bo, co, d, dv, sram, *, heads, causal=None, variants=None) -> Plan:
    """The :class:`Plan` of one run: one step per key block or column tile, at least one per query block.
    ``variants``: recorded in ``details`` (as the flash kernels do)."""
    nb, nc = np.diff(bo, axis=1), np.diff(co, axis=1)  # (heads, nqb)
    n_steps = int(np.maximum(1, nb + -(-nc // block)).sum())
    return Plan(kernel="sparse_forward", blocks={"block": block},
                tiles={"query blocks": int(bo.shape[1] - 1), "key blocks listed": int(nb.sum()),
                       "columns listed": int(nc.sum())},
                footprint=slot_footprint(block, d, dv), M=sram.capacity, n_steps=n_steps,
                step="one listed key block, or one tile of up to `block` gathered columns, of a query block "
                     "(at least one step per query block); query blocks in order, heads in turn",
                details={"causal": causal or "none", "heads": heads, **(variants or {})})


def sparse_forward(q, k, v, index_set, *, sram, causal=True, scale=None, trace=False, stop_after=None,
                   count_only=False, num_kv_heads=None, window=None, softcap=None, alibi_slopes=None,
                   cu_seqlens_q=None, cu_seqlens_k=None):
    """Attention over the entries an :class:`IndexSet` lists, on the simulated hierarchy.

    Returns a :class:`~refattn.kernels.contract.KernelResult` with ``o`` (..., Nq, dv) and
    ``lse`` (..., Nq) in the input dtype (float32 or float64). Equals
    ``reference.attention(q, k, v, causal=causal, mask=index_set.to_mask(causal=False), **variants)``:
    the index set's keep mask AND the variants' visibility (causal, window), with the
    softcap and ALiBi applied to the kept scores.
    ``index_set``: one IndexSet for every head, or a list/tuple with one per
    flattened leading index of q (batch x query heads). ``causal``: False, True
    (bottom-right) or "top_left"; ``sram``: an :class:`~refattn.memory.Sram`,
    an int M or a chip name. See the module docstring for the algorithm,
    steps, traffic closed form and footprint. ``count_only=True``: the same loop with the
    arithmetic skipped (same counts and trace, ``outputs`` empty; docs/contract.md).

    Variants (docs/variants.md, as in :func:`refattn.reference.attention`): ``num_kv_heads``
    (GQA/MQA: k, v ``(..., Hkv, Nk, .)``, query head h reads KV head ``h // (Hq / Hkv)``, once per
    query head: module docstring), ``window=(left, right)`` (and-ed with the index set: listed
    blocks and columns wholly outside it are skipped, never loaded), ``softcap``, ``alibi_slopes``.
    Variable-length batches (``cu_seqlens_q``, ``cu_seqlens_k``) are refused: an index set covers
    one rectangular (Nq, Nk) problem per head.
    """
    if cu_seqlens_q is not None or cu_seqlens_k is not None:
        raise ValueError("sparse_forward: variable-length batches (cu_seqlens_q, cu_seqlens_k) are not supported: "
                         "an index set covers one rectangular (Nq, Nk) problem per head; run each sequence "
                         "with its own index set, or use refattn.reference.attention")
    p, kv = prepare_variants(q, k, v, scale=scale, causal=causal, num_kv_heads=num_kv_heads, window=window,
                             softcap=softcap, alibi_slopes=alibi_slopes, where="sparse_forward",
                             count_only=count_only)
    sram = memory.as_sram(sram)
    block, bo, bi, co, ci = _index_arrays(index_set, p.batch, p.nq, p.nk)
    plan = sparse_plan(block, bo, co, p.d, p.dv, sram, heads=p.batch, causal=p.causal, variants=kv.details)
    plan.require_fits(f"sparse_forward with block {block}, d = {p.d}, dv = {p.dv}")
    plan.check_stop_after(stop_after)
    dt = p.q.dtype
    compute = not count_only
    hb, hq = (p.batch, p.nq) if compute else (1, 1)  # count-only: placeholders, never touched
    o = np.zeros((hb, hq, p.dv), dt)
    lse = np.full((hb, hq), -np.inf, dt)
    traced = bool(trace) or stop_after is not None
    m_i, l_i, acc = np.empty(block, dt), np.empty(block, dt), np.empty((block, p.dv), dt)
    info = np.zeros(6, np.int64)
    args = (p.dims, *(readonly(x) for x in (p.q, kv.k, kv.v)), bo, bi, co, ci, block, dt.type(p.scale), kv.causal,
            kv.off, kv.vt(dt), o, lse, compute)

    def call(mem):
        if traced or not compute:
            _run_serial(mem, *args, m_i, l_i, acc, info)
        else:
            _run_parallel(mem, *args, new_tasks(p.batch * (bo.shape[1] - 1), sram.capacity))

    def state_fn(mem, trace_):
        h, r0, r1, cs, ce = (int(x) for x in info[1:])
        rows = r1 - r0
        if not compute:
            return step_state(mem, sram, trace_, info, PHASES, {})
        done = int(mem.cursor[1]) == _last_step_of_block(plan, bo, co, block, h, r0 // block)
        arrays = {"m": m_i[:rows].copy(), "l": l_i[:rows].copy(),
                  "o_partial": (o[h, r0:r1] if done else acc[:rows]).copy(), "o_normalised": done,
                  "query_block": r0 // block}
        if info[0] == 1:
            arrays["columns"] = ci[cs:ce].copy()
        return step_state(mem, sram, trace_, info, PHASES, arrays)

    per_head = 1 if isinstance(index_set, (list, tuple)) else p.batch
    estimate = 12 * p.batch * bo.shape[1] + per_head * (7 * len(bi) + 5 * len(ci)) + 8
    mem = run_with_trace(call, sram, trace=traced, trace_estimate=estimate, stop_after=stop_after)
    outputs = {"o": p.restore(o), "lse": p.restore(lse)} if compute else {}
    return finish(mem, sram, outputs, plan=plan, slot_names=SLOT_NAMES, state_fn=state_fn)


def _last_step_of_block(plan, bo, co, block, h, qb) -> int:
    """The 1-based number of the last step of query block qb of head h."""
    steps = np.maximum(1, np.diff(bo, axis=1) + -(-np.diff(co, axis=1) // block))  # (heads, nqb)
    return int(steps[:h].sum() + steps[h, :qb + 1].sum())
