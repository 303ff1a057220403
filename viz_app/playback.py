"""Compact, JSON-ready arrays of one traced run, for stepping in the browser (viz_app/player.html).

Pure functions of refattn objects (a KernelResult with its Trace, optional
StepStates): no Streamlit, no kernel runs. The browser gets one payload per
setting and steps, plays and scrubs on its own; the server is asked again only
when a setting (or the window of a large run) changes.

Step positions follow the kernels' contract: 0 is before the run, 1..n_steps
are the steps, and n_steps + 1 is "finished" (all tiles done, nothing lit as
current). A run longer than :data:`MAX_WINDOW` steps is sent one window at a
time; :func:`segments` cuts it at query blocks / key blocks / passes so the
reader navigates by block instead of by step.
"""

from __future__ import annotations

import numpy as np

from refattn.memory import EV_COMPUTE, EV_FREE, EV_LOAD, EV_SKIP, EV_STORE, TENSOR_ID, TENSORS, Trace
from viz_app import pseudocode

#: Tensors whose events are score tiles (query rows x key columns).
TILE_TENSORS = ("S", "P", "dP", "dS")
#: Tile states sent to the browser (and drawn with distinct colours): SKIPPED is a tile the kernel skipped
#: for causality (or as masked), SKIPPED_WINDOW one it skipped because it lies outside the sliding window.
PENDING, DONE, SKIPPED, SKIPPED_WINDOW = 0, 1, 2, 3
#: ``skip`` codes of tile events: 0 a visited tile, 1 skipped by causality or as masked, 2 outside the window.
SKIP_CAUSAL, SKIP_WINDOW = 1, 2
#: Most steps sent at once; longer runs are sent one window (a few query blocks or a pass) at a time.
MAX_WINDOW = 2048
#: Most steps whose running state (kernel stopped after each step) is computed for one view.
MAX_STATES = 128


# --------------------------------------------------------------------------- per-step records
def _by_step(trace: Trace):
    """(records, starts): records in time order and starts[k] = first record of step k (k = 0..n_steps+1)."""
    rec = trace.records
    steps = rec[:, 0]
    if len(steps) and np.any(np.diff(steps) < 0):
        rec = rec[np.argsort(steps, kind="stable")]
        steps = rec[:, 0]
    starts = np.searchsorted(steps, np.arange(trace.n_steps + 2))
    return rec, starts


def events_of(trace: Trace, rec, starts, step: int):
    return [trace._event(r) for r in rec[starts[step]:starts[step + 1]]]


def tile_edges(trace: Trace, nq: int, nk: int, plan=None):
    """Row and column boundaries of the tile grid: the plan's Br/Bc, else every boundary the tile events use."""
    blocks = plan.blocks if plan is not None else {}
    if blocks.get("Br") and blocks.get("Bc"):
        rows = np.unique(np.r_[np.arange(0, nq, int(blocks["Br"])), nq])
        cols = np.unique(np.r_[np.arange(0, nk, int(blocks["Bc"])), nk])
        return rows, cols
    rec = _tile_records(trace.records, plan.kernel if plan is not None else "")
    rows = np.unique(np.clip(np.r_[0, nq, rec[:, 5], rec[:, 6]], 0, nq))
    cols = np.unique(np.clip(np.r_[0, nk, rec[:, 7], rec[:, 8]], 0, nk))
    return rows, cols


def _tile_records(rec, kernel: str = ""):
    """Records of score tiles (query rows x key columns) and skips.

    The sparse kernel's S events of a gathered tile index its column list, not key columns, so
    for it the key columns come from the K rows loaded in the same step (see refattn/kernels/sparse.py).
    """
    if kernel.startswith("sparse"):
        out = [rec[rec[:, 1] == EV_SKIP]]
        comp = rec[(rec[:, 1] == EV_COMPUTE) & (rec[:, 2] == TENSOR_ID["S"])]
        loads = rec[(rec[:, 1] == EV_LOAD) & (rec[:, 2] == TENSOR_ID["K"])]
        for c in comp:
            ks = loads[loads[:, 0] == c[0]]
            r = np.repeat(c[None], len(ks), 0)
            r[:, 7], r[:, 8] = ks[:, 5], ks[:, 6]
            out.append(r)
        rec = np.concatenate(out)
        return rec[np.argsort(rec[:, 0], kind="stable")]
    ids = [TENSOR_ID[t] for t in TILE_TENSORS]
    keep = (np.isin(rec[:, 2], ids) & (rec[:, 1] != EV_FREE)) | (rec[:, 1] == EV_SKIP)
    return rec[keep]


def band_edges(details: dict, nq: int, nk: int):
    """``(causal_hi, window_lo, window_hi)`` of a run's ``Plan.details``: key j is visible to query i iff
    ``i + window_lo <= j <= i + min(causal_hi, window_hi)``; each is None when that edge is absent.

    The same band as the flash kernels' (refattn/kernels/variant_args.py, docs/variants.md): causal and
    the window are aligned bottom-right (``Nk - Nq``) unless causal is ``"top_left"``.
    """
    causal = details.get("causal")
    causal_hi = None
    if causal and causal != "none":
        causal_hi = int(nk - nq) if causal in ("bottom_right", True) else 0
    window = details.get("window")
    lo = hi = None
    if window is not None:
        left, right = window
        lo = None if left is None or left < 0 else int(nk - nq - left)
        hi = None if right is None or right < 0 else int(nk - nq + right)
    return causal_hi, lo, hi


def skip_kinds(details: dict, nq: int, nk: int, r0, r1, c0, c1):
    """For skipped tiles (element ranges), why: SKIP_WINDOW when the tile lies wholly outside the window
    (left of its left edge, or right of its right edge while causality alone would keep some of it),
    else SKIP_CAUSAL (beyond the causal horizon, or masked)."""
    causal_hi, lo, hi = band_edges(details, nq, nk)
    r0, r1, c0, c1 = (np.asarray(x, np.int64) for x in (r0, r1, c0, c1))
    out = np.full(r0.shape, SKIP_CAUSAL, np.int64)
    if lo is not None:
        out[c1 - 1 < r0 + lo] = SKIP_WINDOW
    if hi is not None:
        past_window = c0 > r1 - 1 + hi
        if causal_hi is not None:
            past_window &= c0 <= r1 - 1 + causal_hi  # causality would not have skipped it
        out[past_window] = SKIP_WINDOW
    return out


def tile_events(trace: Trace, rows, cols, head: int = 0, kernel: str = "", details: dict | None = None,
                nq: int = 0, nk: int = 0):
    """Score-tile events as tile-index ranges: dict of int arrays step, i0, i1, j0, j1, skip (time order).

    A tile event is any load, store or compute of S, P, dP or dS (their rows are queries, their
    columns keys: this covers the standard kernels' P.V and dS passes, which only load tiles)
    and every skip event (a fully masked tile). ``skip`` is 0 for a visited tile, else the reason
    (:func:`skip_kinds`, from the run's ``details``: SKIP_CAUSAL without a window).
    """
    rec = _tile_records(trace.records, kernel)
    rec = rec[rec[:, 4] == head]
    is_skip = rec[:, 1] == EV_SKIP
    skip = is_skip.astype(np.int64)
    if details is not None and details.get("window") is not None and is_skip.any():
        sk = rec[is_skip]
        skip[is_skip] = skip_kinds(details, nq, nk, sk[:, 5], sk[:, 6], sk[:, 7], sk[:, 8])
    return {
        "step": rec[:, 0], "skip": skip,
        "i0": np.searchsorted(rows, rec[:, 5], "right") - 1, "i1": np.searchsorted(rows, rec[:, 6], "left"),
        "j0": np.searchsorted(cols, rec[:, 7], "right") - 1, "j1": np.searchsorted(cols, rec[:, 8], "left"),
    }


_STATE_OF_SKIP = np.array([DONE, SKIPPED, SKIPPED_WINDOW])


def tile_states(trace: Trace, pos: int, nq: int, nk: int, plan=None, head: int = 0):
    """(rows, cols, states, current): tile states after step ``pos`` and a mask of the tiles step ``pos`` touched.

    states[i, j] is PENDING, DONE, SKIPPED or SKIPPED_WINDOW; ``current`` is all False before the run and at "finished".
    The browser does the same replay (viz_app/player.html); this is its reference.
    """
    rows, cols = tile_edges(trace, nq, nk, plan)
    ev = tile_events(trace, rows, cols, head, plan.kernel if plan is not None else "",
                     plan.details if plan is not None else None, nq, nk)
    states = np.zeros((len(rows) - 1, len(cols) - 1), np.int64)
    current = np.zeros_like(states, bool)
    for s, sk, i0, i1, j0, j1 in zip(*(ev[k] for k in ("step", "skip", "i0", "i1", "j0", "j1"))):
        if s > pos:
            break
        states[i0:i1, j0:j1] = _STATE_OF_SKIP[sk]
        if s == pos:
            current[i0:i1, j0:j1] = True
    return rows, cols, states, current


def tile_counts(result, nq: int, nk: int, head: int = 0) -> dict:
    """Tiles of one head at the end of a traced run: visited, skipped by causality/mask, skipped outside the
    window, and in all (from the kernel's own trace: :func:`tile_states` after the last step)."""
    _, _, states, _ = tile_states(result.trace, result.trace.n_steps + 1, nq, nk, result.plan, head)
    return {"visited": int((states == DONE).sum()), "causal_skipped": int((states == SKIPPED).sum()),
            "window_skipped": int((states == SKIPPED_WINDOW).sum()), "total": int(states.size)}


# --------------------------------------------------------------------------- navigation
def _outer_axis(key: str) -> int:
    """Column of the record that names a step's outer block: rows (5) for query-outer loops, cols (7) else."""
    return 7 if key in ("flash_forward/fa1", "flash_backward") else 5


def segments(result) -> list[tuple[str, int, int]]:
    """[(label, first, last)]: the run cut at its outer loop (query block, key block) or at its passes."""
    trace, plan = result.trace, result.plan
    key = pseudocode.kernel_key(plan.kernel)
    n = trace.n_steps
    rec, starts = _by_step(trace)
    labels = []
    if key.startswith("standard"):
        for s in range(1, n + 1):
            lit = pseudocode.lit_lines(key, events_of(trace, rec, starts, s))
            code = pseudocode.CODE[key]
            head = next((i for i in range(min(lit) if lit else 0, -1, -1) if code[i].text[:1] in "FB"), 0)
            labels.append(code[head].text.split(":")[0])
    else:
        tiles = _tile_records(rec, plan.kernel)
        axis = _outer_axis(key)
        block = plan.blocks.get("Bc" if axis == 7 else "Br") or plan.blocks.get("block") or 1
        first = np.full(n + 2, -1, np.int64)
        uniq, idx = np.unique(tiles[:, 0], return_index=True)
        first[uniq] = tiles[idx, axis] // int(block)
        outer = "key block" if axis == 7 else "query block"
        for s in range(1, n + 1):
            labels.append(f"{outer} {first[s] + 1}" if first[s] >= 0 else None)
        for i in range(len(labels)):  # steps with no tile (init, pre-pass, final) join their neighbour
            if labels[i] is None:
                labels[i] = next((x for x in labels[i:] if x), None) or next((x for x in labels[::-1] if x), "run")
    out = []
    for s, lab in enumerate(labels, start=1):
        if out and out[-1][0] == lab:
            out[-1] = (lab, out[-1][1], s)
        else:
            out.append((lab, s, s))
    return out


def windows(result, max_steps: int = MAX_WINDOW) -> list[tuple[str, int, int]]:
    """Consecutive segments merged into windows of at most ``max_steps`` steps (a long segment is split)."""
    out = []
    for lab, a, b in segments(result):
        while b - a + 1 > max_steps:
            out.append((f"{lab} (steps {a}-{a + max_steps - 1})", a, a + max_steps - 1))
            a += max_steps
        if out and b - out[-1][1] + 1 <= max_steps:
            first = out[-1][0].split(" to ")[0]
            out[-1] = (f"{first} to {lab}", out[-1][1], b)
        else:
            out.append((lab, a, b))
    return out


# --------------------------------------------------------------------------- payload
def _counts(rec, lo: int, hi: int):
    """Per-step (reads, writes) per tensor for steps lo..hi: int64 arrays (hi - lo + 1, n_tensors)."""
    sel = rec[(rec[:, 0] >= lo) & (rec[:, 0] <= hi)]
    n = (sel[:, 6] - sel[:, 5]) * (sel[:, 8] - sel[:, 7])
    out = np.zeros((2, hi - lo + 1, len(TENSORS)), np.int64)
    for kind, c in ((EV_LOAD, 0), (EV_STORE, 1)):
        m = sel[:, 1] == kind
        np.add.at(out[c], (sel[m, 0] - lo, sel[m, 2]), n[m])
    return out[0], out[1]


def _sram_snapshots(trace: Trace, rec, starts, lo: int, hi: int):
    """[[slot, what, elements, tensor, row0, row1], ...] at the end of each step lo..hi, replayed once."""
    held: dict = {}
    snaps = []
    for s in range(0, hi + 1):
        for r in rec[starts[s]:starts[s + 1]]:
            kind, slot = int(r[1]), int(r[3])
            name = trace.slot_names[slot] if 0 <= slot < len(trace.slot_names) else str(slot)
            if kind == EV_FREE:
                held.pop(name, None)
            elif kind != EV_SKIP and kind != EV_STORE:
                t = TENSORS[int(r[2])] if r[2] >= 0 else "?"
                n = int((r[6] - r[5]) * (r[8] - r[7]))
                old = held.get(name)
                if r[9] and old is not None and old[0] == t:
                    held[name] = (t, min(old[1], r[5]), max(old[2], r[6]), old[3] + n)
                else:
                    held[name] = (t, int(r[5]), int(r[6]), n)
        if s >= lo:
            snaps.append([[slot, f"{t}[{r0}:{r1}]", n, t, int(r0), int(r1)] for slot, (t, r0, r1, n) in held.items()])
    return snaps


def _states(states: dict | None):
    """Running state of the steps in ``states`` ({step: StepState}) with axis ranges fixed over all of them."""
    if not states:
        return None
    out = {"steps": [], "rows": [], "m": [], "l": [], "o": [], "width": 0}
    for s in sorted(states):
        st = states[s]
        m = np.asarray(st.arrays.get("m", []), float).ravel()
        if not len(m):
            continue
        lsum = np.asarray(st.arrays.get("l", []), float).ravel()
        o = np.asarray(st.arrays.get("o_partial", np.zeros((len(m), 0))), float).reshape(len(m), -1)
        out["steps"].append(int(s))
        out["rows"].append([int(st.rows[0]), int(st.rows[0]) + len(m)])
        out["m"].append([None if not np.isfinite(x) else round(float(x), 5) for x in m])
        out["l"].append([round(float(x), 5) for x in lsum])
        out["o"].append(np.round(o, 4).ravel().tolist())
        out["width"] = int(o.shape[1])
    if not out["steps"]:
        return None
    fin = [x for ms in out["m"] for x in ms if x is not None]
    out["m_range"] = [min(fin + [0.0]), max(fin + [0.0])]
    out["l_range"] = [0.0, max([x for ls in out["l"] for x in ls] + [1.0])]
    out["o_max"] = max([abs(x) for os in out["o"] for x in os] + [1e-9])
    return out


def payload(result, nq: int, nk: int, label: str, *, window: tuple[int, int] | None = None,
            states: dict | None = None, head: int = 0) -> dict:
    """Everything the browser needs to step through ``result`` (a traced KernelResult) without the server.

    ``window`` = (a, b): the steps sent (default: the whole run); positions a-1..b can be shown, and
    "finished" too when b = n_steps. ``states``: {step: StepState} for the running-state panel.
    """
    trace, plan = result.trace, result.plan
    n = int(trace.n_steps)
    a, b = window or (1, n)
    a, b = max(1, int(a)), min(n, int(b))
    key = pseudocode.kernel_key(plan.kernel)
    rec, starts = _by_step(trace)
    rows, cols = tile_edges(trace, nq, nk, plan)
    ev = tile_events(trace, rows, cols, head, plan.kernel, plan.details, nq, nk)
    before = ev["step"] < a
    base = np.zeros((len(rows) - 1, len(cols) - 1), np.int64)
    for sk, i0, i1, j0, j1 in zip(*(ev[k][before] for k in ("skip", "i0", "i1", "j0", "j1"))):
        base[i0:i1, j0:j1] = _STATE_OF_SKIP[sk]
    inside = (ev["step"] >= a) & (ev["step"] <= b)
    reads, writes = _counts(rec, a, b)
    prior_r, prior_w = _counts(rec, 0, a - 1) if a > 1 else (np.zeros((1, len(TENSORS)), np.int64),) * 2
    cum_r = np.vstack([prior_r.sum(0, keepdims=True), reads]).cumsum(0)  # positions a-1..b
    cum_w = np.vstack([prior_w.sum(0, keepdims=True), writes]).cumsum(0)
    used = [i for i, t in enumerate(TENSORS) if result.traffic.reads.get(t) or result.traffic.writes.get(t)]
    narration, lit, moves = [], [], []
    seen_rows = {tuple(r) for r in np.c_[rec[:, 5], rec[:, 6]][(rec[:, 0] < a) & (rec[:, 2] == TENSOR_ID["P"])]}
    for s in range(a, b + 1):
        evs = events_of(trace, rec, starts, s)
        first = not any(e.kind == "compute" and e.tensor == "P" and e.rows in seen_rows for e in evs)
        seen_rows |= {e.rows for e in evs if e.kind == "compute" and e.tensor == "P"}
        skips = [e for e in evs if e.kind == "skip"]
        reasons = None
        if skips and plan.details.get("window") is not None:
            kinds = skip_kinds(plan.details, nq, nk, *zip(*[(e.rows[0], e.rows[1], e.cols[0], e.cols[1])
                                                          for e in skips]))
            reasons = ["outside the window" if x == SKIP_WINDOW else "causal" for x in kinds]
        narration.append(pseudocode.narrate(plan.kernel, s, n, evs, reads=int(reads[s - a].sum()),
                                            writes=int(writes[s - a].sum()), first_of_block=first,
                                            skip_reasons=reasons))
        lit.append(pseudocode.lit_lines(key, evs))
        moves.append([[e.tensor, 0 if e.kind == "load" else 1, *e.rows, *e.cols, e.elements] for e in evs
                      if e.kind in ("load", "store") and e.tensor])
    causal_offset, window_lo, window_hi = band_edges(plan.details, nq, nk)
    window = plan.details.get("window")
    return {
        "label": label, "kernel": plan.kernel, "n_steps": n, "nq": int(nq), "nk": int(nk),
        "window": [a, b], "step_words": plan.step,
        "rows": rows.tolist(), "cols": cols.tolist(), "base": "".join(map(str, base.ravel())),
        "ev": {k: v[inside].tolist() for k, v in ev.items()},
        "causal_offset": causal_offset,
        "sliding_window": None if window is None else [int(-1 if x is None else x) for x in window],
        "window_edges": None if window is None else [window_lo, window_hi],
        "tensors": [TENSORS[i] for i in used],
        "reads": cum_r[:, used].tolist(), "writes": cum_w[:, used].tolist(),
        "total_reads": int(result.traffic.total_reads), "total_writes": int(result.traffic.total_writes),
        "code": [line.text for line in pseudocode.CODE[key]], "lit": lit, "narration": narration, "moves": moves,
        "sram": _sram_snapshots(trace, rec, starts, a - 1, b), "capacity": int(result.sram.capacity),
        "state": _states(states),
    }
