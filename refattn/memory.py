"""The simulated memory hierarchy: HBM, an SRAM of M elements, counters and a trace.

Every simulated kernel moves data only through the functions in this module.
They are Numba-jitted and take one :class:`Mem` (a namedtuple of arrays), so a
kernel's loop can call them at full speed and the *same* loop produces the
counts, the trace and the stop-after-step state. There is no second copy of
any kernel for counting.

Units
-----
* Traffic and the SRAM capacity ``M`` are counted in **elements**, as in the
  FlashAttention paper. Bytes are elements times ``bytes_per_element`` (the
  simulated storage size, e.g. 2 for fp16), independent of the dtype the
  arithmetic is done in. Statistics (m, l, L, D) are counted in the same
  element size, a simplification stated here once.
* FLOPs: 2 per multiply-add of a matrix product; exponentials are counted
  separately.

The device arrays (one :class:`Mem`)
------------------------------------
``counts  (N_TENSORS, 2) int64``  HBM element reads [:, 0] and writes [:, 1] per tensor.
``ops     (2,) int64``             [matmul FLOPs, exponentials].
``slots   (N_SLOTS,) int64``       elements each on-chip buffer ("slot") holds now.
``sram    (3,) int64``             [current occupancy, peak occupancy, capacity M].
``trace   (cap + 1, 10) int64``    event records (see ``TRACE_FIELDS``); cap may be 0. The last row
                                   is a sink: events past the capacity (all of them when cap = 0)
                                   are written there and only counted, see "Cost of a counter".
``cursor  (4,) int64``             [events seen, current step, stop_after (-1: never), head].

SRAM accounting: a kernel names the buffer ("slot") each load fills or each
on-chip result occupies. Filling a slot replaces its previous content;
``free`` empties it. Occupancy is the sum of the slot sizes, and its peak is
what ``peak_sram`` reports. Kernels check their plan against M in Python
before any work starts (:func:`require_fits`); the counted peak is then
asserted to be within M after the run.

Steps and stopping: steps are numbered 1..n_steps (docs/contract.md). A kernel
calls :func:`end_step` after each unit of work (for the flash kernels, one
tile); every event recorded before it carries that step's 1-based number. It
returns True when the run was asked to stop there (``stop_after``), and the
kernel then saves its on-chip state and returns early. The app steps by
rerunning to step k.

Cost of a counter: the primitives below are branch-free (an event past the
trace capacity goes to the sink row; the peak is a ``max``). Numba then drops
the reference counting of the ``Mem`` arrays around each inlined call, which
otherwise costs about 90 ns per call (atomic increments on six arrays); a
count-only sweep (docs/contract.md) is made of nothing but these calls, at about
3 ns each.

Time model (:func:`simulated_time`): the whole device streams HBM at its
bandwidth and computes at its peak rate, and the two overlap perfectly, so
``time = max(bytes / bandwidth, flops / peak_flops)``. It is a roofline,
stated as such: no latency, no occupancy, no launch overhead. A chip with an
``exp_rate`` (exponentials per second: the special-function units, far slower
than the tensor cores) also charges the counted exponentials, in series with the
matmuls: ``compute = flops / peak_flops + exps / exp_rate``. In series because
in a FlashAttention-2 style kernel the same warps issue a tile's matmuls and
its softmax one after the other; a kernel that overlaps them across warp
groups (FlashAttention-3's ping-pong schedule) runs below this estimate.
"""

from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass, field

import numba
import numpy as np

# ---------------------------------------------------------------------------
# Tensor ids (HBM arrays). Kernels use the integer constants; Python the names.
# ---------------------------------------------------------------------------
TENSORS = (
    "Q", "K", "V", "O", "S", "P", "L", "m", "l",
    "dO", "dQ", "dK", "dV", "D", "dP", "dS", "idx", "mask",
    "Qc", "Kc", "AE",  # ViTCoD: auto-encoded Q and K (codes) and the decoder weights
    "dtanh",  # the softcap's 1 - tanh^2 tile (flash backward)
)
TENSOR_ID = {name: i for i, name in enumerate(TENSORS)}
N_TENSORS = len(TENSORS)
(T_Q, T_K, T_V, T_O, T_S, T_P, T_L, T_M, T_LSUM,
 T_DO, T_DQ, T_DK, T_DV, T_D, T_DP, T_DS, T_IDX, T_MASK) = range(18)
T_QC, T_KC, T_AE = TENSOR_ID["Qc"], TENSOR_ID["Kc"], TENSOR_ID["AE"]
T_DT = TENSOR_ID["dtanh"]

#: Maximum number of on-chip slots a kernel may use.
N_SLOTS = 16

# Event kinds of the trace.
EVENT_KINDS = ("load", "store", "compute", "skip", "free")
EV_LOAD, EV_STORE, EV_COMPUTE, EV_SKIP, EV_FREE = range(len(EVENT_KINDS))

#: Columns of one trace record. ``step`` is 1-based. Row/column ranges are half-open
#: [r0, r1) x [c0, c1) in the coordinates of the named tensor (for a compute event:
#: query rows x key columns). ``append`` is 1 for a load that adds to its slot
#: (:func:`load_more`, gathers) instead of replacing its content.
TRACE_FIELDS = ("step", "kind", "tensor", "slot", "head", "r0", "r1", "c0", "c1", "append")
TRACE_WIDTH = len(TRACE_FIELDS)

OP_FLOPS, OP_EXP = 0, 1

Mem = namedtuple("Mem", ["counts", "ops", "slots", "sram", "trace", "cursor"])


def new_mem(capacity: int, *, trace_capacity: int = 0, stop_after: int | None = None) -> Mem:
    """Fresh device arrays for one kernel run (counters zero, SRAM empty)."""
    return Mem(
        counts=np.zeros((N_TENSORS, 2), np.int64),
        ops=np.zeros(2, np.int64),
        slots=np.zeros(N_SLOTS, np.int64),
        sram=np.array([0, 0, int(capacity)], np.int64),
        trace=np.zeros((int(trace_capacity) + 1, TRACE_WIDTH), np.int64),  # + the sink row
        cursor=np.array([0, 0, -1 if stop_after is None else int(stop_after), 0], np.int64),
    )


# ---------------------------------------------------------------------------
# Jitted primitives used inside kernels
# ---------------------------------------------------------------------------
@numba.njit(cache=True, inline="always")
def _record(mem, kind, tensor, slot, r0, r1, c0, c1, append=0):
    n = mem.cursor[0]
    rec = mem.trace[min(n, mem.trace.shape[0] - 1)]  # past the capacity: the sink row (no branch)
    rec[0] = mem.cursor[1] + 1  # the step being worked on, 1-based
    rec[1] = kind
    rec[2] = tensor
    rec[3] = slot
    rec[4] = mem.cursor[3]
    rec[5] = r0
    rec[6] = r1
    rec[7] = c0
    rec[8] = c1
    rec[9] = append
    mem.cursor[0] = n + 1


@numba.njit(cache=True, inline="always")
def _fill_slot(mem, slot, n, append):
    old = mem.slots[slot]
    new = n + old * append  # append is 0 or 1
    mem.slots[slot] = new
    now = mem.sram[0] + new - old
    mem.sram[0] = now
    mem.sram[1] = max(mem.sram[1], now)


@numba.njit(cache=True, inline="always")
def load(mem, tensor, slot, r0, r1, c0, c1):
    """Read tensor[r0:r1, c0:c1] from HBM into on-chip buffer ``slot`` (replacing it)."""
    n = (r1 - r0) * (c1 - c0)
    mem.counts[tensor, 0] += n
    _fill_slot(mem, slot, n, 0)
    _record(mem, EV_LOAD, tensor, slot, r0, r1, c0, c1)


@numba.njit(cache=True, inline="always")
def load_more(mem, tensor, slot, r0, r1, c0, c1):
    """Like :func:`load` but appends to the slot (gathers of single rows/columns)."""
    n = (r1 - r0) * (c1 - c0)
    mem.counts[tensor, 0] += n
    _fill_slot(mem, slot, n, 1)
    _record(mem, EV_LOAD, tensor, slot, r0, r1, c0, c1, 1)


@numba.njit(cache=True, inline="always")
def store(mem, tensor, slot, r0, r1, c0, c1):
    """Write on-chip buffer ``slot`` to tensor[r0:r1, c0:c1] in HBM (the slot keeps its data)."""
    mem.counts[tensor, 1] += (r1 - r0) * (c1 - c0)
    _record(mem, EV_STORE, tensor, slot, r0, r1, c0, c1)


@numba.njit(cache=True, inline="always")
def hold(mem, tensor, slot, r0, r1, c0, c1):
    """An on-chip result (e.g. the S tile, the O accumulator) now occupies ``slot``.

    Records a compute event; no HBM traffic. ``tensor`` names what was computed
    and the ranges give its block (for S/P: query rows x key columns).
    """
    _fill_slot(mem, slot, (r1 - r0) * (c1 - c0), 0)
    _record(mem, EV_COMPUTE, tensor, slot, r0, r1, c0, c1)


@numba.njit(cache=True, inline="always")
def free(mem, slot):
    """Release on-chip buffer ``slot``."""
    mem.sram[0] -= mem.slots[slot]
    mem.slots[slot] = 0
    _record(mem, EV_FREE, -1, slot, 0, 0, 0, 0)


@numba.njit(cache=True)
def free_all(mem):
    """Release every occupied on-chip slot (one ``free`` event each, in slot order)."""
    for slot in range(mem.slots.shape[0]):
        if mem.slots[slot] > 0:
            free(mem, slot)


@numba.njit(cache=True, inline="always")
def skip(mem, r0, r1, c0, c1):
    """Record that the tile of query rows [r0, r1) x key columns [c0, c1) is skipped."""
    _record(mem, EV_SKIP, -1, -1, r0, r1, c0, c1)


@numba.njit(cache=True, inline="always")
def count_flops(mem, flops, exps):
    """Add matmul FLOPs (2 per multiply-add) and exponentials to the op counters."""
    mem.ops[OP_FLOPS] += flops
    mem.ops[OP_EXP] += exps


@numba.njit(cache=True, inline="always")
def end_step(mem):
    """Close the current step (1-based number ``cursor[1] + 1``). True if the run must stop here."""
    mem.cursor[1] += 1
    return mem.cursor[1] == mem.cursor[2]


@numba.njit(cache=True, inline="always")
def set_head(mem, head):
    """Tag the following events with the (flattened) batch/head index."""
    mem.cursor[3] = head


# ---------------------------------------------------------------------------
# Python views of the counters
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Traffic:
    """HBM reads and writes per tensor, in elements, as counted by a kernel."""

    reads: dict
    writes: dict
    bytes_per_element: int = 2

    @classmethod
    def from_counts(cls, counts: np.ndarray, bytes_per_element: int = 2) -> Traffic:
        reads = {name: int(counts[i, 0]) for i, name in enumerate(TENSORS) if counts[i, 0]}
        writes = {name: int(counts[i, 1]) for i, name in enumerate(TENSORS) if counts[i, 1]}
        return cls(reads, writes, bytes_per_element)

    @property
    def total_reads(self) -> int:
        return sum(self.reads.values())

    @property
    def total_writes(self) -> int:
        return sum(self.writes.values())

    @property
    def total(self) -> int:
        """Total HBM element accesses (reads + writes)."""
        return self.total_reads + self.total_writes

    @property
    def bytes(self) -> int:
        return self.total * self.bytes_per_element

    def of(self, tensor: str) -> tuple[int, int]:
        """(reads, writes) of one tensor."""
        return self.reads.get(tensor, 0), self.writes.get(tensor, 0)

    def __add__(self, other: Traffic) -> Traffic:
        names = set(self.reads) | set(other.reads)
        reads = {n: self.reads.get(n, 0) + other.reads.get(n, 0) for n in names}
        names = set(self.writes) | set(other.writes)
        writes = {n: self.writes.get(n, 0) + other.writes.get(n, 0) for n in names}
        return Traffic(reads, writes, self.bytes_per_element)

    def rows(self):
        """[(tensor, reads, writes)] in TENSORS order, for tables."""
        return [(n, self.reads.get(n, 0), self.writes.get(n, 0))
                for n in TENSORS if n in self.reads or n in self.writes]

    def __str__(self) -> str:
        parts = [f"{n}: r{r} w{w}" for n, r, w in self.rows()]
        return f"Traffic({', '.join(parts)}; total {self.total} elements = {self.bytes} B)"


@dataclass(frozen=True)
class Event:
    step: int  # 1-based
    kind: str
    tensor: str | None
    slot: int
    head: int
    rows: tuple[int, int]
    cols: tuple[int, int]
    append: bool = False

    @property
    def elements(self) -> int:
        return (self.rows[1] - self.rows[0]) * (self.cols[1] - self.cols[0])


@dataclass(frozen=True)
class SlotContent:
    """What one on-chip slot holds: a block of ``tensor``, rows x cols (half-open), ``elements`` in all.

    For a slot filled by gathers (several appending loads) rows/cols give the
    span of the gathered blocks and ``elements`` their exact total.
    """

    tensor: str | None
    rows: tuple[int, int]
    cols: tuple[int, int]
    elements: int


@dataclass(frozen=True)
class Trace:
    """The event list of one run, with replay helpers for the app and lessons."""

    records: np.ndarray  # (n_events, TRACE_WIDTH) int64
    slot_names: tuple = ()
    n_steps: int = 0

    def __len__(self) -> int:
        return len(self.records)

    @property
    def events(self) -> list[Event]:
        return [self._event(r) for r in self.records]

    @staticmethod
    def _event(r) -> Event:
        t = int(r[2])
        return Event(
            step=int(r[0]), kind=EVENT_KINDS[int(r[1])], tensor=TENSORS[t] if t >= 0 else None,
            slot=int(r[3]), head=int(r[4]), rows=(int(r[5]), int(r[6])), cols=(int(r[7]), int(r[8])),
            append=bool(r[9]),
        )

    def events_at(self, step: int) -> list[Event]:
        """Events recorded during step ``step`` (1-based; step 0 has none)."""
        return [self._event(r) for r in self.records[self.records[:, 0] == step]]

    def traffic_until(self, step: int, bytes_per_element: int = 2) -> Traffic:
        """HBM traffic of steps 1..step inclusive, replayed from the events (step 0: nothing yet)."""
        counts = np.zeros((N_TENSORS, 2), np.int64)
        rec = self.records[self.records[:, 0] <= step]
        n = (rec[:, 6] - rec[:, 5]) * (rec[:, 8] - rec[:, 7])
        for kind, col in ((EV_LOAD, 0), (EV_STORE, 1)):
            sel = rec[:, 1] == kind
            np.add.at(counts[:, col], rec[sel, 2], n[sel])
        return Traffic.from_counts(counts, bytes_per_element)

    def sram_at(self, step: int) -> dict:
        """What each slot holds at the end of step ``step`` (1-based): {slot name: SlotContent}.

        Replayed from the events: a load or compute event replaces the slot's
        content, an appending load (a gather) adds to it, a free empties it.
        """
        held: dict = {}
        for r in self.records[self.records[:, 0] <= step]:
            kind, slot = int(r[1]), int(r[3])
            name = self.slot_names[slot] if 0 <= slot < len(self.slot_names) else str(slot)
            if kind in (EV_LOAD, EV_COMPUTE):
                e = self._event(r)
                old = held.get(name)
                if e.append and old is not None and old.tensor == e.tensor:
                    held[name] = SlotContent(e.tensor, (min(old.rows[0], e.rows[0]), max(old.rows[1], e.rows[1])),
                                             (min(old.cols[0], e.cols[0]), max(old.cols[1], e.cols[1])),
                                             old.elements + e.elements)
                else:
                    held[name] = SlotContent(e.tensor, e.rows, e.cols, e.elements)
            elif kind == EV_FREE:
                held.pop(name, None)
        return held


def make_trace(mem: Mem, slot_names=()) -> Trace | None:
    """Turn a run's trace array into a :class:`Trace`; raises if it overflowed."""
    cap = mem.trace.shape[0] - 1  # the last row is the sink
    if cap <= 0:
        return None
    n = int(mem.cursor[0])
    if n > cap:
        raise RuntimeError(f"trace overflow: {n} events, capacity {cap} (rerun with a larger capacity)")
    return Trace(mem.trace[:n].copy(), tuple(slot_names), int(mem.cursor[1]))


# ---------------------------------------------------------------------------
# SRAM configuration and chip presets
# ---------------------------------------------------------------------------
#: Largest SRAM capacity accepted (counters are int64; 2**53 keeps every count exact in a float too).
MAX_CAPACITY = 2**53


class SramTooSmall(ValueError):
    """A kernel's plan needs more on-chip memory than M."""


@dataclass(frozen=True)
class Chip:
    """A device for the simulated-time model (see module docstring).

    ``sram_bytes`` is the on-chip memory one thread block / tile loop may use
    (per SM on a GPU); ``units`` is how many run in parallel.
    """

    name: str
    hbm_bandwidth: float  # bytes / s, whole device
    sram_bytes: int  # per SM (per tile loop)
    units: int  # SMs
    peak_flops: float  # matmul FLOP/s, whole device
    bytes_per_element: int
    source: str
    exp_rate: float | None = None  # exponentials / s, whole device; None: exponentials cost nothing

    @property
    def sram_elements(self) -> int:
        """M in elements for this chip's per-SM SRAM."""
        return self.sram_bytes // self.bytes_per_element


CHIPS = {
    "a100": Chip(
        name="A100-40GB-like",
        hbm_bandwidth=1.555e12,
        sram_bytes=192 * 1024,
        units=108,
        peak_flops=312e12,
        bytes_per_element=2,
        source=(
            "NVIDIA A100 Tensor Core GPU Architecture whitepaper (2020): 40 GB HBM2 at 1,555 GB/s, "
            "108 SMs with 192 KB combined L1/shared memory each, 312 TFLOP/s dense FP16 tensor. "
            "The FlashAttention paper (arXiv 2205.14135, sec. 2.1) quotes 1.5-2.0 TB/s and 192 KB per SM."
        ),
    ),
    "h100": Chip(
        name="H100-SXM5-like",
        hbm_bandwidth=3.35e12,
        sram_bytes=228 * 1024,
        units=132,
        peak_flops=989e12,
        bytes_per_element=2,
        source=(
            "NVIDIA H100 Tensor Core GPU Architecture whitepaper (2022), SXM5: 80 GB HBM3 at 3.35 TB/s, "
            "132 SMs with up to 228 KB shared memory each, 989 TFLOP/s dense BF16 tensor."
        ),
    ),
    "h200": Chip(
        name="H200-SXM-like",
        hbm_bandwidth=4.8e12,
        sram_bytes=228 * 1024,
        units=132,
        peak_flops=989e12,
        bytes_per_element=2,
        source=(
            "NVIDIA H200 Tensor Core GPU datasheet (2024), SXM: 141 GB HBM3e at 4.8 TB/s, 989 TFLOP/s dense "
            "BF16 tensor (the H100's Hopper chip: 132 SMs, up to 228 KB shared memory each, per the H100 "
            "whitepaper). Exponentials: 16 per SM per clock on the special-function units, 132 SMs at "
            "1.98 GHz (H100 whitepaper): 4.2e12 / s. gpu_optional.predict replaces the rates by "
            "microbenchmarks on the GPU in hand."
        ),
        exp_rate=16 * 132 * 1.98e9,
    ),
    "vitcod": Chip(
        name="ViTCoD-like accelerator",
        hbm_bandwidth=76.8e9,
        sram_bytes=3 * 53 * 1024 + 20 * 1024 + 108 * 1024,
        units=1,
        peak_flops=2 * 512 * 500e6,
        bytes_per_element=1,
        source=(
            "ViTCoD public simulator (GATECH-EIC/ViTCoD) settings as restated in docs/algorithms.md (ViTCoD): "
            "512 MACs at 500 MHz, 76.8 GB/s off-chip, 8-bit data, Q/K/V buffers of 53 KB, "
            "20 KB index buffer, 108 KB output buffer."
        ),
    ),
}


def get_chip(name_or_chip) -> Chip:
    if isinstance(name_or_chip, Chip):
        return name_or_chip
    try:
        return CHIPS[str(name_or_chip).lower()]
    except KeyError:
        raise ValueError(f"unknown chip preset {name_or_chip!r}; choose from {sorted(CHIPS)}") from None


@dataclass(frozen=True)
class Sram:
    """On-chip memory of ``capacity`` elements (M), each stored in ``bytes_per_element`` bytes."""

    capacity: int
    bytes_per_element: int = 2
    chip: Chip | None = field(default=None, compare=False)

    def __post_init__(self):
        if isinstance(self.capacity, bool) or not isinstance(self.capacity, (int, np.integer)):
            raise TypeError(f"SRAM capacity M must be an integer number of elements, got {self.capacity!r}")
        if self.capacity <= 0:
            raise ValueError(f"SRAM capacity M must be positive, got {self.capacity}")
        if self.capacity > MAX_CAPACITY:
            raise ValueError(f"SRAM capacity M = {self.capacity} elements is too large (at most 2**53 elements)")
        if self.bytes_per_element <= 0:
            raise ValueError(f"bytes_per_element must be positive, got {self.bytes_per_element}")

    @classmethod
    def from_chip(cls, chip) -> Sram:
        chip = get_chip(chip)
        return cls(chip.sram_elements, chip.bytes_per_element, chip)


def as_sram(sram) -> Sram:
    """Accept an :class:`Sram`, an int M (elements, 2 bytes each) or a chip preset name."""
    if isinstance(sram, Sram):
        return sram
    if isinstance(sram, str) or isinstance(sram, Chip):
        return Sram.from_chip(sram)
    return Sram(sram)


def require_fits(need: int, sram: Sram, what: str) -> None:
    """Refuse a plan whose on-chip footprint exceeds M, before any work starts."""
    if need > sram.capacity:
        raise SramTooSmall(
            f"SRAM too small: {what} needs {need} elements on chip, but M = {sram.capacity} elements"
        )


def simulated_time(traffic: Traffic, flops: int, chip, exps: int = 0) -> dict:
    """Roofline time on ``chip``: max(HBM bytes / bandwidth, FLOPs / peak + exps / exp_rate). Seconds.

    The exponentials count only on a chip with an ``exp_rate`` (see the module docstring). ``overlap_s`` is
    the lower bound max(memory, matmuls, exponentials) of a kernel that overlaps all three."""
    chip = get_chip(chip)
    nbytes = traffic.total * chip.bytes_per_element
    t_mem = nbytes / chip.hbm_bandwidth
    t_exp = exps / chip.exp_rate if chip.exp_rate else 0.0
    t_compute = flops / chip.peak_flops + t_exp
    return {
        "bytes": nbytes,
        "memory_s": t_mem,
        "compute_s": t_compute,
        "exp_s": t_exp,
        "overlap_s": max(t_mem, flops / chip.peak_flops, t_exp),   # if the matmuls and exps overlapped too
        "time_s": max(t_mem, t_compute),
        "bound": "memory" if t_mem >= t_compute else "compute",
    }
