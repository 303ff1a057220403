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

from refattn import memory
from refattn.kernels.contract import KernelResult, Plan, StepState
from refattn.kernels.fastexp import fast_exp  # noqa: F401  (the kernels' exp, re-exported)
from refattn.threads import blas_one_thread
from refattn.validation import (
    KERNEL_DTYPES,
    check_attention_inputs,
    check_kernel_range,
    check_scale,
    max_abs,
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
    q: np.ndarray  # (B, Nq, d) contiguous, native byte order; (1, 1, d) in a count-only run
    k: np.ndarray  # (B, Nk, d); (1, 1, d) in a count-only run
    v: np.ndarray  # (B, Nk, dv); (1, 1, dv) in a count-only run
    mask: np.ndarray  # (B, Nq, Nk) bool, or (1, 1, 1) when has_mask is False or in a count-only run
    has_mask: bool
    lead: tuple  # leading shape to restore
    scale: float
    causal: str | None  # None, "bottom_right" or "top_left"
    dims: tuple = ()  # (B, Nq, Nk, d, dv): the problem's sizes (the arrays may be placeholders)
    count_only: bool = False

    @property
    def batch(self):
        return self.dims[0]

    @property
    def nq(self):
        return self.dims[1]

    @property
    def nk(self):
        return self.dims[2]

    @property
    def d(self):
        return self.dims[3]

    @property
    def dv(self):
        return self.dims[4]

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


def prepare(q, k, v, *, scale=None, causal=False, mask=None, where="kernel", count_only=False) -> Prepared:
    """Validate and flatten inputs for a simulated kernel (float32 or float64, one dtype).

    Also refuses inputs whose scores or unnormalised sums could overflow the
    dtype (:func:`refattn.validation.check_kernel_range`). With ``count_only``
    (docs/contract.md, "Count-only runs") the inputs are validated the same way
    but not copied: the loop gets (1, 1, .) placeholders of the same types, and
    only ``dims`` carries the sizes.
    """
    q, k, v = check_attention_inputs(q, k, v, mask=mask, causal=causal, where=where, float_dtypes=KERNEL_DTYPES)
    scale = check_scale(scale, q.shape[-1], where)
    check_kernel_range(q, k, v, scale, where)
    lead = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    nq, nk = q.shape[-2], k.shape[-2]
    dims = (int(np.prod(lead, dtype=np.int64)), nq, nk, q.shape[-1], v.shape[-1])

    if count_only:
        def flat(x):
            return np.zeros((1, 1, x.shape[-1]), x.dtype)
    else:
        def flat(x):
            x = np.broadcast_to(x, lead + x.shape[-2:])
            return np.ascontiguousarray(x.reshape((-1,) + x.shape[-2:]))

    has_mask = mask is not None
    if mask is None or count_only:
        m = np.ones((1, 1, 1), np.bool_)
    else:
        m = np.broadcast_to(np.asarray(mask, bool), lead + (nq, nk))
        m = np.ascontiguousarray(m.reshape((-1, nq, nk)))
    return Prepared(flat(q), flat(k), flat(v), m, has_mask, tuple(lead), scale, normalize_causal(causal),
                    dims, bool(count_only))


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
    ok = (x < np.inf) if allow_neginf else np.isfinite(x)  # one boolean temporary (NaN compares False)
    if not ok.all():
        bad = ~ok
        what = "NaN or +Inf" if allow_neginf else "NaN or Inf"
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{where}: {name} contains {what} (first at index {first})")
    if max_abs(x, finite_only=allow_neginf) > np.finfo(dt).max:
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
# Up-front cost warnings
# ---------------------------------------------------------------------------
class CostWarning(UserWarning):
    """A requested kernel run will allocate a lot of memory or take long (said before any work starts)."""


#: Warn when a run would allocate more than this many bytes ...
COST_WARN_BYTES = 1 << 30
#: ... or is expected to take longer than this many seconds ...
COST_WARN_SECONDS = 30.0
#: ... at this rate of counted FLOPs per second (a conservative two-core laptop rate).
COST_FLOPS_PER_SECOND = 2e10


def warn_if_costly(what: str, plan: Plan, p: Prepared, *, count_only=False, alloc_elements=0, flops=None):
    """Warn (:class:`CostWarning`) before a run that will allocate more than ``COST_WARN_BYTES``
    (``alloc_elements`` of the input dtype besides the outputs, e.g. the standard kernel's N x N
    arrays) or take longer than ``COST_WARN_SECONDS`` (``flops``, default 2 B Nq Nk (d + dv),
    at ``COST_FLOPS_PER_SECOND``). Count-only runs skip the arithmetic and the arrays: no warning."""
    if count_only:
        return
    nb, nq, nk, d, dv = p.dims
    itemsize = np.dtype(p.q.dtype).itemsize
    nbytes = int(alloc_elements) * itemsize
    flops = 2 * nb * nq * nk * (d + dv) if flops is None else flops
    seconds = flops / COST_FLOPS_PER_SECOND
    if nbytes > COST_WARN_BYTES or seconds > COST_WARN_SECONDS:
        import warnings

        warnings.warn(CostWarning(
            f"{what} on B={nb}, Nq={nq}, Nk={nk}, d={d}, dv={dv} ({plan.kernel}) will allocate about "
            f"{nbytes / 2**30:.1f} GiB besides its outputs and take roughly {seconds:.0f} s or more on two cores; "
            "count_only=True gives the same traffic, FLOPs and steps without the arithmetic or the arrays"),
            stacklevel=3)


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
    with blas_one_thread():
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
    """The score tile of query rows r0.. (``q_tile``, (br, d)) against the first ``n`` rows of
    ``k_tile`` (key columns ``cols[:n]``), **transposed**: returns ``(st, eff)`` with ``st`` an
    (n, br) view of the buffer ``out`` (>= n*br elements) such that ``eff * st[c, r]`` is
    S[r, c] = scale * q_r . k_c. Entries hidden by the causal mask (when ``causal``: key c
    visible to row r iff c <= r + off) or by ``mask[b]`` (when ``has_mask``) are -inf.

    Why transposed and unscaled (docs/speed.md): the row statistics of S
    (max, sum over keys) become column operations of S^T, which vectorise across query
    rows in the order of a per-row loop (same sums, bit for bit), and the scale is applied
    where the tile is read next (``exp(eff * st - shift)``) instead of in a pass of its own.
    For ``scale > 0`` the row maximum of ``scale * x`` is ``scale`` times that of ``x``
    (rounding is monotone), so nothing changes numerically; a ``scale <= 0`` is applied here
    and ``eff`` is 1.

    Variants (docs/variants.md): with ``causal`` the band's lower edge also hides key c from
    row r when ``c < r + lo`` (a sliding window); with ``softcap > 0`` or an ALiBi ``slope``
    the scale is applied here (``eff`` is 1), then the cap ``softcap * tanh(s / softcap)``,
    then the bias ``-slope * |r + aoff - c|`` (``aoff = Nk - Nq``), then the masks.
    """
    br = q_tile.shape[0]
    st = out[:n * br].reshape((n, br))
    np.dot(k_tile[:n], q_tile.T, st)
    eff = scale
    if not scale > 0 or softcap > 0 or slope != 0:
        for c in range(n):
            for r in range(br):
                x = st[c, r] * scale
                if softcap > 0:
                    x = softcap * np.tanh(x / softcap)
                if slope != 0:
                    x -= slope * abs(r0 + r + aoff - cols[c])
                st[c, r] = x
        eff = st.dtype.type(1)
    if causal:
        for c in range(n):
            hidden = min(max(cols[c] - off - r0, 0), br)  # rows r < hidden do not see key cols[c]
            for r in range(hidden):
                st[c, r] = -np.inf
            below = max(cols[c] - lo - r0 + 1, 0)  # rows r >= below have cols[c] < r + lo
            for r in range(below, br):
                st[c, r] = -np.inf
    if has_mask:
        for c in range(n):
            for r in range(br):
                if not mask[b, r0 + r, cols[c]]:
                    st[c, r] = -np.inf
    return st, eff


@numba.njit(cache=True)
def softcap_dtanh(st, out, r0, cols, softcap, slope, aoff):
    """The softcap's derivative 1 - tanh^2 = 1 - (capped / softcap)^2 for a transposed score tile
    ``st`` (n, br) made by :func:`score_tile` with ``eff`` = 1 (the capped score is ``st`` minus
    its ALiBi bias), into ``out`` (n, br); 0 where masked. The backward keeps it on chip."""
    n, br = st.shape
    dt = out[:n * br].reshape((n, br))
    for c in range(n):
        for r in range(br):
            x = st[c, r]
            if x == -np.inf:
                dt[c, r] = 0
            else:
                t = (x + slope * abs(r0 + r + aoff - cols[c])) / softcap
                dt[c, r] = 1 - t * t
    return dt


@numba.njit(cache=True)
def _column_max(st, out):
    """out[r] = max_c st[c, r] (-inf for an empty tile): vertical maxima, vectorised over r."""
    n, br = st.shape
    for r in range(br):
        out[r] = -np.inf
    for c in range(n):
        for r in range(br):
            x = st[c, r]
            out[r] = x if x > out[r] else out[r]


@numba.njit(cache=True)
def _exp_columns(st, scale, shift, sums):
    """st[c, r] = exp(scale * st[c, r] - shift[r]) and sums[r] = sum_c of them, c in order."""
    n, br = st.shape
    for r in range(br):
        sums[r] = 0
    for c in range(n):
        for r in range(br):
            p = fast_exp(st[c, r] * scale - shift[r])
            st[c, r] = p
            sums[r] += p


@numba.njit(cache=True)
def online_update(st, v_tile, scale, m, l, acc, work, pv):
    """One online-softmax step (FlashAttention-2, Algorithm 1, lines 8-10) for a transposed
    score tile ``st`` (n, br) from :func:`score_tile` (S = ``scale * st^T``).

    m_new = max(m, rowmax S); P~ = exp(S - m_new) (overwrites ``st`` with P~^T);
    l = e^(m - m_new) l + rowsum P~; acc = e^(m - m_new) acc + P~ V (the factor is
    not inverted). A row whose max is still -inf shifts by 0, so it keeps l = 0 and
    acc = 0 (docs/design.md). ``v_tile``: (>= n, dv); ``acc``, ``pv``: (br, dv);
    ``work``: (4, >= br) scratch. Exponentials: :func:`refattn.kernels.fastexp.fast_exp`.
    """
    n, br = st.shape
    mx, shift, alpha, sums = work[0, :br], work[1, :br], work[2, :br], work[3, :br]
    _column_max(st, mx)
    zero = scale - scale
    for r in range(br):
        x = mx[r] * scale
        x = x if x > m[r] else m[r]  # m_new
        sh = x if x != -np.inf else zero
        shift[r] = sh
        alpha[r] = fast_exp(m[r] - sh)  # e^(m_old - m_new); 0 when m_old = -inf
        m[r] = x
    _exp_columns(st, scale, shift, sums)
    for r in range(br):
        l[r] = alpha[r] * l[r] + sums[r]
    np.dot(st.T, v_tile[:n], pv)
    for r in range(br):
        a = alpha[r]
        for t in range(acc.shape[1]):
            acc[r, t] = a * acc[r, t] + pv[r, t]


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
@numba.njit(cache=True, inline="always")
def balanced_order(u, n):
    """The u-th of n blocks in the order 0, n-1, 1, n-2, ...: with the static split of a
    ``prange`` into contiguous chunks, each thread gets light and heavy causal blocks alike."""
    return u // 2 if u % 2 == 0 else n - 1 - u // 2


def new_tasks(ntask: int, capacity: int) -> memory.Mem:
    """Counters for ``ntask`` independent tasks, stacked (a Mem of (ntask, ...) arrays, no trace)."""
    sram = np.zeros((ntask, 3), np.int64)
    sram[:, 2] = capacity
    cursor = np.zeros((ntask, 4), np.int64)
    cursor[:, 2] = -1  # tasks never stop: the parallel path runs untraced, unstopped runs only
    return memory.Mem(np.zeros((ntask, memory.N_TENSORS, 2), np.int64), np.zeros((ntask, 2), np.int64),
                      np.zeros((ntask, memory.N_SLOTS), np.int64), sram,
                      np.zeros((ntask, 1, memory.TRACE_WIDTH), np.int64), cursor)  # one sink row each (no trace)


@numba.njit(cache=True, inline="always")
def task_mem(tasks, t):
    """The Mem of task ``t`` (views into the stacked counters of :func:`new_tasks`)."""
    return memory.Mem(tasks.counts[t], tasks.ops[t], tasks.slots[t], tasks.sram[t], tasks.trace[t], tasks.cursor[t])


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
