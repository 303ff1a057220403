"""FlashAttention backward with recomputation (FA2 loop order) on the simulated hierarchy.

Given q, k, v, the forward output o, its log-sum-exp L and the upstream
gradient dO, compute dQ, dK, dV without ever storing S or P in HBM: each tile
rebuilds P from L (docs/algorithms.md; FlashAttention-2, Algorithm 2)::

    pre-pass, for each query block i:                       (one step per block)
        load O_i, dO_i;  D_i = rowsum(dO_i * O_i);  write D_i;  write dQ_i = 0
    for j in 0..Tc-1:                                       (outer: key blocks)
        dK_j = 0, dV_j = 0 on chip; load K_j, V_j at the first visible tile
        for i in 0..Tr-1:                                   (inner: query blocks; one step per tile)
            load Q_i, dO_i, L_i, D_i, dQ_i
            S = scale * Q_i K_j^T (masked entries -inf);  P = exp(S - L_i)   (0 where L_i = -inf)
            dV_j += P^T dO_i
            dP = dO_i V_j^T;  dS = P * (dP - D_i)
            dQ_i += scale * dS K_j;  write dQ_i             (read-modify-write in HBM)
            dK_j += scale * dS^T Q_i
        write dK_j, dV_j

Masks and skipping are those of the forward (:mod:`refattn.kernels.flash`):
bottom-right causal by default, tiles wholly above the diagonal are skipped
(a ``skip`` event, no loads), diagonal tiles masked element-wise, an explicit
boolean mask read per visited tile. A fully masked row has L = -inf and gets
P = 0, so its dQ row is 0 and it adds nothing to dK, dV.

Variants (docs/variants.md) as in the forward: the window's band skips tiles
the same way; softcap and ALiBi enter the score tile; with a softcap the tile
1 - tanh^2(capped S / softcap) is kept on chip (slot ``dtanh_ij``, Br*Bc) before
S is turned into P, and dS is multiplied by it. GQA: the G query heads of a KV
head run inside the key-block loop (pre-pass over the group's heads, then for
each j: the group's heads, then i), so K_j and V_j are read once per KV head
and dK_j, dV_j accumulate the whole group on chip and are written once per
KV head: no expanded dK, dV in HBM.

Packed batches (``cu_seqlens``): the tile layout of the forward
(refattn/kernels/variant_args.py; :mod:`refattn.kernels.flash`): the pre-pass
runs over the row blocks of every segment (padding rows included: they get
D and dQ = 0), the main loop over the key blocks of every segment against that
segment's row blocks only. A key block whose segment has no queries (a
sequence with keys and no queries, the padding keys) is one step with one
empty tile, skipped, in which dK_j = dV_j = 0 are written; so every key row's
dK and dV are written by the kernel, and the keys of other sequences are never
loaded.

Precision: the tiles are computed in the input dtype (float32 or float64);
``o``, ``lse`` and ``do`` are cast to it. Two sums are kept in float64 because
float32 loses too much in them (docs/design.md, "Precision"):

* dK_j and dV_j accumulate over all Tr query blocks on chip in float64 and are
  rounded to the dtype when written (with Nq >> Nk a float32 running sum over
  thousands of blocks would drift);
* D_i = rowsum(dO_i * O_i) and the dP tile dO_i V_j^T are summed in float64
  and rounded to the dtype, so dP - D is computed from two equally rounded
  numbers (with one key, dP = D exactly and dK = 0 as it should be).

Outputs ``dq``, ``dk``, ``dv`` have the shapes of q, k, v (gradients of
broadcast leading dims are summed back).

Block sizes (``block=None``): the paper's rule ``Bc = ceil(M/(4d))``,
``Br = min(ceil(M/(4d)), d)`` (outer loop over key blocks), clipped to N and
halved (larger first) until the footprint fits, as in the forward::

    F = max(Bc*(2d + 2dv) + Br*(2d + dv) + 2*Br + 2*Br*Bc [+ Br*Bc mask],   (main loop)
            Br*(2*dv + d + 1))                                               (pre-pass)

slots K_j, V_j, dK_j, dV_j, Q_i, dO_i, dQ_i, L_i, D_i, S_ij (S then P),
dP_ij (dP then dS), mask_ij; pre-pass O_i, dO_i, D_i, dQ_i.

Steps (1..n_steps): per KV head, ``G*Tr`` pre-pass steps (phase "pre-pass"),
then one step per (j, query head, i) tile (j outer, phase "main"), skipped tiles
included: ``n_steps = B*(Tr + Tr*Tc)`` (B query heads); for a packed batch
``B * sum_s Tr_s + (B/G) * sum_s Tc_s * max(G*Tr_s, 1)`` over the segments s. The writes of dK_j and
dV_j belong to the step of the group's last tile of column j. ``result.state.arrays`` of a stopped run: ``dk_partial``,
``dv_partial`` (the on-chip dK_j, dV_j sums of the current key block, float64).

HBM traffic closed form (per query head, except K, V, dK, dV: per KV head; with
R, A, Kc as in :mod:`refattn.kernels.flash`: the visible key blocks
``a_i <= j < b_i`` of query block i, ``J_i = b_i - a_i``, ``R = sum_i br_i*J_i``,
``A = sum_i br_i*cols_i``, ``Kc`` the key rows with any visible tile)::

    O reads Nq*dv;  dO reads Nq*dv + dv*R;  D writes Nq, reads R;
    dQ writes Nq*d + d*R, reads d*R;  Q reads d*R;  L reads R;
    K reads d*Kc;  V reads dv*Kc;  dK writes Nk*d;  dV writes Nk*dv (per KV head);  mask reads A.
    No causal, no mask: Nq*(2dv + 1 + d) + Tc*Nq*(3d + dv + 2) + Nk*(2d + 2dv).

Packed batches: the same closed form with ``Nq``, ``Nk`` the packed totals
(padding included) and R, A, Kc summed over the sequences (each that of the
rectangular problem ``(Nq_b, Nk_b)``). Padding rows cost their pre-pass (O and
dO reads, D and dQ writes); padding keys and the keys of sequences without
queries cost their dK and dV writes only.

FLOPs: 2*br*bc*(3d + 2dv) per visited tile (S, dV, dP, dQ, dK); exponentials
br*bc per visited tile.
"""

from __future__ import annotations

import numba
import numpy as np

from refattn import memory
from refattn.kernels.common import (
    balanced_order,
    close_step,
    enter_tile,
    fast_exp,
    finish,
    grad_input,
    grad_outputs,
    load_kv_once,
    new_tasks,
    plan_blocks,
    readonly,
    reduce_tasks,
    run_with_trace,
    score_tile,
    softcap_dtanh,
    step_state,
    task_mem,
    visibility,
    warn_if_costly,
)
from refattn.kernels.contract import Plan
from refattn.kernels.variant_args import block_counts, prepare_variants
from refattn.memory import (
    T_D,
    T_DK,
    T_DO,
    T_DP,
    T_DQ,
    T_DS,
    T_DT,
    T_DV,
    T_L,
    T_MASK,
    T_O,
    T_P,
    T_Q,
    T_S,
    count_flops,
    hold,
    load,
    set_head,
    store,
)
from refattn.validation import check_product_range, unbroadcast

__all__ = ["flash_backward", "BACKWARD_SLOTS", "backward_footprint", "backward_plan"]

BACKWARD_SLOTS = ("Q_i", "K_j", "V_j", "dO_i", "dQ_i", "dK_j", "dV_j", "L_i", "D_i", "S_ij", "dP_ij",
                  "mask_ij", "O_i", "dtanh_ij")
(B_Q, B_K, B_V, B_DO, B_DQ, B_DK, B_DV, B_L, B_D, B_S, B_DP, B_MASK, B_O, B_DT) = range(len(BACKWARD_SLOTS))
PHASES = ("pre-pass", "main")

#: Untraced runs with at least this much work (B*Nq*Nk*(d+dv)) and two or more (head, key
#: block) tasks use the parallel driver; smaller ones the serial one. Both run the same
#: ``_key_block`` and add the dQ contributions in the same order: tests prove they agree bit for bit.
PARALLEL_MIN_WORK = 1 << 22
#: The parallel driver runs key blocks in waves whose dQ contributions (one (Nq, d) buffer per
#: task) take at most this many bytes; after each wave they are added to dQ in key-block order.
WAVE_BYTES = 32 << 20


def slot_footprint(br: int, bc: int, d: int, dv: int, has_mask: bool, softcap: bool = False) -> dict:
    """{slot: elements} at the peak: the main loop's tile or the pre-pass, whichever is larger."""
    main = {"Q_i": br * d, "K_j": bc * d, "V_j": bc * dv, "dO_i": br * dv, "dQ_i": br * d, "dK_j": bc * d,
            "dV_j": bc * dv, "L_i": br, "D_i": br, "S_ij": br * bc, "dP_ij": br * bc,
            "mask_ij": br * bc if has_mask else 0, "dtanh_ij": br * bc if softcap else 0}
    pre = {"O_i": br * dv, "dO_i": br * dv, "D_i": br, "dQ_i": br * d}
    return main if sum(main.values()) >= sum(pre.values()) else pre


def backward_footprint(br: int, bc: int, d: int, dv: int, has_mask: bool, softcap: bool = False) -> int:
    return sum(slot_footprint(br, bc, d, dv, has_mask, softcap).values())


def backward_plan(nb, nq, nk, d, dv, sram, *, has_mask=False, causal=None, block=None, group=1,
                  variants=None, seqlens=None) -> Plan:
    """``group``: query heads per KV head (GQA); ``variants``: recorded in ``details`` (a softcap adds
    the ``dtanh_ij`` tile); ``seqlens``: ``[(Nq_s, Nk_s)]`` of the segments of a packed batch
    (refattn/kernels/variant_args.py; None: one segment ``(Nq, Nk)``)."""
    cap = bool((variants or {}).get("softcap"))
    seqlens = [(nq, nk)] if seqlens is None else seqlens
    bq, bk = plan_blocks(max(max(a for a, _ in seqlens), 1), max(max(b for _, b in seqlens), 1), d, dv, sram,
                         rule="kv_outer",
                         footprint=lambda br, bc: backward_footprint(br, bc, d, dv, has_mask, cap), block=block,
                         what=f"flash_backward{' with mask' if has_mask else ''}{' with softcap' if cap else ''}")
    trs, tcs = block_counts(seqlens, bq, bk)
    n_steps = nb * sum(trs) + nb // group * sum(b * max(group * a, 1) for a, b in zip(trs, tcs))
    return Plan(kernel="flash_backward", blocks={"Br": bq, "Bc": bk}, tiles={"Tr": sum(trs), "Tc": sum(tcs)},
                footprint=slot_footprint(bq, bk, d, dv, has_mask, cap), M=sram.capacity,
                n_steps=n_steps,
                step="per KV head: one pre-pass step per (query head, query block), then one (key block j, "
                     "query head, query block i) tile each (j outer)",
                details={"variant": "fa2_backward", "causal": causal or "none", "masked": has_mask, "heads": nb,
                         **(variants or {})})


@numba.njit(cache=True)
def _pre_pass(mem, dims, b, q, o, do, rblocks, dq, dh, info, compute):
    """Pre-pass of head b: D = rowsum(dO * O) (summed in float64) and dQ = 0 to HBM, one step per
    row block of the tile layout. True if stopped."""
    nb, nq, nk, d, dv = dims
    for t in range(rblocks.shape[0]):
        r0, r1 = rblocks[t, 1], rblocks[t, 2]
        load(mem, T_O, B_O, r0, r1, 0, dv)
        load(mem, T_DO, B_DO, r0, r1, 0, dv)
        if compute:
            for r in range(r0, r1):
                acc = 0.0
                for x in range(dv):
                    acc += np.float64(do[b, r, x]) * np.float64(o[b, r, x])
                dh[b, r] = acc
            dq[b, r0:r1] = 0
        hold(mem, T_D, B_D, r0, r1, 0, 1)
        store(mem, T_D, B_D, r0, r1, 0, 1)
        hold(mem, T_DQ, B_DQ, r0, r1, 0, d)
        store(mem, T_DQ, B_DQ, r0, r1, 0, d)
        if close_step(mem, info, 0, b, r0, r1, 0, 0, True):
            return True
    return False


@numba.njit(cache=True)
def _probabilities(st, scale, lse_rows, neg):
    """P^T in place: st[c, r] = exp(scale * st[c, r] - L_r), 0 for a row with L_r = -inf."""
    n, br = st.shape
    for r in range(br):
        x = lse_rows[r]
        neg[r] = x if x != -np.inf else np.inf  # exp(s - inf) = 0
    for c in range(n):
        for r in range(br):
            st[c, r] = fast_exp(st[c, r] * scale - neg[r])


@numba.njit(cache=True)
def _key_block(mem, dims, h, j, q, k, v, lse, do, mask, has_mask, scale, tiles, vt, bq, bk,
               dq_out, hb, direct, dk, dv_, dh, st_dk, st_dv, info, compute):
    """All tiles (j, g, i) of key block ``cblocks[j]`` of KV head h: the group's query heads g
    (b = h*G + g), then the row blocks i of the key block's segment (the main loop's body; G = 1
    without GQA; the tile layout: refattn/kernels/variant_args.py). A segment without queries has
    one empty tile, skipped, so dK_j = dV_j = 0 are still written in a step of their own.

    Each tile's dQ contribution ``t = scale dS K_j`` is added to ``dq_out[b, rows]``
    (``direct``: the HBM dQ, serial runs) or stored in ``dq_out[hb, g*Nq + rows]`` (a
    per-task buffer that the parallel driver adds to dQ afterwards in key-block order, so
    both drivers make the same float additions in the same order). True if the run stopped.
    """
    nb, nq, nk, d, dv = dims
    group, softcap, slopes = vt[0], vt[3], vt[4]  # variants (refattn/kernels/variant_args.py)
    seqs, rblocks, cblocks = tiles
    s, c0, c1 = cblocks[j, 0], cblocks[j, 1], cblocks[j, 2]
    causal, off, lo, aoff = seqs[s, 4], seqs[s, 5], seqs[s, 6], seqs[s, 7]
    rb0, tr = seqs[s, 8], seqs[s, 9] - seqs[s, 8]
    bc = c1 - c0
    nbq, nbc = (bq, bc) if compute else (0, 0)  # count-only runs keep no arrays
    dt = q.dtype
    cols = np.empty(bc, np.int64)
    for t in range(bc):
        cols[t] = c0 + t
    s_buf = np.empty(nbq * nbc, dt)  # S^T, then P^T (bc, br)
    t_buf = np.empty(nbq * nbc if softcap > 0 else 0, dt)  # the softcap's 1 - tanh^2 tile (bc, br)
    ds_buf = np.empty(nbq * nbc, dt)  # dS^T (bc, br), times scale
    dp_buf = np.empty(nbq * nbc, np.float64)  # dP^T (bc, br) in float64
    neg = np.empty(nbq, dt)
    tq = np.empty((nbq, d), dt)  # one tile's dQ contribution
    tk = np.empty((nbc, d), dt)  # one tile's dK contribution
    tv = np.empty((nbc, dv), dt)  # one tile's dV contribution
    dkj = np.zeros((nbc, d), np.float64)  # on chip, float64 across query blocks
    dvj = np.zeros((nbc, dv), np.float64)
    vj64 = np.empty((nbc, dv), np.float64)
    if compute:
        vj64[:] = v[h, c0:c1]
    hold(mem, T_DK, B_DK, c0, c1, 0, d)
    hold(mem, T_DV, B_DV, c0, c1, 0, dv)
    kv_loaded = False  # K_j, V_j stay on chip for every query head of the group
    ntile = max(group * tr, 1)  # (a segment without queries: one empty tile)
    for tile in range(ntile):
        g, i, r0, r1 = 0, 0, seqs[s, 0], seqs[s, 0]
        if tr > 0:
            g, i = tile // tr, tile % tr
            r0, r1 = rblocks[rb0 + i, 1], rblocks[rb0 + i, 2]
        b = h * group + g
        if i == 0:
            set_head(mem, b)
        br = r1 - r0
        vis = enter_tile(mem, r0, r1, c0, c1, causal, off, lo)
        if vis != 0:
            kv_loaded = load_kv_once(mem, kv_loaded, B_K, B_V, c0, c1, d, dv)
            load(mem, T_Q, B_Q, r0, r1, 0, d)
            load(mem, T_DO, B_DO, r0, r1, 0, dv)
            load(mem, T_L, B_L, r0, r1, 0, 1)
            load(mem, T_D, B_D, r0, r1, 0, 1)
            load(mem, T_DQ, B_DQ, r0, r1, 0, d)
            if has_mask:
                load(mem, T_MASK, B_MASK, r0, r1, c0, c1)
            hold(mem, T_S, B_S, r0, r1, c0, c1)
            if softcap > 0:
                hold(mem, T_DT, B_DT, r0, r1, c0, c1)
            hold(mem, T_P, B_S, r0, r1, c0, c1)
            hold(mem, T_DP, B_DP, r0, r1, c0, c1)
            hold(mem, T_DS, B_DP, r0, r1, c0, c1)
            if compute:
                qi, doi, kj = q[b, r0:r1], do[b, r0:r1], k[h, c0:c1]
                st, eff = score_tile(qi, kj, bc, s_buf, scale, r0, cols, vis == 2, off, mask, has_mask, b,
                                     lo, softcap, slopes[b], aoff)
                if softcap > 0:  # before S becomes P: the cap's derivative, kept on chip
                    dtanh = softcap_dtanh(st, t_buf, r0, cols, softcap, slopes[b], aoff)
                _probabilities(st, eff, lse[b, r0:r1], neg[:br])  # P^T (bc, br)
                np.dot(st, doi, tv)  # P^T dO_i
                dvj += tv
                dpt = dp_buf[:bc * br].reshape((bc, br))
                np.dot(vj64, doi.astype(np.float64).T, dpt)  # dP^T = V_j dO_i^T, float64
                ds = ds_buf[:bc * br].reshape((bc, br))
                for c in range(bc):
                    for r in range(br):
                        x = dt.type(dpt[c, r])
                        ds[c, r] = scale * (st[c, r] * (x - dh[b, r0 + r]))  # scale * dS^T
                if softcap > 0:
                    for c in range(bc):
                        for r in range(br):
                            ds[c, r] *= dtanh[c, r]  # through the cap: * (1 - tanh^2)
                tqi = tq[:br]
                np.dot(ds.T, kj, tqi)  # scale * dS K_j
                if direct:
                    dq_out[b, r0:r1] += tqi
                else:
                    dq_out[hb, g * nq + r0:g * nq + r1] = tqi
                np.dot(ds, qi, tk)  # scale * dS^T Q_i
                dkj += tk
            store(mem, T_DQ, B_DQ, r0, r1, 0, d)
            count_flops(mem, 2 * br * bc * (3 * d + 2 * dv), br * bc)
        last = tile == ntile - 1
        if last:  # dK_j, dV_j of the whole group, once per KV head
            if compute:
                dk[h, c0:c1] = dkj.astype(dk.dtype)
                dv_[h, c0:c1] = dvj.astype(dv_.dtype)
            store(mem, T_DK, B_DK, c0, c1, 0, d)
            store(mem, T_DV, B_DV, c0, c1, 0, dv)
        if close_step(mem, info, 1, b, r0, r1, c0, c1, last):
            if compute:
                st_dk[:bc] = dkj
                st_dv[:bc] = dvj
            return True
    return False


@numba.njit(cache=True)
def _backward_serial(mem, dims, q, k, v, o, lse, do, mask, has_mask, scale, tiles, vt, bq, bk, dq, dk, dv_,
                     dh, st_dk, st_dv, info, compute):
    nb = dims[0]
    group = vt[0]
    tc = tiles[2].shape[0]
    for h in range(nb // group):  # KV head h and its query heads h*G .. h*G + G - 1
        for b in range(h * group, h * group + group):
            set_head(mem, b)
            if _pre_pass(mem, dims, b, q, o, do, tiles[1], dq, dh, info, compute):
                return
        for j in range(tc):
            if _key_block(mem, dims, h, j, q, k, v, lse, do, mask, has_mask, scale, tiles, vt, bq, bk,
                          dq, 0, True, dk, dv_, dh, st_dk, st_dv, info, compute):
                return


@numba.njit(cache=True, parallel=True)
def _backward_parallel(mem, dims, q, k, v, o, lse, do, mask, has_mask, scale, tiles, vt, bq, bk, dq, dk, dv_,
                       dh, st_dk, st_dv, info, compute, tasks, part):
    """The same tiles as :func:`_backward_serial`: the pre-passes, then one task per (head, key
    block) in waves of ``part.shape[0]`` tasks run in parallel (own counters, reduced in task
    order); after each wave the tasks' dQ contributions are added to dQ in key-block order."""
    nb, nq = dims[0], dims[1]
    seqs, rblocks, cblocks = tiles
    tr, tc = rblocks.shape[0], cblocks.shape[0]
    for b in range(nb):
        set_head(mem, b)
        _pre_pass(mem, dims, b, q, o, do, rblocks, dq, dh, info, compute)
    group = vt[0]
    ntask = nb // group * tc  # one task per (KV head, key block)
    wave = part.shape[0]
    for w0 in range(0, ntask, wave):
        nw = min(wave, ntask - w0)
        for u in numba.prange(nw):
            t = w0 + balanced_order(u, nw)  # light and heavy causal key blocks on every thread
            tm = task_mem(tasks, t)
            _key_block(tm, dims, t // tc, t % tc, q, k, v, lse, do, mask, has_mask, scale, tiles, vt, bq, bk,
                       part, t - w0, False, dk, dv_, dh, st_dk, st_dv, info, compute)
        if compute:
            for i in numba.prange(tr):  # dQ_i += contributions, key blocks in order
                s, r0, r1 = rblocks[i, 0], rblocks[i, 1], rblocks[i, 2]
                for u in range(nw):
                    h, j = (w0 + u) // tc, (w0 + u) % tc
                    if cblocks[j, 0] == s and visibility(r0, r1, cblocks[j, 1], cblocks[j, 2], seqs[s, 4],
                                                         seqs[s, 5], seqs[s, 6]) != 0:
                        for g in range(group):
                            dq[h * group + g, r0:r1] += part[u, g * nq + r0:g * nq + r1]
    reduce_tasks(mem, tasks)


def flash_backward(q, k, v, o, lse, do, *, sram, causal=False, scale=None, mask=None, block=None,
                   trace=False, stop_after=None, count_only=False, num_kv_heads=None, window=None, softcap=None,
                   alibi_slopes=None, cu_seqlens_q=None, cu_seqlens_k=None):
    """FlashAttention backward (see the module docstring). Returns a KernelResult with ``dq, dk, dv``.

    ``o`` and ``lse`` are the forward's outputs (any float dtype; cast to the
    input dtype); ``do`` has the shape of ``o``. ``lse`` may hold -inf (fully
    masked rows) but no NaN or +inf. ``stop_after=k`` stops after step k and
    sets ``result.state`` (docs/contract.md; arrays ``dk_partial``, ``dv_partial``).
    ``count_only=True``: the same loop with the arithmetic skipped (same counts and
    trace, ``outputs`` empty, no (N, d) array allocated; docs/contract.md).
    Variants as in :func:`refattn.kernels.flash.flash_forward` (docs/variants.md); with
    ``num_kv_heads``, ``dk`` and ``dv`` are summed over each group on chip and have the shapes of k, v.
    """
    where = "flash_backward"
    p, kv = prepare_variants(q, k, v, scale=scale, causal=causal, mask=mask, num_kv_heads=num_kv_heads,
                             window=window, softcap=softcap, alibi_slopes=alibi_slopes, cu_seqlens_q=cu_seqlens_q,
                             cu_seqlens_k=cu_seqlens_k, where=where, count_only=count_only, allow_varlen=True)
    sram = memory.as_sram(sram)
    nb, nq, nk, d, dv = p.dims
    dt = p.q.dtype
    compute = not count_only
    oshape = p.lead + (nq, dv)
    o_f = grad_input("o", o, oshape, dt, where)
    do_f = grad_input("do", do, oshape, dt, where)
    lse_f = grad_input("lse", lse, p.lead + (nq,), dt, where, allow_neginf=True)
    v_full = p.v if compute else np.asarray(v)
    check_product_range(where, "dP = dO V^T", "do", do_f, "v", v_full, 1.0, dt)
    if not compute:  # placeholders of the same types: the loop only counts
        o_f, do_f, lse_f = (np.zeros((1,) * (x.ndim - 1) + (x.shape[-1],), dt) if x.ndim == 3
                            else np.zeros((1, 1), dt) for x in (o_f, do_f, lse_f))

    plan = backward_plan(nb, nq, nk, d, dv, sram, has_mask=p.has_mask, causal=p.causal, block=block,
                         group=kv.group, variants=kv.details, seqlens=kv.seqlens)
    group = kv.group
    plan.check_stop_after(stop_after)
    bq, bk, tr, tc = plan.blocks["Br"], plan.blocks["Bc"], plan.tiles["Tr"], plan.tiles["Tc"]
    tiles = kv.layout(bq, bk)  # (seqs, rblocks, cblocks): the tile tables of refattn/kernels/variant_args.py
    area = sum(a * b for a, b in kv.seqlens)  # Nq * Nk, or sum_b Nq_b * Nk_b of a packed batch
    warn_if_costly(where, plan, p, count_only=count_only, flops=2 * nb * area * (3 * d + 2 * dv))

    hb, hq, hk = (nb, nq, nk) if compute else (1, 1, 1)  # count-only: placeholders, never touched
    dq = np.zeros((hb, hq, d), dt)
    hkv = nb // group if compute else 1  # one dK, dV per KV head
    dk = np.zeros((hkv, hk, d), dt)
    dvv = np.zeros((hkv, hk, dv), dt)
    dh = np.zeros((hb, hq), dt)  # D in HBM
    st_dk, st_dv, info = np.zeros((bk, d)), np.zeros((bk, dv)), np.zeros(6, np.int64)
    ins = (readonly(x) for x in (p.q, kv.k, kv.v, o_f, lse_f, do_f, p.mask))
    args = (p.dims, *ins, p.has_mask, dt.type(p.scale), tiles, kv.vt(dt), bq, bk, dq, dk, dvv, dh,
            st_dk, st_dv, info, compute)
    traced = bool(trace) or stop_after is not None

    def call(mem):
        ntask = nb // group * tc  # (KV head, key block) tasks
        if traced or not compute or ntask < 2 or nb * area * (d + dv) < PARALLEL_MIN_WORK:
            _backward_serial(mem, *args)
        else:
            # tasks per wave: as many as WAVE_BYTES of dQ contributions hold (at least two per thread)
            wave = min(ntask, max(2 * numba.get_num_threads(), WAVE_BYTES // (group * nq * d * dt.itemsize)))
            part = np.empty((wave, group * hq, d), dt)  # per-task dQ contributions of one wave (the group's)
            _backward_parallel(mem, *args, new_tasks(ntask, sram.capacity), part)

    def state_fn(mem, trace_):
        n = int(info[5] - info[4])
        arrays = {"dk_partial": st_dk[:n].copy(), "dv_partial": st_dv[:n].copy()} if compute else {}
        return step_state(mem, sram, trace_, info, PHASES, arrays)

    estimate = plan.n_steps * 14 + nb * (tc * 8 + tr * 10)
    mem = run_with_trace(call, sram, trace=traced, trace_estimate=estimate, stop_after=stop_after)
    outputs = {}
    if compute:
        outputs = grad_outputs(p, (np.shape(q),), dq=dq)
        outputs.update(dk=unbroadcast(dk.reshape(kv.kv_lead + dk.shape[1:]), np.shape(k)),
                       dv=unbroadcast(dvv.reshape(kv.kv_lead + dvv.shape[1:]), np.shape(v)))
    return finish(mem, sram, outputs, plan=plan, slot_names=BACKWARD_SLOTS, state_fn=state_fn)
