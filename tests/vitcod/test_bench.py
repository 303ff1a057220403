"""The bench section runs and reports the 36 DeiT-Tiny heads (numbers are checked in test_engines)."""

from refattn.bench import vitcod


def test_bench_vitcod_quick(capsys):
    tables = vitcod.run(quick=True)
    heads, layers, nbytes, network, synthetic = tables[:5]  # a 6th (real MiniLM masks) with the [real] extra
    assert len(heads.rows) == 36 and len(layers.rows) == 13 and nbytes.rows[-1][0] == "total"
    assert network.rows[0][3] == network.rows[3][3] == 9492  # faithful mode == their published total
    assert "recall" in capsys.readouterr().out
    if len(tables) == 6:  # the [real] extra is installed: one row per MiniLM layer, labelled
        from refattn.data.real import LABEL

        assert len(tables[5].rows) == 6 and any(LABEL in note for note in tables[5].notes)
