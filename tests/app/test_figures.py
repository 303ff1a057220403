"""Unit tests of viz_app.figures (Plotly builders) against refattn's own numbers."""

import numpy as np

from tests.optional import needs

pytestmark = needs("plotly")  # the [app] extra; refattn itself never needs it
try:
    from viz_app import figures
except ImportError:  # without plotly every test here skips, one by one, through the mark above
    pass


def test_io_sweep_draws_the_counted_points():
    pts = [{"N": n, "a": 3 * n * n} for n in (64, 128, 256)]
    fig = figures.io_sweep(pts, "N", series=["a"])
    assert list(fig.data[0].y) == [p["a"] for p in pts] and fig.layout.xaxis.type == "log"


def test_attention_map_and_mask_overlay():
    p = np.full((4, 4), 0.25)
    mask = np.eye(4, dtype=bool)
    fig = figures.attention_map(p, mask=mask)
    assert np.allclose(np.asarray(fig.data[0].z, float), np.log10(0.25))
    overlay = np.asarray(fig.data[1].z, float)
    assert np.array_equal(np.isfinite(overlay), mask)


def test_masked_entries_are_blank_not_a_floor():
    """issue 15: the masked triangle was drawn as log10 p = -12."""
    p = np.tril(np.full((4, 4), 0.25))
    z = np.asarray(figures.attention_map(p).data[0].z, float)
    assert np.all(np.isnan(z[np.triu_indices(4, 1)])) and np.all(np.isfinite(z[np.tril_indices(4)]))


def test_block_scores_colour_bar_is_not_labelled_p():
    """issue 15: block scores (not probabilities) had a colour bar labelled "p"."""
    fig = figures.attention_map(np.ones((2, 2)), log=False, value_name="block score")
    assert fig.data[0].colorbar.title.text == "block score"


def test_bar_labels_are_plain_numbers():
    """issue 15: ViTCoD's bars were labelled like 3.78e+04."""
    fig = figures.paper_comparison({"Q": 37800.0}, {"Q": 4.4})
    assert fig.data[0].text == ("37,800",) and fig.data[1].text == ("4.4",)


def test_timeline_writes_labels_only_where_they_fit():
    """issue 15: the ViTCoD timeline's labels of narrow spans overlapped into an unreadable strip."""
    spans = [{"lane": "a", "start": 0, "end": 1000, "label": "h0 SDDMM"},
             {"lane": "a", "start": 1000, "end": 1010, "label": "h0 SpMM"}]
    fig = figures.timeline(spans)
    assert fig.data[0].text == ("h0 SDDMM",) and fig.data[1].text == ("",)
    assert "h0 SpMM" in fig.data[1].hovertemplate
