"""Record SCALE-Sim's dense GEMM numbers as the test oracle for refattn.pe_array.

SCALE-Sim (PyPI ``scalesim`` 3.0.0, MIT) needs numpy < 2, so it runs in its own
virtual environment, never in refattn's::

    python3 -m venv /tmp/scalesim-venv
    /tmp/scalesim-venv/bin/pip install scalesim 'numpy<2'
    /tmp/scalesim-venv/bin/python tools/scalesim_reference.py tests/data/scalesim_reference.json

For every array size and dataflow it writes a config, a GEMM topology
(``name, M, N, K,`` one row per shape) and the layout file that version 3 reads
even with custom layouts off, runs SCALE-Sim, and copies the per-layer compute
report (total cycles, stalls, utilisation) and SRAM access counts into JSON.
SRAMs are large and the interface bandwidth generous, so stall cycles are 0:
the numbers are the array's own cycle count.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import tempfile
from contextlib import redirect_stdout
from pathlib import Path

SHAPES = [  # (M, N, K): ifmap M x K, filter K x N, ofmap M x N
    (1, 1, 1), (4, 4, 4), (8, 8, 8), (5, 3, 7), (16, 16, 16), (17, 9, 33),
    (32, 8, 64), (64, 64, 64), (100, 20, 30), (197, 64, 197), (197, 1, 64), (3, 50, 2),
]
ARRAYS = [(4, 4), (8, 8), (8, 16), (16, 8), (32, 32)]
DATAFLOWS = ["os", "ws", "is"]

CONFIG = """[general]
run_name = {name}

[architecture_presets]
ArrayHeight:    {rows}
ArrayWidth:     {cols}
IfmapSramSzkB:    4096
FilterSramSzkB:   4096
OfmapSramSzkB:    4096
IfmapOffset:    0
FilterOffset:   10000000
OfmapOffset:    20000000
Bandwidth : 100
Dataflow : {df}
MemoryBanks:   1
ReadRequestBuffer: 32
WriteRequestBuffer: 32

[layout]
IfmapCustomLayout: False
IfmapSRAMBankBandwidth: 10
IfmapSRAMBankNum: 10
IfmapSRAMBankPort: 2
FilterCustomLayout: False
FilterSRAMBankBandwidth: 10
FilterSRAMBankNum: 10
FilterSRAMBankPort: 2

[sparsity]
SparsitySupport : false
SparseRep : ellpack_block
OptimizedMapping : false
BlockSize : 8
RandomNumberGeneratorSeed : 40

[run_presets]
InterfaceBandwidth: USER
UseRamulatorTrace: False
"""


def _read_csv(path):
    with open(path) as fh:
        rows = list(csv.reader(fh))
    head = [h.strip() for h in rows[0]]
    return [dict(zip(head, [c.strip() for c in r])) for r in rows[1:] if r]


def run_one(rows, cols, df, workdir: Path):
    from scalesim.scale_sim import scalesim

    name = f"a{rows}x{cols}_{df}"
    cfg = workdir / f"{name}.cfg"
    cfg.write_text(CONFIG.format(name=name, rows=rows, cols=cols, df=df))
    topo = workdir / f"{name}_topo.csv"
    topo.write_text("Layer, M, N, K,\n" + "".join(f"g{m}_{n}_{k}, {m}, {n}, {k},\n" for m, n, k in SHAPES))
    layout = workdir / f"{name}_layout.csv"
    layout.write_text("Layer," + ",".join(f"f{i}" for i in range(20)) + ",\n"
                      + "".join(f"g{m}_{n}_{k}," + ",".join(["1"] * 20) + ",\n" for m, n, k in SHAPES))
    with redirect_stdout(io.StringIO()):
        sim = scalesim(save_disk_space=True, verbose=False, config=str(cfg), topology=str(topo),
                       layout=str(layout), input_type_gemm=True)
        sim.run_scale(top_path=str(workdir))
    out = workdir / name
    compute = _read_csv(out / "COMPUTE_REPORT.csv")
    detail = _read_csv(out / "DETAILED_ACCESS_REPORT.csv")
    records = []
    for (m, n, k), c, dt in zip(SHAPES, compute, detail):
        records.append({
            "m": m, "n": n, "k": k, "rows": rows, "cols": cols, "dataflow": df,
            "total_cycles": int(float(c["Total Cycles"])),
            "stall_cycles": int(float(c["Stall Cycles"])),
            "overall_util_percent": float(c["Overall Util %"]),
            "compute_util_percent": float(c["Compute Util %"]),
            "ifmap_sram_reads": int(float(dt["SRAM IFMAP Reads"])),
            "filter_sram_reads": int(float(dt["SRAM Filter Reads"])),
            "ofmap_sram_writes": int(float(dt["SRAM OFMAP Writes"])),
        })
    return records


def main(argv):
    target = Path(argv[1]) if len(argv) > 1 else Path("tests/data/scalesim_reference.json")
    from importlib.metadata import version

    import scalesim  # noqa: F401  (fail early outside the venv)

    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for rows, cols in ARRAYS:
            for df in DATAFLOWS:
                records += run_one(rows, cols, df, Path(tmp))
    doc = {
        "source": f"SCALE-Sim {version('scalesim')} (PyPI scalesim), run by tools/scalesim_reference.py",
        "command": "/tmp/scalesim-venv/bin/python tools/scalesim_reference.py tests/data/scalesim_reference.json",
        "gemm_convention": "ifmap M x K, filter K x N, ofmap M x N (SCALE-Sim GEMM topology 'name, M, N, K')",
        "records": records,
    }
    target.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {len(records)} records to {target}")


if __name__ == "__main__":
    main(sys.argv)
