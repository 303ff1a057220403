"""What every simulated kernel shares: input preparation, the run driver, the result, and the tile primitives.

A kernel module has one ``@numba.njit`` loop that takes a :class:`~refattn.memory.Mem`
and the flattened (B, N, d) arrays, and a public wrapper that

1. validates inputs (:func:`prepare`), flattens leading dims to one batch axis,
2. builds its :class:`~refattn.kernels.contract.Plan` and refuses one that does
   not fit M (``Plan.require_fits``) or a bad ``stop_after`` (``Plan.check_stop_after``),
3. runs the loop on fresh device arrays (:func:`run_with_trace` reruns once
   with an exact trace capacity if the estimate was short),
4. returns a :class:`~refattn.kernels.contract.KernelResult` (:func:`finish`),
   with a :class:`~refattn.kernels.contract.StepState` when it stopped early
   (:func:`step_state`).

The jitted tile primitives below are the only copy of the tile arithmetic:
the score tile (:func:`score_tile`), the online-softmax update of one tile
(:func:`online_update`), the finalisation of a row block (:func:`finalise_rows`),
the causal and window visibility of a tile (:func:`visibility`, :func:`enter_tile`), the
key-outer loops' K_j, V_j load (:func:`load_kv_once`), where a run stopped
(:func:`stop_here`, :func:`close_step`) and the parallel per-task counters (:func:`new_tasks`,
:func:`task_mem`, :func:`reduce_tasks`). The backward kernels share
:func:`grad_input` and :func:`grad_outputs`. Conventions: docs/design.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
from threadpoolctl import threadpool_limits

from refattn import memory
from refattn.kernels.contract import KernelResult, Plan, StepState
from refattn.validation import (
    KERNEL_DTYPES,
    check_attention_inputs,
    check_kernel_range,
    check_scale,
    normalize_causal,
    unbroadcast,
)

#: Causal mode -> the integer the jitted loops take (0: none).
CAUSAL_CODE = {None: 0, "bottom_right": 1, "top_left": 2}


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------
@dataclass
class Prepared:
    q: np.ndarray  # (B, Nq, d) contiguous, native byte order
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

    @property
    def causal_code(self) -> int:
        return CAUSAL_CODE[self.causal]

    @property
    def offset(self) -> int:
        """Key c is visible to query r iff c <= r + offset (bottom-right: Nk - Nq; top-left: 0)."""
        return self.nk - self.nq if self.causal == "bottom_right" else 0

    def restore(self, x):
        """(B, ...) -> (*lead, ...)."""
        return x.reshape(self.lead + x.shape[1:])


def prepare(q, k, v, *, scale=None, causal=False, mask=None, where="kernel") -> Prepared:
    """Validate and flatten inputs for a simulated kernel (float32 or float64, one dtype).

    Also refuses inputs whose scores or unnormalised sums could overflow the
    dtype (:func:`refattn.validation.check_kernel_range`).
    """
    q, k, v = check_attention_inputs(q, k, v, mask=mask, causal=causal, where=where, float_dtypes=KERNEL_DTYPES)
    scale = check_scale(scale, q.shape[-1], where)
    check_kernel_range(q, k, v, scale, where)
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
    return Prepared(flat(q), flat(k), flat(v), m, has_mask, tuple(lead), scale, normalize_causal(causal))


def readonly(x):
    """A read-only view: inputs reach the jitted loops with one array type (Numba types
    read-only and writable arrays differently, and ``prepare`` returns either)."""
    x = x.view()
    x.flags.writeable = False
    return x


def grad_input(name, x, shape, dt, where, *, allow_neginf=False):
    """A gradient-pass input (``o``, ``do``, ``lse``): any float dtype, broadcastable to ``shape``,
    finite (``lse`` may hold -inf); returned contiguous in dtype ``dt``, flattened to (B, ...)."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{where}: {name} must be a floating-point array, got dtype {x.dtype}")
    if x.shape != shape:
        try:
            x = np.broadcast_to(x, shape)
        except ValueError:
            raise ValueError(f"{where}: {name} has shape {x.shape}, expected {shape}") from None
    bad = np.isnan(x) | ((x == np.inf) if allow_neginf else np.isinf(x))
    if bad.any():
        what = "NaN or +Inf" if allow_neginf else "NaN or Inf"
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{where}: {name} contains {what} (first at index {first})")
    finite = np.abs(x[np.isfinite(x)]) if allow_neginf else np.abs(x)
    if finite.size and float(finite.max()) > np.finfo(dt).max:
        raise ValueError(f"{where}: {name} has values beyond the range of {np.dtype(dt).name}")
    x = np.ascontiguousarray(x, dtype=dt)
    return x.reshape((-1,) + shape[len(shape) - (1 if allow_neginf else 2):])


def grad_outputs(p: Prepared, shapes, **grads) -> dict:
    """{name: gradient} restored to the leading dims and summed over the broadcast ones of ``shapes``."""
    return {name: unbroadcast(p.restore(g), shape) for (name, g), shape in zip(grads.items(), shapes)}


# ---------------------------------------------------------------------------
# Block sizes (the flash kernels' rule; see refattn/kernels/flash.py)
# ---------------------------------------------------------------------------
def check_block(block):
    try:
        br, bc = block
    except (TypeError, ValueError):
        raise ValueError(f"block must be a pair (Br, Bc) of positive integers, got {block!r}") from None
    for name, x in (("Br", br), ("Bc", bc)):
        if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < 1:
            raise ValueError(f"block must be a pair (Br, Bc) of positive integers; {name} = {x!r}")
    return int(br), int(bc)


def plan_blocks(nq, nk, d, dv, sram, *, rule, footprint, block=None, what="flash kernel"):
    """Choose (Br, Bc) for M = ``sram.capacity``; see refattn/kernels/flash.py.

    ``rule``: "kv_outer" (paper FA1: Bc large, Br <= d) or "q_outer" (FA2: Br
    large, Bc <= d). ``footprint(br, bc)`` gives the on-chip elements of a plan.
    """
    m = sram.capacity
    if block is not None:
        br, bc = check_block(block)
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
# Running and the result
# ---------------------------------------------------------------------------
def run_with_trace(kernel_call, sram: memory.Sram, *, trace: bool, trace_estimate: int, stop_after=None):
    """Run ``kernel_call(mem)`` on fresh device arrays; return the ``Mem``.

    ``stop_after`` was checked by ``Plan.check_stop_after``. With ``trace``, the
    trace array gets ``trace_estimate`` records; if the kernel needed more, it
    is rerun once with the exact number (runs are deterministic). BLAS is held
    to one thread: the kernels' own loops are the parallelism (docs/design.md).
    """
    cap = max(int(trace_estimate), 16) if trace else 0
    with threadpool_limits(1, "blas"):
        mem = memory.new_mem(sram.capacity, trace_capacity=cap, stop_after=stop_after)
        kernel_call(mem)
        if trace and mem.cursor[0] > cap:
            mem = memory.new_mem(sram.capacity, trace_capacity=int(mem.cursor[0]), stop_after=stop_after)
            kernel_call(mem)
    return mem


def step_state(mem, sram: memory.Sram, trace: memory.Trace, info, phases, arrays) -> StepState:
    """The :class:`StepState` of a run that stopped (``info`` as written by :func:`stop_here`).

    ``sram`` comes from replaying the trace to the stopping step, ``traffic``
    from the counters the kernel kept up to it.
    """
    k = int(mem.cursor[1])
    phase, head, r0, r1, c0, c1 = (int(x) for x in info)
    return StepState(step=k, phase=phases[phase], head=head, rows=(r0, r1), cols=(c0, c1),
                     sram=trace.sram_at(k), traffic=memory.Traffic.from_counts(mem.counts, sram.bytes_per_element),
                     arrays=arrays)


def finish(mem, sram: memory.Sram, outputs: dict, *, plan: Plan, slot_names=(), state_fn=None) -> KernelResult:
    """Build the :class:`KernelResult`; assert the counted peak stayed within M.

    ``state_fn(mem, trace)`` builds the :class:`StepState` when the run stopped early.
    """
    peak = int(mem.sram[1])
    if peak > sram.capacity:  # the plan check should have refused this: a kernel bug
        raise AssertionError(f"kernel exceeded its SRAM: peak {peak} > M = {sram.capacity}")
    trace = memory.make_trace(mem, slot_names)
    stopped = bool(mem.cursor[2] >= 0 and mem.cursor[1] == mem.cursor[2])
    return KernelResult(
        outputs=outputs,
        traffic=memory.Traffic.from_counts(mem.counts, sram.bytes_per_element),
        peak_sram=peak,
        sram=sram,
        flops=int(mem.ops[memory.OP_FLOPS]),
        exps=int(mem.ops[memory.OP_EXP]),
        n_steps=int(mem.cursor[1]),
        plan=plan,
        trace=trace,
        state=state_fn(mem, trace) if stopped else None,
        stopped=stopped,
    )


# ---------------------------------------------------------------------------
# Jitted tile primitives
# ---------------------------------------------------------------------------
@numba.njit(cache=True, inline="always")
def stop_here(mem, info, phase, head, r0, r1, c0, c1):
    """Close the step (``memory.end_step``); if the run must stop, note where in ``info``
    = [phase, head, r0, r1, c0, c1] and return True."""
    if memory.end_step(mem):
        info[0] = phase
        info[1] = head
        info[2] = r0
        info[3] = r1
        info[4] = c0
        info[5] = c1
        return True
    return False


#: ``lo`` of a band with no lower bound (key c >= r + lo always holds); ``-NO_LO`` hides everything.
NO_LO = -(1 << 60)


@numba.njit(cache=True)
def visibility(r0, r1, c0, c1, causal, off, lo=NO_LO):
    """0: tile wholly hidden (skip); 1: fully visible; 2: crosses a band edge (mask element-wise).

    Key c is visible to row r iff ``c <= r + off`` (when ``causal``) and ``c >= r + lo``
    (a sliding window's lower edge, docs/variants.md; ``NO_LO`` when unbounded)."""
    hidden = c1 - 1 < r0 + lo
    partial = c0 < r1 - 1 + lo
    if causal != 0:
        hidden = hidden or c0 > r1 - 1 + off
        partial = partial or c1 - 1 > r0 + off
    if hidden:
        return 0
    if partial:
        return 2
    return 1


@numba.njit(cache=True, inline="always")
def enter_tile(mem, r0, r1, c0, c1, causal, off, lo=NO_LO):
    """:func:`visibility` of the tile; a wholly hidden tile is recorded as skipped (no loads follow)."""
    vis = visibility(r0, r1, c0, c1, causal, off, lo)
    if vis == 0:
        memory.skip(mem, r0, r1, c0, c1)
    return vis


@numba.njit(cache=True, inline="always")
def load_kv_once(mem, loaded, slot_k, slot_v, c0, c1, d, dv):
    """Load K_j, V_j (rows c0..c1) unless this key block's are on chip already; returns True.

    The key-outer loops (FA1, the backward) load them at the first visible tile of column j."""
    if not loaded:
        memory.load(mem, memory.T_K, slot_k, c0, c1, 0, d)
        memory.load(mem, memory.T_V, slot_v, c0, c1, 0, dv)
    return True


@numba.njit(cache=True, inline="always")
def close_step(mem, info, phase, head, r0, r1, c0, c1, release):
    """Release every slot first if ``release`` (the last step of a pass or block), then :func:`stop_here`."""
    if release:
        memory.free_all(mem)
    return stop_here(mem, info, phase, head, r0, r1, c0, c1)


@numba.njit(cache=True)
def score_tile(q_tile, k_tile, n, out, scale, r0, cols, causal, off, mask, has_mask, b,
               lo=NO_LO, softcap=0.0, slope=0.0, aoff=0):
    """S = scale * Q_i K^T for query rows r0.. (``q_tile``, (br, d)) and the first ``n`` rows of
    ``k_tile`` (key columns ``cols[:n]``), written into the buffer ``out`` (>= br*n elements) and
    returned as a (br, n) view. Entries hidden by the band (when ``causal``: key c visible to
    row r iff ``r + lo <= c <= r + off``) or by ``mask[b]`` (when ``has_mask``) are -inf.

    Variants (docs/variants.md), in this order after the scale: ``softcap > 0`` caps each
    score to ``softcap * tanh(s / softcap)``; ``slope != 0`` adds the ALiBi bias
    ``-slope * |r + aoff - c|`` (``aoff = Nk - Nq``); then the masks."""
    br = q_tile.shape[0]
    s = out[:br * n].reshape((br, n))
    np.dot(q_tile, k_tile[:n].T, s)
    for r in range(br):
        lim = r0 + r + off
        low = r0 + r + lo
        for c in range(n):
            x = s[r, c] * scale
            if softcap > 0:
                x = softcap * np.tanh(x / softcap)
            if slope != 0:
                x -= slope * abs(r0 + r + aoff - cols[c])
            if causal and (cols[c] > lim or cols[c] < low):
                x = -np.inf
            if has_mask and not mask[b, r0 + r, cols[c]]:
                x = -np.inf
            s[r, c] = x
    return s


@numba.njit(cache=True)
def softcap_dtanh(s, out, r0, cols, softcap, slope, aoff):
    """The softcap's derivative 1 - tanh^2 = 1 - (capped / softcap)^2 for a score tile ``s`` made
    by :func:`score_tile` (the capped score is ``s`` minus its ALiBi bias), into ``out``; 0 where
    ``s`` is masked. Used by the backward before ``s`` is overwritten by P."""
    br, n = s.shape
    d = out[:br * n].reshape((br, n))
    for r in range(br):
        for c in range(n):
            x = s[r, c]
            if x == -np.inf:
                d[r, c] = 0
            else:
                t = (x + slope * abs(r0 + r + aoff - cols[c])) / softcap
                d[r, c] = 1 - t * t
    return d


@numba.njit(cache=True)
def online_update(s, v_tile, m, l, acc):
    """One online-softmax step (FlashAttention-2, Algorithm 1, lines 8-10) for a (br, n) score tile.

    m_new = max(m, rowmax S); P~ = exp(S - m_new) (overwrites ``s``);
    l = e^(m - m_new) l + rowsum P~; acc = e^(m - m_new) acc + P~ V (the factor is
    not inverted). A row whose max is still -inf shifts by 0, so it keeps l = 0
    and acc = 0 (docs/design.md). ``v_tile``: (>= n, dv); ``acc``: (br, dv).
    """
    br, n = s.shape
    zero = l[0] - l[0]  # 0 in the accumulator's dtype
    for r in range(br):
        mx = m[r]
        for c in range(n):
            if s[r, c] > mx:
                mx = s[r, c]
        shift = zero
        if mx != -np.inf:
            shift = mx
        alpha = np.exp(m[r] - shift)  # e^(m_old - m_new); 0 when m_old = -inf
        rs = zero
        for c in range(n):
            p = np.exp(s[r, c] - shift)
            s[r, c] = p
            rs += p
        l[r] = alpha * l[r] + rs
        m[r] = mx
        for t in range(acc.shape[1]):
            acc[r, t] *= alpha
    acc += np.dot(s, v_tile[:n])


@numba.njit(cache=True, inline="always")
def log_sum_exp(m, l):
    """L = m + log l, or -inf for a row that saw no key (l = 0)."""
    if l > 0:
        return m + np.log(l)
    return -np.inf


@numba.njit(cache=True)
def finalise_rows(acc, m, l, o_rows, lse_rows):
    """O = acc / l and lse = m + log l for a row block; rows with l = 0 get O = 0 and lse = -inf."""
    for r in range(acc.shape[0]):
        if l[r] > 0:
            for t in range(acc.shape[1]):
                o_rows[r, t] = acc[r, t] / l[r]
        else:
            for t in range(acc.shape[1]):
                o_rows[r, t] = 0
        lse_rows[r] = log_sum_exp(m[r], l[r])


# ---------------------------------------------------------------------------
# Parallel drivers: one set of counters per task, reduced in task order
# ---------------------------------------------------------------------------
def new_tasks(ntask: int, capacity: int) -> memory.Mem:
    """Counters for ``ntask`` independent tasks, stacked (a Mem of (ntask, ...) arrays, no trace)."""
    sram = np.zeros((ntask, 3), np.int64)
    sram[:, 2] = capacity
    cursor = np.zeros((ntask, 4), np.int64)
    cursor[:, 2] = -1  # tasks never stop: the parallel path runs untraced, unstopped runs only
    return memory.Mem(np.zeros((ntask, memory.N_TENSORS, 2), np.int64), np.zeros((ntask, 2), np.int64),
                      np.zeros((ntask, memory.N_SLOTS), np.int64), sram,
                      np.zeros((0, memory.TRACE_WIDTH), np.int64), cursor)


@numba.njit(cache=True, inline="always")
def task_mem(tasks, t):
    """The Mem of task ``t`` (views into the stacked counters of :func:`new_tasks`)."""
    return memory.Mem(tasks.counts[t], tasks.ops[t], tasks.slots[t], tasks.sram[t], tasks.trace, tasks.cursor[t])


@numba.njit(cache=True)
def reduce_tasks(mem, tasks):
    """Add every task's counters to ``mem`` in task order (deterministic); the peak is the
    largest task's peak (one task = one SM's SRAM)."""
    for t in range(tasks.counts.shape[0]):
        mem.counts[:, :] += tasks.counts[t]
        mem.ops[:] += tasks.ops[t]
        mem.cursor[0] += tasks.cursor[t, 0]
        mem.cursor[1] += tasks.cursor[t, 1]
        if tasks.sram[t, 1] > mem.sram[1]:
            mem.sram[1] = tasks.sram[t, 1]
