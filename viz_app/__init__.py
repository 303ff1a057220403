"""refattn's visualiser: a Streamlit multipage app (``refattn app``).

``figures`` holds pure Plotly builders (trace + step -> figure), ``runs`` the
cached refattn calls, ``inputs`` input generation and upload checks, and
``pages/`` one file per page.
"""
