"""The one kernel contract (docs/contract.md), checked the same way for every kernel.

For random small problems and every step k of the run: stopping after k gives
``state.step == k`` and the traffic the full run's trace shows up to step k;
stopping after the last step gives the full run's outputs; k = 0 and
k = n_steps + 1 are refused with the one message; a full run has
``stopped is False`` and no state.
"""

import re

import numpy as np
import pytest

from refattn import reference
from refattn.index_set import IndexSet
from refattn.kernels.contract import KernelResult, Plan, SlotContent, StepState
from refattn.kernels.flash import flash_forward
from refattn.kernels.flash_backward import flash_backward
from refattn.kernels.sparse import sparse_forward
from refattn.kernels.standard import standard_backward, standard_forward
from refattn.memory import Traffic
from refattn.vitcod import Hardware, vitcod_forward

NQ, NK, D = 13, 11, 4


def _inputs(seed):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((2, NQ, D))
    k = rng.standard_normal((2, NK, D))
    v = rng.standard_normal((2, NK, D + 1))
    do = rng.standard_normal((2, NQ, D + 1))
    return q, k, v, do


def _sparse_set():
    # block 4: query blocks 0..3; block 1 lists nothing (one empty step), columns gathered in tiles of 4
    return IndexSet.from_lists(NQ, NK, [[0], [], [0, 2], [1]], [[5, 6, 9, 10, 4], [], [4, 5, 6, 7], [0]], block=4)


def _run(kernel, seed, **kw):
    q, k, v, do = _inputs(seed)
    if kernel in ("fa1", "fa2"):
        return flash_forward(q, k, v, sram=200, variant=kernel, causal=True, **kw)
    if kernel == "flash_backward":
        o, lse = reference.attention(q, k, v, causal=True)
        return flash_backward(q, k, v, o, lse, do, sram=400, causal=True, **kw)
    if kernel == "standard_forward":
        return standard_forward(q, k, v, sram=60, causal=True, **kw)
    if kernel == "standard_backward":
        o, _ = reference.attention(q, k, v, causal=True)
        return standard_backward(q, k, v, o, do, sram=60, causal=True, **kw)
    if kernel == "vitcod":  # self-attention (Nq = Nk); 16-bit data so bytes match the trace replay's default
        mask = np.random.default_rng(seed).random((2, NQ, NQ)) < 0.3
        mask[:, :, 3] = True  # one global token: both engines have work
        kq = q[:, ::-1].copy()
        return vitcod_forward(q, kq, np.concatenate([kq, q[..., :1]], -1), mask, hw=Hardware(data_bytes=2),
                              threshold=6, **kw)
    return sparse_forward(q, k, v, _sparse_set(), sram=200, causal=False, **kw)


KERNELS = {  # kernel -> (its name in messages, its phases, its documented state arrays)
    "fa1": ("flash_forward/fa1", {"init", "main", "finalise"}, {"m", "l", "o_partial", "o_normalised"}),
    "fa2": ("flash_forward/fa2", {"main"}, {"m", "l", "o_partial", "o_normalised"}),
    "flash_backward": ("flash_backward", {"pre-pass", "main"}, {"dk_partial", "dv_partial"}),
    "standard_forward": ("standard_forward", {"F1 S=QK^T", "F2 softmax", "F3 O=PV"}, {"accumulator", "hbm"}),
    "standard_backward": ("standard_backward", {"B1 dV=P^T dO", "B2 dP=dO V^T", "B3 dS", "B4 dQ=dS K",
                                                "B5 dK=dS^T Q"}, {"accumulator", "hbm"}),
    "sparse": ("sparse_forward", {"key blocks", "columns"}, {"m", "l", "o_partial", "o_normalised"}),
    "vitcod": ("vitcod_forward/split", {"load", "SDDMM", "softmax", "SpMM", "store"},
               {"m", "l", "o_partial", "line_engine", "line_entries", "line_cycles", "pieces", "counters"}),
}


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_every_kernel_keeps_the_contract(kernel):
    name, phases, arrays = KERNELS[kernel]
    seed = 1000 + list(KERNELS).index(kernel)
    full = _run(kernel, seed)
    traced = _run(kernel, seed, trace=True)
    plan = full.plan
    n = plan.n_steps
    assert isinstance(full, KernelResult) and isinstance(plan, Plan) and plan.kernel == name
    assert full.stopped is False and full.state is None and full.trace is None
    assert traced.stopped is False and traced.state is None
    assert full.n_steps == traced.n_steps == traced.trace.n_steps == n > 3
    assert traced.trace.traffic_until(n) == traced.traffic == full.traffic
    assert set(traced.trace.records[:, 0]) <= set(range(1, n + 1))  # 1-based steps, none past the end
    assert full.peak_sram <= plan.on_chip <= plan.M
    seen = set()
    for k in range(1, n + 1):
        res = _run(kernel, seed, stop_after=k)
        st = res.state
        assert res.stopped is True and isinstance(st, StepState)
        assert st.step == k == res.n_steps
        assert isinstance(st.traffic, Traffic)
        assert st.traffic == traced.trace.traffic_until(k) == res.traffic
        assert st.sram == traced.trace.sram_at(k) and all(isinstance(x, SlotContent) for x in st.sram.values())
        assert sum(x.elements for x in st.sram.values()) <= plan.M
        assert st.phase in phases and arrays <= set(st.arrays)
        assert res.trace is not None and res.trace.n_steps == k
        seen.add(st.phase)
    assert seen == phases  # every phase was reached
    for out, x in full.outputs.items():  # stopping after the last step finishes the run
        np.testing.assert_array_equal(res.outputs[out], x)
    for bad in (0, n + 1):
        msg = f"{name}: stop_after must be an integer between 1 and n_steps = {n}, got {bad}"
        with pytest.raises(ValueError, match=re.escape(msg)):
            _run(kernel, seed, stop_after=bad)
