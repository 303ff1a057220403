"""Unit tests of viz_app.figures: the right tiles lit, the right counters shown, from refattn's own traces."""

import numpy as np
import pytest

pytest.importorskip("plotly")  # the [app] extra; refattn itself never needs it

import refattn  # noqa: E402
from refattn.data import random_qkv  # noqa: E402
from tests.app.fake import fake_flash_trace  # noqa: E402
from viz_app import figures  # noqa: E402
from viz_app.figures import CURRENT, CURRENT_SKIP, DONE, PENDING, SKIPPED  # noqa: E402


def test_tile_states_on_a_hand_written_trace():
    t = fake_flash_trace(nq=8, nk=8, br=4, bc=4, causal=True)  # 3 visible tiles, the top-right one skipped
    _, _, s0 = figures.tile_states(t, 0, 8, 8)
    assert s0.tolist() == [[CURRENT, PENDING], [PENDING, PENDING]]
    _, _, s1 = figures.tile_states(t, 1, 8, 8)  # the skip was recorded in step 1, with tile (1, 0)
    assert s1.tolist() == [[DONE, CURRENT_SKIP], [CURRENT, PENDING]]
    rows, cols, s2 = figures.tile_states(t, 2, 8, 8)
    assert s2.tolist() == [[DONE, SKIPPED], [DONE, CURRENT]]
    assert rows.tolist() == [0, 4, 8] and cols.tolist() == [0, 4, 8]
    assert figures.current_tiles(t, 2) == [((4, 8), (4, 8))]


def test_tile_grid_draws_the_states():
    t = fake_flash_trace()
    fig = figures.tile_grid(t, 1, 8, 8)
    z = np.asarray(fig.data[0].z) - 0.5
    assert z.tolist() == figures.tile_states(t, 1, 8, 8)[2].tolist()
    assert [tr.name for tr in fig.data[1:]] == list(figures.STATE_NAMES)


@pytest.fixture(scope="module")
def fa2():
    q, k, v = random_qkv(40, 8, seed=1)  # N not dividing the blocks
    return q, k, v, refattn.flash_forward(q, k, v, sram=512, variant="fa2", causal=True, trace=True)


def test_flash_trace_lights_the_kernel_tile(fa2):
    q, k, v, res = fa2
    br, bc, tc = res.plan.blocks["Br"], res.plan.blocks["Bc"], res.plan.tiles["Tc"]
    last = figures.last_step(res.trace)
    seen_current = 0
    assert last == res.n_steps
    for step in range(1, last + 1):
        rows, cols, states = figures.tile_states(res.trace, step, 40, 40, res.plan)
        lit = np.argwhere((states == CURRENT) | (states == CURRENT_SKIP))
        assert len(lit) == 1  # FA2: exactly one tile per step, in the order i outer, j inner
        i, j = lit[0]
        assert (i, j) == divmod(step - 1, tc)  # steps are 1-based
        assert rows[i] == i * br and cols[j] == j * bc
        # every earlier tile is done or skipped, every later one pending
        flat = states.ravel()
        assert np.all(np.isin(flat[:step - 1], [DONE, SKIPPED])) and np.all(flat[step:] == PENDING)
        seen_current += states[i, j] == CURRENT
    _, _, final = figures.tile_states(res.trace, last, 40, 40, res.plan)
    # causal (bottom-right, Nq = Nk): skipped exactly where the whole tile lies above the diagonal
    tr = res.plan.tiles["Tr"]
    for i in range(tr):
        for j in range(tc):
            above = j * bc > min((i + 1) * br, 40) - 1
            assert (final[i, j] in (SKIPPED, CURRENT_SKIP)) == above
    assert seen_current == np.sum(final != SKIPPED) - (final[-1, -1] == CURRENT_SKIP) or seen_current > 0


def test_counters_shown_equal_the_library(fa2):
    _, _, _, res = fa2
    last = figures.last_step(res.trace)
    for step in (0, last // 2, last):
        traffic = res.trace.traffic_until(step)
        rows = figures.traffic_rows(traffic)
        assert rows[-1] == {"tensor": "total", "reads": traffic.total_reads, "writes": traffic.total_writes}
        assert {r["tensor"]: (r["reads"], r["writes"]) for r in rows[:-1]} == {t: (r, w) for t, r, w in
                                                                                 traffic.rows()}
        fig = figures.traffic_bars({"flash": traffic})
        reads = dict(zip(fig.data[0].x, fig.data[0].y))
        writes = dict(zip(fig.data[1].x, fig.data[1].y))
        for t in reads:
            assert (reads[t], writes[t]) == traffic.of(t)
    # at the end the replayed counters are the kernel's own totals
    assert res.trace.traffic_until(last).total == res.traffic.total
    assert res.trace.traffic_until(last).reads == res.traffic.reads


def test_counters_advance_with_the_step(fa2):
    _, _, _, res = fa2
    totals = [res.trace.traffic_until(s).total for s in range(figures.last_step(res.trace) + 1)]
    assert totals == sorted(totals) and totals[0] < totals[-1]


def test_sram_panel_shows_what_the_trace_holds(fa2):
    _, _, _, res = fa2
    step = 3
    held = res.trace.sram_at(step)
    contents = figures.sram_contents(res.trace, step)
    assert [c[0] for c in contents] == list(held)
    assert [c[2] for c in contents] == [e.elements for e in held.values()]
    fig = figures.sram_panel(res.trace, step, res.sram.capacity)
    assert sum(b.x[0] for b in fig.data) == sum(e.elements for e in held.values()) <= res.sram.capacity
    assert f"of {res.sram.capacity} elements" in fig.layout.title.text


def test_row_state_plots_the_kernel_state():
    q, k, v = random_qkv(32, 8, seed=2)
    res = refattn.flash_forward(q, k, v, sram=512, variant="fa2", stop_after=2)
    fig = figures.row_state(res.state)
    m_bar, l_bar, o_map = fig.data
    np.testing.assert_array_equal(m_bar.x, res.state.arrays["m"])
    np.testing.assert_array_equal(l_bar.x, res.state.arrays["l"])
    np.testing.assert_array_equal(np.asarray(o_map.z), res.state.arrays["o_partial"])
    assert "no state" in figures.row_state(None).layout.title.text


def test_standard_trace_grid_and_totals():
    q, k, v = random_qkv(24, 8, seed=3)
    res = refattn.standard_forward(q, k, v, sram=512, trace=True)
    last = figures.last_step(res.trace)
    _, _, states = figures.tile_states(res.trace, last, 24, 24, res.plan)
    assert np.all(states != PENDING)  # the standard kernel computes every score
    assert res.trace.traffic_until(last).total == res.traffic.total


def test_io_sweep_and_slope():
    pts = [{"N": n, "a": 3 * n * n, "a_formula": 3 * n * n} for n in (64, 128, 256)]
    fig = figures.io_sweep(pts, "N", series=["a"])
    assert list(fig.data[0].y) == [p["a"] for p in pts] and fig.layout.xaxis.type == "log"
    assert figures.loglog_slope([p["N"] for p in pts], [p["a"] for p in pts]) == pytest.approx(2.0)


def test_attention_map_and_mask_overlay():
    p = np.full((4, 4), 0.25)
    mask = np.eye(4, dtype=bool)
    fig = figures.attention_map(p, mask=mask)
    assert np.allclose(np.asarray(fig.data[0].z, float), np.log10(0.25))
    overlay = np.asarray(fig.data[1].z, float)
    assert np.array_equal(np.isfinite(overlay), mask)
