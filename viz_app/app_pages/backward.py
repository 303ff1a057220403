"""Page 2: the backward pass with recomputation, beside the standard backward."""

import streamlit as st

from viz_app import figures, runs, stepper, views

st.title("Backward: recompute instead of storing P")
st.caption("FlashAttention's backward re-reads Q, K, V tiles and rebuilds P on chip from the saved log-sum-exp L; "
           "dQ is read, updated and written back every step, while dK and dV accumulate on chip and are written "
           "once per key block. The standard backward reads the N x N matrix P from HBM instead.")

sb = st.sidebar
sb.header("Backward settings")
n = sb.select_slider("N (sequence length)", [32, 64, 128], value=64, key="bwd_n")
d = sb.select_slider("d (head dim)", [8, 16, 32], value=16, key="bwd_d")
m = sb.select_slider("M (elements)", [512, 1024, 2048, 4096, 8192], value=2048, key="bwd_m")
causal = sb.toggle("causal (bottom-right)", value=False, key="bwd_causal")
q, k, v = views.choose_inputs(n, d, key="bwd")

if not (runs.available("flash_backward") and runs.available("flash_forward")):
    views.not_available("The FlashAttention backward kernel", "refattn.flash_backward")
    st.stop()

try:
    flash = runs.backward_run("flash", q, k, v, m, causal)
except (ValueError, TypeError) as exc:
    st.error(f"FlashAttention backward: {exc}")
    st.stop()
standard, standard_error = None, None
if runs.available("standard_backward"):
    try:
        standard = runs.backward_run("standard", q, k, v, m, causal)
    except (ValueError, TypeError) as exc:
        standard_error = str(exc)

st.markdown(" · ".join(f"**{key}** = {val}" for key, val in flash.plan.summary().items()))
if standard is not None:
    ratio = standard.traffic.total / max(flash.traffic.total, 1)
    st.markdown(f"Whole backward: flash **{flash.traffic.total:,}** vs standard **{standard.traffic.total:,}** "
                f"HBM accesses ({ratio:.1f}x); FLOPs {flash.flops:,} vs {standard.flops:,} "
                "(recomputation costs FLOPs, saves traffic).")
    st.plotly_chart(figures.traffic_bars({"flash": flash.traffic, "standard": standard.traffic},
                                         title="whole-run HBM traffic per tensor"),
                    width="stretch", key="bwd_bars")

interval = stepper.play_controls("bwd")


@st.fragment(run_every=interval)
def step_view():
    last = max(figures.last_step(flash.trace), figures.last_step(standard.trace) if standard else 0)
    step = stepper.step_controls("bwd", last)
    s = min(step, figures.last_step(flash.trace))
    events = flash.trace.events_at(s)
    reread = sorted({e.tensor for e in events if e.kind == "load"})
    written = sorted({e.tensor for e in events if e.kind == "store"})
    st.markdown(f"**This step (flash):** loads {', '.join(reread) or '-'}; stores {', '.join(written) or '-'}")
    left, right = st.columns(2)
    with left:
        views.kernel_view("FlashAttention backward", "flash", flash, step, q.shape[0], k.shape[0], key="bwd_flash")
    with right:
        if standard is not None:
            views.kernel_view("Standard backward", "standard", standard, step, q.shape[0], k.shape[0],
                              key="bwd_std")
        elif standard_error:
            st.error(f"Standard backward: {standard_error}")
        else:
            views.not_available("The standard backward", "refattn.standard_backward")


step_view()
