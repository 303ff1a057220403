"""PE arrays in motion: compact, JSON-ready arrays for viz_app/pe_player.html. Pure, no Streamlit.

* :func:`gemm_payload`: a dense GEMM on the systolic array of :mod:`refattn.pe_array`, cycle by cycle
  (which PEs do a MAC, which operand elements enter at the left and top edges and leave at the bottom,
  MACs done), from ``GemmResult.state_at``; one per dataflow (os / ws / is).
* :func:`engines_payload`: ViTCoD's two engines step by step (:func:`refattn.vitcod.vitcod_forward` stopped
  after each step): what each MAC line did (engine, entries, busy cycles), the step's buffer -> PE counters and
  the HBM traffic so far.
"""

from __future__ import annotations

import numpy as np

#: Most cycles of one GEMM sent to the browser (the first ones; the page says so when it cuts).
MAX_CYCLES = 400


def _edge(pairs: np.ndarray) -> list:
    return [None if int(a) < 0 else [int(a), int(b)] for a, b in pairs]


def gemm_payload(gemm, max_cycles: int = MAX_CYCLES) -> dict:
    """The array at each of the first ``max_cycles`` cycles of ``gemm`` (a :class:`refattn.pe_array.GemmResult`)."""
    n = min(int(gemm.cycles), int(max_cycles))
    frames = []
    for c in range(n):
        s = gemm.state_at(c)
        frames.append({"a": "".join("1" if x else "0" for x in s.active.ravel()), "l": _edge(s.left),
                       "t": _edge(s.top), "b": _edge(s.bottom) if s.bottom is not None else [],
                       "p": s.phase, "f": int(s.fold), "md": int(s.macs_done)})
    s0 = gemm.state_at(0)
    return {"kind": "gemm", "R": gemm.rows, "C": gemm.cols, "dataflow": gemm.dataflow, "m": gemm.m, "n": gemm.n,
            "k": gemm.k, "cycles": int(gemm.cycles), "shown": n, "folds": int(gemm.folds),
            "cycles_per_fold": int(gemm.cycles_per_fold), "macs": int(gemm.macs),
            "ops": {"left": s0.left_operand, "top": s0.top_operand if s0.top_operand != "none" else "B",
                    "bottom": "C" if gemm.dataflow != "os" else "none", "stationary": s0.stationary_operand},
            "frames": frames}


def engines_payload(states: dict, result) -> dict:
    """ViTCoD's MAC lines at each step: ``states`` {step: StepState} of ``vitcod_forward`` stopped there,
    ``result`` the traced full run (its trace gives the HBM traffic so far)."""
    steps = []
    for s in sorted(states):
        st = states[s]
        tr = result.trace.traffic_until(s)
        a = st.arrays
        steps.append({"step": int(s), "stage": st.phase, "head": int(st.head),
                      "engine": np.asarray(a["line_engine"]).tolist(),
                      "entries": np.asarray(a["line_entries"]).tolist(),
                      "cycles": np.asarray(a["line_cycles"]).tolist(),
                      "counters": {k: int(v) for k, v in a["counters"].items() if v},
                      "hbm_reads": int(tr.total_reads), "hbm_writes": int(tr.total_writes)})
    from viz_app.pseudocode import VITCOD_CODE, vitcod_lit

    for x in steps:
        x["lit"] = vitcod_lit(x["stage"])
    return {"kind": "engines", "n_steps": int(result.n_steps), "steps": steps,
            "code": [text for _, text in VITCOD_CODE],
            "max_cycles": max([max(x["cycles"]) for x in steps] + [1])}
