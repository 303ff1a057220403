"""Page 4: MInference's dynamic sparse patterns (A-shape, vertical-slash, block-sparse) on one head."""

import numpy as np
import streamlit as st

from viz_app import figures, views
from viz_app.figures import PLOTLY_CONFIG

st.title("MInference: dynamic sparse prefill")
st.caption("Per head: estimate a pattern from the input itself (vertical-slash: the last 64 queries; block-sparse: "
           "mean-pooled blocks), build an index set of key blocks and single key columns, and run only those "
           "tiles. Inputs: causal Q/K/V with planted structure (refattn.data.synthetic), one head of each kind.")



@st.cache_data(max_entries=4, show_spinner="generating inputs...")
def inputs(n, seed):
    from refattn.data.synthetic import structured_qkv

    q, k, v, desc = structured_qkv(n, 64, 3, seed=seed)
    return q, k, v, desc


@st.cache_data(max_entries=8, show_spinner="searching patterns per head...")
def search(n, seed):
    from refattn.patterns.search import search_patterns

    q, k, v, _ = inputs(n, seed)
    return search_patterns(q, k, v, progress=False)


@st.cache_data(max_entries=16, show_spinner="candidates...")
def candidates(n, seed, head):
    from refattn.patterns.search import default_candidates

    q, k, _, _ = inputs(n, seed)
    cands, target = default_candidates(q[head], k[head])
    return unique_candidates(cands), target


def unique_candidates(cands):
    """The candidates once each (the search may list a (pattern, params) pair twice)."""
    seen, out = set(), []
    for name, params in cands:
        key = (name, tuple(sorted(params.items())))
        if key not in seen:
            seen.add(key)
            out.append((name, params))
    return out


@st.cache_data(max_entries=32, show_spinner="building the index set and running the sparse kernel...")
def run_pattern(n, seed, head, name, params):
    import refattn
    from refattn import reference
    from refattn.patterns import build_index
    from refattn.patterns.metrics import evaluate

    q, k, v, _ = inputs(n, seed)
    built = build_index(name, q[head], k[head], dict(params))
    iset = built.index_set
    probs, _ = reference.attention_probs(q[head], k[head], causal=True)
    report = evaluate(q[head], k[head], v[head], iset, sram="a100")
    traced = refattn.sparse_forward(q[head], k[head], v[head], iset, sram="a100", trace=True)
    return built, probs, iset.to_mask(), report, traced


sb = st.sidebar
sb.header("MInference settings")
n = sb.select_slider("N (tokens)", [256, 512, 1024, 2048], value=512, key="mi_n")
seed = int(sb.number_input("seed", 0, 1000, 0, key="mi_seed"))
q, k, v, desc = inputs(n, seed)
head = sb.radio("head", list(range(q.shape[0])), key="mi_head",
                format_func=lambda h: f"head {h} (planted: {desc[h]['kind']})")
cands, target = candidates(n, seed, head)
labels = ["search: the head's best"] + [f"{name} {params}" for name, params in cands]
choice = sb.selectbox("pattern", range(len(labels)), format_func=labels.__getitem__, key="mi_pattern")

config = search(n, seed)
if choice == 0:
    name, params = config[head].pattern, config[head].params
else:
    name, params = cands[choice - 1]
params = {key: (int(val) if isinstance(val, (int, np.integer)) else val) for key, val in params.items()}
built, probs, mask, report, traced = run_pattern(n, seed, head, name, tuple(sorted(params.items())))
iset = built.index_set

st.markdown(f"**Pattern:** `{name}` {params} · {iset.n_blocks} key blocks + {iset.n_strips} single columns · "
            f"budget (A-shape cost) {target:.1f} blocks")
c = st.columns(5)
c[0].metric("density", f"{report.density:.3f}")
c[1].metric("recall (mass kept)", f"{report.recall:.4f}")
c[2].metric("output error (rel.)", f"{report.error:.2e}")
c[3].metric("sparse HBM accesses", f"{report.traffic_sparse:,}")
c[4].metric("dense FA2 HBM accesses", f"{report.traffic_dense:,}",
            delta=f"sparse is {report.traffic_ratio:.2f}x of dense", delta_color="off")

left, right = st.columns(2)
left.plotly_chart(figures.attention_map(probs, title="true causal attention (float64), max-pooled"),
                  width="stretch", key="mi_true", config=PLOTLY_CONFIG)
right.plotly_chart(figures.attention_map(probs, mask=mask, title="index set drawn over the map (red = computed)"),
                   width="stretch", key="mi_overlay", config=PLOTLY_CONFIG)

if name == "vertical_slash":
    st.plotly_chart(figures.attention_map(built.estimate, title="estimate: softmax of the last 64 queries"),
                    width="stretch", key="mi_est", config=PLOTLY_CONFIG)
    a, b = st.columns(2)
    a.plotly_chart(figures.scores_line(built.vertical_scores, title="vertical scores (per key column)",
                                       x_title="key column", kept=built.columns), width="stretch", key="mi_vert",
                   config=PLOTLY_CONFIG)
    b.plotly_chart(figures.scores_line(built.slash_scores, title="slash scores (per diagonal offset)",
                                       x_title="offset i - j", kept=built.offsets), width="stretch", key="mi_slash",
                   config=PLOTLY_CONFIG)
elif name == "block_sparse":
    st.plotly_chart(figures.attention_map(np.where(np.isfinite(built.block_scores), built.block_scores, np.nan),
                                          title="block scores (mean-pooled Q·K per 64-token block)", log=False,
                                          value_name="block score"),
                    width="stretch", key="mi_blocks", config=PLOTLY_CONFIG)

st.subheader("The sparse kernel, tile by tile")
st.caption("Each step is one listed key block or one tile of gathered single columns of a query block; the run is "
           "sent to the browser once and stepped there.")
views.step_player([("sparse kernel", traced)], n, n, window=views.choose_window(traced, key="mi"), key="mi")

st.subheader("Per-head choices of the kernel-aware search")
rows = []
for h, hc in enumerate(config.heads):
    listed = set()
    for cand in hc.candidates:
        key = (cand["pattern"], str(sorted(cand["params"].items())))
        if key in listed:
            continue
        listed.add(key)
        rows.append({"head": h, "planted": desc[h]["kind"], "candidate": f"{cand['pattern']} {cand['params']}",
                     "chosen": cand["pattern"] == hc.pattern and cand["params"] == hc.params,
                     "error": float(f"{cand['error']:.3g}"), "recall": round(cand["recall"], 4),
                     "blocks": cand["cost_blocks"], "strips": cand["cost_strips"]})
st.table(rows)
