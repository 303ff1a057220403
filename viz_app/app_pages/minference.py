"""Page 4: MInference's dynamic sparse patterns (A-shape, vertical-slash, block-sparse) on one head."""

import streamlit as st

from viz_app import runs, views

st.title("MInference: dynamic sparse prefill")
st.caption("Estimate the pattern from the last 64 queries, build an index set, and run only those tiles.")

if not (runs.module_available("refattn.patterns") and runs.available("sparse_forward")):
    views.not_available("The MInference view", "refattn.patterns and refattn.sparse_forward")
    st.stop()
