"""Page 3: IO complexity explorer: counted HBM traffic along N and M, and the paper's Figure 2.

Every number comes from refattn.bench.sweeps (the same functions as ``refattn bench dense`` and lesson 4);
the sentences are generated from those numbers (viz_app.claims).
"""

import streamlit as st

from refattn.bench.sweeps import PAPER_FIG2
from refattn.memory import CHIPS
from viz_app import claims, figures, runs

st.title("IO complexity explorer")
st.caption("Counted HBM accesses (elements) of the standard and FlashAttention forward kernels, from the kernels' "
           "own loads and stores (refattn.bench.sweeps). The paper's Theorem 2: standard attention needs "
           "Θ(Nd + N²) accesses, FlashAttention Θ(N²d²/M); which one moves less depends on N, d and M, and the "
           "sentences below say which does for the numbers shown.")

sb = st.sidebar
sb.header("Sweep settings")
d = sb.select_slider("d (head dim)", [16, 32, 64, 128], value=64, key="io_d")
A100_M = CHIPS["a100"].sram_elements
m = sb.select_slider("M for the N sweep (elements)", [1024, 4096, 16384, A100_M], value=A100_M, key="io_m",
                     format_func=lambda x: f"{x} (A100 SRAM)" if x == A100_M else str(x))
variant = sb.radio("flash loop order", ["fa2", "fa1"], key="io_variant")
chip = sb.selectbox("chip preset for simulated time", list(CHIPS), key="io_chip",
                    format_func=lambda c: CHIPS[c].name)
N_SWEEP = (128, 256, 512, 1024)
M_SWEEP = tuple(4 * d * b for b in (2, 4, 8, 16, 32, 64))

try:
    n_points, m_points = runs.io_sweeps(d, m, variant, chip, N_SWEEP, M_SWEEP, 512)
except (ValueError, TypeError) as exc:
    st.error(str(exc))
    st.stop()


def series(points, x):
    return [{x: p[x], "standard": p["standard"]["total"], "flash": p["flash"]["total"]} for p in points]


tab_n, tab_m, tab_fig2 = st.tabs(["traffic vs N", "traffic vs M", "Figure 2 of the paper"])
with tab_n:
    st.plotly_chart(figures.io_sweep(series(n_points, "N"), "N", series=["standard", "flash"],
                                     title=f"forward HBM accesses, d = {d}, M = {m}"),
                    width="stretch", key="io_n", config={"displayModeBar": False})
    st.markdown(claims.sweep_sentence(n_points, "N"))
    st.table([{"N": p["N"], "standard": p["standard"]["total"], "flash": p["flash"]["total"],
               "flash Br x Bc": f"{p['flash']['plan'].get('Br')} x {p['flash']['plan'].get('Bc')}",
               f"standard µs ({CHIPS[chip].name})": round(1e6 * p["standard"]["time_s"], 3),
               f"flash µs ({CHIPS[chip].name})": round(1e6 * p["flash"]["time_s"], 3)} for p in n_points])
with tab_m:
    st.plotly_chart(figures.io_sweep(series(m_points, "M"), "M", series=["standard", "flash"],
                                     title=f"forward HBM accesses vs SRAM size, N = 512, d = {d}"),
                    width="stretch", key="io_m_fig", config={"displayModeBar": False})
    st.markdown(claims.sweep_sentence(m_points, "M"))
    st.table([{"M": p["M"], "standard": p["standard"]["total"], "flash": p["flash"]["total"],
               "flash Br x Bc": f"{p['flash']['plan'].get('Br')} x {p['flash']['plan'].get('Bc')}"}
              for p in m_points])

with tab_fig2:
    st.markdown("**GPT-2 medium attention** (N = 1024, d = 64, 16 heads, batch 64), forward + backward on the "
                "A100-like preset. One head is run and counted; traffic scales by 16 x 64 heads "
                "(refattn.bench.sweeps.figure2, also printed by `refattn bench dense`).")
    fig = runs.figure2()
    ours_gb = {"standard": fig["standard"]["GB"], "FlashAttention": fig["flash"]["GB"]}
    ours_ms = {"standard": fig["standard"]["ms"], "FlashAttention": fig["flash"]["ms"]}
    paper_gb = {"standard": PAPER_FIG2["standard"]["GB"], "FlashAttention": PAPER_FIG2["flash"]["GB"]}
    paper_ms = {"standard": PAPER_FIG2["standard"]["ms"], "FlashAttention": PAPER_FIG2["flash"]["ms"]}
    c1, c2 = st.columns(2)
    c1.plotly_chart(figures.paper_comparison(ours_gb, paper_gb, title="HBM reads + writes (GB)"),
                    width="stretch", key="io_fig2_gb", config={"displayModeBar": False})
    c2.plotly_chart(figures.paper_comparison(ours_ms, paper_ms, title="runtime (ms; ours: roofline model)"),
                    width="stretch", key="io_fig2_ms", config={"displayModeBar": False})
    st.markdown(claims.traffic_sentence("FlashAttention", round(fig["flash"]["bytes"]), "standard",
                                        round(fig["standard"]["bytes"]), what="bytes", where="Here")
                + f" The paper: {paper_gb['FlashAttention']} GB vs {paper_gb['standard']} GB "
                f"({claims.ratio_words(paper_gb['FlashAttention'], paper_gb['standard'])}).")

    st.markdown("**Figure 2 middle**: FA2 forward as the block size grows (N = 1024, d = 64, A100-like roofline), "
                "each block with just the SRAM its tiles need (refattn.bench.sweeps.block_sweep).")
    rows = runs.block_sweep((64, 128, 256, 512))
    st.plotly_chart(figures.io_sweep([{"block": r["block"], "flash": r["total"]} for r in rows], "block",
                                     series=["flash"], title="forward HBM accesses (one head) vs block size"),
                    width="stretch", key="io_fig2_mid", config={"displayModeBar": False})
    falls = all(a["total"] > b["total"] for a, b in zip(rows, rows[1:]))
    st.markdown(f"From block {rows[0]['block']} to {rows[-1]['block']} the traffic "
                f"{'falls at every step' if falls else 'does not fall at every step'} "
                f"({rows[0]['total']:,} to {rows[-1]['total']:,} accesses per head) and the simulated time goes "
                f"from {rows[0]['time_s'] * 1e3:.2f} ms ({rows[0]['bound']}-bound) to "
                f"{rows[-1]['time_s'] * 1e3:.2f} ms ({rows[-1]['bound']}-bound).")
    st.table([{"block": r["block"], "M": r["M"], "HBM accesses (one head)": r["total"],
               "time ms (16 x 64 heads)": round(r["time_s"] * 1e3, 3), "bound": r["bound"]} for r in rows])
