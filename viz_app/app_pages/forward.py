"""Page 1: the FlashAttention forward pass, tile by tile, beside the standard kernel."""

import streamlit as st

from refattn.memory import CHIPS
from viz_app import figures, runs, stepper, views

st.title("FlashAttention forward, tile by tile")
st.caption("Each step is one tile of the kernel's loop. Every number is counted by the kernel's own loads and "
           "stores on the simulated SRAM/HBM hierarchy (refattn.memory), replayed here from its trace.")

sb = st.sidebar
sb.header("Forward settings")
n = sb.select_slider("N (sequence length)", [32, 64, 128, 256], value=64, key="fwd_n")
d = sb.select_slider("d (head dim)", [8, 16, 32, 64], value=16, key="fwd_d")
m_choice = sb.radio("SRAM size M", ["custom", *CHIPS], key="fwd_m_choice",
                    format_func=lambda c: c if c == "custom" else f"{CHIPS[c].name} ({CHIPS[c].sram_elements} el.)")
if m_choice == "custom":
    m = sb.select_slider("M (elements)", [256, 512, 1024, 2048, 4096, 8192], value=1024, key="fwd_m")
else:
    m = CHIPS[m_choice].sram_elements
variant = sb.radio("loop order", ["fa2", "fa1"], key="fwd_variant",
                   format_func={"fa2": "FA2 (queries outer)", "fa1": "FA1 (keys outer)"}.get)
causal = sb.toggle("causal (bottom-right)", value=False, key="fwd_causal")
q, k, v = views.choose_inputs(n, d, key="fwd")

if not runs.available("flash_forward"):
    views.not_available("The FlashAttention forward kernel", "refattn.flash_forward")
    st.stop()

try:
    flash = runs.forward_run("flash", q, k, v, m, variant, causal)
except (ValueError, TypeError) as exc:  # SramTooSmall and bad input carry a clear message
    st.error(f"FlashAttention: {exc}")
    st.stop()
standard, standard_error = None, None
if runs.available("standard_forward"):
    try:
        standard = runs.forward_run("standard", q, k, v, m, variant, causal)
    except (ValueError, TypeError) as exc:
        standard_error = str(exc)

plan = flash.plan
st.markdown(" · ".join(f"**{key}** = {val}" for key, val in plan.summary().items()))

interval = stepper.play_controls("fwd")


@st.fragment(run_every=interval)
def step_view():
    last = max(figures.last_step(flash.trace), figures.last_step(standard.trace) if standard else 0)
    step = stepper.step_controls("fwd", last)
    left, right = st.columns(2)
    with left:
        s = min(step, figures.last_step(flash.trace))
        state = None
        if 1 <= s <= flash.n_steps:
            state = runs.forward_state("flash", q, k, v, m, variant, causal, s)
        views.kernel_view(f"FlashAttention ({variant.upper()})", "flash", flash, step, q.shape[0], k.shape[0],
                          state=state, key="fwd_flash")
    with right:
        if standard is not None:
            views.kernel_view("Standard attention", "standard", standard, step, q.shape[0], k.shape[0],
                              key="fwd_std")
        elif standard_error:
            st.error(f"Standard kernel: {standard_error}")
        else:
            views.not_available("The standard kernel", "refattn.standard_forward")


step_view()
