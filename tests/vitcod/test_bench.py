"""The bench section runs and reports the 36 DeiT-Tiny heads (numbers are checked in test_engines)."""

from refattn.bench import vitcod


def test_bench_vitcod_quick(capsys):
    tables = vitcod.run(quick=True)
    heads, layers, nbytes, network, synthetic = tables
    assert len(heads.rows) == 36 and len(layers.rows) == 13 and nbytes.rows[-1][0] == "total"
    assert network.rows[0][3] == network.rows[3][3] == 9492  # faithful mode == their published total
    assert "recall" in capsys.readouterr().out
