"""``refattn bench``: each section is a module with ``run(quick: bool) -> list[Table]``.

Sections print their tables as they finish; ``--csv DIR`` also writes them.
A section whose optional dependency is missing (``real`` without the [real]
extra) is skipped with one line saying what to install; the others still run.
"""

from __future__ import annotations

import importlib
import sys

from refattn.bench.table import Table

#: section name -> module. Add a section by adding a module with ``run(quick)``.
SECTIONS = {
    "dense": "refattn.bench.dense",     # reference / standard / FA2 wall time; Figure 2; block sweep
    "sparse": "refattn.bench.sparse",   # MInference: dense FA2 vs sparse kernel
    "vitcod": "refattn.bench.vitcod",   # ViTCoD engines on the DeiT-Tiny mask
    "real": "refattn.bench.real",       # real MiniLM heads under refattn's patterns
    "accuracy": "refattn.bench.accuracy",  # float32 error of every kernel vs torch SDPA (FA3 outlier protocol)
}

__all__ = ["SECTIONS", "Table", "run_sections"]


def run_sections(names=None, *, quick=False, csv=None) -> int:
    names = list(names) if names else list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        print(f"unknown bench section(s) {unknown}; choose from {list(SECTIONS)}", file=sys.stderr)
        return 2
    from refattn.warmup import announce

    announce()  # a first run says which kernels it is compiling
    for name in names:
        print(f"\n=== refattn bench: {name} ===", flush=True)
        try:
            tables = importlib.import_module(SECTIONS[name]).run(quick=quick)
        except ImportError as exc:  # an optional dependency the section needs is not installed
            print(f"skipped: {exc}", flush=True)
            continue
        for t in tables:
            if csv:
                t.write_csv(csv)
    return 0
