"""Page 1: the FlashAttention forward pass, tile by tile, beside the standard kernel."""

import time

import streamlit as st

from refattn.memory import CHIPS
from viz_app import claims, runs, views

st.title("FlashAttention forward, tile by tile")
st.caption("Each step is one tile of the kernel's loop. Every number is counted by the kernel's own loads and "
           "stores on the simulated SRAM/HBM hierarchy (refattn.memory), replayed here from its trace. The run is "
           "sent to your browser once: stepping, play and the slider work there without asking the server.")

views.seed_from_query({"n": ("fwd_n", int), "d": ("fwd_d", int), "m": ("fwd_m", int),
                       "causal": ("fwd_causal", bool)})
sb = st.sidebar
sb.header("Forward settings")
if views.uploaded_in_use("fwd"):  # N and d come from the upload: no sliders showing other values
    n, d = views.uploaded_shape()
    sb.caption(f"N = {n}, d = {d}: from the uploaded Q/K/V")
else:
    n = sb.select_slider("N (sequence length)", [32, 64, 128, 256], **views.initial("fwd_n", 64),
                          key="fwd_n")
    d = sb.select_slider("d (head dim)", [8, 16, 32, 64], **views.initial("fwd_d", 16),
                          key="fwd_d")
m_choice = sb.radio("SRAM size M", ["custom", *CHIPS], key="fwd_m_choice",
                    format_func=lambda c: c if c == "custom" else f"{CHIPS[c].name} ({CHIPS[c].sram_elements} el.)")
if m_choice == "custom":
    m = sb.select_slider("M (elements)", [256, 512, 1024, 2048, 4096, 8192], **views.initial("fwd_m", 1024),
                         key="fwd_m")
else:
    m = CHIPS[m_choice].sram_elements
variant = sb.radio("loop order", ["fa2", "fa1"], key="fwd_variant",
                   format_func={"fa2": "FA2 (queries outer)", "fa1": "FA1 (keys outer)"}.get)
causal = sb.toggle("causal (bottom-right)", **views.initial("fwd_causal", False), key="fwd_causal")
q, k, v = views.choose_inputs(n, d, key="fwd")

with st.status(f"FlashAttention {variant.upper()} forward: running, traced (the first run compiles it with Numba, "
               "up to a minute on a busy machine)...", expanded=False) as status:
    t0 = time.perf_counter()
    try:
        flash = runs.forward_run("flash", q, k, v, m, variant, causal)
    except (ValueError, TypeError) as exc:  # SramTooSmall and bad input carry a clear message
        status.update(label="FlashAttention: refused", state="error")
        st.error(f"FlashAttention: {exc}")
        st.stop()
    compiled = time.perf_counter() - t0 > 1.0  # a cold start: show flash before the standard kernel compiles
    window = views.choose_window(flash, key="fwd")
    steps = views.choose_state_steps(flash, window, key="fwd")
    status.update(label=f"FlashAttention: running state of steps {steps[0]}-{steps[-1]} (stop_after)..."
                  if steps else "preparing the player...")
    states = runs.forward_states(q, k, v, m, variant, causal, steps) if steps else None
    status.update(label=f"FlashAttention ready: {flash.n_steps} steps", state="complete")
standard_status = st.empty()
st.markdown(" · ".join(f"**{key}** = {val}" for key, val in flash.plan.summary().items()))
sentence, player_slot = st.empty(), st.empty()
flash_run = (f"FlashAttention ({variant.upper()})", flash)
if compiled:
    with player_slot.container():
        views.step_player([flash_run], q.shape[0], k.shape[0], window=window, states=states, key="fwd")

with standard_status.status("standard forward: running, traced (compiles on first use)...", expanded=False) as status:
    standard, standard_error = None, None
    try:
        standard = runs.forward_run("standard", q, k, v, m, variant, causal)
        status.update(label=f"standard ready: {standard.n_steps} steps", state="complete")
    except (ValueError, TypeError) as exc:
        standard_error = str(exc)
        status.update(label="standard kernel: refused", state="error")

if standard is not None:
    sentence.markdown(claims.traffic_sentence("flash", flash.traffic.total, "standard", standard.traffic.total,
                                              where="Whole run"))
elif standard_error:
    sentence.error(f"Standard kernel: {standard_error}")
runs_ = [flash_run] + ([("standard", standard)] if standard else [])
with player_slot.container():
    views.step_player(runs_, q.shape[0], k.shape[0], window=window, states=states, key="fwd")
