"""Streamlit blocks shared by pages: one kernel's view at a step, the sidebar's input choice."""

from __future__ import annotations

import streamlit as st

from viz_app import figures, runs
from viz_app.inputs import REAL_HEAD, REAL_LAYER, InputError, make_inputs, optional_module

SOURCES = {"random": "random Gaussian", "structured": "structured (synthetic)", "real": "real (MiniLM head)", "uploaded": "uploaded (Inputs page)"}


def choose_inputs(n: int, d: int, *, key: str):
    """Sidebar radio for the input source; returns (q, k, v) or shows the reason and stops the page."""
    options = ["random"]
    if optional_module("refattn.data.synthetic") is not None:
        options.append("structured")
    if optional_module("refattn.data.real") is not None:
        options.append("real")
    if st.session_state.get("uploaded_qkv") is not None:
        options.append("uploaded")
    source = st.sidebar.radio("input", options, format_func=SOURCES.get, key=f"{key}_source")
    seed = st.sidebar.number_input("seed", 0, 10_000, 0, key=f"{key}_seed")
    try:
        if source == "uploaded":
            q, k, v = make_inputs(source, n, d, uploaded=st.session_state.get("uploaded_qkv"))
        else:
            q, k, v = runs.generated_inputs(source, n, d, int(seed))
    except InputError as exc:
        st.error(str(exc))
        st.stop()
    if source == "real":
        from refattn.data.real import LABEL

        st.sidebar.caption(f"layer {REAL_LAYER}, head {REAL_HEAD} of {LABEL}; d = {q.shape[1]}")
    if source == "uploaded":
        st.sidebar.caption(f"uploaded: q {q.shape}, k {k.shape}, v {v.shape} (N and d come from the upload)")
    return q, k, v


def not_available(what: str, module: str):
    st.info(f"**{what} is not available yet**: it needs `{module}`, which has not landed in refattn. "
            "This page shows nothing rather than made-up numbers.")


def step_summary(trace, step: int) -> str:
    """One line: what the step computed, loaded and stored (from the trace)."""
    events = trace.events_at(step)

    def names(kind):
        return ", ".join(dict.fromkeys(e.tensor for e in events if e.kind == kind and e.tensor)) or "-"

    skipped = sum(e.kind == "skip" for e in events)
    text = f"this step computes {names('compute')}; loads {names('load')}; stores {names('store')}"
    return text + (f"; skips {skipped} tile(s)" if skipped else "")


def kernel_view(label: str, prefix: str, result, step: int, nq: int, nk: int, *, state=None, key=""):
    """Title, counters (metrics + per-tensor table), tile grid, SRAM panel and row state of one run at ``step``."""
    trace = result.trace
    last = figures.last_step(trace)
    s = min(step, last)
    done = "finished" if s >= last else f"step {s} of {last}"
    st.subheader(f"{label} · {done}")
    st.caption(step_summary(trace, s))
    traffic = trace.traffic_until(s, result.sram.bytes_per_element)
    c1, c2, c3 = st.columns(3)
    c1.metric(f"{prefix} HBM reads", f"{traffic.total_reads:,}", help="elements read from HBM so far")
    c2.metric(f"{prefix} HBM writes", f"{traffic.total_writes:,}", help="elements written to HBM so far")
    c3.metric(f"{prefix} total at end", f"{result.traffic.total:,}", help="the whole run's HBM accesses")
    st.plotly_chart(figures.tile_grid(trace, s, nq, nk, result.plan, title="query x key tiles"),
                    width="stretch", key=f"{key}_grid")
    st.plotly_chart(figures.sram_panel(trace, s, result.sram.capacity), width="stretch",
                    key=f"{key}_sram")
    with st.expander("HBM counters per tensor (elements)", expanded=True):
        st.table(figures.traffic_rows(traffic))
    if state is not None:
        st.plotly_chart(figures.row_state(state, title=f"running state of rows {state.rows}"),
                        width="stretch", key=f"{key}_rows")
    return traffic
