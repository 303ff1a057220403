"""What every simulated kernel's Python wrapper shares.

A kernel module has one ``@numba.njit`` loop that takes a :class:`~refattn.memory.Mem`
and the flattened (B, N, d) arrays, and a public wrapper that

1. validates inputs (:func:`prepare`), flattens leading dims to one batch axis,
2. computes its plan (block sizes, on-chip footprint) and refuses one that
   does not fit M (:func:`refattn.memory.require_fits`),
3. runs the loop on fresh device arrays (:func:`run_with_trace` reruns once
   with an exact trace capacity if the estimate was short),
4. returns a :class:`KernelResult`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

from refattn import memory
from refattn.validation import KERNEL_DTYPES, check_attention_inputs, check_scale, normalize_causal


@dataclass
class KernelResult:
    """Outputs of one simulated kernel run, with its counters.

    ``outputs`` holds the arrays by name (``o``, ``lse`` for a forward pass;
    ``dq``, ``dk``, ``dv`` for a backward pass), also reachable as attributes
    (``result.o``). ``traffic`` is the HBM traffic the kernel counted,
    ``peak_sram`` its counted peak on-chip occupancy (elements), ``flops`` its
    counted matmul FLOPs. ``trace`` is set when asked for; ``state`` when the
    run stopped early (``stop_after``).
    """

    outputs: dict
    traffic: memory.Traffic
    peak_sram: int
    sram: memory.Sram
    flops: int
    exps: int
    n_steps: int
    plan: dict = field(default_factory=dict)
    trace: memory.Trace | None = None
    state: dict | None = None

    def __getattr__(self, name):
        outputs = self.__dict__.get("outputs", {})
        if name in outputs:
            return outputs[name]
        raise AttributeError(name)

    @property
    def stopped(self) -> bool:
        return self.state is not None

    def simulated_time(self, chip=None) -> dict:
        """Roofline time (see :func:`refattn.memory.simulated_time`) on ``chip`` (default: the SRAM's chip)."""
        chip = chip or self.sram.chip
        if chip is None:
            raise ValueError("no chip given and the SRAM was not built from a chip preset")
        return memory.simulated_time(self.traffic, self.flops, chip)


@dataclass
class Prepared:
    q: np.ndarray  # (B, Nq, d) contiguous
    k: np.ndarray  # (B, Nk, d)
    v: np.ndarray  # (B, Nk, dv)
    mask: np.ndarray  # (B, Nq, Nk) bool, or (1, 1, 1) when has_mask is False
    has_mask: bool
    lead: tuple  # leading shape to restore
    scale: float
    causal: str | None  # None, "bottom_right" or "top_left"

    @property
    def batch(self):
        return self.q.shape[0]

    @property
    def nq(self):
        return self.q.shape[1]

    @property
    def nk(self):
        return self.k.shape[1]

    @property
    def d(self):
        return self.q.shape[2]

    @property
    def dv(self):
        return self.v.shape[2]

    def restore(self, x):
        """(B, ...) -> (*lead, ...)."""
        return x.reshape(self.lead + x.shape[1:])


def prepare(q, k, v, *, scale=None, causal=False, mask=None, where="kernel") -> Prepared:
    """Validate and flatten inputs for a simulated kernel (float32 or float64, one dtype)."""
    q, k, v = check_attention_inputs(q, k, v, mask=mask, causal=causal, where=where, float_dtypes=KERNEL_DTYPES)
    lead = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    nq, nk = q.shape[-2], k.shape[-2]

    def flat(x):
        x = np.broadcast_to(x, lead + x.shape[-2:])
        return np.ascontiguousarray(x.reshape((-1,) + x.shape[-2:]))

    if mask is None:
        m, has_mask = np.ones((1, 1, 1), np.bool_), False
    else:
        m = np.broadcast_to(np.asarray(mask, bool), lead + (nq, nk))
        m, has_mask = np.ascontiguousarray(m.reshape((-1, nq, nk))), True
    return Prepared(flat(q), flat(k), flat(v), m, has_mask, tuple(lead),
                    check_scale(scale, q.shape[-1], where), normalize_causal(causal))


def check_stop_after(stop_after, n_steps, where):
    """``stop_after`` must be None or an integer in [1, n_steps]; refuse anything else clearly."""
    if stop_after is None:
        return
    if isinstance(stop_after, bool) or not isinstance(stop_after, (int, np.integer)):
        raise ValueError(f"{where}: stop_after must be an integer number of steps, got {stop_after!r}")
    if not 1 <= stop_after <= n_steps:
        raise ValueError(f"{where}: stop_after must be between 1 and the number of steps ({n_steps}), "
                         f"got {stop_after}")


def run_with_trace(kernel_call, sram: memory.Sram, *, trace: bool, trace_estimate: int, stop_after=None):
    """Run ``kernel_call(mem)`` on fresh device arrays; return the ``Mem``.

    With ``trace``, the trace array gets ``trace_estimate`` records; if the
    kernel needed more, it is rerun once with the exact number (runs are
    deterministic). BLAS is held to one thread (see DESIGN.md pitfalls).
    """
    if stop_after is not None:
        if isinstance(stop_after, bool) or not isinstance(stop_after, (int, np.integer)) or stop_after < 1:
            raise ValueError(f"stop_after must be a positive number of steps, got {stop_after!r}")
    cap = max(int(trace_estimate), 16) if trace else 0
    with threadpool_limits(1, "blas"):
        mem = memory.new_mem(sram.capacity, trace_capacity=cap, stop_after=stop_after)
        kernel_call(mem)
        if trace and mem.cursor[0] > cap:
            mem = memory.new_mem(sram.capacity, trace_capacity=int(mem.cursor[0]), stop_after=stop_after)
            kernel_call(mem)
    return mem


def finish(mem, sram: memory.Sram, outputs: dict, *, plan=None, slot_names=(), state=None) -> KernelResult:
    """Build the :class:`KernelResult`; assert the counted peak stayed within M."""
    peak = int(mem.sram[1])
    if peak > sram.capacity:  # the plan check should have refused this: a kernel bug
        raise AssertionError(f"kernel exceeded its SRAM: peak {peak} > M = {sram.capacity}")
    return KernelResult(
        outputs=outputs,
        traffic=memory.Traffic.from_counts(mem.counts, sram.bytes_per_element),
        peak_sram=peak,
        sram=sram,
        flops=int(mem.ops[memory.OP_FLOPS]),
        exps=int(mem.ops[memory.OP_EXP]),
        n_steps=int(mem.cursor[1]),
        plan=dict(plan or {}),
        trace=memory.make_trace(mem, slot_names),
        state=state,
    )
