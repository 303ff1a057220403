"""A systolic PE array and the cycles a dense GEMM takes on it (docs/vitcod.md, "The PE array").

The GEMM is ``C (M x N) = A (M x K) @ B (K x N)`` on an array of ``rows x cols``
processing elements (PEs). SCALE-Sim calls A the *ifmap*, B the *filter* and C
the *ofmap*; we keep its conventions so our counts can be checked against it.

Each dataflow keeps one thing still in the PEs and maps two GEMM dims onto the
array (``Sr`` onto its rows, ``Sc`` onto its columns); the third dim ``T``
streams through in time::

    dataflow            stays in the PEs     Sr   Sc   T    enters left   enters top     leaves
    "os" output-stat.   C[i, j]              M    N    K    A[i, t]       B[t, j]        drained at the end
    "ws" weight-stat.   B[kk, j]             K    N    M    A[t, kk]      B (preload)    C[t, j] at the bottom
    "is" input-stat.    A[i, kk]             K    M    N    B[kk, t]      A (preload)    C[i, t] at the bottom

A GEMM larger than the array runs in ``folds = ceil(Sr/R) * ceil(Sc/C)`` folds
(column folds outer, row folds inner, as SCALE-Sim). Fold ``f`` holds rows
``[fr*R, fr*R + rh)`` of Sr and columns ``[fc*C, fc*C + cw)`` of Sc, with
``rh = min(R, Sr - fr*R)`` and ``cw = min(C, Sc - fc*C)``. Inside a fold the
operands enter *skewed*: array row r starts r cycles late and array column c
starts c cycles late, so PE (r, c) does its t-th MAC at fold cycle
``P + t + r + c``, where ``P`` is 0 for os and R for ws/is (the stationary tile
first enters from the top, one array row per cycle). Every fold lasts::

    os:  T + R + C - 2          (stream T, fill R - 1 and C - 1)
    ws:  T + 2R + C - 2         (preload R, stream T, fill R - 1, C - 1)
    is:  T + 2R + C - 2

and the total, as SCALE-Sim reports it, is ``folds * per_fold - 1`` (its count
is the index of the last busy cycle). These equal SCALE-Sim 3.0.0's "Total
Cycles" for every shape recorded in ``tests/data/scalesim_reference.json``
(tools/scalesim_reference.py regenerates them).

SRAM reads and writes of one fold, as SCALE-Sim counts them (its demand
matrices); they are the operand elements that enter the array's left and top
edges and leave its bottom edge in :func:`fold_view`, summed over the fold::

    os: A rh*T;  B cw*T;  C rh*cw + R + C
    ws: A rh*T;  B rh*cw; C cw*T
    is: A rh*cw; B rh*T;  C cw*T

(the os ``R + C`` is SCALE-Sim's own bookkeeping for the output drain, kept so
the numbers match.) DRAM traffic assumes buffers that hold each operand: every
A, B element is read once and every C element written once.

One implementation per dataflow: :func:`fold_view` says what the array does at
one cycle of one fold (which PEs do a MAC, which operand elements cross its
edges); :func:`fold_counts` is that view summed over the fold in closed form
(tests/test_pe_array.py checks the two agree cycle by cycle). :func:`simulate_gemm`
adds :func:`fold_counts` over the (at most four) *kinds* of fold, full or
partial in rows and columns, so its run time does not grow with the number of
folds; :meth:`GemmResult.state_at` computes the array at any cycle directly
from the fold that cycle falls in. :func:`fold_counts` is jitted, so the
simulated ViTCoD kernel (refattn/vitcod/kernel.py) adds the same counts fold
by fold inside its loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numba
import numpy as np

__all__ = ["DATAFLOWS", "Fold", "GemmResult", "Step", "fold_counts", "fold_view", "simulate_gemm"]

DATAFLOWS = ("os", "ws", "is")
DF_CODE = {name: i for i, name in enumerate(DATAFLOWS)}
_MAX_STEP_CYCLES = 20_000


def _check_pos_int(name, x):
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
        raise TypeError(f"simulate_gemm: {name} must be an int, got {type(x).__name__}")
    if x < 1:
        raise ValueError(f"simulate_gemm: {name} must be >= 1, got {x}")
    return int(x)


def spatial_dims(m: int, n: int, k: int, dataflow: str) -> tuple[int, int, int]:
    """(Sr, Sc, T) of the GEMM ``(m x k) @ (k x n)`` under ``dataflow`` (see the module docstring)."""
    return {"os": (m, n, k), "ws": (k, n, m), "is": (k, m, n)}[dataflow]


@numba.njit(cache=True)
def fold_counts(df, rh, cw, t, r, c):
    """One fold of dataflow code ``df`` (0 os, 1 ws, 2 is) with ``rh x cw`` PEs used on an ``r x c``
    array, streaming ``t``: returns (cycles, A reads, B reads, C writes, MACs). Module docstring."""
    if df == 0:
        return t + r + c - 2, rh * t, cw * t, rh * cw + r + c, rh * cw * t
    if df == 1:
        return t + 2 * r + c - 2, rh * t, rh * cw, cw * t, rh * cw * t
    return t + 2 * r + c - 2, rh * cw, rh * t, cw * t, rh * cw * t


@dataclass(frozen=True)
class Fold:
    """One fold: which slice of (Sr, Sc) sits on the array, and when it runs."""

    index: int
    row_range: tuple  # [r0, r1) of the dim mapped to array rows (Sr)
    col_range: tuple  # [c0, c1) of the dim mapped to array columns (Sc)
    start_cycle: int
    cycles: int
    used_pes: int


@dataclass(frozen=True)
class Step:
    """The array during one cycle (:meth:`GemmResult.state_at`).

    ``active[r, c]``: PE (r, c) does a MAC this cycle. ``left[r]`` / ``top[c]``:
    the (row, col) of the operand element entering array row r from the left /
    array column c from the top, or (-1, -1); ``bottom[c]``: the (row, col) of
    the C element (a partial sum for ws/is) leaving column c at the bottom.
    ``left_operand``, ``top_operand``, ``bottom_operand`` name the matrices
    ("A", "B", "C" or "none") those indices refer to. ``stationary[r, c]``: the
    (row, col) of the element PE (r, c) holds ("A" or "B" for is/ws, C for os).
    ``macs_done``: MACs finished up to and including this cycle.
    """

    cycle: int
    fold: int
    phase: str  # "preload" (ws/is stationary tile) or "stream"
    active: np.ndarray
    left: np.ndarray
    top: np.ndarray
    left_operand: str
    top_operand: str
    macs_done: int
    bottom: np.ndarray = None
    bottom_operand: str = "none"
    stationary: np.ndarray = None
    stationary_operand: str = "none"


def fold_view(dataflow: str, tau: int, r0: int, rh: int, c0: int, cw: int, t_len: int, rows: int, cols: int) -> dict:
    """What the array does at cycle ``tau`` of a fold holding rows [r0, r0+rh) of Sr and columns
    [c0, c0+cw) of Sc (module docstring). Returns the fields of :class:`Step` (without cycle/fold/macs)
    plus ``macs``, the MACs done at this cycle. Coordinates are those of A, B, C."""
    R, C, T = rows, cols, t_len
    pre = 0 if dataflow == "os" else R
    rr = np.arange(R)[:, None]
    cc = np.arange(C)[None, :]
    used = (rr < rh) & (cc < cw)
    left = np.full((R, 2), -1, np.int64)
    top = np.full((C, 2), -1, np.int64)
    bottom = np.full((C, 2), -1, np.int64)
    stat = np.full((R, C, 2), -1, np.int64)
    # what each used PE holds still: os C[i, j]; ws B[kk, j]; is A[i, kk] (present once preloaded)
    ri, ci = np.nonzero(used)
    held = {"os": (r0 + ri, c0 + ci), "ws": (r0 + ri, c0 + ci), "is": (c0 + ci, r0 + ri)}[dataflow]
    stat_op = {"os": "C", "ws": "B", "is": "A"}[dataflow]
    if tau < pre:  # ws/is: the stationary tile enters from the top, array row tau this cycle
        active = np.zeros((R, C), bool)
        if tau < rh:
            for c in range(cw):
                top[c] = (r0 + tau, c0 + c) if dataflow == "ws" else (c0 + c, r0 + tau)
        loaded = ri < tau + 1
        stat[ri[loaded], ci[loaded]] = np.stack(held, axis=1)[loaded]
        return dict(phase="preload", active=active, left=left, top=top, bottom=bottom,
                    left_operand="B" if dataflow == "is" else "A", top_operand=stat_op,
                    bottom_operand="none", stationary=stat, stationary_operand=stat_op, macs=0)
    s = tau - pre
    t = s - rr - cc  # the MAC index each PE works on
    active = used & (t >= 0) & (t < T)
    stat[ri, ci] = np.stack(held, axis=1)
    for r in range(rh):
        tr = s - r
        if 0 <= tr < T:
            # os: A[i, t]; ws: A[i = t, kk]; is: B[kk, j = t]
            left[r] = (r0 + r, tr) if dataflow != "ws" else (tr, r0 + r)
    for c in range(cw):
        if dataflow == "os":
            tc = s - c
            if 0 <= tc < T:
                top[c] = (tc, c0 + c)  # B[t, j]
        else:  # the partial sum of MAC t leaves the bottom PE (rh - 1, c) of column c
            tb = s - (rh - 1) - c
            if 0 <= tb < T:
                bottom[c] = (tb, c0 + c) if dataflow == "ws" else (c0 + c, tb)
    return dict(phase="stream", active=active, left=left, top=top, bottom=bottom,
                left_operand="B" if dataflow == "is" else "A", top_operand="B" if dataflow == "os" else "none",
                bottom_operand="none" if dataflow == "os" else "C", stationary=stat, stationary_operand=stat_op,
                macs=int(active.sum()))


@dataclass(frozen=True)
class GemmResult:
    m: int
    n: int
    k: int
    rows: int
    cols: int
    dataflow: str
    spatial_rows: int  # Sr
    spatial_cols: int  # Sc
    temporal: int  # T
    row_folds: int
    col_folds: int
    cycles_per_fold: int
    cycles: int
    macs: int
    mapping_efficiency: float
    sram_reads: dict = field(default_factory=dict)
    sram_writes: dict = field(default_factory=dict)
    dram_reads: dict = field(default_factory=dict)
    dram_writes: dict = field(default_factory=dict)

    @property
    def folds(self) -> int:
        return self.row_folds * self.col_folds

    @property
    def utilization(self) -> float:
        """MACs done / (cycles * PEs): SCALE-Sim's "Overall Util" as a fraction."""
        return self.macs / (self.cycles * self.rows * self.cols)

    def fold(self, index: int) -> Fold:
        """Fold ``index`` (column folds outer, row folds inner), computed directly."""
        if not 0 <= index < self.folds:
            raise ValueError(f"fold: index must be in [0, {self.folds}), got {index}")
        fc, fr = divmod(int(index), self.row_folds)
        r0, c0 = fr * self.rows, fc * self.cols
        r1, c1 = min(r0 + self.rows, self.spatial_rows), min(c0 + self.cols, self.spatial_cols)
        return Fold(int(index), (r0, r1), (c0, c1), int(index) * self.cycles_per_fold, self.cycles_per_fold,
                    (r1 - r0) * (c1 - c0))

    def fold_list(self) -> list[Fold]:
        return [self.fold(i) for i in range(self.folds)]

    def _macs_before(self, f: Fold) -> int:
        """MACs of every fold before ``f`` (closed form over whole column folds and the row folds before)."""
        (r0, _), (c0, c1) = f.row_range, f.col_range
        return self.temporal * (self.spatial_rows * c0 + r0 * (c1 - c0))

    def state_at(self, cycle: int) -> Step:
        """The array at ``cycle`` (0 <= cycle < cycles), from the fold it falls in; no replay."""
        if isinstance(cycle, bool) or not isinstance(cycle, (int, np.integer)) or not 0 <= cycle < self.cycles:
            raise ValueError(f"state_at: cycle must be an integer in [0, {self.cycles}), got {cycle!r}")
        f = self.fold(int(cycle) // self.cycles_per_fold)
        tau = int(cycle) - f.start_cycle
        (r0, r1), (c0, c1) = f.row_range, f.col_range
        v = fold_view(self.dataflow, tau, r0, r1 - r0, c0, c1 - c0, self.temporal, self.rows, self.cols)
        # MACs this fold finished by tau: PE (r, c) has done clip(s - r - c + 1, 0, T) of its T MACs
        s = tau - (0 if self.dataflow == "os" else self.rows)
        rr = np.arange(r1 - r0)[:, None]
        cc = np.arange(c1 - c0)[None, :]
        in_fold = int(np.clip(s - rr - cc + 1, 0, self.temporal).sum())
        v.pop("macs")
        return Step(cycle=int(cycle), fold=f.index, macs_done=self._macs_before(f) + in_fold, **v)

    def steps(self, max_cycles: int = _MAX_STEP_CYCLES) -> Iterator[Step]:
        """Yield :meth:`state_at` for every cycle (small GEMMs only; the cycle SCALE-Sim does not count
        is not yielded)."""
        if self.cycles > max_cycles:
            raise ValueError(
                f"steps(): this GEMM takes {self.cycles} cycles, more than max_cycles={max_cycles}; "
                "step only small shapes (or raise max_cycles), or ask state_at(cycle) for the cycles you need"
            )
        for cyc in range(self.cycles):
            yield self.state_at(cyc)


def fold_kinds(sr: int, sc: int, r: int, c: int):
    """[(number of folds, rh, cw)] for the at most four kinds of fold: full or partial in rows and columns."""
    out = []
    for n_r, rh in ((sr // r, r), (1 if sr % r else 0, sr % r)):
        for n_c, cw in ((sc // c, c), (1 if sc % c else 0, sc % c)):
            if n_r and n_c:
                out.append((n_r * n_c, rh, cw))
    return out


def simulate_gemm(m, n, k, *, rows, cols, dataflow="os") -> GemmResult:
    """Cycles, utilisation and per-operand traffic of ``(m x k) @ (k x n)`` on a rows x cols array.

    Operands are named as in SCALE-Sim: "A" (m x k, ifmap), "B" (k x n,
    filter), "C" (m x n, ofmap). See the module docstring for the model. The
    count adds :func:`fold_counts` over the kinds of fold (:func:`fold_kinds`),
    so it takes the same time for any number of folds.
    """
    m, n, k = (_check_pos_int(nm, x) for nm, x in (("m", m), ("n", n), ("k", k)))
    R, C = _check_pos_int("rows", rows), _check_pos_int("cols", cols)
    if dataflow not in DATAFLOWS:
        raise ValueError(f"simulate_gemm: dataflow must be one of {DATAFLOWS}, got {dataflow!r}")
    Sr, Sc, T = spatial_dims(m, n, k, dataflow)
    row_folds, col_folds = -(-Sr // R), -(-Sc // C)
    df = DF_CODE[dataflow]
    cycles = used = a_reads = b_reads = c_writes = macs = 0
    per_fold = 0
    for count, rh, cw in fold_kinds(Sr, Sc, R, C):
        cyc, a, b, cwr, mac = fold_counts.py_func(df, rh, cw, T, R, C)
        per_fold = cyc
        cycles += count * cyc
        used += count * rh * cw
        a_reads += count * a
        b_reads += count * b
        c_writes += count * cwr
        macs += count * mac
    assert macs == m * n * k
    cycles -= 1  # SCALE-Sim counts up to the index of the last busy cycle
    folds = row_folds * col_folds
    return GemmResult(
        m=m, n=n, k=k, rows=R, cols=C, dataflow=dataflow,
        spatial_rows=Sr, spatial_cols=Sc, temporal=T,
        row_folds=row_folds, col_folds=col_folds, cycles_per_fold=per_fold, cycles=cycles,
        macs=macs, mapping_efficiency=used / (folds * R * C),
        sram_reads={"A": a_reads, "B": b_reads}, sram_writes={"C": c_writes},
        dram_reads={"A": m * k, "B": k * n}, dram_writes={"C": m * n},
    )
