"""Step controls shared by the kernel pages: back / forth, a step slider, play / pause, speed, jump to end.

Play is an ``st.fragment(run_every=...)``: while it plays, only the fragment
reruns, one step per tick; the play toggle and speed live outside it so that
changing them reruns the page and rebuilds the fragment with the new interval.
"""

from __future__ import annotations

import streamlit as st

SPEEDS = {"1 step/s": 1.0, "2 steps/s": 0.5, "4 steps/s": 0.25}


def _move(key: str, delta: int, last: int):
    st.session_state[key] = min(max(st.session_state.get(key, 0) + delta, 0), last)


def _set(key: str, value: int):
    st.session_state[key] = value


def play_controls(name: str) -> float | None:
    """Play toggle and speed (outside the fragment); returns the fragment's run_every or None."""
    ss = st.session_state
    if ss.pop(f"{name}_stop", False):  # the fragment reached the end: pause before the toggle exists
        ss[f"{name}_play"] = False
    c1, c2 = st.columns([1, 3])
    playing = c1.toggle("play", key=f"{name}_play")
    speed = c2.select_slider("speed", options=list(SPEEDS), value="2 steps/s", key=f"{name}_speed",
                             label_visibility="collapsed")
    return SPEEDS[speed] if playing else None


def step_controls(name: str, last: int) -> int:
    """Buttons and slider for the step (0..last); call inside the fragment. Returns the step."""
    ss = st.session_state
    key = f"{name}_step"
    ss[key] = min(max(int(ss.get(key, 0)), 0), last)
    if ss.get(f"{name}_play") and ss.pop(f"{name}_tick", False):
        if ss[key] >= last:
            ss[f"{name}_stop"] = True
            st.rerun(scope="app")
        ss[key] += 1
    ss[f"{name}_tick"] = True  # the next fragment run while playing advances
    cols = st.columns(5)
    cols[0].button("start", icon=":material/first_page:", key=f"{name}_first", on_click=_set, args=(key, 0),
                   width="stretch")
    cols[1].button("back", icon=":material/chevron_left:", key=f"{name}_back", on_click=_move,
                   args=(key, -1, last), width="stretch")
    cols[2].button("step", icon=":material/chevron_right:", key=f"{name}_fwd", on_click=_move,
                   args=(key, 1, last), width="stretch", type="primary")
    cols[3].button("end", icon=":material/last_page:", key=f"{name}_end", on_click=_set, args=(key, last),
                   width="stretch")
    if last > 0:
        st.slider("step", 0, last, key=key)
    return int(ss[key])
