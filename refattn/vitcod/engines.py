"""One attention layer of ViTCoD's designs, summarised per head, from the counted kernel (docs/vitcod.md).

Every number here comes from :func:`refattn.vitcod.kernel.vitcod_forward` run
count-only on the layer's masks (the counts do not depend on the values of Q,
K, V): its loads and stores give the bytes, its buffer -> PE counters the
cycles. This module only arranges them per head and per layer for the bench,
the lessons and the app:

* :func:`simulate_layer`: ViTCoD's split (global tokens on the denser engine,
  the rest on the sparser engine, lines in proportion to their MACs), with or
  without the Q/K auto-encoder;
* :func:`dense_baseline`: every N x N score on one denser engine with all lines;
* :func:`unsplit_sparse_baseline`: every kept entry on one sparser engine with
  all lines (no split).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from refattn.vitcod.autoencoder import HeadAutoencoder
from refattn.vitcod.hardware import Hardware
from refattn.vitcod.kernel import RESOURCES, ST_SDDMM, ST_SPMM, F, line_split, vitcod_forward

__all__ = ["Hardware", "HeadCycles", "LayerResult", "dense_baseline", "line_split", "run_layer", "simulate_layer",
           "unsplit_sparse_baseline"]

_RES = ("dense_cycles", "sparse_cycles", "decode_cycles", "port_Q", "port_K", "port_V", "port_idx", "port_out")
#: HBM tensor -> the name the byte tables use
BYTE_NAMES = {"Q": "Q", "K": "K", "V": "V", "O": "O", "idx": "index", "mask": "mask", "Qc": "Q codes",
              "Kc": "K codes", "AE": "decoder"}


@dataclass(frozen=True)
class HeadCycles:
    """One head: its split, and per stage the engines' cycles and the stage's cycles and bound."""

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
    sddmm: int  # the stage's cycles: the slowest of engines and buffer ports
    spmm: int
    sddmm_bound: str
    spmm_bound: str
    decode: int = 0

    @property
    def compute(self) -> int:
        return self.decode + self.sddmm + self.spmm


@dataclass(frozen=True)
class LayerResult:
    """A layer: its heads, HBM cycles (``preload``), bytes per HBM tensor and the kernel result it came from."""

    heads: list
    preload: int
    decode: int
    bytes: dict = field(default_factory=dict)
    hw: Hardware = field(default_factory=Hardware)
    result: object = None

    @property
    def compute(self) -> int:
        return int(self.result.cycles["compute"])

    @property
    def total(self) -> int:
        return max(self.preload, self.compute)

    @property
    def bound(self) -> str:
        """"memory" (HBM transfers take longest), else "buffer" or "compute" (what set most stage cycles)."""
        return self.result.cycles["bound"]

    @property
    def utilization(self) -> dict:
        """Useful MACs / (engine MACs x cycles of the SDDMM and SpMM stages), per engine; "all" over everything."""
        return dict(self.result.cycles["utilization"])

    @property
    def buffers_ok(self) -> dict:
        """Every buffer fits (the kernel refuses a plan that does not)."""
        return dict.fromkeys(self.hw.buffers(), True)


def _bound(row) -> str:
    return RESOURCES[int(np.argmax([row[F[name]] for name in _RES]))] if row[F["stage_cycles"]] else "-"


def run_layer(masks, *, design: str = "split", d: int = 64, dv: int | None = None, hw: Hardware | None = None,
              autoencoder: bool = False, threshold: int | None = None) -> LayerResult:
    """One layer (masks ``(heads, N, N)``, True = kept) through the counted kernel, count-only."""
    masks = np.asarray(masks)
    if masks.dtype != np.bool_ or masks.ndim != 3 or masks.shape[1] != masks.shape[2]:
        raise ValueError(f"run_layer: masks must be bool (heads, N, N) keep-masks, got {masks.dtype} {masks.shape}")
    hw = hw or Hardware()
    dv = d if dv is None else dv
    heads, n = masks.shape[0], masks.shape[1]
    z = np.zeros((heads, n, d))
    ae = None
    if autoencoder:
        hc = -(-heads // 2)
        ae = HeadAutoencoder(np.zeros((hc, heads)), np.zeros((heads, hc)))  # count-only: the weights do not matter
    r = vitcod_forward(z, z, np.zeros((heads, n, dv)), masks, hw=hw, design=design, autoencoder=ae,
                       threshold=threshold, count_only=True)
    c = r.counters
    hs = []
    for b, info in enumerate(r.plan.details["heads"]):
        s1, s2 = c[b, ST_SDDMM], c[b, ST_SPMM]
        hs.append(HeadCycles(
            g=info["g"], nnz=info["nnz"], dense_lines=info["dense_lines"], sparse_lines=info["sparse_lines"],
            dense_sddmm=int(s1[F["dense_cycles"]]), sparse_sddmm=int(s1[F["sparse_cycles"]]),
            dense_spmm=int(s2[F["dense_cycles"]]), sparse_spmm=int(s2[F["sparse_cycles"]]),
            dense_macs=int(s1[F["dense_macs"]] + s2[F["dense_macs"]]),
            sparse_macs=int(s1[F["sparse_macs"]] + s2[F["sparse_macs"]]),
            sddmm=int(s1[F["stage_cycles"]]), spmm=int(s2[F["stage_cycles"]]),
            sddmm_bound=_bound(s1), spmm_bound=_bound(s2), decode=int(c[b, 0, F["stage_cycles"]]),
        ))
    nbytes = {BYTE_NAMES[name]: (rd + wr) * hw.data_bytes for name, rd, wr in r.traffic.rows()}
    return LayerResult(hs, int(r.cycles["hbm"]), int(r.cycles["decode"]), nbytes, hw, r)


def simulate_layer(masks, *, d: int = 64, dv: int | None = None, hw: Hardware | None = None,
                   autoencoder: bool = False, threshold: int | None = None) -> LayerResult:
    """ViTCoD's split on one layer (see the module docstring)."""
    return run_layer(masks, design="split", d=d, dv=dv, hw=hw, autoencoder=autoencoder, threshold=threshold)


def dense_baseline(masks, *, d: int = 64, dv: int | None = None, hw: Hardware | None = None) -> LayerResult:
    """Dense attention (every N x N score) on one denser engine with all the lines."""
    return run_layer(masks, design="dense", d=d, dv=dv, hw=hw)


def unsplit_sparse_baseline(masks, *, d: int = 64, dv: int | None = None, hw: Hardware | None = None) -> LayerResult:
    """Every kept entry through one sparser engine with all the lines (no global-token split)."""
    return run_layer(masks, design="sparse", d=d, dv=dv, hw=hw)
