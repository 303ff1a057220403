"""PE arrays in motion (viz_app.pe_view): the arrays sent to the browser equal refattn's own cycle states."""

import numpy as np

from refattn.pe_array import simulate_gemm
from viz_app import pe_view, player


def test_gemm_frames_are_the_arrays_cycle_states():
    for dataflow in ("os", "ws", "is"):
        g = simulate_gemm(12, 10, 6, rows=4, cols=4, dataflow=dataflow)  # several folds, partial ones too
        p = pe_view.gemm_payload(g)
        assert p["shown"] == g.cycles == len(p["frames"]) and p["folds"] == g.folds > 1
        for c in (0, g.cycles // 2, g.cycles - 1):
            s, f = g.state_at(c), p["frames"][c]
            assert f["a"].count("1") == int(s.active.sum()) and f["md"] == s.macs_done and f["f"] == s.fold
        assert p["frames"][-1]["md"] == g.macs  # every MAC done by the last cycle
    assert len(pe_view.gemm_payload(g, max_cycles=5)["frames"]) == 5
    html = player.pe_player_html(p)
    assert "__PAYLOAD__" not in html and html.count("</script>") == 1


def test_engine_steps_are_the_kernels_states():
    from refattn.vitcod import vitcod_forward

    rng = np.random.default_rng(0)
    n = 24
    mask = rng.random((n, n)) < 0.3
    mask[:, :2] = True  # two global columns: work for the denser engine
    q, k, v = (rng.standard_normal((n, 8)).astype(np.float32) for _ in range(3))
    run = vitcod_forward(q, k, v, mask, trace=True)
    states = {s: vitcod_forward(q, k, v, mask, stop_after=s).state for s in range(1, run.n_steps + 1)}
    p = pe_view.engines_payload(states, run)
    assert [s["stage"] for s in p["steps"]] == [st.phase for st in states.values()]
    sddmm = p["steps"][1]
    assert sddmm["engine"] == states[2].arrays["line_engine"].tolist() and 0 in sddmm["engine"]
    assert p["steps"][-1]["hbm_reads"] == run.traffic.total_reads
    assert all(p["code"][s["lit"][0]].strip().startswith(("load", "S_G", "P =", "O_G", "O =")) for s in p["steps"])


def test_vitcod_pseudocode_line_follows_the_step_phase():
    from viz_app.pseudocode import VITCOD_CODE, vitcod_lit

    for stage in ("load", "SDDMM", "softmax", "SpMM", "store"):  # refattn.vitcod.loop.STAGES
        (i,) = vitcod_lit(stage)
        assert VITCOD_CODE[i][0] == stage
