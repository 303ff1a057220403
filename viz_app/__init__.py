"""refattn's visualiser: a Streamlit multipage app (``refattn app``).

``figures`` holds pure Plotly builders (trace + step -> figure), ``runs`` the
cached refattn calls, ``inputs`` input generation and upload checks, and
``app_pages/`` one file per page (a folder named ``pages/`` next to app.py
would switch Streamlit to its old multipage mode, which ignores ``st.navigation``).
"""
