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

D = 4
PROBLEMS = [(13, 11, True), (7, 17, "top_left"), (10, 10, False)]  # (Nq, Nk, causal)
#: A packed batch for the flash kernels (Nq, Nk, causal, varlen keywords): an empty sequence, a sequence with keys
#: but no queries, two padding query rows and one padding key (docs/variants.md).
PACKED = (13, 11, True, dict(cu_seqlens_q=[0, 4, 4, 4, 11], cu_seqlens_k=[0, 5, 5, 8, 10], window=(3, -1)))
FLASH = ("fa1", "fa2", "flash_backward")


def _inputs(seed, nq, nk):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((2, nq, D))
    k = rng.standard_normal((2, nk, D))
    v = rng.standard_normal((2, nk, D + 1))
    do = rng.standard_normal((2, nq, D + 1))
    return q, k, v, do


def _sparse_set(seed, nq, nk, block=4):
    """A random index set: key blocks and gathered columns (some tiles of two), one query block empty."""
    rng = np.random.default_rng(seed)
    nqb, nkb = -(-nq // block), -(-nk // block)
    blocks = [rng.choice(nkb, rng.integers(0, nkb + 1), replace=False) for _ in range(nqb)]
    cols = [rng.choice(nk, rng.integers(0, nk // 2 + 1), replace=False) for _ in range(nqb)]
    blocks[1], cols[1] = [], []
    return IndexSet.from_lists(nq, nk, blocks, cols, block=block)


def _run(kernel, seed, problem, **kw):
    nq, nk, causal, *packed = problem
    q, k, v, do = _inputs(seed, nq, nk)
    variants = packed[0] if packed else {}
    if kernel in ("fa1", "fa2"):
        return flash_forward(q, k, v, sram=200, variant=kernel, causal=causal, **variants, **kw)
    if kernel == "flash_backward":
        o, lse = reference.attention(q, k, v, causal=causal, **variants)
        return flash_backward(q, k, v, o, lse, do, sram=400, causal=causal, **variants, **kw)
    if kernel == "standard_forward":
        return standard_forward(q, k, v, sram=60, causal=causal, **kw)
    if kernel == "standard_backward":
        o, _ = reference.attention(q, k, v, causal=causal)
        return standard_backward(q, k, v, o, do, sram=60, causal=causal, **kw)
    if kernel == "vitcod":  # self-attention (Nq = Nk = nq); 16-bit data so bytes match the trace replay's default
        mask = np.random.default_rng(seed).random((2, nq, nq)) < 0.3
        mask[:, :, 3] = True  # one global token: both engines have work
        kq = q[:, ::-1].copy()
        return vitcod_forward(q, kq, np.concatenate([kq, q[..., :1]], -1), mask, hw=Hardware(data_bytes=2),
                              threshold=6, **kw)
    return sparse_forward(q, k, v, _sparse_set(seed, nq, nk), sram=200, causal=causal, **kw)


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


@pytest.mark.parametrize("problem", PROBLEMS, ids=[f"{a}x{b}-{c}" for a, b, c in PROBLEMS])
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_every_kernel_keeps_the_contract(kernel, problem):
    seed = 1000 + list(KERNELS).index(kernel) + 10 * PROBLEMS.index(problem)
    _keeps_the_contract(kernel, seed, problem, every_phase=problem == PROBLEMS[0])


@pytest.mark.parametrize("kernel", FLASH)
def test_the_flash_kernels_keep_the_contract_on_a_packed_batch(kernel):
    _keeps_the_contract(kernel, 2000 + FLASH.index(kernel), PACKED, every_phase=True)


def _keeps_the_contract(kernel, seed, problem, every_phase):
    name, phases, arrays = KERNELS[kernel]
    full = _run(kernel, seed, problem)
    traced = _run(kernel, seed, problem, trace=True)
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
        res = _run(kernel, seed, problem, stop_after=k)
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
    assert seen <= phases
    if every_phase:
        assert seen == phases  # every phase is reached (the sparse set of the first problem has both kinds)
    for out, x in full.outputs.items():  # stopping after the last step finishes the run
        np.testing.assert_array_equal(res.outputs[out], x)
    for bad in (0, n + 1):
        msg = f"{name}: stop_after must be an integer between 1 and n_steps = {n}, got {bad}"
        with pytest.raises(ValueError, match=re.escape(msg)):
            _run(kernel, seed, problem, stop_after=bad)


def test_plan_summary_names_the_window_and_the_kv_heads():
    """The app prints plan.summary() above the player; the window and GQA were dropped from it (not scalars)."""
    rng = np.random.default_rng()
    q = rng.standard_normal((4, 32, 8))
    k, v = rng.standard_normal((2, 2, 32, 8))
    res = flash_forward(q, k, v, sram=512, causal=True, window=(8, 0), num_kv_heads=2, count_only=True)
    summary = res.plan.summary()
    assert summary["window"] == "(8, 0)" and summary["num_kv_heads"] == 2
