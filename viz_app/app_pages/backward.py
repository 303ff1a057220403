"""Page 2: the backward pass with recomputation, beside the standard backward."""

import streamlit as st

from viz_app import claims, figures, runs, views

st.title("Backward: recompute instead of storing P")
st.caption("FlashAttention's backward re-reads Q, K, V tiles and rebuilds P on chip from the saved log-sum-exp L; "
           "dQ is read, updated and written back every step, while dK and dV accumulate on chip and are written "
           "once per key block. The standard backward reads the N x N matrix P from HBM instead.")

views.seed_from_query({"n": ("bwd_n", int), "d": ("bwd_d", int), "m": ("bwd_m", int),
                       "causal": ("bwd_causal", bool)})
sb = st.sidebar
sb.header("Backward settings")
if views.uploaded_in_use("bwd"):  # N and d come from the upload: no sliders showing other values
    n, d = views.uploaded_shape()
    sb.caption(f"N = {n}, d = {d}: from the uploaded Q/K/V")
else:
    n = sb.select_slider("N (sequence length)", [32, 64, 128], **views.initial("bwd_n", 64),
                          key="bwd_n")
    d = sb.select_slider("d (head dim)", [8, 16, 32], **views.initial("bwd_d", 16),
                          key="bwd_d")
m = sb.select_slider("M (elements)", [512, 1024, 2048, 4096, 8192], **views.initial("bwd_m", 2048), key="bwd_m")
causal = sb.toggle("causal (bottom-right)", **views.initial("bwd_causal", False), key="bwd_causal")
q, k, v = views.choose_inputs(n, d, key="bwd")

with st.status("running both backward kernels, traced (the first run compiles them with Numba)...",
               expanded=False) as status:
    try:
        status.update(label="flash backward: running (compiles on first use)...")
        flash = runs.backward_run("flash", q, k, v, m, causal)
    except (ValueError, TypeError) as exc:
        status.update(label="flash backward: refused", state="error")
        st.error(f"FlashAttention backward: {exc}")
        st.stop()
    standard, standard_error = None, None
    try:
        status.update(label="standard backward: running (compiles on first use)...")
        standard = runs.backward_run("standard", q, k, v, m, causal)
    except (ValueError, TypeError) as exc:
        standard_error = str(exc)
    window = views.choose_window(flash, key="bwd")
    status.update(label=f"ready: flash {flash.n_steps} steps", state="complete")

st.markdown(" · ".join(f"**{key}** = {val}" for key, val in flash.plan.summary().items()))
if standard is not None:
    st.markdown(claims.recompute_sentence(flash.traffic.total, standard.traffic.total, flash.flops, standard.flops))
    st.plotly_chart(figures.traffic_bars({"flash": flash.traffic, "standard": standard.traffic},
                                         title="whole-run HBM traffic per tensor"),
                    width="stretch", key="bwd_bars", config={"displayModeBar": False})
elif standard_error:
    st.error(f"Standard backward: {standard_error}")

runs_ = [("flash backward", flash)] + ([("standard backward", standard)] if standard else [])
views.step_player(runs_, q.shape[0], k.shape[0], window=window, key="bwd")
