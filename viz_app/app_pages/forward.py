"""Page 1: the FlashAttention forward pass, tile by tile, beside the standard kernel."""

import time

import streamlit as st

from refattn.memory import CHIPS
from viz_app import claims, playback, runs, views

#: Query heads of the GQA counts (the page's one head repeated: traffic does not depend on the values).
GQA_HEADS = 4

st.title("FlashAttention forward, tile by tile")
st.caption("Each step is one tile of the kernel's loop. Every number is counted by the kernel's own loads and "
           "stores on the simulated SRAM/HBM hierarchy (refattn.memory), replayed here from its trace. The run is "
           "sent to your browser once: stepping, play and the slider work there without asking the server.")

views.seed_from_query({"n": ("fwd_n", int), "d": ("fwd_d", int), "m": ("fwd_m", int),
                       "causal": ("fwd_causal", bool), "window": ("fwd_window", bool), "wl": ("fwd_wl", int),
                       "wr": ("fwd_wr", int), "kv": ("fwd_kv", int)})
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
sliding = None
if sb.toggle("sliding window", **views.initial("fwd_window", False), key="fwd_window",
             help="key j visible to query i iff i - left <= j <= i + right (both bounds inclusive, bottom-right "
                  "aligned; docs/variants.md). Tiles wholly outside are skipped by the kernel."):
    sides = [-1, 0, 1, 2, 4, 8, 16, 32, 64, 128]
    side_words = lambda x: "unbounded" if x < 0 else str(x)
    sliding = (sb.select_slider("window left (keys before the diagonal)", sides, format_func=side_words,
                               **views.initial("fwd_wl", 16), key="fwd_wl"),
              sb.select_slider("window right (keys after it)", sides, format_func=side_words,
                               **views.initial("fwd_wr", 0), key="fwd_wr"))
kv_heads = sb.radio(f"GQA: KV heads for {GQA_HEADS} query heads", [GQA_HEADS, 2, 1], key="fwd_kv",
                    format_func=lambda h: {GQA_HEADS: f"{h} (off: MHA)", 1: "1 (MQA)"}.get(h, str(h)),
                    help="The player shows query head 0; the traffic of all heads is counted by the kernel.")
q, k, v = views.choose_inputs(n, d, key="fwd")

with st.status(f"FlashAttention {variant.upper()} forward: running, traced (the first run compiles it with Numba, "
               "up to a minute on a busy machine)...", expanded=False) as status:
    t0 = time.perf_counter()
    try:
        flash = runs.forward_run("flash", q, k, v, m, variant, causal, window=sliding)
    except (ValueError, TypeError) as exc:  # SramTooSmall and bad input carry a clear message
        status.update(label="FlashAttention: refused", state="error")
        st.error(f"FlashAttention: {exc}")
        st.stop()
    compiled = time.perf_counter() - t0 > 1.0  # a cold start: show flash before the standard kernel compiles
    window = views.choose_window(flash, key="fwd")
    steps = views.choose_state_steps(flash, window, key="fwd")
    status.update(label=f"FlashAttention: running state of steps {steps[0]}-{steps[-1]} (stop_after)..."
                  if steps else "preparing the player...")
    states = runs.forward_states(q, k, v, m, variant, causal, steps, window=sliding) if steps else None
    status.update(label=f"FlashAttention ready: {flash.n_steps} steps", state="complete")
standard_status = st.empty()
st.markdown(" · ".join(f"**{key}** = {val}" for key, val in flash.plan.summary().items()))
kv_read = lambda traffic: traffic.reads.get("K", 0) + traffic.reads.get("V", 0)
if sliding is not None:  # the saving, from this run's trace and the same kernel counted without the window
    dense = runs.forward_counts(q, k, v, m, variant, causal)
    st.markdown(claims.window_sentence(sliding, playback.tile_counts(flash, q.shape[0], k.shape[0]),
                                       kv_read(flash.traffic), kv_read(dense), flash.traffic.total, dense.total))
if kv_heads != GQA_HEADS:  # every head counted by the kernel, with and without the grouping
    gqa = runs.forward_counts(q, k, v, m, variant, causal, sliding, heads=GQA_HEADS, num_kv_heads=kv_heads)
    mha = runs.forward_counts(q, k, v, m, variant, causal, sliding, heads=GQA_HEADS)
    per_head = k.shape[0] * (k.shape[1] + v.shape[1])
    st.markdown(claims.gqa_sentence(GQA_HEADS, kv_heads, variant, kv_read(gqa), kv_read(mha),
                                    kv_heads * per_head, GQA_HEADS * per_head))
sentence, player_slot = st.empty(), st.empty()
flash_run = (f"FlashAttention ({variant.upper()})", flash)
if compiled:
    with player_slot.container():
        views.step_player([flash_run], q.shape[0], k.shape[0], window=window, states=states, key="fwd")

standard, standard_error = None, None
if sliding is not None:  # the standard kernel has no window: the saving above is against flash without it
    standard_status.caption("The standard kernel takes no window: with a window the player shows FlashAttention "
                            "alone, and the saving is measured against the same kernel run without the window.")
else:
    with standard_status.status("standard forward: running, traced (compiles on first use)...",
                                expanded=False) as status:
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
