"""Entry point of the visualiser: ``refattn app`` or ``streamlit run viz_app/app.py``."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout: make `refattn` and `viz_app` importable
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from refattn.warmup import announce  # noqa: E402

announce()  # the server's terminal says which kernels a first run is compiling (once; Numba caches them)

st.set_page_config(page_title="refattn visualiser", page_icon="🧮", layout="wide")

PAGES = Path(__file__).parent / "app_pages"  # not "pages/": that name switches Streamlit to its old multipage mode
nav = st.navigation([
    st.Page(PAGES / "forward.py", title="FlashAttention forward", default=True),
    st.Page(PAGES / "backward.py", title="Backward", url_path="backward"),
    st.Page(PAGES / "io.py", title="IO complexity", url_path="io"),
    st.Page(PAGES / "minference.py", title="MInference", url_path="minference"),
    st.Page(PAGES / "vitcod.py", title="ViTCoD", url_path="vitcod"),
    st.Page(PAGES / "upload.py", title="Inputs (upload)", url_path="inputs"),
])
nav.run()
