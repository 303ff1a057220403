"""FlashAttention backward with recomputation (FA2 loop order) on the simulated hierarchy.

Given q, k, v, the forward output o, its log-sum-exp L and the upstream
gradient dO, compute dQ, dK, dV without ever storing S or P in HBM: each tile
rebuilds P from L (ALGORITHMS.md sec. 4; FlashAttention-2, Algorithm 2)::

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

Precision: everything in the input dtype (float32 or float64); ``lse`` is cast
to it. Outputs ``dq``, ``dk``, ``dv`` have the shapes of q, k, v (gradients of
broadcast leading dims are summed back).

Block sizes (``block=None``): the paper's rule ``Bc = ceil(M/(4d))``,
``Br = min(ceil(M/(4d)), d)`` (outer loop over key blocks), clipped to N and
halved (larger first) until the footprint fits, as in the forward::

    F = max(Bc*(2d + 2dv) + Br*(2d + dv) + 2*Br + 2*Br*Bc [+ Br*Bc mask],   (main loop)
            Br*(2*dv + d + 1))                                               (pre-pass)

slots K_j, V_j, dK_j, dV_j, Q_i, dO_i, dQ_i, L_i, D_i, S_ij (S then P),
dP_ij (dP then dS), mask_ij; pre-pass O_i, dO_i, D_i, dQ_i.

Steps: per head, ``Tr`` pre-pass steps, then one step per (j, i) tile (j outer),
skipped tiles included: ``n_steps = B*(Tr + Tr*Tc)``. The writes of dK_j and
dV_j belong to the step of tile (j, Tr-1).

HBM traffic closed form (per head; with R, A, Kc as in :mod:`refattn.kernels.flash`:
``J_i`` visible key blocks of query block i, ``R = sum_i br_i*J_i``,
``A = sum_i br_i*min(J_i*Bc, Nk)``, ``Kc = min(max_i J_i*Bc, Nk)``)::

    O reads Nq*dv;  dO reads Nq*dv + dv*R;  D writes Nq, reads R;
    dQ writes Nq*d + d*R, reads d*R;  Q reads d*R;  L reads R;
    K reads d*Kc;  V reads dv*Kc;  dK writes Nk*d;  dV writes Nk*dv;  mask reads A.
    No causal, no mask: Nq*(2dv + 1 + d) + Tc*Nq*(3d + dv + 2) + Nk*(2d + 2dv).

FLOPs: 2*br*bc*(3d + 2dv) per visited tile (S, dV, dP, dQ, dK); exponentials
br*bc per visited tile.
"""

from __future__ import annotations

import numba
import numpy as np

from refattn import memory
from refattn.kernels.common import check_stop_after, finish, prepare, run_with_trace
from refattn.kernels.flash import (
    CAUSAL_CODE,
    plan_blocks,
    readonly,
    scores,
    set_info,
    visibility,
)
from refattn.memory import (
    T_D,
    T_DK,
    T_DO,
    T_DP,
    T_DQ,
    T_DS,
    T_DV,
    T_K,
    T_L,
    T_MASK,
    T_O,
    T_P,
    T_Q,
    T_S,
    T_V,
    count_flops,
    end_step,
    free_all,
    hold,
    load,
    set_head,
    skip,
    store,
)
from refattn.validation import unbroadcast

__all__ = ["flash_backward", "BACKWARD_SLOTS", "backward_footprint"]

BACKWARD_SLOTS = ("Q_i", "K_j", "V_j", "dO_i", "dQ_i", "dK_j", "dV_j", "L_i", "D_i", "S_ij", "dP_ij",
                  "mask_ij", "O_i")
(B_Q, B_K, B_V, B_DO, B_DQ, B_DK, B_DV, B_L, B_D, B_S, B_DP, B_MASK, B_O) = range(len(BACKWARD_SLOTS))


def backward_footprint(br: int, bc: int, d: int, dv: int, has_mask: bool) -> int:
    main = bc * (2 * d + 2 * dv) + br * (2 * d + dv) + 2 * br + 2 * br * bc + (br * bc if has_mask else 0)
    return max(main, br * (2 * dv + d + 1))


@numba.njit(cache=True)
def _backward(mem, q, k, v, o, lse, do, mask, has_mask, scale, causal, off, bq, bk, dq, dk, dv_, dh,
              st_dk, st_dv, st_info):
    nb, nq, d = q.shape
    nk, dv = k.shape[1], v.shape[2]
    tr = (nq + bq - 1) // bq
    tc = (nk + bk - 1) // bk
    for b in range(nb):
        set_head(mem, b)
        # pre-pass: D = rowsum(dO * O) to HBM, dQ = 0 to HBM
        for i in range(tr):
            r0 = i * bq
            r1 = min(r0 + bq, nq)
            load(mem, T_O, B_O, r0, r1, 0, dv)
            load(mem, T_DO, B_DO, r0, r1, 0, dv)
            for r in range(r0, r1):
                acc = scale - scale
                for t in range(dv):
                    acc += do[b, r, t] * o[b, r, t]
                dh[b, r] = acc
            hold(mem, T_D, B_D, r0, r1, 0, 1)
            store(mem, T_D, B_D, r0, r1, 0, 1)
            dq[b, r0:r1] = 0
            hold(mem, T_DQ, B_DQ, r0, r1, 0, d)
            store(mem, T_DQ, B_DQ, r0, r1, 0, d)
            free_all(mem)
            if end_step(mem):
                set_info(st_info, b, r0, r1, 0, 0, 0)
                return
        # main loop: outer over key blocks, inner over query blocks
        for j in range(tc):
            c0 = j * bk
            c1 = min(c0 + bk, nk)
            bc = c1 - c0
            dkj = np.zeros_like(k[b, c0:c1])  # (bc, d) on chip
            dvj = np.zeros_like(v[b, c0:c1])  # (bc, dv)
            hold(mem, T_DK, B_DK, c0, c1, 0, d)
            hold(mem, T_DV, B_DV, c0, c1, 0, dv)
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
                        load(mem, T_K, B_K, c0, c1, 0, d)
                        load(mem, T_V, B_V, c0, c1, 0, dv)
                        kv_loaded = True
                    load(mem, T_Q, B_Q, r0, r1, 0, d)
                    load(mem, T_DO, B_DO, r0, r1, 0, dv)
                    load(mem, T_L, B_L, r0, r1, 0, 1)
                    load(mem, T_D, B_D, r0, r1, 0, 1)
                    load(mem, T_DQ, B_DQ, r0, r1, 0, d)
                    if has_mask:
                        load(mem, T_MASK, B_MASK, r0, r1, c0, c1)
                    qi, doi, kj, vj = q[b, r0:r1], do[b, r0:r1], k[b, c0:c1], v[b, c0:c1]
                    s = scores(qi, kj, scale, mask, has_mask, b, r0, c0, vis == 2, off)
                    hold(mem, T_S, B_S, r0, r1, c0, c1)
                    for r in range(br):
                        li = lse[b, r0 + r]
                        for c in range(bc):
                            if li == -np.inf:
                                s[r, c] = 0
                            else:
                                s[r, c] = np.exp(s[r, c] - li)  # P = exp(S - L)
                    hold(mem, T_P, B_S, r0, r1, c0, c1)
                    dvj += np.dot(s.T, doi)
                    dp = np.dot(doi, vj.T)  # (br, bc)
                    hold(mem, T_DP, B_DP, r0, r1, c0, c1)
                    for r in range(br):
                        di = dh[b, r0 + r]
                        for c in range(bc):
                            dp[r, c] = scale * (s[r, c] * (dp[r, c] - di))  # scale * dS
                    hold(mem, T_DS, B_DP, r0, r1, c0, c1)
                    dq[b, r0:r1] += np.dot(dp, kj)
                    store(mem, T_DQ, B_DQ, r0, r1, 0, d)
                    dkj += np.dot(dp.T, qi)
                    count_flops(mem, 2 * br * bc * (3 * d + 2 * dv), br * bc)
                if i == tr - 1:
                    dk[b, c0:c1] = dkj
                    dv_[b, c0:c1] = dvj
                    store(mem, T_DK, B_DK, c0, c1, 0, d)
                    store(mem, T_DV, B_DV, c0, c1, 0, dv)
                    free_all(mem)
                if end_step(mem):
                    st_dk[:bc] = dkj
                    st_dv[:bc] = dvj
                    set_info(st_info, b, r0, r1, c0, c1, 1)
                    return


def flash_backward(q, k, v, o, lse, do, *, sram, causal=False, scale=None, mask=None, block=None,
                   trace=False, stop_after=None):
    """FlashAttention backward (see the module docstring). Returns a KernelResult with ``dq, dk, dv``.

    ``o`` and ``lse`` are the forward's outputs (any float dtype; cast to the
    input dtype); ``do`` has the shape of ``o``. ``lse`` may hold -inf (fully
    masked rows) but no NaN or +inf. ``stop_after=k`` stops after step k and
    sets ``result.state`` (step, head, rows, cols, the on-chip dK_j/dV_j
    partial sums, sram).
    """
    where = "flash_backward"
    p = prepare(q, k, v, scale=scale, causal=causal, mask=mask, where=where)
    sram = memory.as_sram(sram)
    nb, nq, nk, d, dv = p.batch, p.nq, p.nk, p.d, p.dv
    dt = p.q.dtype
    oshape = p.lead + (nq, dv)
    o_f = _flat_grad_input("o", o, oshape, dt, where, allow_neginf=False)
    do_f = _flat_grad_input("do", do, oshape, dt, where, allow_neginf=False)
    lse_f = _flat_grad_input("lse", lse, p.lead + (nq,), dt, where, allow_neginf=True)

    has_mask = p.has_mask
    bq, bk = plan_blocks(nq, nk, d, dv, sram, rule="kv_outer",
                         footprint=lambda br, bc: backward_footprint(br, bc, d, dv, has_mask), block=block,
                         what=f"flash_backward{' with mask' if has_mask else ''}")
    tr, tc = -(-nq // bq), -(-nk // bk)
    n_steps = nb * (tr + tr * tc)
    check_stop_after(stop_after, n_steps, where)
    plan = {"variant": "fa2_backward", "Br": bq, "Bc": bk, "Tr": tr, "Tc": tc, "n_steps": n_steps,
            "footprint": backward_footprint(bq, bk, d, dv, has_mask), "M": sram.capacity,
            "causal": p.causal, "masked": has_mask}

    dq = np.zeros((nb, nq, d), dt)
    dk = np.zeros((nb, nk, d), dt)
    dvv = np.zeros((nb, nk, dv), dt)
    dh = np.zeros((nb, nq), dt)  # D in HBM
    st_dk, st_dv, st_info = np.zeros((bk, d), dt), np.zeros((bk, dv), dt), np.zeros(6, np.int64)
    off = nk - nq if p.causal == "bottom_right" else 0
    ins = (readonly(x) for x in (p.q, p.k, p.v, o_f, lse_f.reshape(nb, nq), do_f, p.mask))
    args = (*ins, has_mask, dt.type(p.scale),
            CAUSAL_CODE[p.causal], off, bq, bk, dq, dk, dvv, dh, st_dk, st_dv, st_info)

    def call(mem):
        _backward(mem, *args)

    stepped = stop_after is not None
    estimate = nb * (tr * tc * 14 + tc * 8 + tr * 10)
    mem = run_with_trace(call, sram, trace=bool(trace) or stepped, trace_estimate=estimate, stop_after=stop_after)
    outputs = {
        "dq": unbroadcast(p.restore(dq), np.shape(q)),
        "dk": unbroadcast(p.restore(dk), np.shape(k)),
        "dv": unbroadcast(p.restore(dvv), np.shape(v)),
    }
    result = finish(mem, sram, outputs, plan=plan, slot_names=BACKWARD_SLOTS)
    if stepped:
        b, r0, r1, c0, c1, _ = (int(x) for x in st_info)
        n = c1 - c0
        result.state = {
            "step": int(stop_after), "head": b, "rows": (r0, r1), "cols": (c0, c1),
            "dk_partial": st_dk[:n].copy(), "dv_partial": st_dv[:n].copy(),
            "sram": result.trace.sram_at(int(stop_after) - 1),
            "traffic": memory.Traffic.from_counts(mem.counts, sram.bytes_per_element),
        }
    return result


def _flat_grad_input(name, x, shape, dt, where, *, allow_neginf):
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{where}: {name} must be a floating-point array, got dtype {x.dtype}")
    if x.shape != shape:
        try:
            x = np.broadcast_to(x, shape)
        except ValueError:
            raise ValueError(f"{where}: {name} has shape {x.shape}, expected {shape}") from None
    bad = np.isnan(x) | (np.isinf(x) if not allow_neginf else (x == np.inf))
    if bad.any():
        what = "NaN or +Inf" if allow_neginf else "NaN or Inf"
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{where}: {name} contains {what} (first at index {first})")
    x = np.ascontiguousarray(x, dtype=dt)
    return x.reshape((-1, shape[-1])) if allow_neginf else x.reshape((-1,) + shape[-2:])

