"""Page 6: upload your own Q/K/V (or an attention map) as .npy / .npz; bad files get a clear message."""

import io

import numpy as np
import streamlit as st

from refattn import reference
from viz_app import figures
from viz_app.figures import PLOTLY_CONFIG
from viz_app.inputs import MAX_UPLOAD_BYTES, InputError, attention_map_from_arrays, qkv_from_arrays, read_upload

st.title("Inputs: upload Q/K/V or an attention map")
st.markdown(
    "* **Q/K/V**: one `.npz` with arrays `q` `(N, d)`, `k` `(Nk, d)`, `v` `(Nk, dv)` "
    "(with leading head dims, head 0 is used). The kernel pages then offer *uploaded* as their input.\n"
    "* **Attention map**: one 2-D non-negative array (queries x keys) in a `.npy` or `.npz`.\n\n"
    "Files are read with `numpy.load(allow_pickle=False)`; anything else is refused with a reason."
)


def example_npz(n=64, d=16, seed=0) -> bytes:
    from refattn.data import random_qkv

    q, k, v = random_qkv(n, d, seed=seed)
    buf = io.BytesIO()
    np.savez(buf, q=q, k=k, v=v)
    return buf.getvalue()


def accept(name: str, data: bytes):
    """Parse one file and store what it holds in the session; errors become messages."""
    try:
        arrays = read_upload(name, data)
        if any(key.lower() in ("q", "k", "v") for key in arrays) or len(arrays) == 3:
            st.session_state["uploaded_qkv"], notes = qkv_from_arrays(arrays, notes=True)
            st.session_state["uploaded_name"] = name
            st.success(f"{name}: Q/K/V accepted" + "".join(f"; {n}" for n in notes))
        else:
            st.session_state["uploaded_map"] = attention_map_from_arrays(arrays)
            st.session_state["uploaded_name"] = name
            st.success(f"{name}: attention map accepted")
    except InputError as exc:
        st.error(f"Could not use this file. {exc}")


c1, c2 = st.columns([3, 1])
with c1:
    upload = st.file_uploader("a .npy or .npz file", key="upload_file", type=["npy", "npz"],
                              max_upload_size=MAX_UPLOAD_BYTES // 2**20)  # the limit the checks enforce
    if upload is not None:
        accept(upload.name, upload.getvalue())
with c2:
    st.download_button("download an example .npz", example_npz(), "example_qkv.npz", key="upload_example_dl")
    if st.button("use the example", key="upload_example"):
        accept("example_qkv.npz", example_npz())
    if st.button("clear uploads", key="upload_clear"):
        for key in ("uploaded_qkv", "uploaded_map", "uploaded_name"):
            st.session_state.pop(key, None)

qkv = st.session_state.get("uploaded_qkv")
amap = st.session_state.get("uploaded_map")
if qkv is None and amap is None:
    st.info("Nothing uploaded yet.")
if qkv is not None:
    q, k, v = qkv
    st.subheader("Uploaded Q/K/V")
    st.markdown(f"q {q.shape}, k {k.shape}, v {v.shape}, dtype {q.dtype}. "
                "The forward and backward pages now list *uploaded* as an input.")
    probs, _ = reference.attention_probs(q, k)
    st.plotly_chart(figures.attention_map(probs, title="softmax(QKᵀ/√d) of the upload (float64 reference)"),
                    width="stretch", key="upload_qkv_map", config=PLOTLY_CONFIG)
if amap is not None:
    st.subheader("Uploaded attention map")
    st.markdown(f"shape {amap.shape}; row sums from {amap.sum(1).min():.3g} to {amap.sum(1).max():.3g}")
    st.plotly_chart(figures.attention_map(amap, title="uploaded attention map"), width="stretch",
                    key="upload_map", config=PLOTLY_CONFIG)
