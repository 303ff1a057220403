"""`refattn bench vitcod`: the tables come from the counted kernel and their sentences agree with their numbers."""

from refattn.bench import vitcod
from refattn.vitcod import simulate_layer


def test_bench_vitcod_quick(capsys):
    tables = vitcod.run(quick=True)
    names = [t.name for t in tables]
    hw_t, designs_t, layers_t, reads_t, sweep_t, synth_t = tables[:6]
    assert any(r[0] == "buffer_read_bytes" and "refattn assumption" in r[2] for r in hw_t.rows)
    assert [r[0] for r in designs_t.rows] == ["dense", "unsplit sparse", "ViTCoD split", "split + auto-encoder"]
    assert len(layers_t.rows) == 12 and len(synth_t.rows) == 3
    from refattn.data.vit import load_deit_tiny_mask

    keep, _ = load_deit_tiny_mask()
    assert layers_t.rows[2][4] == simulate_layer(keep[2], threshold=50).total  # the split column, layer 2
    split, unsplit = designs_t.rows[2][1], designs_t.rows[1][1]
    faster = "the split is" if split < unsplit else "the unsplit sparse engine is"
    assert any(n.startswith(faster) for n in designs_t.notes)  # the sentence follows the numbers
    for port in ("1 bank", "banked"):  # the sweep's verdict lists exactly the widths where the split wins
        rows = [r for r in sweep_t.rows if r[1] == port]
        wins = [r[0] for r in rows if r[4] < r[3]]
        note = next(n for n in sweep_t.notes if n.startswith(port + ":"))
        assert f"W = {wins or 'no width'}," in note
    assert any("public model" in r[0] and r[3] == 9492 for r in tables[-2].rows)  # the faithful mode stays
    out = capsys.readouterr().out
    assert "recall" in out
    if not any("MiniLM" in n for n in names):  # no [real] extra: one clear line says so
        assert "real MiniLM masks skipped" in out
