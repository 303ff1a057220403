"""A small table that prints aligned and writes CSV (benchmarks report through it)."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path


def _fmt(x) -> str:
    if isinstance(x, float):
        if x == 0:
            return "0"
        if abs(x) >= 1e5 or abs(x) < 1e-3:
            return f"{x:.3e}"
        return f"{x:.4g}"
    return str(x)


@dataclass
class Table:
    name: str
    columns: list
    rows: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def add(self, *values):
        if len(values) != len(self.columns):
            raise ValueError(f"row has {len(values)} values, table {self.name!r} has {len(self.columns)} columns")
        self.rows.append(list(values))

    def render(self) -> str:
        cells = [[str(c) for c in self.columns]] + [[_fmt(v) for v in r] for r in self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.columns))]
        lines = [self.name]
        for k, row in enumerate(cells):
            lines.append("  ".join(c.rjust(w) for c, w in zip(row, widths)))
            if k == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def print(self):
        print(self.render(), flush=True)

    def write_csv(self, folder) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        slug = "".join(ch if ch.isalnum() else "_" for ch in self.name.lower()).strip("_")
        path = folder / f"{slug}.csv"
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(self.columns)
            w.writerows(self.rows)
        return path
