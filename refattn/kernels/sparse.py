"""One sparse flash kernel that runs any :class:`~refattn.index_set.IndexSet`.

This is MInference's kernel on the simulated hierarchy: FlashAttention-2's
loop (a query block stays on chip, the key side streams past it with an
online softmax), but the key side is *only what the index set lists* for
that query block:

1. its **key blocks** (``block`` consecutive keys each), and
2. its **single columns**, gathered ``block`` at a time into one dense tile
   (MInference's vertical lines), so the tile product runs on a full tile.

Algorithm, per query block ``qb`` (rows ``[r0, r1)``; FA2 order, as in
FlashAttention-2 Algorithm 1 with the inner loop restricted to the set)::

    read the 4 offsets of row qb (block_offsets[qb:qb+2], column_offsets[qb:qb+2])   idx: 4
    load Q[r0:r1]                                                                  Q: rows*d
    m = -inf, l = 0, acc = 0                                  (on chip)
    for kb in blocks_of(qb):                      # one STEP per key block
        read kb                                                                    idx: 1
        if causally hidden for all rows: skip (no K/V read)
        load K[c0:c1], V[c0:c1]                                                    K: w*d, V: w*dv
        S = scale * Q K^T, element causal mask (bottom-right or top-left)
        m_new = max(m, rowmax S);  P = exp(S - m_new);  alpha = exp(m - m_new)
        l = alpha*l + rowsum P;  acc = alpha*acc + P V
    for each tile of up to `block` entries of columns_of(qb):   # one STEP per tile
        read the tile's column ids                                                 idx: n
        drop the columns the causal mask hides for every row of the block
        gather the remaining g columns of K and V (one load per column)           K: g*d, V: g*dv
        same online-softmax update on the (rows x g) tile
    O = acc / l (0 where l == 0);  lse = m + log l (-inf where l == 0)
    store O[r0:r1], lse[r0:r1]                                                     O: rows*dv, L: rows

Trace: loads name the key rows they read (one event per gathered column);
the compute event of a key block names query rows x key columns, that of a
gathered tile names query rows x the positions ``[t, t+g)`` in
``column_indices`` it used.

A *step* is one key block or one gathered column tile (hidden ones too, so
step numbers follow the index set). ``stop_after=k`` stops after step k and
returns the state (``step``, ``rows``, ``cols`` for a key block or
``columns`` for a gathered tile, ``m``, ``l``, ``o_partial`` = acc / l,
``sram``).

HBM traffic closed form (elements; ``rows_q`` = rows of query block qb,
``vis(kb)`` = key block kb has at least one causally visible entry in the
block's rows, ``w(kb)`` its width, ``vis(c)`` likewise for a column; without
``causal`` every entry is visible)::

    idx reads = sum_qb (4 + nb(qb) + nc(qb))
    Q reads   = nq * d                     (once per query block)
    K reads   = d  * sum_qb (sum_{kb listed, vis} w(kb) + #{c listed, vis})
    V reads   = dv * (the same sum)
    O writes  = nq * dv,   L writes = nq
    FLOPs     = 2 * (d + dv) * sum_qb rows_q * (the same sum)
    exps      = sum_qb rows_q * (the same sum)

(the same counts times the number of heads). This equals
:meth:`IndexSet.flops` when no listed entry is hidden by the causal mask,
which is the case for the sets the MInference patterns build.

On-chip footprint (elements, checked against M before any work)::

    Q block*d + K block*d + V block*dv + S block*block + acc block*dv + m, l 2*block + idx block

Heads: q, k, v may have leading (batch/head) dims; ``index_set`` is one
IndexSet for all of them or a list/tuple with one per flattened head.

Speed: the fast path runs the query blocks of all heads in a ``prange``,
each task with its own counters (summed in a fixed order afterwards, so the
counts are deterministic) and BLAS on the tiles. With ``trace`` or
``stop_after`` the *same* per-block function runs serially on one set of
counters.
"""

from __future__ import annotations

import numba
import numpy as np

from refattn import memory
from refattn.index_set import IndexSet
from refattn.kernels.common import finish, prepare, run_with_trace
from refattn.memory import Mem

__all__ = ["sparse_forward", "SLOT_NAMES", "footprint"]

SLOT_Q, SLOT_K, SLOT_V, SLOT_S, SLOT_O, SLOT_M, SLOT_L, SLOT_IDX = range(8)
SLOT_NAMES = ("Q", "K", "V", "S", "O_acc", "m", "l", "idx")

# what the stopping step was (state_i[0])
_KIND_BLOCK, _KIND_COLUMNS = 0, 1


def footprint(block: int, d: int, dv: int) -> int:
    """On-chip elements the kernel holds at its peak (see module docstring)."""
    return block * d + block * d + block * dv + block * block + block * dv + 2 * block + block


@numba.njit(cache=True)
def _update(s, n, rows, vt, m_i, l_i, acc, mem):
    """Online-softmax update with the contiguous (rows x n) score tile s and value tile vt[:n]."""
    for i in range(rows):
        mx = -np.inf
        for j in range(n):
            if s[i, j] > mx:
                mx = s[i, j]
        m_new = max(m_i[i], mx)
        if m_new == -np.inf:  # nothing visible in this row yet
            for j in range(n):
                s[i, j] = 0.0
            continue
        alpha = 0.0 if m_i[i] == -np.inf else np.exp(m_i[i] - m_new)
        tot = 0.0
        for j in range(n):
            p = np.exp(s[i, j] - m_new)  # exp(-inf) = 0 for masked entries
            s[i, j] = p
            tot += p
        l_i[i] = alpha * l_i[i] + tot
        m_i[i] = m_new
        for c in range(acc.shape[1]):
            acc[i, c] *= alpha
    acc[:rows] += np.dot(s, vt[:n])
    memory.count_flops(mem, 0, rows * n)


@numba.njit(cache=True)
def _scores(mem, qt, kt, s_flat, rows, n, r0, cols, scale, causal_on, offset):
    """Return s = scale * Q K^T, a contiguous (rows, n) view of s_flat, with the element causal mask."""
    d = qt.shape[1]
    s = s_flat[:rows * n].reshape((rows, n))
    np.dot(qt, kt[:n].T, s)
    s *= scale
    if causal_on:
        for i in range(rows):
            lim = r0 + i + offset
            for j in range(n):
                if cols[j] > lim:
                    s[i, j] = -np.inf
    memory.count_flops(mem, 2 * rows * n * d, 0)
    return s


@numba.njit(cache=True)
def _query_block(mem, q, k, v, bo, bi, co, ci, h, qb, block, scale, causal_on, offset,
                 o, lse, m_i, l_i, acc, state_i):
    """All steps of query block qb of head h. Returns True if stopped (state in m_i, l_i, acc, state_i)."""
    nq, d = q.shape[1], q.shape[2]
    nk, dv = k.shape[1], v.shape[2]
    r0 = qb * block
    r1 = min(r0 + block, nq)
    rows = r1 - r0
    last_visible = r1 - 1 + offset  # largest key any row of this block may see (causal)
    qt = q[h, r0:r1]  # (rows, d)
    kt = np.empty((block, d), q.dtype)
    vt = np.empty((block, dv), q.dtype)
    s_flat = np.empty(block * block, q.dtype)  # S tile, viewed as (rows, n)
    cols = np.empty(block, np.int64)
    m_i[:] = -np.inf
    l_i[:] = 0.0
    acc[:] = 0.0

    b0, b1 = bo[h, qb], bo[h, qb + 1]
    c0, c1 = co[h, qb], co[h, qb + 1]
    memory.load(mem, memory.T_IDX, SLOT_IDX, qb, qb + 2, 0, 2)  # both offset pairs: 4 elements
    memory.load(mem, memory.T_Q, SLOT_Q, r0, r1, 0, d)
    memory.hold(mem, memory.T_O, SLOT_O, r0, r1, 0, dv)
    memory.hold(mem, memory.T_M, SLOT_M, r0, r1, 0, 1)
    memory.hold(mem, memory.T_LSUM, SLOT_L, r0, r1, 0, 1)

    # ---- listed key blocks: one step each
    for t in range(b0, b1):
        kb = bi[t]
        k0 = kb * block
        k1 = min(k0 + block, nk)
        w = k1 - k0
        memory.load(mem, memory.T_IDX, SLOT_IDX, t, t + 1, 0, 1)
        if causal_on and k0 > last_visible:
            memory.skip(mem, r0, r1, k0, k1)
        else:
            memory.load(mem, memory.T_K, SLOT_K, k0, k1, 0, d)
            memory.load(mem, memory.T_V, SLOT_V, k0, k1, 0, dv)
            kt[:w] = k[h, k0:k1]  # contiguous rows: one block copy each
            vt[:w] = v[h, k0:k1]
            for j in range(w):
                cols[j] = k0 + j
            s = _scores(mem, qt, kt, s_flat, rows, w, r0, cols, scale, causal_on, offset)
            memory.hold(mem, memory.T_S, SLOT_S, r0, r1, k0, k1)
            _update(s, w, rows, vt, m_i, l_i, acc, mem)
            memory.count_flops(mem, 2 * rows * w * dv, 0)
        if memory.end_step(mem):
            state_i[0] = _KIND_BLOCK
            state_i[1] = k0
            state_i[2] = k1
            return True

    # ---- single columns, gathered `block` at a time: one step per tile
    t = c0
    while t < c1:
        t_end = min(t + block, c1)
        memory.load(mem, memory.T_IDX, SLOT_IDX, t, t_end, 0, 1)
        g = 0
        for u in range(t, t_end):
            c = ci[u]
            if causal_on and c > last_visible:
                continue
            if g == 0:
                memory.load(mem, memory.T_K, SLOT_K, c, c + 1, 0, d)
                memory.load(mem, memory.T_V, SLOT_V, c, c + 1, 0, dv)
            else:
                memory.load_more(mem, memory.T_K, SLOT_K, c, c + 1, 0, d)
                memory.load_more(mem, memory.T_V, SLOT_V, c, c + 1, 0, dv)
            for x in range(d):  # gather one key row and one value row (explicit loops: no temporaries)
                kt[g, x] = k[h, c, x]
            for x in range(dv):
                vt[g, x] = v[h, c, x]
            cols[g] = c
            g += 1
        if g > 0:
            s = _scores(mem, qt, kt, s_flat, rows, g, r0, cols, scale, causal_on, offset)
            # a gathered tile's S event names entries [t, t+g) of column_indices (not key columns):
            # visible columns come first in the sorted list, so they are exactly ci[t:t+g]
            memory.hold(mem, memory.T_S, SLOT_S, r0, r1, t, t + g)
            _update(s, g, rows, vt, m_i, l_i, acc, mem)
            memory.count_flops(mem, 2 * rows * g * dv, 0)
        else:
            memory.skip(mem, r0, r1, ci[t], ci[t_end - 1] + 1)
        if memory.end_step(mem):
            state_i[0] = _KIND_COLUMNS
            state_i[1] = t
            state_i[2] = t_end
            return True
        t = t_end

    # ---- finish: O = acc / l, lse = m + log l (empty rows: 0 and -inf)
    for i in range(rows):
        if l_i[i] > 0.0:
            inv = 1.0 / l_i[i]
            for c in range(dv):
                o[h, r0 + i, c] = acc[i, c] * inv
            lse[h, r0 + i] = m_i[i] + np.log(l_i[i])
        else:
            for c in range(dv):
                o[h, r0 + i, c] = 0.0
            lse[h, r0 + i] = -np.inf
    memory.store(mem, memory.T_O, SLOT_O, r0, r1, 0, dv)
    memory.store(mem, memory.T_L, SLOT_L, r0, r1, 0, 1)
    memory.free(mem, SLOT_K)
    memory.free(mem, SLOT_V)
    memory.free(mem, SLOT_S)
    memory.free(mem, SLOT_Q)
    memory.free(mem, SLOT_O)
    memory.free(mem, SLOT_M)
    memory.free(mem, SLOT_L)
    memory.free(mem, SLOT_IDX)
    return False


@numba.njit(cache=True)
def _run_serial(mem, q, k, v, bo, bi, co, ci, block, scale, causal_on, offset,
                o, lse, m_i, l_i, acc, state_i):
    """Traced / stepped path: the same per-block function, one block after another."""
    heads, nq = q.shape[0], q.shape[1]
    nqb = (nq + block - 1) // block
    for h in range(heads):
        memory.set_head(mem, h)
        for qb in range(nqb):
            if _query_block(mem, q, k, v, bo, bi, co, ci, h, qb, block, scale, causal_on, offset,
                            o, lse, m_i, l_i, acc, state_i):
                state_i[3] = h
                state_i[4] = qb
                return True
    return False


@numba.njit(cache=True, parallel=True)
def _run_parallel(mem, q, k, v, bo, bi, co, ci, block, scale, causal_on, offset, o, lse):
    """Fast path: all (head, query block) tasks in a prange, per-task counters reduced in order."""
    heads, nq, dv = q.shape[0], q.shape[1], v.shape[2]
    nqb = (nq + block - 1) // block
    n_tasks = heads * nqb
    counts = np.zeros((n_tasks,) + mem.counts.shape, np.int64)
    ops = np.zeros((n_tasks, 2), np.int64)
    slots = np.zeros((n_tasks, mem.slots.shape[0]), np.int64)
    sram = np.zeros((n_tasks, 3), np.int64)
    cursor = np.zeros((n_tasks, 4), np.int64)
    no_trace = np.zeros((0, mem.trace.shape[1]), np.int64)
    for t in numba.prange(n_tasks):
        h = t // nqb
        qb = t - h * nqb
        sram[t, 2] = mem.sram[2]
        cursor[t, 2] = -1
        cursor[t, 3] = h
        tm = Mem(counts[t], ops[t], slots[t], sram[t], no_trace, cursor[t])
        m_i = np.empty(block, q.dtype)
        l_i = np.empty(block, q.dtype)
        acc = np.empty((block, dv), q.dtype)
        state_i = np.zeros(5, np.int64)
        _query_block(tm, q, k, v, bo, bi, co, ci, h, qb, block, scale, causal_on, offset,
                     o, lse, m_i, l_i, acc, state_i)
    for t in range(n_tasks):  # fixed order: deterministic totals
        mem.counts[:] += counts[t]
        mem.ops[:] += ops[t]
        mem.cursor[0] += cursor[t, 0]
        mem.cursor[1] += cursor[t, 1]
        if sram[t, 1] > mem.sram[1]:  # peak: one task = one SM's SRAM
            mem.sram[1] = sram[t, 1]


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
        return sets[0].block, bo, index_set.block_indices, co, index_set.column_indices
    bbase = cbase = 0
    for h, s in enumerate(sets):
        bo[h] = s.block_offsets + bbase
        co[h] = s.column_offsets + cbase
        bbase += s.n_blocks
        cbase += s.n_strips
    bi = np.concatenate([s.block_indices for s in sets]).astype(np.int64)
    ci = np.concatenate([s.column_indices for s in sets]).astype(np.int64)
    return sets[0].block, bo, bi, co, ci


def sparse_forward(q, k, v, index_set, *, sram, causal=True, scale=None, trace=False, stop_after=None):
    """Attention over the entries an :class:`IndexSet` lists, on the simulated hierarchy.

    Returns a :class:`~refattn.kernels.common.KernelResult` with ``o`` (..., Nq, dv) and
    ``lse`` (..., Nq) in the input dtype (float32 or float64). Equals
    ``reference.attention(q, k, v, mask=index_set.to_mask(causal=causal))``.
    ``index_set``: one IndexSet for every head, or a list/tuple with one per
    flattened leading index (batch x heads). ``causal``: False, True
    (bottom-right) or "top_left"; ``sram``: an :class:`~refattn.memory.Sram`,
    an int M or a chip name. See the module docstring for the algorithm,
    steps, traffic closed form and footprint.
    """
    p = prepare(q, k, v, scale=scale, causal=causal, where="sparse_forward")
    sram = memory.as_sram(sram)
    block, bo, bi, co, ci = _index_arrays(index_set, p.batch, p.nq, p.nk)
    need = footprint(block, p.d, p.dv)
    memory.require_fits(need, sram, f"sparse_forward with block {block}, d = {p.d}, dv = {p.dv}")
    causal_on = p.causal is not None
    offset = (p.nk - p.nq) if p.causal == "bottom_right" else 0
    o = np.zeros((p.batch, p.nq, p.dv), p.q.dtype)
    lse = np.full((p.batch, p.nq), -np.inf, p.q.dtype)
    scale_t = p.q.dtype.type(p.scale)
    serial = trace or stop_after is not None
    m_i = np.empty(block, p.q.dtype)
    l_i = np.empty(block, p.q.dtype)
    acc = np.empty((block, p.dv), p.q.dtype)
    state_i = np.zeros(5, np.int64)
    stopped = [False]

    def call(mem):
        if serial:
            stopped[0] = _run_serial(mem, p.q, p.k, p.v, bo, bi, co, ci, block, scale_t, causal_on, offset,
                                     o, lse, m_i, l_i, acc, state_i)
        else:
            _run_parallel(mem, p.q, p.k, p.v, bo, bi, co, ci, block, scale_t, causal_on, offset, o, lse)

    per_head = 1 if isinstance(index_set, (list, tuple)) else p.batch
    estimate = 12 * p.batch * bo.shape[1] + per_head * (7 * len(bi) + 3 * len(ci)) + 8
    mem = run_with_trace(call, sram, trace=trace, trace_estimate=estimate, stop_after=stop_after)

    state = None
    if stopped[0]:
        kind, a, b_, h, qb = (int(x) for x in state_i)
        r0, r1 = qb * block, min((qb + 1) * block, p.nq)
        rows = r1 - r0
        with np.errstate(divide="ignore", invalid="ignore"):
            l_col = l_i[:rows, None]
            o_partial = np.where(l_col > 0, acc[:rows] / np.where(l_col > 0, l_col, 1), 0.0)
        state = {
            "step": int(mem.cursor[1]) - 1,
            "head": h,
            "query_block": qb,
            "rows": (r0, r1),
            "m": m_i[:rows].copy(),
            "l": l_i[:rows].copy(),
            "o_partial": o_partial.astype(p.q.dtype),
            "sram": {name: int(mem.slots[i]) for i, name in enumerate(SLOT_NAMES)},
        }
        if kind == _KIND_BLOCK:
            state["cols"] = (a, b_)
        else:
            state["columns"] = ci[a:b_].copy()
    plan = {"block": block, "footprint": need, "n_blocks": int(len(bi)), "n_strips": int(len(ci)),
            "parallel": not serial}
    return finish(mem, sram, {"o": p.restore(o), "lse": p.restore(lse)}, plan=plan,
                  slot_names=SLOT_NAMES, state=state)
