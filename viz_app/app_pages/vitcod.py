"""Page 5: ViTCoD: prune, reorder into dense and sparse parts, and split the work between two engines."""

import streamlit as st

from viz_app import runs, views

st.title("ViTCoD: split sparse and dense attention")
st.caption("A fixed, pruned attention mask; global tokens moved to the front for the denser engine; the rest "
           "runs on the sparser engine.")

if not (runs.module_available("refattn.vitcod") and runs.module_available("refattn.pe_array")):
    views.not_available("The ViTCoD view", "refattn.vitcod and refattn.pe_array")
    st.stop()
