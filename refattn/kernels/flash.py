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
(ALGORITHMS.md sec. 6), so a fully masked row gives O = 0 and L = -inf, never NaN.

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
Explicit blocks larger than N are clipped to N.

On-chip footprint (slots ``SLOTS``; P overwrites S in place in slot ``S_ij``,
P~V_j accumulates into O_i as a matrix unit would; per-row scalars such as
m~, l~ and the rescale factors live in registers and are not counted)::

    F = Br*d (Q_i) + Bc*d (K_j) + Bc*dv (V_j) + Br*Bc (S_ij) + Br*dv (O_i)
        + 2*Br (m_i, l_i) [+ Br*Bc (mask_ij) with a mask]

(L_i overwrites m_i on chip before it is written.)

Steps (what ``stop_after`` and the trace count):

* FA2: one step per (query block i, key block j) tile, i outer, j inner, heads
  one after another: ``n_steps = B*Tr*Tc``. A skipped tile is a step with one
  ``skip`` event. The load of Q_i belongs to the step of its first visible
  tile; the final write of O_i and L_i belongs to the step of tile (i, Tc-1).
* FA1: per head, step 0 is the initialisation, then one step per tile
  (j outer, i inner), then one finalise step: ``n_steps = B*(Tr*Tc + 2)``.

HBM traffic closed forms (per head; ``B`` heads multiply every term). Let
``J_i`` be the number of key blocks visible to query block i: ``Tc`` without
causal, else ``clip(floor((r1_i - 1 + off)/Bc) + 1, 0, Tc)`` with ``r1_i`` the
end of block i (visible key blocks always form a prefix ``j < J_i``). Then

    R  = sum_i br_i * J_i                 (tile-rows visited)
    C  = sum_i min(J_i*Bc, Nk)            (tile-columns visited)
    A  = sum_i br_i * min(J_i*Bc, Nk)     (tile area visited)
    Qr = sum_{i: J_i > 0} br_i            (query rows with any visible tile)
    Kc = min(max_i J_i * Bc, Nk)          (key rows with any visible tile)

    FA2:  Q reads d*Qr;  K reads d*C;  V reads dv*C;  O writes Nq*dv;  L writes Nq;
          mask reads A (with a mask).
          No causal, no mask: Nq*d + Tr*Nk*(d + dv) + Nq*dv + Nq  (ALGORITHMS.md sec. 3).
    FA1:  K reads d*Kc;  V reads dv*Kc;  Q reads d*R;
          O reads dv*R, O writes Nq*dv + dv*R;  l reads R + Nq, l writes Nq + R;
          m reads R + Nq, m writes Nq + R;  L writes Nq;  mask reads A.
          No causal: Nk*(d + dv) + Tc*Nq*(d + 2*dv + 4) + Nq*(dv + 5).

FLOPs: 2*br*bc*(d + dv) per visited tile; exponentials br*bc + br (FA2) or
br*bc + 2*br (FA1) per visited tile.
"""

from __future__ import annotations

import numba
import numpy as np

from refattn import memory
from refattn.kernels.common import check_stop_after, finish, prepare, run_with_trace
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
    Mem,
    count_flops,
    end_step,
    free_all,
    hold,
    load,
    set_head,
    skip,
    store,
)

__all__ = ["flash_forward", "flash_backward", "SLOTS", "plan_blocks", "VARIANTS"]  # noqa: F822 (lazy re-export)

VARIANTS = ("fa1", "fa2")
SLOTS = ("Q_i", "K_j", "V_j", "S_ij", "O_i", "m_i", "l_i", "mask_ij")
S_Q, S_K, S_V, S_S, S_O, S_M, S_L, S_MASK = range(len(SLOTS))

CAUSAL_CODE = {None: 0, "bottom_right": 1, "top_left": 2}

#: Untraced FA2 runs with at least this much work (B*Nq*Nk*(d+dv)) and two or more
#: (head, query block) tasks use the parallel driver; smaller ones the serial one.
#: Both run the same ``_fa2_row``; tests prove they agree bit for bit.
PARALLEL_MIN_WORK = 1 << 22


# ---------------------------------------------------------------------------
# Plan: block sizes and on-chip footprint (Python, before any work starts)
# ---------------------------------------------------------------------------
def forward_footprint(br: int, bc: int, d: int, dv: int, has_mask: bool) -> int:
    """Elements on chip at the peak of one tile (see module docstring)."""
    return br * d + bc * d + bc * dv + br * bc + br * dv + 2 * br + (br * bc if has_mask else 0)


def _check_block(block):
    try:
        br, bc = block
    except (TypeError, ValueError):
        raise ValueError(f"block must be a pair (Br, Bc) of positive integers, got {block!r}") from None
    for name, x in (("Br", br), ("Bc", bc)):
        if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < 1:
            raise ValueError(f"block must be a pair (Br, Bc) of positive integers; {name} = {x!r}")
    return int(br), int(bc)


def plan_blocks(nq, nk, d, dv, sram, *, rule, footprint, block=None, what="flash kernel"):
    """Choose (Br, Bc) for M = ``sram.capacity``; see the module docstring.

    ``rule``: "kv_outer" (paper FA1: Bc large, Br <= d) or "q_outer" (FA2: Br
    large, Bc <= d). ``footprint(br, bc)`` gives the on-chip elements of a plan.
    """
    m = sram.capacity
    if block is not None:
        br, bc = _check_block(block)
        br, bc = min(br, nq), min(bc, nk)
        memory.require_fits(footprint(br, bc), sram, f"{what} with blocks Br={br}, Bc={bc} (d={d}, dv={dv})")
        return br, bc
    big = -(-m // (4 * d))
    small = min(big, d)
    br, bc = (small, big) if rule == "kv_outer" else (big, small)
    br, bc = min(br, nq), min(bc, nk)
    inner_is_bc = rule == "q_outer"
    while footprint(br, bc) > m and (br > 1 or bc > 1):
        if bc > br or (bc == br and inner_is_bc):
            bc = -(-bc // 2)
        else:
            br = -(-br // 2)
    memory.require_fits(footprint(br, bc), sram, f"{what}, even with 1x1 tiles (d={d}, dv={dv})")
    return br, bc


# ---------------------------------------------------------------------------
# Jitted pieces shared by both loop orders (and by the backward)
# ---------------------------------------------------------------------------
@numba.njit(cache=True)
def visibility(r0, r1, c0, c1, causal, off):
    """0: tile wholly hidden by the causal mask (skip); 1: fully visible; 2: crosses the diagonal."""
    if causal == 0:
        return 1
    if c0 > r1 - 1 + off:
        return 0
    if c1 - 1 > r0 + off:
        return 2
    return 1


@numba.njit(cache=True)
def set_info(st_info, b, r0, r1, c0, c1, flag):
    """Record where a stopped run stopped: head, rows, columns, a flag."""
    st_info[0] = b
    st_info[1] = r0
    st_info[2] = r1
    st_info[3] = c0
    st_info[4] = c1
    st_info[5] = flag


@numba.njit(cache=True)
def scores(qi, kj, scale, mask, has_mask, b, r0, c0, partial, off):
    """S = scale * Q_i K_j^T with masked entries set to -inf. (br, bc), input dtype."""
    s = np.dot(qi, kj.T)  # (br, bc)
    br, bc = s.shape
    for r in range(br):
        for c in range(bc):
            x = s[r, c] * scale
            if partial and c0 + c > r0 + r + off:
                x = -np.inf
            if has_mask and not mask[b, r0 + r, c0 + c]:
                x = -np.inf
            s[r, c] = x
    return s


# ---------------------------------------------------------------------------
# FA2: one query block (all its tiles); the serial and parallel drivers share it
# ---------------------------------------------------------------------------
@numba.njit(cache=True)
def _fa2_row(mem, b, i, q, k, v, mask, has_mask, scale, causal, off, bq, bk, o, lse, st_m, st_l, st_o, st_info):
    nq, d = q.shape[1], q.shape[2]
    nk, dv = k.shape[1], v.shape[2]
    tc = (nk + bk - 1) // bk
    r0 = i * bq
    r1 = min(r0 + bq, nq)
    br = r1 - r0
    zero = scale - scale
    set_head(mem, b)
    acc = np.zeros_like(o[b, r0:r1])  # (br, dv) unnormalised O~
    m = np.empty_like(lse[b, r0:r1])  # (br,) running max
    l = np.zeros_like(lse[b, r0:r1])  # (br,) running sum
    m[:] = -np.inf
    hold(mem, T_O, S_O, r0, r1, 0, dv)
    hold(mem, T_M, S_M, r0, r1, 0, 1)
    hold(mem, T_LSUM, S_L, r0, r1, 0, 1)
    q_loaded = False
    normalised = False
    for j in range(tc):
        c0 = j * bk
        c1 = min(c0 + bk, nk)
        bc = c1 - c0
        vis = visibility(r0, r1, c0, c1, causal, off)
        if vis == 0:
            skip(mem, r0, r1, c0, c1)
        else:
            if not q_loaded:
                load(mem, T_Q, S_Q, r0, r1, 0, d)
                q_loaded = True
            load(mem, T_K, S_K, c0, c1, 0, d)
            load(mem, T_V, S_V, c0, c1, 0, dv)
            if has_mask:
                load(mem, T_MASK, S_MASK, r0, r1, c0, c1)
            s = scores(q[b, r0:r1], k[b, c0:c1], scale, mask, has_mask, b, r0, c0, vis == 2, off)
            hold(mem, T_S, S_S, r0, r1, c0, c1)
            for r in range(br):
                mx = m[r]
                for c in range(bc):
                    if s[r, c] > mx:
                        mx = s[r, c]
                shift = zero
                if mx != -np.inf:
                    shift = mx
                alpha = np.exp(m[r] - shift)  # e^(m_old - m_new); 0 when m_old = -inf
                rs = zero
                for c in range(bc):
                    p = np.exp(s[r, c] - shift)
                    s[r, c] = p
                    rs += p
                l[r] = alpha * l[r] + rs
                m[r] = mx
                for t in range(dv):
                    acc[r, t] *= alpha
            hold(mem, T_P, S_S, r0, r1, c0, c1)  # P~ overwrites S
            acc += np.dot(s, v[b, c0:c1])
            count_flops(mem, 2 * br * bc * (d + dv), br * bc + br)
        if j == tc - 1:  # finalise query block i: O_i = O~ / l, L_i = m + log l
            for r in range(br):
                if l[r] > 0:
                    for t in range(dv):
                        acc[r, t] /= l[r]
                    lse[b, r0 + r] = m[r] + np.log(l[r])
                else:
                    for t in range(dv):
                        acc[r, t] = 0
                    lse[b, r0 + r] = -np.inf
            normalised = True
            o[b, r0:r1] = acc
            hold(mem, T_L, S_M, r0, r1, 0, 1)  # L overwrites m on chip
            store(mem, T_O, S_O, r0, r1, 0, dv)
            store(mem, T_L, S_M, r0, r1, 0, 1)
            free_all(mem)
        if end_step(mem):
            st_m[:br] = m
            st_l[:br] = l
            st_o[:br] = acc
            set_info(st_info, b, r0, r1, c0, c1, normalised)
            return True
    return False


@numba.njit(cache=True)
def _fa2_serial(mem, q, k, v, mask, has_mask, scale, causal, off, bq, bk, o, lse, st_m, st_l, st_o, st_info):
    tr = (q.shape[1] + bq - 1) // bq
    for b in range(q.shape[0]):
        for i in range(tr):
            if _fa2_row(mem, b, i, q, k, v, mask, has_mask, scale, causal, off, bq, bk,
                        o, lse, st_m, st_l, st_o, st_info):
                return


@numba.njit(cache=True, parallel=True)
def _fa2_parallel(mem, q, k, v, mask, has_mask, scale, causal, off, bq, bk, o, lse, st_m, st_l, st_o, st_info,
                  t_counts, t_ops, t_slots, t_sram, t_cursor):
    """The same rows as :func:`_fa2_serial`, one task per (head, query block), each
    with its own counters (``t_*``), reduced afterwards in task order."""
    tr = (q.shape[1] + bq - 1) // bq
    ntask = q.shape[0] * tr
    for t in numba.prange(ntask):
        tm = Mem(t_counts[t], t_ops[t], t_slots[t], t_sram[t], mem.trace, t_cursor[t])
        _fa2_row(tm, t // tr, t % tr, q, k, v, mask, has_mask, scale, causal, off, bq, bk,
                 o, lse, st_m, st_l, st_o, st_info)
    for t in range(ntask):
        mem.counts[:, :] += t_counts[t]
        mem.ops[:] += t_ops[t]
        mem.cursor[0] += t_cursor[t, 0]
        mem.cursor[1] += t_cursor[t, 1]
        if t_sram[t, 1] > mem.sram[1]:
            mem.sram[1] = t_sram[t, 1]


# ---------------------------------------------------------------------------
# FA1: outer loop over key blocks; O, l, m live in HBM between tiles
# ---------------------------------------------------------------------------
@numba.njit(cache=True)
def _fa1(mem, q, k, v, mask, has_mask, scale, causal, off, bq, bk, o, lse, lh, mh, st_info):
    nb, nq, d = q.shape
    nk, dv = k.shape[1], v.shape[2]
    tr = (nq + bq - 1) // bq
    tc = (nk + bk - 1) // bk
    zero = scale - scale
    for b in range(nb):
        set_head(mem, b)
        # step: initialise O = 0, l = 0, m = -inf in HBM (Algorithm 1, line 2)
        for i in range(tr):
            r0 = i * bq
            r1 = min(r0 + bq, nq)
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
        if end_step(mem):
            set_info(st_info, b, 0, nq, 0, 0, 1)
            return
        for j in range(tc):
            c0 = j * bk
            c1 = min(c0 + bk, nk)
            bc = c1 - c0
            kv_loaded = False
            for i in range(tr):
                r0 = i * bq
                r1 = min(r0 + bq, nq)
                br = r1 - r0
                vis = visibility(r0, r1, c0, c1, causal, off)
                if vis == 0:
                    skip(mem, r0, r1, c0, c1)
                else:
                    if not kv_loaded:
                        load(mem, T_K, S_K, c0, c1, 0, d)
                        load(mem, T_V, S_V, c0, c1, 0, dv)
                        kv_loaded = True
                    load(mem, T_Q, S_Q, r0, r1, 0, d)
                    load(mem, T_O, S_O, r0, r1, 0, dv)
                    load(mem, T_LSUM, S_L, r0, r1, 0, 1)
                    load(mem, T_M, S_M, r0, r1, 0, 1)
                    if has_mask:
                        load(mem, T_MASK, S_MASK, r0, r1, c0, c1)
                    s = scores(q[b, r0:r1], k[b, c0:c1], scale, mask, has_mask, b, r0, c0, vis == 2, off)
                    hold(mem, T_S, S_S, r0, r1, c0, c1)
                    mt = np.empty_like(mh[b, r0:r1])  # m~ (registers)
                    lt = np.zeros_like(lh[b, r0:r1])  # l~
                    for r in range(br):
                        mx = -np.inf
                        for c in range(bc):
                            if s[r, c] > mx:
                                mx = s[r, c]
                        mt[r] = mx
                        shift = zero
                        if mx != -np.inf:
                            shift = mx
                        rs = zero
                        for c in range(bc):
                            p = np.exp(s[r, c] - shift)  # P~ = exp(S - m~)
                            s[r, c] = p
                            rs += p
                        lt[r] = rs
                    hold(mem, T_P, S_S, r0, r1, c0, c1)
                    pv = np.dot(s, v[b, c0:c1])  # P~ V_j, accumulated into O_i
                    for r in range(br):
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
                            for t in range(dv):
                                o[b, r0 + r, t] = c_old * o[b, r0 + r, t] + c_new * pv[r, t]
                        mh[b, r0 + r] = mnew
                        lh[b, r0 + r] = lnew
                    count_flops(mem, 2 * br * bc * (d + dv), br * bc + 2 * br)
                    store(mem, T_O, S_O, r0, r1, 0, dv)
                    store(mem, T_LSUM, S_L, r0, r1, 0, 1)
                    store(mem, T_M, S_M, r0, r1, 0, 1)
                if end_step(mem):
                    set_info(st_info, b, r0, r1, c0, c1, 1)
                    return
            free_all(mem)
        # step: finalise L = m + log l for the backward
        for i in range(tr):
            r0 = i * bq
            r1 = min(r0 + bq, nq)
            load(mem, T_LSUM, S_L, r0, r1, 0, 1)
            load(mem, T_M, S_M, r0, r1, 0, 1)
            for r in range(r0, r1):
                lse[b, r] = mh[b, r] + np.log(lh[b, r]) if lh[b, r] > 0 else -np.inf
            hold(mem, T_L, S_M, r0, r1, 0, 1)  # L overwrites m on chip
            store(mem, T_L, S_M, r0, r1, 0, 1)
            free_all(mem)
        if end_step(mem):
            set_info(st_info, b, 0, nq, 0, nk, 1)
            return


# ---------------------------------------------------------------------------
# Public wrapper
# ---------------------------------------------------------------------------
def flash_forward(q, k, v, *, sram, variant="fa2", causal=False, scale=None, mask=None, block=None,
                  trace=False, stop_after=None):
    """FlashAttention forward on the simulated hierarchy (see the module docstring).

    Returns a :class:`~refattn.kernels.common.KernelResult` with outputs
    ``o`` (..., Nq, dv) and ``lse`` (..., Nq), both in the input dtype.
    ``sram``: an :class:`~refattn.memory.Sram`, an int M (elements) or a chip
    preset name. ``variant``: "fa1" or "fa2". ``causal``: False, True (=
    "bottom_right") or "top_left". ``mask``: bool (..., Nq, Nk), True = keep.
    ``block``: (Br, Bc) or None for the rule in the module docstring.
    ``stop_after=k``: stop after step k (1 <= k <= n_steps) and return
    ``result.state``; the trace is then always recorded.
    """
    if variant not in VARIANTS:
        raise ValueError(f"flash_forward: variant must be one of {VARIANTS}, got {variant!r}")
    p = prepare(q, k, v, scale=scale, causal=causal, mask=mask, where="flash_forward")
    sram = memory.as_sram(sram)
    nb, nq, nk, d, dv = p.batch, p.nq, p.nk, p.d, p.dv
    has_mask = p.has_mask
    bq, bk = plan_blocks(nq, nk, d, dv, sram, rule="kv_outer" if variant == "fa1" else "q_outer",
                         footprint=lambda br, bc: forward_footprint(br, bc, d, dv, has_mask), block=block,
                         what=f"flash_forward ({variant}{', with mask' if has_mask else ''})")
    tr, tc = -(-nq // bq), -(-nk // bk)
    n_steps = nb * (tr * tc + (2 if variant == "fa1" else 0))
    check_stop_after(stop_after, n_steps, "flash_forward")
    plan = {"variant": variant, "Br": bq, "Bc": bk, "Tr": tr, "Tc": tc, "n_steps": n_steps,
            "footprint": forward_footprint(bq, bk, d, dv, has_mask), "M": sram.capacity,
            "causal": p.causal, "masked": has_mask}

    dt = p.q.dtype
    sc = dt.type(p.scale)
    ccode = CAUSAL_CODE[p.causal]
    off = nk - nq if p.causal == "bottom_right" else 0
    o = np.zeros((nb, nq, dv), dt)  # HBM
    lse = np.zeros((nb, nq), dt)  # HBM
    st_info = np.zeros(6, np.int64)
    stepped = stop_after is not None
    traced = bool(trace) or stepped

    qr, kr, vr, mr = (readonly(x) for x in (p.q, p.k, p.v, p.mask))
    if variant == "fa2":
        st_m, st_l, st_o = np.zeros(bq, dt), np.zeros(bq, dt), np.zeros((bq, dv), dt)
        args = (qr, kr, vr, mr, has_mask, sc, ccode, off, bq, bk, o, lse, st_m, st_l, st_o, st_info)

        def call(mem):
            o.fill(0)
            lse.fill(0)
            ntask = nb * tr
            if traced or ntask < 2 or nb * nq * nk * (d + dv) < PARALLEL_MIN_WORK:
                _fa2_serial(mem, *args)
            else:
                t_sram = np.zeros((ntask, 3), np.int64)
                t_sram[:, 2] = sram.capacity
                t_cursor = np.zeros((ntask, 4), np.int64)
                t_cursor[:, 2] = -1
                _fa2_parallel(mem, *args, np.zeros((ntask, memory.N_TENSORS, 2), np.int64),
                              np.zeros((ntask, 2), np.int64), np.zeros((ntask, memory.N_SLOTS), np.int64),
                              t_sram, t_cursor)

        estimate = nb * (tr * tc * 8 + tr * 16)
    else:
        lh, mh = np.zeros((nb, nq), dt), np.zeros((nb, nq), dt)  # HBM l and m
        args = (qr, kr, vr, mr, has_mask, sc, ccode, off, bq, bk, o, lse, lh, mh, st_info)

        def call(mem):
            _fa1(mem, *args)

        estimate = nb * (tr * tc * 14 + tc * 10 + tr * 20 + 8)

    mem = run_with_trace(call, sram, trace=traced, trace_estimate=estimate, stop_after=stop_after)
    result = finish(mem, sram, {"o": p.restore(o), "lse": p.restore(lse)}, plan=plan, slot_names=SLOTS)
    if stepped:
        b, r0, r1, c0, c1, normalised = (int(x) for x in st_info)
        if variant == "fa2":
            n = r1 - r0
            m_s, l_s, o_s = st_m[:n].copy(), st_l[:n].copy(), st_o[:n].copy()
        else:
            m_s, l_s, o_s = mh[b, r0:r1].copy(), lh[b, r0:r1].copy(), o[b, r0:r1].copy()
        result.state = {
            "step": int(stop_after), "head": b, "rows": (r0, r1), "cols": (c0, c1),
            "m": m_s, "l": l_s, "o_partial": o_s, "o_normalised": bool(normalised),
            "sram": result.trace.sram_at(int(stop_after) - 1),
            "traffic": memory.Traffic.from_counts(mem.counts, sram.bytes_per_element),
        }
    return result


def readonly(x):
    """A read-only view: inputs reach the jitted loops with one array type (Numba types
    read-only and writable arrays differently, and ``prepare`` returns either)."""
    x = x.view()
    x.flags.writeable = False
    return x



def __getattr__(name):  # flash_backward lives in its own module; re-exported lazily (no import cycle)
    if name == "flash_backward":
        from refattn.kernels.flash_backward import flash_backward

        return flash_backward
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

