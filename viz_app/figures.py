"""Pure figure builders: (trace or result, step) -> plotly Figure.

Nothing here imports streamlit or runs a kernel; every number drawn comes from
a refattn object passed in (a :class:`refattn.memory.Trace`, a
:class:`refattn.memory.Traffic`, a kernel's ``state``), so the functions can be
unit-tested against the library directly.

Tile states (:func:`tile_states`) are replayed from the trace's events:

* a tile is *computed* at the step of a compute event on the score tile
  (tensor ``S``, ``P``, ``dP`` or ``dS``, rows = queries, columns = keys),
* *skipped* at the step of a skip event (e.g. causal tiles above the diagonal),
* *current* when its event happened in the step being shown.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from refattn.memory import EV_COMPUTE, EV_LOAD, EV_SKIP, EV_STORE, TENSOR_ID, TENSORS, Trace, Traffic

#: Tensors whose compute events are score tiles (query rows x key columns).
TILE_TENSORS = ("S", "P", "dP", "dS")

PENDING, DONE, CURRENT, SKIPPED, CURRENT_SKIP = 0, 1, 2, 3, 4
STATE_NAMES = ("not yet", "done", "current", "skipped", "skipped now")
STATE_COLOURS = ("#f0f0f0", "#9ecae1", "#e6550d", "#d9d9d9", "#969696")

READ_COLOUR, WRITE_COLOUR = "#3182bd", "#de2d26"


# --------------------------------------------------------------------------- steps
def last_step(trace: Trace) -> int:
    """Largest step number in the trace (steps are 1-based; step 0 shows the state before the run)."""
    return int(trace.records[:, 0].max()) if len(trace) else 0


def clamp_step(step: int, trace: Trace) -> int:
    return int(min(max(int(step), 0), last_step(trace)))


# --------------------------------------------------------------------------- tiles
def _tile_records(trace: Trace) -> np.ndarray:
    rec = trace.records
    ids = [TENSOR_ID[t] for t in TILE_TENSORS]
    is_tile = (rec[:, 1] == EV_COMPUTE) & np.isin(rec[:, 2], ids)
    return rec[is_tile | (rec[:, 1] == EV_SKIP)]


def tile_edges(trace: Trace, nq: int, nk: int, plan=None):
    """Row and column boundaries of the tile grid: from the plan's Br/Bc, else from the events."""
    blocks = plan.blocks if plan is not None else {}
    if blocks.get("Br") and blocks.get("Bc"):
        rows = np.unique(np.r_[np.arange(0, nq, int(blocks["Br"])), nq])
        cols = np.unique(np.r_[np.arange(0, nk, int(blocks["Bc"])), nk])
        return rows, cols
    rec = _tile_records(trace)
    rows = np.unique(np.r_[0, nq, rec[:, 5], rec[:, 6]])
    cols = np.unique(np.r_[0, nk, rec[:, 7], rec[:, 8]])
    return rows[(rows >= 0) & (rows <= nq)], cols[(cols >= 0) & (cols <= nk)]


def tile_states(trace: Trace, step: int, nq: int, nk: int, plan=None, head: int = 0):
    """(row_edges, col_edges, states) with states[i, j] in PENDING/DONE/CURRENT/SKIPPED/CURRENT_SKIP."""
    rows, cols = tile_edges(trace, nq, nk, plan)
    states = np.full((len(rows) - 1, len(cols) - 1), PENDING, np.int64)
    rec = _tile_records(trace)
    rec = rec[(rec[:, 0] <= step) & (rec[:, 4] == head)]
    for r in rec:
        i0, i1 = np.searchsorted(rows, r[5], "right") - 1, np.searchsorted(rows, r[6], "left")
        j0, j1 = np.searchsorted(cols, r[7], "right") - 1, np.searchsorted(cols, r[8], "left")
        now = r[0] == step
        if r[1] == EV_SKIP:
            value = CURRENT_SKIP if now else SKIPPED
        else:
            value = CURRENT if now else DONE
        states[i0:i1, j0:j1] = value  # events are in time order: the latest wins
    return rows, cols, states


def current_tiles(trace: Trace, step: int, head: int = 0) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """[(rows, cols)] of the score tiles computed during ``step``."""
    return [(e.rows, e.cols) for e in trace.events_at(step)
            if e.head == head and e.kind == "compute" and e.tensor in TILE_TENSORS]


def tile_grid(trace: Trace, step: int, nq: int, nk: int, plan=None, *, title="", head=0):
    """Query x key tile grid: current tile lit, finished tiles shaded, skipped tiles grey."""
    rows, cols, states = tile_states(trace, step, nq, nk, plan, head)
    n = len(STATE_COLOURS)
    scale = []
    for i, c in enumerate(STATE_COLOURS):
        scale += [(i / n, c), ((i + 1) / n, c)]
    text = np.array(STATE_NAMES, dtype=object)[states]
    fig = go.Figure(go.Heatmap(
        z=states + 0.5, x=cols, y=rows, zmin=0, zmax=n, colorscale=scale, showscale=False,
        xgap=1, ygap=1, customdata=text,
        hovertemplate="keys %{x}<br>queries %{y}<br>%{customdata}<extra></extra>",
    ))
    for i, name in enumerate(STATE_NAMES):  # a legend for the colours
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=name,
                                 marker=dict(size=10, color=STATE_COLOURS[i], symbol="square")))
    fig.update_yaxes(autorange="reversed", title="query rows", constrain="domain")
    fig.update_xaxes(title="key columns", side="top", scaleanchor="y", constrain="domain")
    fig.update_layout(title=title, height=380, margin=dict(l=10, r=10, t=60, b=10),
                      legend=dict(orientation="h", y=-0.02), plot_bgcolor="white")
    return fig


# --------------------------------------------------------------------------- SRAM
def sram_contents(trace: Trace, step: int) -> list[tuple[str, str, int]]:
    """[(slot, what, elements)] held on chip at the end of ``step`` (from ``trace.sram_at``)."""
    out = []
    for slot, e in trace.sram_at(step).items():
        what = f"{e.tensor or '?'}[{e.rows[0]}:{e.rows[1]}, {e.cols[0]}:{e.cols[1]}]"
        out.append((slot, what, e.elements))
    return out


def sram_panel(trace: Trace, step: int, capacity: int, *, title="SRAM"):
    """Stacked bar of what each on-chip slot holds, against the capacity M."""
    fig = go.Figure()
    used = 0
    for slot, what, n in sram_contents(trace, step):
        used += n
        fig.add_trace(go.Bar(x=[n], y=["SRAM"], orientation="h", name=f"{slot}: {what}",
                             text=[slot], textposition="inside",
                             hovertemplate=f"{slot}: {what}<br>%{{x}} elements<extra></extra>"))
    fig.add_vline(x=capacity, line=dict(color="black", dash="dash"),
                  annotation_text=f"M = {capacity}", annotation_position="top left")
    fig.update_layout(barmode="stack", height=200, margin=dict(l=10, r=10, t=40, b=10),
                      title=f"{title}: {used} of {capacity} elements ({100 * used / capacity:.0f}%)",
                      xaxis=dict(range=[0, capacity * 1.05], title="elements"), showlegend=False)
    return fig


# --------------------------------------------------------------------------- traffic
def traffic_rows(traffic: Traffic) -> list[dict]:
    """One dict per tensor with reads and writes (elements), in TENSORS order, plus a total row."""
    rows = [{"tensor": t, "reads": r, "writes": w} for t, r, w in traffic.rows()]
    rows.append({"tensor": "total", "reads": traffic.total_reads, "writes": traffic.total_writes})
    return rows


def traffic_bars(traffics: dict, *, title="HBM traffic (elements)", tensors=None):
    """Grouped bars of reads and writes per tensor, one group of bars per named Traffic.

    ``traffics``: {label: Traffic}. Bars for tensors no run touched are left out.
    """
    if tensors is None:
        tensors = [t for t in TENSORS if any(t in tr.reads or t in tr.writes for tr in traffics.values())]
    fig = go.Figure()
    patterns = ["", "/", "x", "."]
    for k, (label, tr) in enumerate(traffics.items()):
        for what, colour in (("reads", READ_COLOUR), ("writes", WRITE_COLOUR)):
            values = [getattr(tr, what).get(t, 0) for t in tensors]
            fig.add_trace(go.Bar(x=list(tensors), y=values, name=f"{label} {what}", marker_color=colour,
                                 marker_pattern_shape=patterns[k % len(patterns)], opacity=1.0 - 0.35 * k))
    fig.update_layout(barmode="group", title=title, height=300, margin=dict(l=10, r=10, t=40, b=10),
                      yaxis_title="elements")
    return fig


# --------------------------------------------------------------------------- running state
def row_state(state, *, title="current rows"):
    """Running max m, sum l and the partial output of the current query rows (a kernel's ``StepState``)."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=3, column_widths=[0.2, 0.2, 0.6],
                        subplot_titles=("running max m", "running sum l", "partial O"))
    if not state:
        fig.update_layout(title=f"{title}: no state (run finished)", height=260)
        return fig
    m = np.asarray(state.arrays.get("m", []), float).ravel()
    l_ = np.asarray(state.arrays.get("l", []), float).ravel()
    o = np.asarray(state.arrays.get("o_partial", np.zeros((0, 0))), float)
    o = o.reshape(len(m), -1) if o.size and len(m) else np.atleast_2d(o)
    rows = state.rows
    labels = [str(i) for i in range(int(rows[0]), int(rows[0]) + len(m))]
    m_shown = np.where(np.isfinite(m), m, np.nan)
    fig.add_trace(go.Bar(x=m_shown, y=labels, orientation="h", name="m", marker_color="#756bb1"), 1, 1)
    fig.add_trace(go.Bar(x=l_, y=labels, orientation="h", name="l", marker_color="#31a354"), 1, 2)
    if o.size:
        fig.add_trace(go.Heatmap(z=o, y=labels, colorscale="RdBu", zmid=0, showscale=False), 1, 3)
    for c in (1, 2, 3):
        fig.update_yaxes(autorange="reversed", row=1, col=c, showticklabels=(c == 1))
    fig.update_layout(title=title, height=260, showlegend=False, margin=dict(l=10, r=10, t=60, b=10))
    return fig


# --------------------------------------------------------------------------- IO explorer
def io_sweep(points: list[dict], x: str, *, title="HBM accesses", series=None):
    """Log-log lines: counted traffic of each kernel (markers) against its closed form (dashed).

    ``points``: dicts with the sweep variable ``x`` and, per series name, ``<name>`` (counted)
    and optionally ``<name>_formula``.
    """
    xs = [p[x] for p in points]
    series = series or sorted({k for p in points for k in p if k != x and not k.endswith("_formula")})
    fig = go.Figure()
    colours = ["#e6550d", "#3182bd", "#31a354", "#756bb1", "#636363"]
    for i, name in enumerate(series):
        c = colours[i % len(colours)]
        fig.add_trace(go.Scatter(x=xs, y=[p.get(name) for p in points], mode="markers+lines",
                                 name=f"{name} (counted)", line=dict(color=c)))
        if any(f"{name}_formula" in p for p in points):
            fig.add_trace(go.Scatter(x=xs, y=[p.get(f"{name}_formula") for p in points], mode="lines",
                                     name=f"{name} (closed form)", line=dict(color=c, dash="dash")))
    fig.update_xaxes(type="log", title=x)
    fig.update_yaxes(type="log", title="HBM accesses (elements)")
    fig.update_layout(title=title, height=360, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def loglog_slope(xs, ys) -> float:
    """Least-squares slope of log(y) against log(x)."""
    lx, ly = np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float))
    return float(np.polyfit(lx, ly, 1)[0])


def paper_comparison(ours: dict, paper: dict, *, title="Figure 2 (left)",
                     labels=("refattn (simulated)", "paper (A100)")):
    """Side-by-side bars of two {name: value} dicts (by default ours vs the paper's), for one quantity."""
    fig = go.Figure()
    fig.add_trace(go.Bar(x=list(ours), y=list(ours.values()), name=labels[0], marker_color="#3182bd",
                         text=[f"{v:.3g}" for v in ours.values()], textposition="outside"))
    fig.add_trace(go.Bar(x=list(paper), y=list(paper.values()), name=labels[1], marker_color="#bdbdbd",
                         text=[f"{v:.3g}" for v in paper.values()], textposition="outside"))
    fig.update_layout(barmode="group", title=title, height=320, margin=dict(l=10, r=10, t=40, b=10))
    return fig


# --------------------------------------------------------------------------- sparse kernel
def sparse_cover(trace: Trace, step: int, nq: int, nk: int, head: int = 0) -> np.ndarray:
    """(nq, nk) int states of score entries the sparse kernel computed by ``step`` (DONE / CURRENT / SKIPPED).

    Rows come from each step's S compute (or skip) event; key columns from the K rows that
    step loaded, because a gathered tile's S event indexes the column list, not key columns
    (see refattn/kernels/sparse.py).
    """
    out = np.full((nq, nk), PENDING, np.int64)
    rec = trace.records
    rec = rec[(rec[:, 0] <= step) & (rec[:, 4] == head)]
    k_id, s_id = TENSOR_ID["K"], TENSOR_ID["S"]
    for st in np.unique(rec[:, 0]):
        r = rec[rec[:, 0] == st]
        now = st == step
        comp = r[(r[:, 1] == EV_COMPUTE) & (r[:, 2] == s_id)]
        if len(comp):
            cols = np.zeros(nk, bool)
            for kl in r[(r[:, 1] == EV_LOAD) & (r[:, 2] == k_id)]:
                cols[kl[5]:kl[6]] = True
            for c in comp:
                out[c[5]:c[6], cols] = CURRENT if now else DONE
        for sk in r[r[:, 1] == EV_SKIP]:
            block = out[sk[5]:sk[6], sk[7]:sk[8]]
            block[block == PENDING] = CURRENT_SKIP if now else SKIPPED
    return out


def pool_max(a: np.ndarray, size: int = 256) -> np.ndarray:
    """Max-pool a 2-D array down to at most ``size`` x ``size`` cells (for drawing large maps)."""
    a = np.asarray(a)
    fr, fc = -(-a.shape[0] // size), -(-a.shape[1] // size)
    if fr == 1 and fc == 1:
        return a
    r, c = -(-a.shape[0] // fr) * fr, -(-a.shape[1] // fc) * fc
    pad = np.full((r, c), a.min() if a.size else 0, a.dtype)
    pad[:a.shape[0], :a.shape[1]] = a
    return pad.reshape(r // fr, fr, c // fc, fc).max(axis=(1, 3))


def state_map(states: np.ndarray, *, title="", size=256):
    """Element-level state map (PENDING/DONE/CURRENT/...), max-pooled for drawing (CURRENT wins)."""
    n = len(STATE_COLOURS)
    scale = []
    for i, c in enumerate(STATE_COLOURS):
        scale += [(i / n, c), ((i + 1) / n, c)]
    rank = np.array([0, 2, 4, 1, 3])  # pooling order: current > done > skipped now > skipped > pending
    inv = np.argsort(rank)
    pooled = inv[pool_max(rank[states], size)]
    fy, fx = -(-states.shape[0] // pooled.shape[0]), -(-states.shape[1] // pooled.shape[1])
    fig = go.Figure(go.Heatmap(z=pooled + 0.5, x0=0, dx=fx, y0=0, dy=fy, zmin=0, zmax=n, colorscale=scale,
                               showscale=False, customdata=np.array(STATE_NAMES, dtype=object)[pooled],
                               hovertemplate="key %{x}<br>query %{y}<br>%{customdata}<extra></extra>"))
    for i, name in enumerate(STATE_NAMES):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=name,
                                 marker=dict(size=10, color=STATE_COLOURS[i], symbol="square")))
    fig.update_yaxes(autorange="reversed", title="query rows")
    fig.update_xaxes(title="key columns", side="top")
    fig.update_layout(title=title, height=380, margin=dict(l=10, r=10, t=60, b=10),
                      legend=dict(orientation="h", y=-0.02), plot_bgcolor="white")
    return fig


# --------------------------------------------------------------------------- maps
def attention_map(probs: np.ndarray, *, title="attention", mask: np.ndarray | None = None, log=True, size=256):
    """Heatmap of an attention map (log10 by default); ``mask`` (True = kept) shaded on top.

    Maps larger than ``size`` are max-pooled (the mask: any entry kept) so the browser draws at most size².
    """
    shape = np.shape(probs)
    z = pool_max(np.asarray(probs, float), size)
    fy, fx = -(-shape[0] // z.shape[0]), -(-shape[1] // z.shape[1])
    if mask is not None:
        mask = pool_max(np.asarray(mask, bool), size)
    if log:
        with np.errstate(divide="ignore"):
            z = np.log10(np.maximum(z, 1e-12))
    fig = go.Figure(go.Heatmap(z=z, x0=0, dx=fx, y0=0, dy=fy, colorscale="Viridis",
                               colorbar=dict(title="log10 p" if log else "p")))
    if mask is not None:
        m = np.where(np.asarray(mask, bool), 1.0, np.nan)
        fig.add_trace(go.Heatmap(z=m, x0=0, dx=fx, y0=0, dy=fy, colorscale=[(0, "rgba(255,0,0,0.35)"), (1, "rgba(255,0,0,0.35)")],
                                 showscale=False, hoverinfo="skip", name="kept"))
    fig.update_yaxes(autorange="reversed", title="query")
    fig.update_xaxes(title="key")
    fig.update_layout(title=title, height=360, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def scores_line(values: np.ndarray, *, title, x_title, kept=None):
    """A score curve (vertical or slash scores), kept indices marked."""
    values = np.asarray(values, float)
    fig = go.Figure(go.Scatter(y=values, mode="lines", name="score"))
    if kept is not None and len(kept):
        kept = np.asarray(kept, int)
        fig.add_trace(go.Scatter(x=kept, y=values[kept], mode="markers", name="kept",
                                 marker=dict(color="#e6550d", size=5)))
    fig.update_layout(title=title, height=260, margin=dict(l=10, r=10, t=40, b=10), xaxis_title=x_title)
    return fig


def timeline(spans: list[dict], *, title="engine timeline"):
    """Horizontal bars: spans of {lane, start, end, label} (e.g. engines x stages, in cycles), one colour per stage."""
    fig = go.Figure()
    colours = {"SDDMM": "#3182bd", "SpMM": "#e6550d", "decode": "#756bb1", "preload": "#969696"}
    for s in spans:
        label = s.get("label", "")
        colour = next((c for key, c in colours.items() if key in label), "#636363")
        fig.add_trace(go.Bar(x=[s["end"] - s["start"]], base=[s["start"]], y=[s["lane"]], orientation="h",
                             name=label, text=[label], textposition="inside", insidetextanchor="middle",
                             marker=dict(color=colour, line=dict(color="white", width=1)),
                             hovertemplate=f"{label}<br>cycles %{{base}} to %{{x}}<extra></extra>"))
    fig.update_layout(title=title, height=240, barmode="overlay", showlegend=False,
                      margin=dict(l=10, r=10, t=40, b=10), xaxis_title="cycles")
    return fig


__all__ = [
    "tile_states", "tile_grid", "current_tiles", "sram_contents", "sram_panel", "traffic_rows", "traffic_bars",
    "row_state", "io_sweep", "loglog_slope", "paper_comparison", "attention_map", "scores_line", "timeline",
    "last_step", "clamp_step", "EV_LOAD", "EV_STORE",
]
