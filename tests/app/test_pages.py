"""AppTest tests of every page: each control changes what it should, stepping advances, no exception."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import refattn
from refattn.data import random_qkv
from tests.optional import needs

pytestmark = needs("streamlit", "plotly")  # the [app] extra
try:
    from streamlit.testing.v1 import AppTest

    from viz_app import figures
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


def button(at: AppTest, key: str):
    return at.button(key=key)


def test_app_entry_runs_the_forward_page():
    at = ok(AppTest.from_file(str(APP / "app.py"), default_timeout=TIMEOUT).run())
    assert at.title[0].value.startswith("FlashAttention forward")


@pytest.fixture(scope="module")
def fwd_default():
    """The forward page's default setting, run by the library directly."""
    q, k, v = random_qkv(64, 16, seed=0)
    return {kind: fn(q, k, v, sram=1024, trace=True, **kw) for kind, fn, kw in (
        ("flash", refattn.flash_forward, {"variant": "fa2"}), ("standard", refattn.standard_forward, {}))}


def test_forward_stepping_shows_the_library_counters(fwd_default):
    flash, standard = fwd_default["flash"], fwd_default["standard"]
    at = ok(page("forward").run())
    assert at.session_state["fwd_step"] == 0

    def check(step):
        for prefix, res in (("flash", flash), ("standard", standard)):
            s = min(step, figures.last_step(res.trace))
            tr = res.trace.traffic_until(s)
            assert metric(at, f"{prefix} HBM reads") == tr.total_reads
            assert metric(at, f"{prefix} HBM writes") == tr.total_writes
            assert metric(at, f"{prefix} total at end") == res.traffic.total

    check(0)
    reads0 = metric(at, "flash HBM reads")
    ok(button(at, "fwd_fwd").click().run())
    assert at.session_state["fwd_step"] == 1
    check(1)
    assert metric(at, "flash HBM reads") > reads0  # the counters advance with the step
    ok(button(at, "fwd_end").click().run())
    last = max(figures.last_step(flash.trace), figures.last_step(standard.trace))
    assert at.session_state["fwd_step"] == last
    check(last)
    assert metric(at, "flash HBM reads") == flash.traffic.total_reads
    assert any("finished" in h.value for h in at.subheader)
    ok(button(at, "fwd_back").click().run())
    assert at.session_state["fwd_step"] == last - 1
    ok(at.slider(key="fwd_step").set_value(5).run())
    check(5)
    ok(button(at, "fwd_first").click().run())
    assert at.session_state["fwd_step"] == 0


def test_forward_play_advances_one_step_per_tick():
    at = ok(page("forward").run())
    ok(at.toggle(key="fwd_play").set_value(True).run())
    first = at.session_state["fwd_step"]
    ok(at.run())
    ok(at.run())
    assert at.session_state["fwd_step"] == first + 2
    ok(at.toggle(key="fwd_play").set_value(False).run())
    paused = at.session_state["fwd_step"]
    ok(at.run())
    assert at.session_state["fwd_step"] == paused


def test_forward_controls_change_the_run():
    at = ok(page("forward").run())
    plan_text = at.markdown[0].value
    assert "**Br** = 16" in plan_text and "**variant** = fa2" in plan_text
    ok(at.radio(key="fwd_variant").set_value("fa1").run())
    assert "**variant** = fa1" in at.markdown[0].value and "**Bc** = 16" in at.markdown[0].value
    ok(at.select_slider(key="fwd_n").set_value(32).run())
    q, k, v = random_qkv(32, 16, seed=0)
    res = refattn.flash_forward(q, k, v, sram=1024, variant="fa1")
    assert metric(at, "flash total at end") == res.traffic.total
    ok(at.toggle(key="fwd_causal").set_value(True).run())
    res = refattn.flash_forward(q, k, v, sram=1024, variant="fa1", causal=True)
    assert metric(at, "flash total at end") == res.traffic.total
    ok(at.radio(key="fwd_m_choice").set_value("a100").run())
    assert f"**M** = {refattn.CHIPS['a100'].sram_elements}" in at.markdown[0].value
    ok(at.number_input(key="fwd_seed").set_value(3).run())
    q, k, v = random_qkv(32, 16, seed=3)
    res = refattn.flash_forward(q, k, v, sram="a100", variant="fa1", causal=True)
    assert metric(at, "flash total at end") == res.traffic.total


def test_forward_sram_too_small_is_a_message():
    at = page("forward")
    at.session_state["fwd_d"] = 64
    at.session_state["fwd_m"] = 256
    ok(at.run())
    assert any("SRAM too small" in e.value for e in at.error)


def test_backward_page_steps_and_compares():
    at = ok(page("backward").run())
    if not hasattr(refattn.kernels, "flash_backward") and at.info:
        assert "not available yet" in at.info[0].value
        return
    reads0 = metric(at, "flash HBM reads")
    ok(button(at, "bwd_fwd").click().run())
    assert at.session_state["bwd_step"] == 1
    assert metric(at, "flash HBM reads") > reads0
    ok(button(at, "bwd_end").click().run())
    assert metric(at, "flash HBM reads") + metric(at, "flash HBM writes") == metric(at, "flash total at end")
    flash_total = metric(at, "flash total at end")
    ok(at.select_slider(key="bwd_n").set_value(32).run())
    assert metric(at, "flash total at end") < flash_total


def test_io_page_counts_match_closed_forms():
    at = ok(page("io").run())
    n_table = at.table[0].value
    assert list(n_table["standard"]) == list(n_table["standard closed form"])
    assert list(n_table["flash"]) == list(n_table["flash closed form"])
    m_table = at.table[1].value
    assert np.all(np.diff(m_table["flash"].to_numpy()) < 0)  # more SRAM, less traffic
    ok(at.radio(key="io_variant").set_value("fa1").run())
    n_table = at.table[0].value
    assert list(n_table["flash"]) == list(n_table["flash closed form"])
    q, k, v = random_qkv(128, 64, seed=0)
    m = refattn.CHIPS["a100"].sram_elements  # the default M of the N sweep
    assert n_table["flash"][0] == refattn.flash_forward(q, k, v, sram=m, variant="fa1").traffic.total


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
    assert metric(at, "flash total at end") == res.traffic.total


def test_minference_page_patterns_and_stepping():
    at = ok(page("minference").run())
    density = float(at.metric[0].value)
    assert 0 < density < 1
    reads0 = int(at.metric[5].value.replace(",", ""))
    ok(at.button(key="mi_fwd").click().run())
    assert at.session_state["mi_step"] == 1
    assert int(at.metric[5].value.replace(",", "")) > reads0
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
    ok(at.radio(key="vc_source").set_value("synthetic").run())
    d_low = float(at.metric[0].value)
    ok(at.select_slider(key="vc_density").set_value(0.3).run())
    assert float(at.metric[0].value) > d_low
