"""A systolic PE array and the cycles a dense GEMM takes on it (docs/algorithms.md, PE arrays).

The GEMM is ``C (M x N) = A (M x K) @ B (K x N)`` on an array of ``rows x cols``
processing elements (PEs). SCALE-Sim calls A the *ifmap*, B the *filter* and C
the *ofmap*; we keep its conventions so our counts can be checked against it.

Each dataflow keeps one thing still in the PEs and maps two GEMM dims onto the
array (``Sr`` onto its rows, ``Sc`` onto its columns); the third dim ``T``
streams through in time::

    dataflow            stays in the PEs     Sr   Sc   T
    "os" output-stat.   C[i, j]              M    N    K
    "ws" weight-stat.   B[kk, j]             K    N    M
    "is" input-stat.    A[i, kk]             K    M    N

A GEMM larger than the array runs in ``folds = ceil(Sr/R) * ceil(Sc/C)`` folds.
Inside one fold the operands enter *skewed*: array row r starts r cycles late
and array column c starts c cycles late, so PE (r, c) does its t-th MAC at
cycle ``t + r + c`` (plus R cycles of preload for ws/is, which first fill the
array with the stationary tile, one array row per cycle). Per fold::

    os:  T + R + C - 2          (stream T, fill R - 1 and C - 1)
    ws:  T + 2R + C - 2         (preload R, stream T, fill R - 1, C - 1)
    is:  T + 2R + C - 2

and the total, as SCALE-Sim reports it, is ``folds * per_fold - 1`` (its count
is the index of the last busy cycle). These equal SCALE-Sim 3.0.0's "Total
Cycles" for every shape recorded in ``tests/data/scalesim_reference.json``
(tools/scalesim_reference.py regenerates them).

SRAM traffic per operand, as SCALE-Sim counts it (its demand matrices)::

    os: A reads M*K*ceil(N/C);  B reads K*N*ceil(M/R);  C writes M*N + folds*(R + C)
    ws: A reads M*K*ceil(N/C);  B reads K*N;            C writes M*N*ceil(K/R)
    is: A reads M*K;            B reads K*N*ceil(M/C);  C writes M*N*ceil(K/R)

(the ``folds*(R + C)`` term is SCALE-Sim's own bookkeeping for the output
drain, kept so the numbers match; ws/is write each partial-sum fold.) DRAM
traffic assumes buffers that hold each operand: every A, B element is read
once and every C element written once.

:func:`simulate_gemm` walks the folds and adds these up fold by fold;
:meth:`GemmResult.steps` replays small GEMMs cycle by cycle (which PEs are busy,
which operand elements enter at the left and top edges) for animation.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

__all__ = ["DATAFLOWS", "Fold", "GemmResult", "Step", "simulate_gemm"]

DATAFLOWS = ("os", "ws", "is")
_MAX_STEP_CYCLES = 20_000


def _check_pos_int(name, x):
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
        raise TypeError(f"simulate_gemm: {name} must be an int, got {type(x).__name__}")
    if x < 1:
        raise ValueError(f"simulate_gemm: {name} must be >= 1, got {x}")
    return int(x)


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
    """The array during one cycle of :meth:`GemmResult.steps`.

    ``active[r, c]``: PE (r, c) does a MAC this cycle. ``left[r]`` / ``top[c]``:
    the (row, col) of the operand element entering array row r from the left /
    array column c from the top, or (-1, -1). ``left_operand`` and
    ``top_operand`` name the matrix ("A" or "B") those indices refer to.
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

    def fold_list(self) -> list[Fold]:
        out = []
        start = 0
        for fc in range(self.col_folds):
            for fr in range(self.row_folds):
                r0, c0 = fr * self.rows, fc * self.cols
                r1, c1 = min(r0 + self.rows, self.spatial_rows), min(c0 + self.cols, self.spatial_cols)
                out.append(Fold(len(out), (r0, r1), (c0, c1), start, self.cycles_per_fold, (r1 - r0) * (c1 - c0)))
                start += self.cycles_per_fold
        return out

    def steps(self, max_cycles: int = _MAX_STEP_CYCLES) -> Iterator[Step]:
        """Yield the array state cycle by cycle (small GEMMs only).

        Order of folds: column folds outer, row folds inner (as SCALE-Sim).
        The final cycle that SCALE-Sim does not count is not yielded.
        """
        if self.cycles > max_cycles:
            raise ValueError(
                f"steps(): this GEMM takes {self.cycles} cycles, more than max_cycles={max_cycles}; "
                "step only small shapes (or raise max_cycles)"
            )
        R, C, T = self.rows, self.cols, self.temporal
        pre = 0 if self.dataflow == "os" else R
        macs = 0
        rr = np.arange(R)[:, None]
        cc = np.arange(C)[None, :]
        emitted = 0
        for f in self.fold_list():
            (r0, r1), (c0, c1) = f.row_range, f.col_range
            used = (rr < r1 - r0) & (cc < c1 - c0)
            for tau in range(f.cycles):
                if emitted >= self.cycles:
                    return
                left = np.full((R, 2), -1, np.int64)
                top = np.full((C, 2), -1, np.int64)
                if tau < pre:  # ws/is: stationary tile enters from the top, one array row per cycle
                    phase = "preload"
                    active = np.zeros((R, C), bool)
                    r = tau
                    if r < r1 - r0:
                        for c in range(c1 - c0):
                            # ws holds B[kk, j] (kk = r0 + r, j = c0 + c); is holds A[i, kk] (i = c0 + c)
                            top[c] = (r0 + r, c0 + c) if self.dataflow == "ws" else (c0 + c, r0 + r)
                    top_op = "B" if self.dataflow == "ws" else "A"
                    left_op = "A" if self.dataflow == "ws" else "B"
                else:
                    phase = "stream"
                    s = tau - pre
                    t = s - rr - cc  # the MAC index each PE works on
                    active = used & (t >= 0) & (t < T)
                    for r in range(r1 - r0):
                        tr = s - r
                        if 0 <= tr < T:
                            if self.dataflow == "os":
                                left[r] = (r0 + r, tr)  # A[i, t]
                            elif self.dataflow == "ws":
                                left[r] = (tr, r0 + r)  # A[i = t, kk]
                            else:
                                left[r] = (r0 + r, tr)  # B[kk, j = t]
                    if self.dataflow == "os":
                        for c in range(c1 - c0):
                            tc = s - c
                            if 0 <= tc < T:
                                top[c] = (tc, c0 + c)  # B[t, j]
                    left_op = "B" if self.dataflow == "is" else "A"
                    top_op = "B" if self.dataflow == "os" else "none"
                    macs += int(active.sum())
                yield Step(f.start_cycle + tau, f.index, phase, active, left, top, left_op, top_op, macs)
                emitted += 1


def simulate_gemm(m, n, k, *, rows, cols, dataflow) -> GemmResult:
    """Cycles, utilisation and per-operand traffic of ``(m x k) @ (k x n)`` on a rows x cols array.

    Operands are named as in SCALE-Sim: "A" (m x k, ifmap), "B" (k x n,
    filter), "C" (m x n, ofmap). See the module docstring for the model.
    """
    m, n, k = (_check_pos_int(nm, x) for nm, x in (("m", m), ("n", n), ("k", k)))
    R, C = _check_pos_int("rows", rows), _check_pos_int("cols", cols)
    if dataflow not in DATAFLOWS:
        raise ValueError(f"simulate_gemm: dataflow must be one of {DATAFLOWS}, got {dataflow!r}")
    Sr, Sc, T = {"os": (m, n, k), "ws": (k, n, m), "is": (k, m, n)}[dataflow]
    row_folds, col_folds = -(-Sr // R), -(-Sc // C)
    per_fold = T + R + C - 2 if dataflow == "os" else T + 2 * R + C - 2

    # Walk the folds and count, fold by fold.
    cycles = 0
    used = 0
    a_reads = b_reads = c_writes = 0
    for fc in range(col_folds):
        cw = min(C, Sc - fc * C)
        for fr in range(row_folds):
            rh = min(R, Sr - fr * R)
            cycles += per_fold
            used += rh * cw
            if dataflow == "os":  # A rows stream along array rows, B columns down array columns
                a_reads += rh * T
                b_reads += cw * T
                c_writes += rh * cw + R + C
            elif dataflow == "ws":  # B tile preloaded; A streams; partial sums leave every fold
                b_reads += rh * cw
                a_reads += rh * T
                c_writes += cw * T
            else:  # is: A tile preloaded; B streams
                a_reads += rh * cw
                b_reads += rh * T
                c_writes += cw * T
    cycles -= 1  # SCALE-Sim counts up to the index of the last busy cycle
    folds = row_folds * col_folds
    return GemmResult(
        m=m, n=n, k=k, rows=R, cols=C, dataflow=dataflow,
        spatial_rows=Sr, spatial_cols=Sc, temporal=T,
        row_folds=row_folds, col_folds=col_folds, cycles_per_fold=per_fold, cycles=cycles,
        macs=m * n * k, mapping_efficiency=used / (folds * R * C),
        sram_reads={"A": a_reads, "B": b_reads}, sram_writes={"C": c_writes},
        dram_reads={"A": m * k, "B": k * n}, dram_writes={"C": m * n},
    )
