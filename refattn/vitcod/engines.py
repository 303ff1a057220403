"""ViTCoD's two engines on the shared PE-array model: refattn's own cycle model.

Hardware (:class:`Hardware`, defaults from the public ViTCoD simulator,
docs/algorithms.md, ViTCoD): ``lines`` MAC lines of ``macs_per_line`` = 8 MACs,
500 MHz, 76.8 GB/s off-chip (GiB, as their code computes it), 8-bit data,
buffers of 53 KB for each of Q, K, V, 20 KB for indices, 108 KB for outputs.

Per head (N tokens, head dim d, value dim dv; after :func:`~refattn.vitcod.reorder.split_mask`:
G global tokens, nnz kept entries in the sparse part, nnz_i per row):

* **Line split** in proportion to work: the dense part costs N*G*(d + dv) MACs,
  the sparse part nnz*(d + dv); ``dense_lines = round(L * dense / (dense +
  sparse))`` clamped to [1, L - 1] when both parts have work (0 or L otherwise).
* **Denser engine** (``Ld = dense_lines``): a MAC line is one column of an
  8 x Ld weight-stationary array whose 8 rows hold an 8-wide slice of the
  reduction dim (an 8 x Ld PE array). Both GEMMs run on
  :func:`refattn.pe_array.simulate_gemm`, with the mapping a compiler would
  pick: the fastest of the three dataflows, for the GEMM and its transpose::

      SDDMM  Q (N x d) @ K_G^T (d x G)   -> best simulate_gemm(N, G, d,  rows=8, cols=Ld)
      SpMM   S_G (N x G) @ V_G (G x dv)  -> best simulate_gemm(N, dv, G, rows=8, cols=Ld)

  e.g. weight-stationary SDDMM: ``ceil(d/8) * ceil(G/Ld) * (N + 16 + Ld - 2) - 1``.
* **Sparser engine** (``Ls = L - Ld`` lines, index buffer + SpMM controller):
  query rows longer than ``c = ceil(nnz / Ls)`` are cut into pieces of at
  most c entries (the CLS row keeps all N keys and would otherwise hold up
  one line; partial SpMM sums of a cut row are added in the output buffer,
  not counted), then pieces are dealt to lines, largest first to the
  least-loaded line (LPT). A line does one kept (i, j) of the SDDMM in
  ``ceil(d/8)`` cycles (8-wide slices of the dot product, reduced down the
  line) and one kept entry of the SpMM in ``ceil(dv/8)`` cycles (8 output
  channels at a time); the SDDMM adds the line's reduction latency of
  ``8 - 1`` cycles once::

      SDDMM = max line load * ceil(d/8) + 7
      SpMM  = max line load * ceil(dv/8)

  (the max line load is ``ceil(nnz / Ls)`` when pieces balance, more when
  they do not). The engine charges no cost for gathering irregular K/V rows
  beyond the index bytes: an idealised sparse engine.
* ``split="balanced"`` instead tries every split and keeps the fastest per head.
* **Concurrency**: the engines run side by side, so each stage costs
  ``max(dense, sparse)``; a head costs SDDMM + SpMM stages; heads run one
  after another on all lines (softmax is not counted, as in ViTCoD).
* **Off-chip bytes per head**: Q, K: N*d each (times ceil(H/2)/H with the
  auto-encoder, which sends ceil(H/2) encoded heads for H); V: N*dv; O: N*dv
  written; indices: nnz column ids (1 byte if N <= 256 else 2) + (N + 1) row
  pointers of 2 bytes. The auto-encoder's decoder adds ``ceil(N*d*H*Hc / (L*8))``
  cycles per layer for each of Q and K (H*Hc MACs per token and channel).
* **Layer**: preload = ceil(bytes / (bandwidth / f)) cycles; compute = decode +
  sum over heads; memory and compute overlap (double buffering), so
  ``total = max(preload, compute)``, memory-bound if preload > compute.

Baselines on the same hardware: :func:`dense_baseline` (all L lines as one
denser engine computing every N x N score), :func:`unsplit_sparse_baseline`
(all L lines as one sparser engine over every kept entry, no split).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import numpy as np

from refattn.pe_array import DATAFLOWS, simulate_gemm
from refattn.vitcod.reorder import split_mask

__all__ = [
    "Hardware", "HeadCycles", "LayerResult", "best_gemm", "dense_baseline", "line_split", "simulate_layer",
    "sparse_engine_cycles", "unsplit_sparse_baseline",
]


@dataclass(frozen=True)
class Hardware:
    lines: int = 64
    macs_per_line: int = 8
    freq_hz: float = 500e6
    bandwidth_bytes_per_s: float = 76.8 * 1024**3
    data_bytes: int = 1
    q_buffer: int = 53 * 1024
    k_buffer: int = 53 * 1024
    v_buffer: int = 53 * 1024
    index_buffer: int = 20 * 1024
    out_buffer: int = 108 * 1024

    def __post_init__(self):
        if self.lines < 2 or self.macs_per_line < 1:
            raise ValueError(
                f"Hardware: need lines >= 2 and macs_per_line >= 1, got {self.lines}, {self.macs_per_line}"
            )
        if self.freq_hz <= 0 or self.bandwidth_bytes_per_s <= 0:
            raise ValueError("Hardware: frequency and bandwidth must be positive")

    @property
    def macs(self) -> int:
        return self.lines * self.macs_per_line

    def transfer_cycles(self, nbytes: float) -> int:
        return int(math.ceil(nbytes / self.bandwidth_bytes_per_s * self.freq_hz))


def line_split(dense_work: int, sparse_work: int, lines: int) -> tuple[int, int]:
    """Lines for (denser, sparser) engines, in proportion to their MACs (see module docstring)."""
    if dense_work <= 0:
        return 0, lines
    if sparse_work <= 0:
        return lines, 0
    ld = int(round(lines * dense_work / (dense_work + sparse_work)))
    ld = min(max(ld, 1), lines - 1)
    return ld, lines - ld


def _lpt_max_load(row_nnz, n_lines: int) -> int:
    """Deal rows to lines, largest first to the least-loaded line; return the largest line load."""
    heap = [(0, i) for i in range(n_lines)]
    for w in sorted((int(x) for x in row_nnz if x > 0), reverse=True):
        load, i = heapq.heappop(heap)
        heapq.heappush(heap, (load + w, i))
    return max(load for load, _ in heap)


def sparse_engine_cycles(row_nnz, d: int, dv: int, n_lines: int, macs_per_line: int = 8) -> tuple[int, int]:
    """(SDDMM, SpMM) cycles of the sparser engine for these row counts on ``n_lines`` lines."""
    if int(np.sum(row_nnz)) == 0:
        return 0, 0
    if n_lines < 1:
        raise ValueError("sparse_engine_cycles: the sparse part has work but no lines")
    row_nnz = np.asarray(row_nnz, np.int64)
    chunk = -(-int(row_nnz.sum()) // n_lines)
    pieces = []
    for x in row_nnz:
        x = int(x)
        pieces += [chunk] * (x // chunk) + ([x % chunk] if x % chunk else [])
    load = _lpt_max_load(pieces, n_lines)
    return load * -(-d // macs_per_line) + (macs_per_line - 1), load * -(-dv // macs_per_line)


@dataclass(frozen=True)
class HeadCycles:
    g: int
    nnz: int
    dense_lines: int
    sparse_lines: int
    dense_sddmm: int
    sparse_sddmm: int
    dense_spmm: int
    sparse_spmm: int
    dense_macs: int
    sparse_macs: int

    @property
    def sddmm(self) -> int:
        return max(self.dense_sddmm, self.sparse_sddmm)

    @property
    def spmm(self) -> int:
        return max(self.dense_spmm, self.sparse_spmm)

    @property
    def compute(self) -> int:
        return self.sddmm + self.spmm


def best_gemm(m, n, k, *, rows, cols):
    """The fastest mapping of ``(m x k) @ (k x n)``: any dataflow, the GEMM or its transpose."""
    options = [
        simulate_gemm(a, b, k, rows=rows, cols=cols, dataflow=df) for df in DATAFLOWS for a, b in ((m, n), (n, m))
    ]
    return min(options, key=lambda r: r.cycles)


def _head_cycles(mask, d, dv, hw: Hardware, threshold, split="proportional") -> HeadCycles:
    sp = split_mask(mask, threshold)
    n, g, nnz = sp.n, sp.g, sp.nnz
    if split == "balanced" and g and nnz:  # every split, keep the fastest head
        heads = [_head_for(sp, d, dv, hw, ld, hw.lines - ld) for ld in range(1, hw.lines)]
        return min(heads, key=lambda h: (h.compute, h.dense_lines))
    ld, ls = line_split(n * g * (d + dv), nnz * (d + dv), hw.lines)
    return _head_for(sp, d, dv, hw, ld, ls)


def _head_for(sp, d, dv, hw: Hardware, ld, ls) -> HeadCycles:
    n, g, nnz = sp.n, sp.g, sp.nnz
    if g:
        dense_sddmm = best_gemm(n, g, d, rows=hw.macs_per_line, cols=ld).cycles
        dense_spmm = best_gemm(n, dv, g, rows=hw.macs_per_line, cols=ld).cycles
    else:
        dense_sddmm = dense_spmm = 0
    s_sddmm, s_spmm = sparse_engine_cycles(sp.row_nnz, d, dv, ls, hw.macs_per_line)
    return HeadCycles(g, nnz, ld, ls, dense_sddmm, s_sddmm, dense_spmm, s_spmm, n * g * (d + dv), nnz * (d + dv))


@dataclass(frozen=True)
class LayerResult:
    heads: list
    preload: int
    decode: int
    bytes: dict = field(default_factory=dict)
    buffers_ok: dict = field(default_factory=dict)
    hw: Hardware = field(default_factory=Hardware)

    @property
    def compute(self) -> int:
        return self.decode + sum(h.compute for h in self.heads)

    @property
    def total(self) -> int:
        return max(self.preload, self.compute)

    @property
    def bound(self) -> str:
        return "memory" if self.preload > self.compute else "compute"

    @property
    def utilization(self) -> dict:
        """Useful MACs / (engine MACs * cycles the heads' stages take), per engine."""
        busy = sum(h.compute for h in self.heads)
        out = {}
        engines = (("dense", "dense_lines", "dense_macs"), ("sparse", "sparse_lines", "sparse_macs"))
        for name, lines_of, macs_of in engines:
            cap = sum(getattr(h, lines_of) * self.hw.macs_per_line * h.compute for h in self.heads)
            out[name] = sum(getattr(h, macs_of) for h in self.heads) / cap if cap else 0.0
        out["all"] = sum(h.dense_macs + h.sparse_macs for h in self.heads) / (self.hw.macs * busy) if busy else 0.0
        return out


def _bytes(n, d, dv, heads, nnz_list, hw: Hardware, autoencoder: bool, with_index=True) -> dict:
    hc = -(-heads // 2) if autoencoder else heads
    idx_bytes = 1 if n <= 256 else 2
    out = {
        "Q": n * d * hc * hw.data_bytes,
        "K": n * d * hc * hw.data_bytes,
        "V": n * dv * heads * hw.data_bytes,
        "O": n * dv * heads * hw.data_bytes,
        "index": sum(nnz * idx_bytes + (n + 1) * 2 for nnz in nnz_list) if with_index else 0,
    }
    if autoencoder:
        out["decoder"] = 2 * heads * hc * hw.data_bytes  # Q and K decoder weights
    return out


def _decode_cycles(n, d, heads, hw: Hardware, autoencoder: bool) -> int:
    if not autoencoder:
        return 0
    hc = -(-heads // 2)
    return 2 * int(math.ceil(n * d * heads * hc / hw.macs))


def _buffers_ok(n, d, dv, nnz_list, hw: Hardware) -> dict:
    idx_bytes = 1 if n <= 256 else 2
    return {
        "Q": n * d * hw.data_bytes <= hw.q_buffer,
        "K": n * d * hw.data_bytes <= hw.k_buffer,
        "V": n * dv * hw.data_bytes <= hw.v_buffer,
        "index": max(nnz_list, default=0) * idx_bytes + (n + 1) * 2 <= hw.index_buffer,
        "O": n * dv * hw.data_bytes <= hw.out_buffer,
    }


def _check_masks(masks, where):
    masks = np.asarray(masks)
    if masks.dtype != np.bool_ or masks.ndim != 3 or masks.shape[1] != masks.shape[2]:
        raise ValueError(f"{where}: masks must be bool (heads, N, N) keep-masks, got {masks.dtype} {masks.shape}")
    return masks


def simulate_layer(masks, *, d: int = 64, dv: int | None = None, hw: Hardware | None = None,
                   autoencoder: bool = False, threshold: int | None = None, split: str = "proportional") -> LayerResult:
    """One attention layer, every head simulated: masks ``(heads, N, N)``, True = kept.

    ``split="proportional"``: lines in proportion to MACs (ViTCoD's rule);
    ``"balanced"``: the line split that makes the head fastest (searched).
    """
    masks = _check_masks(masks, "simulate_layer")
    if split not in ("proportional", "balanced"):
        raise ValueError(f"simulate_layer: split must be 'proportional' or 'balanced', got {split!r}")
    hw = hw or Hardware()
    dv = d if dv is None else dv
    heads, n = masks.shape[0], masks.shape[1]
    hs = [_head_cycles(m, d, dv, hw, threshold, split) for m in masks]
    nb = _bytes(n, d, dv, heads, [h.nnz for h in hs], hw, autoencoder)
    return LayerResult(hs, hw.transfer_cycles(sum(nb.values())), _decode_cycles(n, d, heads, hw, autoencoder),
                       nb, _buffers_ok(n, d, dv, [h.nnz for h in hs], hw), hw)


def dense_baseline(masks, *, d: int = 64, dv: int | None = None, hw: Hardware | None = None) -> LayerResult:
    """Dense attention (every N x N score) on one denser engine with all the lines."""
    masks = _check_masks(masks, "dense_baseline")
    hw = hw or Hardware()
    dv = d if dv is None else dv
    heads, n = masks.shape[0], masks.shape[1]
    qk = best_gemm(n, n, d, rows=hw.macs_per_line, cols=hw.lines).cycles
    sv = best_gemm(n, dv, n, rows=hw.macs_per_line, cols=hw.lines).cycles
    hs = [HeadCycles(n, 0, hw.lines, 0, qk, 0, sv, 0, n * n * (d + dv), 0) for _ in range(heads)]
    nb = _bytes(n, d, dv, heads, [], hw, False, with_index=False)
    return LayerResult(hs, hw.transfer_cycles(sum(nb.values())), 0, nb, _buffers_ok(n, d, dv, [], hw), hw)


def unsplit_sparse_baseline(masks, *, d: int = 64, dv: int | None = None, hw: Hardware | None = None) -> LayerResult:
    """Every kept entry through one sparser engine with all the lines (no global-token split)."""
    masks = _check_masks(masks, "unsplit_sparse_baseline")
    hw = hw or Hardware()
    dv = d if dv is None else dv
    heads, n = masks.shape[0], masks.shape[1]
    hs = []
    for m in masks:
        row_nnz = m.sum(axis=1)
        s1, s2 = sparse_engine_cycles(row_nnz, d, dv, hw.lines, hw.macs_per_line)
        nnz = int(row_nnz.sum())
        hs.append(HeadCycles(0, nnz, 0, hw.lines, 0, s1, 0, s2, 0, nnz * (d + dv)))
    nb = _bytes(n, d, dv, heads, [h.nnz for h in hs], hw, False)
    ok = _buffers_ok(n, d, dv, [h.nnz for h in hs], hw)
    return LayerResult(hs, hw.transfer_cycles(sum(nb.values())), 0, nb, ok, hw)
