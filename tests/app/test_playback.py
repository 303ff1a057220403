"""The browser player's data (viz_app.playback, pseudocode, claims): pure, checked against the library."""

import json

import numpy as np
import pytest

import refattn
from refattn.bench import sweeps
from refattn.data import random_qkv
from tests.app.fake import fake_flash_trace
from viz_app import claims, playback, player, pseudocode
from viz_app.playback import DONE, PENDING, SKIPPED, SKIPPED_WINDOW


@pytest.fixture(scope="module")
def fa2():
    q, k, v = random_qkv(40, 8, seed=1)  # N not dividing the blocks: the last tile row is short
    res = refattn.flash_forward(q, k, v, sram=512, variant="fa2", causal=True, trace=True)
    return q, k, v, res


@pytest.fixture(scope="module")
def std():
    q, k, v = random_qkv(24, 8, seed=3)
    return refattn.standard_forward(q, k, v, sram=512, trace=True)


def test_tile_states_on_a_hand_written_trace():
    t = fake_flash_trace(nq=8, nk=8, br=4, bc=4, causal=True)  # 4 steps; the top-right tile (step 2) skipped
    rows, cols, s, cur = playback.tile_states(t, 0, 8, 8)
    assert s.tolist() == [[PENDING, PENDING], [PENDING, PENDING]] and not cur.any()  # before the run
    _, _, s, cur = playback.tile_states(t, 2, 8, 8)
    assert s.tolist() == [[DONE, SKIPPED], [PENDING, PENDING]] and cur.tolist() == [[False, True], [False, False]]
    _, _, s, cur = playback.tile_states(t, 4, 8, 8)
    assert s.tolist() == [[DONE, SKIPPED], [DONE, DONE]] and rows.tolist() == [0, 4, 8] and cur[1, 1]
    _, _, s, cur = playback.tile_states(t, 5, 8, 8)  # "finished" (n_steps + 1): nothing lit as current
    assert t.n_steps == 4 and not cur.any() and s.tolist() == [[DONE, SKIPPED], [DONE, DONE]]


def test_payload_counters_equal_the_library_at_every_step(fa2):
    *_, res = fa2
    p = playback.payload(res, 40, 40, "flash")
    n = res.n_steps
    assert p["n_steps"] == n == res.plan.n_steps and p["window"] == [1, n]
    assert len(p["reads"]) == n + 1 and len(p["narration"]) == n == len(p["lit"]) and len(p["sram"]) == n + 1
    for s in range(n + 1):  # position s (0 = before the run)
        tr = res.trace.traffic_until(s)
        assert sum(p["reads"][s]) == tr.total_reads and sum(p["writes"][s]) == tr.total_writes
        assert dict(zip(p["tensors"], p["reads"][s])) == {t: tr.reads.get(t, 0) for t in p["tensors"]}
    assert p["total_reads"] + p["total_writes"] == res.traffic.total
    assert p["causal_offset"] == 0  # bottom-right, Nq = Nk
    json.dumps(p)  # sent as JSON


def test_payload_sram_equals_the_trace_replay(fa2):
    *_, res = fa2
    p = playback.payload(res, 40, 40, "flash")
    for s in (1, 2, res.n_steps // 2, res.n_steps):
        want = {slot: c.elements for slot, c in res.trace.sram_at(s).items()}
        assert {x[0]: x[2] for x in p["sram"][s]} == want


def test_lit_lines_follow_the_event_kinds(fa2):
    *_, res = fa2
    code = pseudocode.CODE["flash_forward/fa2"]
    seen = set()
    for s in range(1, res.n_steps + 1):
        events = res.trace.events_at(s)
        lit = [code[i].text for i in pseudocode.lit_lines(res.plan.kernel, events)]
        kinds = {e.kind for e in events}
        assert any("skip" in t for t in lit) == ("skip" in kinds)
        assert any("S_ij = scale" in t for t in lit) == any(e.tensor == "S" for e in events)
        assert any("store O_i" in t for t in lit) == any(e.kind == "store" for e in events)
        seen |= set(lit)
    assert any("skip" in t for t in seen)  # the causal run reaches the skip line


def test_narration_names_loads_skips_rescales_and_the_final_normalisation(fa2):
    *_, res = fa2
    p = playback.payload(res, 40, 40, "flash")
    text = " ".join(p["narration"])
    first = p["narration"][0]
    assert first.startswith("Step 1 of") and "loads Q rows 0-" in first and "rescales" not in first
    assert "skips 1 fully masked tile (causal)" in text and "rescales the running l and O" in text
    assert "normalises the finished rows" in p["narration"][-1]
    reads = sum(p["reads"][1]) - sum(p["reads"][0])
    assert f"({reads:,} reads" in first


def test_standard_grid_lights_every_pass_and_ends_done(std):
    n = std.n_steps
    for s in range(1, n + 1):  # every step of every pass (also P.V, which only loads P) lights a tile
        assert playback.tile_states(std.trace, s, 24, 24, std.plan)[3].any(), s
    assert np.all(playback.tile_states(std.trace, n, 24, 24, std.plan)[2] == DONE)
    assert [lab for lab, *_ in playback.segments(std)] == ["F1", "F2", "F3"]


def test_long_runs_are_cut_into_block_windows(fa2):
    *_, res = fa2
    segs = playback.segments(res)
    assert segs[0][1] == 1 and segs[-1][2] == res.n_steps
    assert all(a[2] + 1 == b[1] for a, b in zip(segs, segs[1:]))
    wins = playback.windows(res, max_steps=7)
    assert all(b - a + 1 <= 7 for _, a, b in wins) and wins[-1][2] == res.n_steps
    a, b = wins[1][1], wins[1][2]
    p = playback.payload(res, 40, 40, "flash", window=(a, b))
    assert sum(p["reads"][0]) == res.trace.traffic_until(a - 1).total_reads  # the window starts where it should
    assert sum(p["reads"][-1]) == res.trace.traffic_until(b).total_reads
    base = np.array(list(p["base"]), int).reshape(len(p["rows"]) - 1, -1)
    assert base.tolist() == playback.tile_states(res.trace, a - 1, 40, 40, res.plan)[2].tolist()


def test_running_state_has_fixed_axes(fa2):
    q, k, v, res = fa2
    states = {s: refattn.flash_forward(q, k, v, sram=512, causal=True, stop_after=s).state for s in (1, 2, 3)}
    p = playback.payload(res, 40, 40, "flash", states=states)
    st = p["state"]
    assert st["steps"] == [1, 2, 3]
    assert st["m_range"][1] >= max(x for ms in st["m"] for x in ms if x is not None)
    assert st["o_max"] == pytest.approx(max(abs(x) for os in st["o"] for x in os))
    html = player.player_html([p], jumps=[("query block 1", 1)])
    assert "__PAYLOAD__" not in html and "</script>" in html and html.count("</script>") == 1


def test_sentences_follow_the_numbers():
    assert claims.traffic_sentence("flash", 10, "standard", 25).endswith("flash moves 2.5x fewer HBM accesses "
                                                                          "than standard.")
    assert "2.0x more" in claims.traffic_sentence("flash", 50, "standard", 25)
    assert "close to linear" in claims.slope_sentence("flash", 1.05)
    assert "close to quadratic" in claims.slope_sentence("standard", 1.95)


def test_backward_sentence_says_when_flash_moves_more():
    """issue 15: at N = 128, d = 32, M = 512 flash's backward moves more than standard's; the page said
    "recomputation costs FLOPs, saves traffic"."""
    rng = np.random.default_rng(0)
    q, k, v, do = (rng.standard_normal((128, 32)).astype(np.float32) for _ in range(4))
    f = refattn.flash_forward(q, k, v, sram=512)
    fb = refattn.flash_backward(q, k, v, f.o, f.lse, do, sram=512)
    sb = refattn.standard_backward(q, k, v, f.o, do, sram=512)
    assert fb.traffic.total > sb.traffic.total  # the setting of the issue
    text = claims.recompute_sentence(fb.traffic.total, sb.traffic.total, fb.flops, sb.flops)
    assert "does not save traffic" in text and "saves traffic:" not in text
    assert f"{fb.traffic.total:,}" in text and f"{sb.traffic.total:,}" in text


def test_io_sentence_says_when_flash_moves_more():
    """issue 15: the IO page at d = 128, M = 1024 showed flash moving more beside "close to linear"."""
    pts = sweeps.n_sweep((128, 256), 128, 1024)
    assert pts[-1]["flash"]["total"] > pts[-1]["standard"]["total"]
    text = claims.sweep_sentence(pts, "N")
    assert "more HBM accesses than standard" in text
    assert f"{pts[-1]['flash']['total']:,}" in text


def test_engine_sentence_explains_an_unsplit_engine_that_wins():
    """issue 15: ViTCoD showed the unsplit sparse engine 4.7x faster than ViTCoD with no explanation."""
    text = claims.engines_sentence(47_000, 90_000, 10_000, "memory", {"denser": 0.2, "sparser": 0.3})
    assert "the split does not pay" in text and "4.7x faster" in text and "memory-bound" in text
    assert "split is 2.0x faster" in claims.engines_sentence(10_000, 90_000, 20_000, "compute", {})


# --------------------------------------------------------------------------- sliding window and GQA (issue 17)
def _window_keep(nq, nk, left, right):
    pos = np.arange(nq)[:, None] + (nk - nq)
    j = np.arange(nk)[None, :]
    return ((j >= pos - left) | (left < 0)) & ((j <= pos + right) | (right < 0))


@pytest.mark.parametrize("causal, window", [(True, (8, 0)), (False, (4, 6)), (True, (-1, 0))])
def test_window_skips_are_told_apart_from_causal_skips(causal, window):
    """Each tile's state after the run, against the masks: visited iff any key visible; skipped by the window
    iff causality alone would have kept some of it."""
    q, k, v = random_qkv(40, 8, seed=2)
    res = refattn.flash_forward(q, k, v, sram=512, causal=causal, window=window, trace=True)
    rows, cols, states, _ = playback.tile_states(res.trace, res.n_steps + 1, 40, 40, res.plan)
    by_causal = np.tril(np.ones((40, 40), bool)) if causal else np.ones((40, 40), bool)
    keep = by_causal & _window_keep(40, 40, *window)
    want = np.empty_like(states)
    for i in range(len(rows) - 1):
        for j in range(len(cols) - 1):
            tile = np.s_[rows[i]:rows[i + 1], cols[j]:cols[j + 1]]
            want[i, j] = DONE if keep[tile].any() else (SKIPPED_WINDOW if by_causal[tile].any() else SKIPPED)
    assert states.tolist() == want.tolist()
    counts = playback.tile_counts(res, 40, 40)
    assert counts["window_skipped"] == int((want == SKIPPED_WINDOW).sum()) > (0 if window[0] >= 0 else -1)
    assert counts["visited"] + counts["causal_skipped"] + counts["window_skipped"] == counts["total"] == states.size


def test_payload_carries_the_window_and_its_skips():
    q, k, v = random_qkv(40, 8, seed=2)
    res = refattn.flash_forward(q, k, v, sram=512, causal=True, window=(8, 0), trace=True)
    p = playback.payload(res, 40, 40, "flash")
    assert p["sliding_window"] == [8, 0] and p["window_edges"] == [-8, 0] and p["causal_offset"] == 0
    assert set(p["ev"]["skip"]) == {0, playback.SKIP_CAUSAL, playback.SKIP_WINDOW}
    skip_steps = {s: sk for s, sk in zip(p["ev"]["step"], p["ev"]["skip"]) if sk}
    for s, sk in skip_steps.items():
        why = "outside the window" if sk == playback.SKIP_WINDOW else "causal"
        assert f"skips 1 fully masked tile ({why})" in p["narration"][s - 1]
    plain = playback.payload(refattn.flash_forward(q, k, v, sram=512, trace=True), 40, 40, "flash")
    assert plain["sliding_window"] is None and plain["window_edges"] is None


def test_window_sentence_is_the_kernels_counts():
    q, k, v = random_qkv(64, 16, seed=0)
    res = refattn.flash_forward(q, k, v, sram=1024, causal=True, window=(16, 0), trace=True)
    dense = refattn.flash_forward(q, k, v, sram=1024, causal=True, count_only=True)
    kv = lambda r: r.traffic.reads["K"] + r.traffic.reads["V"]
    counts = playback.tile_counts(res, 64, 64)
    text = claims.window_sentence((16, 0), counts, kv(res), kv(dense), res.traffic.total, dense.traffic.total)
    assert kv(res) < kv(dense) and counts["window_skipped"] > 0
    assert text == (f"window (16, 0): {counts['visited']} of {counts['total']} tiles visited "
                    f"({counts['window_skipped']} skipped outside the window, {counts['causal_skipped']} by "
                    f"the causal mask); against the same kernel without the window, K/V reads "
                    f"{round(100 * kv(res) / kv(dense))} % of dense ({kv(res):,} vs {kv(dense):,} elements: "
                    f"{kv(dense) / kv(res):.1f}x fewer) and all HBM accesses {res.traffic.total:,} vs "
                    f"{dense.traffic.total:,} ({dense.traffic.total / res.traffic.total:.1f}x fewer).")
    same = claims.window_sentence((-1, 3), dict(counts, causal_skipped=0), 10, 10, 20, 30)
    assert same.startswith("window (unbounded, 3):") and "(10 vs 10 elements: the same)" in same


def test_gqa_sentence_follows_the_counted_reads():
    """FA1 reads each KV head once per group; FA2 once per query head: the sentence says what was counted."""
    q, k, v = random_qkv(32, 8, seed=0)
    heads = lambda x, h: np.ascontiguousarray(np.broadcast_to(x, (h,) + x.shape))
    assert claims.gqa_mapping(4, 2) == "query heads 0, 1 → KV head 0; 2, 3 → KV head 1"
    assert claims.gqa_sentence(4, 1, "fa1", 1, 4, 1, 4).startswith("GQA, 4 query heads on 1 KV head (")
    for variant in ("fa1", "fa2"):
        run = lambda hkv, variant=variant: refattn.flash_forward(
            heads(q, 4), heads(k, hkv), heads(v, hkv), sram=512, variant=variant, count_only=True,
            num_kv_heads=hkv if hkv < 4 else None).traffic
        g, mha = (r.reads["K"] + r.reads["V"] for r in (run(2), run(4)))
        text = claims.gqa_sentence(4, 2, variant, g, mha, 2 * 32 * 16, 4 * 32 * 16)
        assert text.startswith("GQA, 4 query heads on 2 KV heads (query heads 0, 1 → KV head 0;")
        assert f"K/V reads {g:,} vs {mha:,} with 4 KV heads (MHA)" in text and "2.0x fewer)" in text
        if variant == "fa1":
            assert g * 2 == mha and "reads each KV head once for its group of 2 query heads" in text
        else:
            assert g == mha and "saves no reads here" in text
