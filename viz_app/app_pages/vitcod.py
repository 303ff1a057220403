"""Page 5: ViTCoD: prune, reorder into dense and sparse parts, and split the work between two engines."""

import numpy as np
import streamlit as st

from refattn.pe_array import simulate_gemm
from viz_app import claims, figures, pe_view, player
from viz_app.figures import PLOTLY_CONFIG

st.title("ViTCoD: split sparse and dense attention")
st.caption("A fixed attention mask (pruned once from averaged maps); global tokens moved to the front, so the first "
           "G columns form a dense block for the denser engine and the rest is a sparse, mostly local pattern for "
           "the sparser engine. Cycle counts from refattn.vitcod.engines on the shared PE-array model.")



@st.cache_data(max_entries=2, show_spinner="loading the DeiT-Tiny mask...")
def deit_masks():
    from refattn.data.vit import load_deit_tiny_mask

    keep, g = load_deit_tiny_mask()
    return keep, g


@st.cache_data(max_entries=8, show_spinner="averaging attention maps and pruning...")
def synthetic_masks(target_density: float, seed: int):
    from refattn.data.vit import vit_like_qkv
    from refattn.vitcod import average_maps, cutoff_for_density, fixed_mask

    q, k, _ = vit_like_qkv(16, heads=3, structure_seed=seed, seed=seed + 1)
    maps = average_maps(q, k)  # (heads, N, N)
    cut = cutoff_for_density(maps, target_density)
    return maps, fixed_mask(maps, cut), cut


@st.cache_data(max_entries=4, show_spinner="running all-MiniLM-L6-v2 on 5 text chunks and pruning...")
def real_masks(target_density: float):
    """(maps, keep, recall held-out, recall random) per layer, or the reason it cannot run (a str)."""
    try:
        from refattn.vitcod.real_masks import minilm_fixed_masks

        rm = minilm_fixed_masks(target_density, n_tokens=128, n_fit=4)
    except (ImportError, FileNotFoundError) as exc:
        return f"real MiniLM attention needs the [real] extra: {exc}"
    return rm.maps, rm.keep, rm.recall_held_out, rm.recall_random


@st.cache_data(max_entries=16, show_spinner="simulating the engines...")
def simulate(masks, d: int = 64):
    from refattn.vitcod import dense_baseline, simulate_layer, split_mask, unsplit_sparse_baseline

    return (simulate_layer(masks, d=d), simulate_layer(masks, d=d, autoencoder=True), dense_baseline(masks, d=d),
            unsplit_sparse_baseline(masks, d=d), [split_mask(m) for m in masks])


@st.cache_data(max_entries=8, show_spinner="running the ViTCoD kernel step by step (compiles on first use)...")
def engine_steps(masks, d: int):
    """The engines payload of vitcod_forward on ``masks`` and, per head, the denser engine's line count."""
    from refattn.vitcod import vitcod_forward

    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((masks.shape[0], masks.shape[-1], d)).astype(np.float32) for _ in range(3))
    run = vitcod_forward(q, k, v, masks, trace=True)
    states = {s: vitcod_forward(q, k, v, masks, stop_after=s).state for s in range(1, run.n_steps + 1)}
    lines = [int(np.sum(states[5 * h + 2].arrays["line_engine"] == 0)) for h in range(masks.shape[0])]
    return pe_view.engines_payload(states, run), lines


sb = st.sidebar
sb.header("ViTCoD settings")
source = sb.radio("mask", ["deit", "synthetic", "real"], key="vc_source",
                  format_func={"deit": "DeiT-Tiny 95% (real, bundled)", "synthetic": "synthetic ViT (prune here)",
                               "real": "real MiniLM attention (text)"}.get)
maps, head_dim = None, 64
if source == "deit":
    keep, g_counts = deit_masks()
    layer = sb.slider("layer", 0, keep.shape[0] - 1, 0, key="vc_layer")
    masks = keep[layer]
elif source == "real":
    target = sb.select_slider("kept density", [0.05, 0.1, 0.2, 0.3, 0.5], value=0.1, key="vc_real_density")
    got = real_masks(target)
    if isinstance(got, str):
        st.error(got)
        st.stop()
    real_maps, real_keep, rec_held, rec_rand = got
    layer = sb.slider("layer", 0, real_keep.shape[0] - 1, 0, key="vc_real_layer")
    maps, masks, head_dim = real_maps[layer], real_keep[layer], 32
    from refattn.data.real import LABEL

    st.info(f"**Input: {LABEL}.** Text, not images (ViTCoD targets vision transformers): masks fixed from maps "
            f"averaged over 4 chunks of the bundled text (N = {masks.shape[-1]} tokens, d = 32, CLS row and column "
            f"kept). Layer {layer}: the mask keeps {rec_held[layer]:.1%} of the attention mass on a held-out chunk, "
            f"a random mask of the same density {rec_rand[layer]:.1%}.")
else:
    target = sb.select_slider("kept density", [0.05, 0.1, 0.2, 0.3, 0.5], value=0.1, key="vc_density")
    seed = int(sb.number_input("structure seed", 0, 100, 0, key="vc_seed"))
    maps, masks, cut = synthetic_masks(target, seed)
head = sb.radio("head", list(range(masks.shape[0])), key="vc_head" if source != "real" else "vc_real_head",
               horizontal=source == "real")

dense_run, ae_run, dense_base, unsplit, splits = simulate(masks, head_dim)
sp = splits[head]
n = masks.shape[-1]

c = st.columns(5)
c[0].metric("kept density", f"{masks[head].mean():.3f}")
c[1].metric("global tokens G", f"{sp.g}")
c[2].metric("ViTCoD cycles (layer)", f"{dense_run.total:,}")
c[3].metric("dense baseline cycles", f"{dense_base.total:,}",
            delta=claims.ratio_words(dense_base.total, dense_run.total, more="more cycles", fewer="fewer cycles"),
            delta_color="off")
c[4].metric("one sparse engine, no split", f"{unsplit.total:,}")
st.markdown(claims.engines_sentence(dense_run.total, dense_base.total, unsplit.total, dense_run.bound,
                                    dense_run.utilization))

cols = st.columns(3)
if maps is not None:
    cols[0].plotly_chart(figures.attention_map(maps[head], title="averaged attention (before pruning)"),
                         width="stretch", key="vc_before", config=PLOTLY_CONFIG)
else:
    cols[0].info("The bundled DeiT-Tiny file holds the pruned mask only (the averaged maps are not published).")
perm = sp.permuted_mask()
cols[1].plotly_chart(figures.attention_map(masks[head].astype(float), log=False, title="kept mask (after pruning)",
                                                           value_name="kept"),
                     width="stretch", key="vc_mask", config=PLOTLY_CONFIG)
fig = figures.attention_map(perm.astype(float), log=False, value_name="kept",
                              title=f"reordered: first G = {sp.g} columns dense")
fig.add_vline(x=sp.g - 0.5, line=dict(color="red"))
cols[2].plotly_chart(fig, width="stretch", key="vc_perm", config=PLOTLY_CONFIG)

st.subheader("Work split between the engines (one layer, heads one after another)")
spans, t = [], dense_run.decode
if t:
    spans.append({"lane": "denser engine", "start": 0, "end": t, "label": "decode"})
for h, hc in enumerate(dense_run.heads):  # per head, lines split in proportion to the work
    for stage, dn, sn in (("SDDMM", hc.dense_sddmm, hc.sparse_sddmm), ("SpMM", hc.dense_spmm, hc.sparse_spmm)):
        spans.append({"lane": "denser engine", "start": t, "end": t + dn,
                      "label": f"h{h} {stage} ({hc.dense_lines} lines)"})
        spans.append({"lane": "sparser engine", "start": t, "end": t + sn,
                      "label": f"h{h} {stage} ({hc.sparse_lines} lines)"})
        t += max(dn, sn)
spans.append({"lane": "HBM preload", "start": 0, "end": dense_run.preload, "label": "preload"})
st.plotly_chart(figures.timeline(spans, title=f"cycles (layer total {dense_run.total:,}, {dense_run.bound}-bound)"),
                width="stretch", key="vc_timeline", config=PLOTLY_CONFIG)
util = dense_run.utilization
st.markdown(" · ".join(f"**{name}** PE utilisation {val:.0%}" for name, val in util.items()))

st.subheader("PE arrays in motion")
st.caption("The ViTCoD kernel (refattn.vitcod_forward) on this layer's masks with random Q, K, V (d = 64), stopped "
           "after each step: what every MAC line of the two engines did. Below it, the denser engine's SDDMM of the "
           "chosen head as a GEMM on its systolic array (refattn.pe_array), cycle by cycle, for each dataflow. "
           "Both play in the browser.")
engines, first_lines = engine_steps(np.ascontiguousarray(masks), head_dim)
st.iframe(player.pe_player_html(engines), height=480)
c1, c2 = st.columns(2)
dataflow = c1.radio("dataflow of the GEMM", ["os", "ws", "is"], horizontal=True, key="vc_dataflow",
                    format_func={"os": "output stationary", "ws": "weight stationary", "is": "input stationary"}.get)
shape = c2.radio("GEMM", ["example", "head"], horizontal=True, key="vc_gemm",
                 format_func={"example": "a small example: 16 x 8 times 8 x 16 on 8 x 8 PEs",
                              "head": f"head {head}'s dense SDDMM: {n} x {head_dim} times {head_dim} x {sp.g}"}.get)
if shape == "example":
    gemm = simulate_gemm(16, 16, 8, rows=8, cols=8, dataflow=dataflow)
else:  # the denser engine: 8 x Ld PEs, Ld its share of the MAC lines for this head
    gemm = simulate_gemm(n, max(sp.g, 1), head_dim, rows=8, cols=max(int(first_lines[head]), 1), dataflow=dataflow)
st.iframe(player.pe_player_html(pe_view.gemm_payload(gemm)), height=120 + 8 * 48 + 80)

st.subheader("Data movement with and without the Q/K auto-encoder")
plain, ae = dense_run.bytes, ae_run.bytes
names = sorted(set(plain) | set(ae), key=lambda x: ["Q", "K", "V", "O", "index", "decoder"].index(x)
               if x in ["Q", "K", "V", "O", "index", "decoder"] else 99)
st.plotly_chart(figures.paper_comparison({x: plain.get(x, 0) for x in names}, {x: ae.get(x, 0) for x in names},
                                         title="bytes moved per layer", labels=("no auto-encoder", "auto-encoder")),
                width="stretch", key="vc_bytes", config=PLOTLY_CONFIG)
st.table([{"": "no auto-encoder", **plain, "total": sum(plain.values()), "cycles": dense_run.total},
          {"": "auto-encoder", **{x: ae.get(x, 0) for x in names}, "total": sum(ae.values()), "cycles": ae_run.total}])
st.caption(f"N = {n} tokens, {masks.shape[0]} heads. The auto-encoder compresses Q and K across heads "
           f"({masks.shape[0]} -> {int(np.ceil(masks.shape[0] / 2))}) and pays decoder cycles on chip.")
