"""Streamlit blocks shared by pages: the sidebar's input choice and the step player of one or two runs."""

from __future__ import annotations

import streamlit as st

from viz_app import playback, player
from viz_app.inputs import REAL_HEAD, REAL_LAYER, InputError, make_inputs

SOURCES = {"random": "random Gaussian", "structured": "structured (synthetic)", "real": "real (MiniLM head)",
           "uploaded": "uploaded (Inputs page)"}


def seed_from_query(params: dict) -> None:
    """Start widgets from the page's URL once (e.g. ``?n=256&d=8&m=256&causal=1``): links show a setting.

    ``params``: {query name: (session key, type)}. Values the widget does not offer are ignored by it.
    """
    ss = st.session_state
    if ss.get("_seeded_" + str(sorted(params))):
        return
    ss["_seeded_" + str(sorted(params))] = True
    for name, (key, kind) in params.items():
        if name in st.query_params and key not in ss:
            raw = st.query_params[name]
            try:
                ss[key] = bool(int(raw)) if kind is bool else kind(raw)
            except ValueError:
                pass


def initial(key: str, value) -> dict:
    """``value=`` for a widget unless its key already holds a value (no "default and Session State" warning)."""
    return {} if key in st.session_state else {"value": value}


def uploaded_in_use(key: str) -> bool:
    """Is the page's input source (radio ``{key}_source``) the uploaded Q/K/V?"""
    return st.session_state.get(f"{key}_source") == "uploaded" and st.session_state.get("uploaded_qkv") is not None


def uploaded_shape() -> tuple[int, int]:
    q = st.session_state["uploaded_qkv"][0]
    return int(q.shape[0]), int(q.shape[1])


def choose_inputs(n: int, d: int, *, key: str):
    """Sidebar radio for the input source; returns (q, k, v) or shows the reason and stops the page."""
    from viz_app import runs

    options = ["random", "structured", "real"]
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


def choose_window(result, *, key: str):
    """(first, last) steps sent to the browser: the whole run, or a block window of a long run (sidebar)."""
    n = result.trace.n_steps
    if n <= playback.MAX_WINDOW:
        return 1, n
    wins = playback.windows(result)
    i = st.sidebar.selectbox(f"steps shown ({n:,} in all)", range(len(wins)), key=f"{key}_window",
                             format_func=lambda j: f"{wins[j][0]} (steps {wins[j][1]:,}-{wins[j][2]:,})")
    return wins[i][1], wins[i][2]


def choose_state_steps(result, window, *, key: str) -> tuple:
    """Steps whose running state is computed: one block of the window (sidebar), at most MAX_STATES steps."""
    segs = [s for s in playback.segments(result) if s[2] >= window[0] and s[1] <= window[1]]
    if not segs:
        return ()
    i = st.sidebar.selectbox("running state of", range(len(segs)), key=f"{key}_state_block",
                             format_func=lambda j: f"{segs[j][0]} (steps {segs[j][1]}-{segs[j][2]})")
    a, b = segs[i][1], segs[i][2]
    return tuple(range(a, min(b, a + playback.MAX_STATES - 1) + 1))


def step_player(runs_: list[tuple[str, object]], nq: int, nk: int, *, window=None, states=None, key: str):
    """The client-side step player of one or more traced runs [(label, result)], side by side.

    The payload is built once per setting (viz_app.playback) and sent once; stepping, play and
    scrubbing then happen in the browser.
    """
    panels = [playback.payload(res, nq, nk, label, window=window, states=states if i == 0 else None)
              for i, (label, res) in enumerate(runs_)]
    first = runs_[0][1]
    jumps = [(f"{lab} (step {a})", a) for lab, a, b in playback.segments(first)
             if window is None or window[0] <= a <= window[1]]
    start = 0 if window is None or window[0] == 1 else window[0] - 1
    st.iframe(player.player_html(panels, jumps=jumps, start=start), height=player.height(panels))
    return panels
