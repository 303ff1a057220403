"""The ViTCoD-like accelerator refattn simulates: every rate a named field with its source (docs/vitcod.md).

Fields marked "ViTCoD simulator" restate the settings of the public ViTCoD
simulator (GATECH-EIC/ViTCoD, Hardware/Simulator); fields marked "refattn"
are this project's assumptions, stated so that a reader can change them
(``dataclasses.replace(Hardware(), buffer_read_bytes=128)``) and see what
follows. :data:`SOURCES` gives the source of each field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

__all__ = ["Hardware", "SOURCES"]

_SIM = "ViTCoD simulator"
_OURS = "refattn assumption"

#: field -> where its default comes from (shown in docs/vitcod.md and the bench notes).
SOURCES = {
    "lines": f"{_SIM}: 64 MAC lines shared by the two engines",
    "macs_per_line": f"{_SIM}: 8 MACs per line (512 MACs)",
    "freq_hz": f"{_SIM}: 500 MHz clock",
    "bandwidth_bytes_per_s": f"{_SIM}: 76.8 GB/s off-chip, computed there as 76.8 * 1024**3 bytes/s",
    "data_bytes": f"{_SIM}: 8-bit data",
    "q_buffer": f"{_SIM}: 53 KB query buffer",
    "k_buffer": f"{_SIM}: 53 KB key buffer",
    "v_buffer": f"{_SIM}: 53 KB value buffer",
    "index_buffer": f"{_SIM}: 20 KB index buffer",
    "out_buffer": f"{_SIM}: 108 KB output buffer (refattn keeps scores and O there)",
    "buffer_read_bytes": f"{_OURS}: each buffer has one read port of this many bytes per cycle",
    "buffer_banks": f"{_OURS}: addresses a buffer serves per cycle; with 1 a gathered row narrower than the port "
                    "wastes the rest of it, with more banks up to min(banks, W // row bytes) rows per cycle "
                    "(no bank conflicts: optimistic)",
    "row_pointer_bytes": f"{_OURS}: CSR row pointers of 2 bytes (column ids: 1 byte if N <= 256, else 2)",
    "sparse_reduction_latency": f"{_OURS}: 8 - 1 cycles to reduce a dot product down one MAC line, "
                                "paid once per SDDMM stage",
}


@dataclass(frozen=True)
class Hardware:
    """A ViTCoD-like accelerator (see :data:`SOURCES` for where each default comes from)."""

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
    buffer_read_bytes: int = 64
    buffer_banks: int = 1
    row_pointer_bytes: int = 2
    sparse_reduction_latency: int = 7

    def __post_init__(self):
        if self.lines < 2 or self.macs_per_line < 1:
            raise ValueError(
                f"Hardware: need lines >= 2 and macs_per_line >= 1, got {self.lines}, {self.macs_per_line}"
            )
        if self.freq_hz <= 0 or self.bandwidth_bytes_per_s <= 0:
            raise ValueError("Hardware: frequency and bandwidth must be positive")
        for f in fields(self):
            if f.name in ("freq_hz", "bandwidth_bytes_per_s"):
                continue
            x = getattr(self, f.name)
            low = 0 if f.name == "sparse_reduction_latency" else 1
            if isinstance(x, bool) or not isinstance(x, int) or x < low:
                raise ValueError(f"Hardware: {f.name} must be an integer >= {low}, got {x!r}")

    @property
    def macs(self) -> int:
        return self.lines * self.macs_per_line

    @property
    def bytes_per_cycle(self) -> float:
        """Off-chip bytes per clock cycle."""
        return self.bandwidth_bytes_per_s / self.freq_hz

    def transfer_cycles(self, nbytes: float) -> int:
        return int(math.ceil(nbytes / self.bandwidth_bytes_per_s * self.freq_hz))

    def column_index_bytes(self, n: int) -> int:
        """Bytes of one CSR column id for N keys (refattn assumption, see :data:`SOURCES`)."""
        return 1 if n <= 256 else 2

    def buffers(self) -> dict:
        """Buffer capacities in bytes, by name."""
        return {"Q": self.q_buffer, "K": self.k_buffer, "V": self.v_buffer, "index": self.index_buffer,
                "out": self.out_buffer}
