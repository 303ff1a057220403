"""The step player: one HTML page (viz_app/player.html) filled with viz_app.playback payloads.

:func:`player_html` is pure (payloads in, an HTML string out) and tested without
Streamlit; viz_app.views shows it with ``st.components.v1.html``. The browser
then steps, plays (up to 50 steps/s) and scrubs on its own: a kernel's run is
sent once per setting.
"""

from __future__ import annotations

import json
from pathlib import Path

TEMPLATE = Path(__file__).with_name("player.html")


def player_html(panels: list[dict], *, jumps=(), start: int = 0) -> str:
    """The player page for one or more panels (side by side, one step control), starting at ``start``.

    ``jumps``: [(label, step)] offered in the "jump to" list (query blocks, key blocks, passes).
    """
    data = {"panels": list(panels), "jumps": [[str(lab), int(s)] for lab, s in jumps], "start": int(start)}
    text = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")  # no "</script>" inside the script
    return TEMPLATE.read_text().replace("__PAYLOAD__", text)


def height(panels: list[dict]) -> int:
    """Pixel height the page needs when its panels sit side by side (it scrolls when they stack)."""
    def one(p):
        grid = min(1.2, p["nq"] / p["nk"]) * 560 + 40
        state = 210 if p.get("state") else 0
        return 150 + 18 * len(p["code"]) + 30 + grid + 90 + 22 * (len(p["tensors"]) + 2) + state
    return int(60 + max(one(p) for p in panels))


PE_TEMPLATE = Path(__file__).with_name("pe_player.html")


def pe_player_html(payload: dict) -> str:
    """The PE-array page for one viz_app.pe_view payload (a GEMM's cycles or ViTCoD's engine steps)."""
    text = json.dumps(payload, separators=(",", ":")).replace("</", "<\\/")
    return PE_TEMPLATE.read_text().replace("__PAYLOAD__", text)
