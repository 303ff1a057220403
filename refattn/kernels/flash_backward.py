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
included: ``n_steps = B*(Tr + Tr*Tc)`` (B query heads). The writes of dK_j and
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

FLOPs: 2*br*bc*(3d + 2dv) per visited tile (S, dV, dP, dQ, dK); exponentials
br*bc per visited tile.
"""

from __future__ import annotations

import numba
import numpy as np

from refattn import memory
from refattn.kernels.common import (
    close_step,
    enter_tile,
    finish,
    grad_input,
    grad_outputs,
    load_kv_once,
    plan_blocks,
    readonly,
    run_with_trace,
    score_tile,
    softcap_dtanh,
    step_state,
)
from refattn.kernels.contract import Plan
from refattn.kernels.variant_args import prepare_variants
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
                  variants=None) -> Plan:
    """``group``: query heads per KV head (GQA); ``variants``: recorded in ``details`` (a softcap adds
    the ``dtanh_ij`` tile)."""
    cap = bool((variants or {}).get("softcap"))
    bq, bk = plan_blocks(nq, nk, d, dv, sram, rule="kv_outer",
                         footprint=lambda br, bc: backward_footprint(br, bc, d, dv, has_mask, cap), block=block,
                         what=f"flash_backward{' with mask' if has_mask else ''}{' with softcap' if cap else ''}")
    tr, tc = -(-nq // bq), -(-nk // bk)
    return Plan(kernel="flash_backward", blocks={"Br": bq, "Bc": bk}, tiles={"Tr": tr, "Tc": tc},
                footprint=slot_footprint(bq, bk, d, dv, has_mask, cap), M=sram.capacity,
                n_steps=nb * (tr + tr * tc),
                step="per KV head: one pre-pass step per (query head, query block), then one (key block j, "
                     "query head, query block i) tile each (j outer)",
                details={"variant": "fa2_backward", "causal": causal or "none", "masked": has_mask, "heads": nb,
                         **(variants or {})})


@numba.njit(cache=True)
def _backward(mem, q, k, v, o, lse, do, mask, has_mask, scale, causal, off, vt, bq, bk, dq, dk, dv_, dh,
              st_dk, st_dv, info):
    group, lo, aoff, softcap, slopes = vt  # variants (refattn/kernels/variant_args.py)
    nb, nq, d = q.shape
    nk, dv = k.shape[1], v.shape[2]
    tr = (nq + bq - 1) // bq
    tc = (nk + bk - 1) // bk
    s_buf = np.empty(bq * bk, q.dtype)
    t_buf = np.empty(bq * bk, q.dtype)  # the softcap's 1 - tanh^2 tile
    cols = np.empty(bk, np.int64)
    for h in range(nb // group):  # KV head h serves query heads h*group .. h*group + group - 1
        b0 = h * group
        # pre-pass: D = rowsum(dO * O) to HBM (summed in float64), dQ = 0 to HBM
        for b in range(b0, b0 + group):
            set_head(mem, b)
            for i in range(tr):
                r0 = i * bq
                r1 = min(r0 + bq, nq)
                load(mem, T_O, B_O, r0, r1, 0, dv)
                load(mem, T_DO, B_DO, r0, r1, 0, dv)
                for r in range(r0, r1):
                    acc = 0.0
                    for t in range(dv):
                        acc += np.float64(do[b, r, t]) * np.float64(o[b, r, t])
                    dh[b, r] = acc
                hold(mem, T_D, B_D, r0, r1, 0, 1)
                store(mem, T_D, B_D, r0, r1, 0, 1)
                dq[b, r0:r1] = 0
                hold(mem, T_DQ, B_DQ, r0, r1, 0, d)
                store(mem, T_DQ, B_DQ, r0, r1, 0, d)
                if close_step(mem, info, 0, b, r0, r1, 0, 0, True):
                    return
        # main loop: outer over key blocks, inner over the group's query heads and their query blocks
        for j in range(tc):
            c0 = j * bk
            c1 = min(c0 + bk, nk)
            bc = c1 - c0
            for t in range(bc):
                cols[t] = c0 + t
            dkj = np.zeros((bc, d), np.float64)  # on chip, float64 across query blocks and heads
            dvj = np.zeros((bc, dv), np.float64)
            hold(mem, T_DK, B_DK, c0, c1, 0, d)
            hold(mem, T_DV, B_DV, c0, c1, 0, dv)
            kv_loaded = False
            for b in range(b0, b0 + group):
                set_head(mem, b)
                for i in range(tr):
                    r0 = i * bq
                    r1 = min(r0 + bq, nq)
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
                        qi, doi, kj, vj = q[b, r0:r1], do[b, r0:r1], k[h, c0:c1], v[h, c0:c1]
                        s = score_tile(qi, kj, bc, s_buf, scale, r0, cols, vis == 2, off, mask, has_mask, b,
                                       lo, softcap, slopes[b], aoff)
                        hold(mem, T_S, B_S, r0, r1, c0, c1)
                        if softcap > 0:
                            dt_ = softcap_dtanh(s, t_buf, r0, cols, softcap, slopes[b], aoff)
                            hold(mem, T_DT, B_DT, r0, r1, c0, c1)
                        for r in range(br):
                            li = lse[b, r0 + r]
                            for c in range(bc):
                                if li == -np.inf:
                                    s[r, c] = 0
                                else:
                                    s[r, c] = np.exp(s[r, c] - li)  # P = exp(S - L)
                        hold(mem, T_P, B_S, r0, r1, c0, c1)
                        dvj += np.dot(s.T, doi)
                        dp64 = np.dot(doi.astype(np.float64), vj.astype(np.float64).T)  # (br, bc)
                        dp = dp64.astype(q.dtype)
                        hold(mem, T_DP, B_DP, r0, r1, c0, c1)
                        for r in range(br):
                            di = dh[b, r0 + r]
                            for c in range(bc):
                                dp[r, c] = scale * (s[r, c] * (dp[r, c] - di))  # scale * dS
                                if softcap > 0:
                                    dp[r, c] *= dt_[r, c]  # through the cap: * (1 - tanh^2)
                        hold(mem, T_DS, B_DP, r0, r1, c0, c1)
                        dq[b, r0:r1] += np.dot(dp, kj)
                        store(mem, T_DQ, B_DQ, r0, r1, 0, d)
                        dkj += np.dot(dp.T, qi)
                        count_flops(mem, 2 * br * bc * (3 * d + 2 * dv), br * bc)
                    last = i == tr - 1 and b == b0 + group - 1
                    if last:
                        dk[h, c0:c1] = dkj.astype(dk.dtype)
                        dv_[h, c0:c1] = dvj.astype(dv_.dtype)
                        store(mem, T_DK, B_DK, c0, c1, 0, d)
                        store(mem, T_DV, B_DV, c0, c1, 0, dv)
                    if close_step(mem, info, 1, b, r0, r1, c0, c1, last):
                        st_dk[:bc] = dkj
                        st_dv[:bc] = dvj
                        return


def flash_backward(q, k, v, o, lse, do, *, sram, causal=False, scale=None, mask=None, block=None,
                   trace=False, stop_after=None, num_kv_heads=None, window=None, softcap=None, alibi_slopes=None,
                   cu_seqlens_q=None, cu_seqlens_k=None):
    """FlashAttention backward (see the module docstring). Returns a KernelResult with ``dq, dk, dv``.

    ``o`` and ``lse`` are the forward's outputs (any float dtype; cast to the
    input dtype); ``do`` has the shape of ``o``. ``lse`` may hold -inf (fully
    masked rows) but no NaN or +inf. ``stop_after=k`` stops after step k and
    sets ``result.state`` (docs/contract.md; arrays ``dk_partial``, ``dv_partial``).
    Variants as in :func:`refattn.kernels.flash.flash_forward` (docs/variants.md); with
    ``num_kv_heads``, ``dk`` and ``dv`` are summed over each group on chip and have the shapes of k, v.
    """
    where = "flash_backward"
    p, kv = prepare_variants(q, k, v, scale=scale, causal=causal, mask=mask, num_kv_heads=num_kv_heads,
                             window=window, softcap=softcap, alibi_slopes=alibi_slopes,
                             cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, where=where)
    sram = memory.as_sram(sram)
    nb, nq, nk, d, dv = p.batch, p.nq, p.nk, p.d, p.dv
    dt = p.q.dtype
    oshape = p.lead + (nq, dv)
    o_f = grad_input("o", o, oshape, dt, where)
    do_f = grad_input("do", do, oshape, dt, where)
    lse_f = grad_input("lse", lse, p.lead + (nq,), dt, where, allow_neginf=True)
    check_product_range(where, "dP = dO V^T", "do", do_f, "v", p.v, 1.0, dt)

    plan = backward_plan(nb, nq, nk, d, dv, sram, has_mask=p.has_mask, causal=p.causal, block=block,
                         group=kv.group, variants=kv.details)
    plan.check_stop_after(stop_after)
    bq, bk, tr, tc = plan.blocks["Br"], plan.blocks["Bc"], plan.tiles["Tr"], plan.tiles["Tc"]

    dq = np.zeros((nb, nq, d), dt)
    dk = np.zeros((nb // kv.group, nk, d), dt)  # one per KV head
    dvv = np.zeros((nb // kv.group, nk, dv), dt)
    dh = np.zeros((nb, nq), dt)  # D in HBM
    st_dk, st_dv, info = np.zeros((bk, d)), np.zeros((bk, dv)), np.zeros(6, np.int64)
    ins = (readonly(x) for x in (p.q, kv.k, kv.v, o_f, lse_f, do_f, p.mask))
    args = (*ins, p.has_mask, dt.type(p.scale), kv.causal, kv.off, kv.vt(dt), bq, bk, dq, dk, dvv, dh,
            st_dk, st_dv, info)

    def call(mem):
        _backward(mem, *args)

    def state_fn(mem, trace_):
        n = int(info[5] - info[4])
        return step_state(mem, sram, trace_, info, PHASES,
                          {"dk_partial": st_dk[:n].copy(), "dv_partial": st_dv[:n].copy()})

    estimate = nb * (tr * tc * 14 + tc * 8 + tr * 10)
    mem = run_with_trace(call, sram, trace=bool(trace) or stop_after is not None, trace_estimate=estimate,
                         stop_after=stop_after)
    outputs = grad_outputs(p, (np.shape(q),), dq=dq)
    outputs.update(dk=unbroadcast(dk.reshape(kv.kv_lead + dk.shape[1:]), np.shape(k)),
                   dv=unbroadcast(dvv.reshape(kv.kv_lead + dvv.shape[1:]), np.shape(v)))
    return finish(mem, sram, outputs, plan=plan, slot_names=BACKWARD_SLOTS, state_fn=state_fn)
