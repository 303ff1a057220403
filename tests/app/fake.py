"""A tiny hand-written trace in the refattn.memory record format, for figure tests that need exact control."""

import numpy as np

from refattn.memory import EV_COMPUTE, EV_LOAD, EV_SKIP, EV_STORE, TENSOR_ID, Trace


def fake_flash_trace(nq=8, nk=8, br=4, bc=4, d=2, causal=False):
    """FA2-like order, steps 1..n: one step per tile (load K, V, compute S; or skip it); Q loaded with the first."""
    recs, step = [], 1

    def rec(kind, tensor, slot, r0, r1, c0, c1):
        recs.append([step, kind, -1 if tensor is None else TENSOR_ID[tensor], slot, 0, r0, r1, c0, c1, 0])

    for r0 in range(0, nq, br):
        r1 = min(r0 + br, nq)
        rec(EV_LOAD, "Q", 0, r0, r1, 0, d)
        for c0 in range(0, nk, bc):
            c1 = min(c0 + bc, nk)
            if causal and c0 > r1 - 1 + nk - nq:
                rec(EV_SKIP, None, -1, r0, r1, c0, c1)
                step += 1
                continue
            rec(EV_LOAD, "K", 1, c0, c1, 0, d)
            rec(EV_LOAD, "V", 2, c0, c1, 0, d)
            rec(EV_COMPUTE, "S", 3, r0, r1, c0, c1)
            if c1 == nk:
                rec(EV_STORE, "O", 4, r0, r1, 0, d)
            step += 1
    return Trace(np.array(recs, np.int64), ("Q", "K", "V", "S", "O"), step - 1)
