"""Pure Plotly figure builders: refattn objects (a trace, traffic, numbers of a sweep) -> plotly Figure.

Nothing here imports streamlit or runs a kernel; every number drawn comes from
a refattn object passed in, so the functions are unit-tested against the
library directly. The dense kernels' step-by-step view is not a Plotly figure:
it is drawn in the browser from viz_app.playback's arrays (viz_app/player.html).
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from refattn.memory import TENSORS

READ_COLOUR, WRITE_COLOUR = "#3182bd", "#de2d26"
#: Charts are shown without Plotly's toolbar: on a narrow screen it covered their titles.
PLOTLY_CONFIG = {"displayModeBar": False}


# --------------------------------------------------------------------------- traffic
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


def number_label(v: float) -> str:
    """A bar label people read: 37,800 rather than 3.78e+04; 4.4 and 0.123 as they are."""
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def paper_comparison(ours: dict, paper: dict, *, title="Figure 2 (left)",
                     labels=("refattn (simulated)", "paper (A100)")):
    """Side-by-side bars of two {name: value} dicts (by default ours vs the paper's), for one quantity."""
    fig = go.Figure()
    fig.add_trace(go.Bar(x=list(ours), y=list(ours.values()), name=labels[0], marker_color="#3182bd",
                         text=[number_label(v) for v in ours.values()], textposition="outside"))
    fig.add_trace(go.Bar(x=list(paper), y=list(paper.values()), name=labels[1], marker_color="#bdbdbd",
                         text=[number_label(v) for v in paper.values()], textposition="outside"))
    fig.update_layout(barmode="group", title=title, height=320, margin=dict(l=10, r=10, t=40, b=10))
    return fig


# --------------------------------------------------------------------------- maps
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


# --------------------------------------------------------------------------- maps
def attention_map(probs: np.ndarray, *, title="attention", mask: np.ndarray | None = None, log=True, size=256,
                  value_name: str | None = None):
    """Heatmap of an attention map (log10 by default); ``mask`` (True = kept) shaded on top.

    Zero probabilities (masked entries) are left blank, not drawn as a floor like log10 p = -12.
    ``value_name`` labels the colour bar (default "log10 p" or "p"; e.g. "block score").
    Maps larger than ``size`` are max-pooled (the mask: any entry kept) so the browser draws at most size².
    """
    shape = np.shape(probs)
    z = pool_max(np.asarray(probs, float), size)
    fy, fx = -(-shape[0] // z.shape[0]), -(-shape[1] // z.shape[1])
    if mask is not None:
        mask = pool_max(np.asarray(mask, bool), size)
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(z > 0, np.log10(np.where(z > 0, z, 1.0)), np.nan)
    name = value_name or ("log10 p" if log else "p")
    fig = go.Figure(go.Heatmap(z=z, x0=0, dx=fx, y0=0, dy=fy, colorscale="Viridis", colorbar=dict(title=name),
                               hovertemplate=f"key %{{x}}<br>query %{{y}}<br>{name} %{{z:.3g}}<extra></extra>"))
    if mask is not None:
        m = np.where(np.asarray(mask, bool), 1.0, np.nan)
        kept = [(0, "rgba(255,0,0,0.35)"), (1, "rgba(255,0,0,0.35)")]
        fig.add_trace(go.Heatmap(z=m, x0=0, dx=fx, y0=0, dy=fy, colorscale=kept, showscale=False,
                                 hoverinfo="skip", name="kept"))
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


def timeline(spans: list[dict], *, title="engine timeline", min_label_share=0.06):
    """Horizontal bars: spans of {lane, start, end, label} (e.g. engines x stages, in cycles), one colour per stage.

    A span's label is written inside it only when the span is at least ``min_label_share`` of the whole
    timeline (narrower labels were unreadable); every span keeps its label on hover, and a legend names
    the stage colours.
    """
    fig = go.Figure()
    colours = {"SDDMM": "#3182bd", "SpMM": "#e6550d", "decode": "#756bb1", "preload": "#969696"}
    total = max((s["end"] for s in spans), default=0) - min((s["start"] for s in spans), default=0)
    for s in spans:
        label = s.get("label", "")
        colour = next((c for key, c in colours.items() if key in label), "#636363")
        wide = total > 0 and (s["end"] - s["start"]) >= min_label_share * total
        fig.add_trace(go.Bar(x=[s["end"] - s["start"]], base=[s["start"]], y=[s["lane"]], orientation="h",
                             name=label, text=[label if wide else ""], textposition="inside",
                             insidetextanchor="middle", showlegend=False,
                             marker=dict(color=colour, line=dict(color="white", width=1)),
                             hovertemplate=f"{label}<br>cycles %{{base:,}} to %{{x:,}}<extra></extra>"))
    for key, c in colours.items():  # the legend: one entry per stage colour
        fig.add_trace(go.Bar(x=[None], y=[None], orientation="h", name=key, marker_color=c))
    fig.update_layout(title=title, height=260, barmode="overlay", legend=dict(orientation="h", y=-0.3),
                      margin=dict(l=10, r=10, t=40, b=10), xaxis_title="cycles", xaxis_tickformat=",")
    return fig


__all__ = [
    "traffic_bars", "io_sweep", "paper_comparison", "attention_map", "scores_line", "timeline",
    "pool_max", "PLOTLY_CONFIG",
]
