"""AppTest tests of every page: each control changes what it should, stepping advances, no exception."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import refattn
from refattn.data import random_qkv
from tests.optional import needs

pytestmark = needs("streamlit", "plotly")  # the [app] extra
try:
    from streamlit.testing.v1 import AppTest

    from viz_app import playback
except ImportError:  # without the [app] extra every test here skips, one by one, through the mark above
    pass

APP = Path(__file__).resolve().parents[2] / "viz_app"
TIMEOUT = 120  # the default 3 s is less than a first Numba compile


def page(name: str) -> AppTest:
    return AppTest.from_file(str(APP / "app_pages" / f"{name}.py"), default_timeout=TIMEOUT)


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def metric(at: AppTest, label: str) -> int:
    (m,) = [m for m in at.metric if m.label == label]
    return int(m.value.replace(",", ""))


def player_data(at: AppTest) -> dict:
    """The payload the page sent to the browser's step player (the JSON inside the iframe's page)."""
    (frame,) = at.get("iframe")
    doc = frame.proto.srcdoc
    start = doc.index("const DATA = ") + len("const DATA = ")
    return json.loads(doc[start:doc.index(";\nconst COL")])


def no_toolbars(at: AppTest) -> bool:
    """issue 15: at 390 px Plotly's toolbar covered the titles; every chart is shown without it."""
    charts = at.get("plotly_chart")
    return bool(charts) and all(json.loads(c.proto.config or "{}").get("displayModeBar") is False for c in charts)


def test_app_entry_runs_the_forward_page():
    at = ok(AppTest.from_file(str(APP / "app.py"), default_timeout=TIMEOUT).run())
    assert at.title[0].value.startswith("FlashAttention forward")


@pytest.fixture(scope="module")
def fwd_default():
    """The forward page's default setting, run by the library directly."""
    q, k, v = random_qkv(64, 16, seed=0)
    return {kind: fn(q, k, v, sram=1024, trace=True, **kw) for kind, fn, kw in (
        ("flash", refattn.flash_forward, {"variant": "fa2"}), ("standard", refattn.standard_forward, {}))}


def test_forward_page_sends_the_whole_run_once(fwd_default):
    """Stepping happens in the browser: the page sends every step's counters, equal to the library's."""
    at = ok(page("forward").run())
    data = player_data(at)
    assert [p["label"] for p in data["panels"]] == ["FlashAttention (FA2)", "standard"]
    for p, res in zip(data["panels"], (fwd_default["flash"], fwd_default["standard"])):
        assert p["n_steps"] == res.n_steps and p["window"] == [1, res.n_steps]
        for s in (0, 1, 5, res.n_steps):
            tr = res.trace.traffic_until(s)
            assert (sum(p["reads"][s]), sum(p["writes"][s])) == (tr.total_reads, tr.total_writes)
    flash = data["panels"][0]
    assert flash["state"]["steps"] == list(range(1, 9))  # running state of query block 1 (its 8 steps)
    f, s = fwd_default["flash"].traffic.total, fwd_default["standard"].traffic.total
    assert f"flash moves {f:,} HBM accesses, standard {s:,}: flash moves {s / f:.1f}x fewer" in at.markdown[1].value


def test_forward_controls_change_the_run():
    at = ok(page("forward").run())
    plan_text = at.markdown[0].value
    assert "**Br** = 16" in plan_text and "**variant** = fa2" in plan_text
    ok(at.radio(key="fwd_variant").set_value("fa1").run())
    assert "**variant** = fa1" in at.markdown[0].value and "**Bc** = 16" in at.markdown[0].value
    at.select_slider(key="fwd_n").set_value(32)
    ok(at.toggle(key="fwd_causal").set_value(True).run())
    q, k, v = random_qkv(32, 16, seed=0)
    res = refattn.flash_forward(q, k, v, sram=1024, variant="fa1", causal=True, trace=True)
    p = player_data(at)["panels"][0]
    assert p["total_reads"] + p["total_writes"] == res.traffic.total and p["causal_offset"] == 0
    ok(at.selectbox(key="fwd_state_block").set_value(1).run())  # the running state of another key block
    assert player_data(at)["panels"][0]["state"]["steps"][0] == playback.segments(res)[1][1]


def test_forward_window_and_gqa_options():
    """The window run is the library's, its skips are drawn apart, and each sentence carries the kernel's counts."""
    at = page("forward").run()
    ok(at.toggle(key="fwd_window").set_value(True).run())
    q, k, v = random_qkv(64, 16, seed=0)
    res = refattn.flash_forward(q, k, v, sram=1024, variant="fa2", window=(16, 0), trace=True)
    dense = refattn.flash_forward(q, k, v, sram=1024, variant="fa2", count_only=True)
    (p,) = player_data(at)["panels"]  # the standard kernel takes no window: flash alone
    assert p["sliding_window"] == [16, 0] and p["total_reads"] == res.traffic.total_reads
    assert playback.SKIP_WINDOW in p["ev"]["skip"]
    kv = lambda r: r.traffic.reads["K"] + r.traffic.reads["V"]
    counts = playback.tile_counts(res, 64, 64)
    text = " ".join(m.value for m in at.markdown)
    assert (f"window (16, 0): {counts['visited']} of {counts['total']} tiles visited ({counts['window_skipped']} "
            f"skipped outside the window); against the same kernel without the window, K/V reads") in text
    assert f"({kv(res):,} vs {kv(dense):,} elements" in text
    ok(at.radio(key="fwd_kv").set_value(2).run())
    text = " ".join(m.value for m in at.markdown)
    heads = lambda x, h: np.ascontiguousarray(np.broadcast_to(x, (h,) + x.shape))
    gqa, mha = (refattn.flash_forward(heads(q, 4), heads(k, h), heads(v, h), sram=1024, variant="fa2",
                                      window=(16, 0), count_only=True, num_kv_heads=h if h < 4 else None).traffic
                for h in (2, 4))
    assert (f"GQA, 4 query heads on 2 KV heads (query heads 0, 1 → KV head 0; 2, 3 → KV head 1): K/V reads "
            f"{kv_(gqa):,} vs {kv_(mha):,} with 4 KV heads (MHA)") in text


def kv_(traffic):
    return traffic.reads["K"] + traffic.reads["V"]


def test_forward_sram_too_small_is_a_message():
    at = page("forward")
    at.session_state["fwd_d"] = 64
    at.session_state["fwd_m"] = 256
    ok(at.run())
    assert any("SRAM too small" in e.value for e in at.error)


def test_backward_page_compares_with_its_own_numbers():
    at = ok(page("backward").run())
    flash, standard = (p["total_reads"] + p["total_writes"] for p in player_data(at)["panels"])
    sentence = at.markdown[1].value
    assert f"flash {flash:,} vs standard {standard:,}" in sentence
    assert ("saves traffic:" in sentence) == (flash < standard)


def test_io_page_comes_from_the_library_sweeps():
    from refattn.bench import sweeps

    at = ok(page("io").run())
    n_table = at.table[0].value
    m = refattn.CHIPS["a100"].sram_elements  # the default M of the N sweep
    want = sweeps.n_sweep((128,), 64, m)[0]
    assert n_table["flash"][0] == want["flash"]["total"] and n_table["standard"][0] == want["standard"]["total"]
    m_table = at.table[1].value
    assert np.all(np.diff(m_table["flash"].to_numpy()) < 0)  # more SRAM, less traffic
    assert f"{n_table['flash'].iloc[-1]:,}" in at.markdown[0].value  # the sentence quotes the table


def test_upload_page_accepts_the_example_and_the_forward_page_uses_it():
    at = ok(page("upload").run())
    assert "Nothing uploaded yet." in at.info[0].value
    ok(at.button(key="upload_example").click().run())
    assert any("accepted" in s.value for s in at.success)
    q, k, v = at.session_state["uploaded_qkv"]
    assert q.shape == (64, 16)
    ok(at.button(key="upload_clear").click().run())
    assert "uploaded_qkv" not in at.session_state


def test_forward_page_with_an_uploaded_input():
    q, k, v = random_qkv(48, 8, seed=5)
    at = page("forward")
    at.session_state["uploaded_qkv"] = (q, k, v)
    ok(at.run())
    ok(at.radio(key="fwd_source").set_value("uploaded").run())
    res = refattn.flash_forward(q, k, v, sram=1024, variant="fa2")
    p = player_data(at)["panels"][0]
    assert (p["nq"], p["total_reads"] + p["total_writes"]) == (48, res.traffic.total)
    # issue 15: the N and d sliders kept showing their old values; now they give way to the upload's shape
    assert not [s for s in at.select_slider if s.key in ("fwd_n", "fwd_d")]
    assert any("N = 48, d = 8: from the uploaded Q/K/V" in c.value for c in at.sidebar.caption)


def test_minference_page_patterns_and_stepping():
    at = ok(page("minference").run())
    density = float(at.metric[0].value)
    assert 0 < density < 1
    p = player_data(at)["panels"][0]  # the sparse kernel's run, sent to the browser's player
    assert p["kernel"] == "sparse_forward" and sum(p["reads"][-1]) == p["total_reads"]
    options = at.selectbox(key="mi_pattern").options
    assert len(options) == len(set(options))  # issue 15: duplicate candidates in the selector
    table = at.table[0].value
    assert not table.duplicated(["head", "candidate"]).any()  # ... and in the table
    assert no_toolbars(at)
    ok(at.radio(key="mi_head").set_value(1).run())  # the planted A-shape head
    assert "Pattern:" in at.markdown[0].value
    ok(at.selectbox(key="mi_pattern").set_value(1).run())  # the A-shape candidate
    assert "`a_shape`" in at.markdown[0].value
    assert len(at.table[0].value) >= 3  # the per-head table of the search


def test_vitcod_page_mask_sources_and_autoencoder():
    from refattn.data.vit import load_deit_tiny_mask
    from refattn.vitcod import simulate_layer

    at = ok(page("vitcod").run())
    keep, _ = load_deit_tiny_mask()
    res = simulate_layer(keep[0])
    assert metric(at, "ViTCoD cycles (layer)") == res.total
    ok(at.slider(key="vc_layer").set_value(5).run())
    assert metric(at, "ViTCoD cycles (layer)") == simulate_layer(keep[5]).total
    table = at.table[0].value
    assert table["total"][1] < table["total"][0]  # the auto-encoder moves fewer bytes
    assert no_toolbars(at)
    assert len(at.get("iframe")) == 2  # PE arrays in motion: the engines' lines and the GEMM on the array
    ok(at.radio(key="vc_source").set_value("synthetic").run())
    d_low = float(at.metric[0].value)
    ok(at.select_slider(key="vc_density").set_value(0.3).run())
    assert float(at.metric[0].value) > d_low
