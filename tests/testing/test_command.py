"""``refattn conform package.module:function``."""

import json

from refattn.cli import main


def test_conform_passes_a_good_kernel(capsys):
    assert main(["conform", "tests.testing.planted:good", "--max-examples", "15"]) == 0
    assert capsys.readouterr().out.startswith("PASS tests.testing.planted:good: 15 examples")


def test_conform_fails_a_broken_kernel_with_the_report(capsys):
    assert main(["conform", "tests.testing.planted:no_max_subtraction"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("FAIL tests.testing.planted:no_max_subtraction") and "minimal example:" in out


def test_conform_takes_capabilities_as_json(capsys):
    target = "tests.testing.planted:nan_on_masked_rows"
    assert main(["conform", target, "--max-examples", "40"]) == 1
    assert "convention difference, fully masked rows" in capsys.readouterr().out
    caps = json.dumps({"fully_masked_rows": "nan", "dtypes": ["float64"]})
    assert main(["conform", target, "--max-examples", "15", "--capabilities", caps]) == 0
    assert capsys.readouterr().out.startswith(f"PASS {target}: 15 examples")


def test_conform_usage_errors(capsys):
    assert main(["conform", "no_colon_here"]) == 2
    assert "package.module:function" in capsys.readouterr().err
    assert main(["conform", "tests.testing.planted:missing"]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["conform", "tests.testing.planted:good", "--capabilities", '{"flash": 1}']) == 2
    assert "unknown capabilities ['flash']" in capsys.readouterr().err


def test_pytest_fixture(attention_conformance):
    import pytest

    from refattn.testing import ConformanceError
    from tests.testing.planted import BROKEN, good

    assert attention_conformance(good, max_examples=10).examples == 10
    with pytest.raises(ConformanceError, match="FAIL tiled_attention\\[drop_last_partial_block\\]"):
        attention_conformance(BROKEN["drop_last_partial_block"])


def test_conform_uses_a_functions_declared_capabilities(capsys):
    from tests.optional import require

    require("torch")
    # torch_sdpa carries TORCH_SDPA_CAPABILITIES; overriding causal with bottom_right names the difference.
    assert main(["conform", "refattn.testing:torch_sdpa", "--max-examples", "15"]) == 0
    capsys.readouterr()
    assert main(["conform", "refattn.testing:torch_sdpa", "--capabilities",
                 '{"causal": ["bottom_right"], "backward": false}']) == 1
    assert "convention difference, causal alignment" in capsys.readouterr().out
