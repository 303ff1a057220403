"""``refattn conform package.module:function``."""

import json
import textwrap

from refattn.cli import main


def test_conform_passes_a_good_kernel(capsys):
    assert main(["conform", "tests.testing.planted:good", "--max-examples", "15"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("PASS tests.testing.planted:good: 15 examples")
    assert "verdicts on the same draws" in out and "semantics established" in out


def test_conform_fails_a_broken_kernel_with_the_report(capsys):
    assert main(["conform", "tests.testing.planted:inter_tile_rescale"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("FAIL tests.testing.planted:inter_tile_rescale") and "minimal example:" in out


def test_conform_takes_capabilities_as_json(capsys):
    target = "tests.testing.planted:nan_rows"
    assert main(["conform", target, "--max-examples", "60", "--seed", "1"]) == 1
    assert "convention difference, fully masked rows" in capsys.readouterr().out
    caps = json.dumps({"fully_masked_rows": "nan", "dtypes": ["float64"]})
    assert main(["conform", target, "--max-examples", "15", "--capabilities", caps]) == 0
    assert capsys.readouterr().out.startswith(f"PASS {target}: 15 examples")


def test_conform_usage_errors(capsys):
    cases = [
        (["no_colon_here"], "target must look like package.module:function"),
        (["tests.testing.planted:missing"], "tests.testing.planted has no attribute 'missing'"),
        (["no_such_module_xyz:fn"], "cannot import 'no_such_module_xyz'"),
        (["tests.testing.planted:good", "--capabilities", '{"flash": 1}'],
         "--capabilities: unknown capabilities ['flash']"),
        (["tests.testing.planted:good", "--capabilities", '{"lse": false,}'],
         "--capabilities is not valid JSON (Expecting property name enclosed in double quotes at column 15)"),
        (["tests.testing.planted:good", "--capabilities", '["lse"]'], "--capabilities must be a JSON object"),
        (["tests.testing.planted:good", "--capabilities", '{"dtypes": ["int8"]}'],
         "--capabilities: Capabilities.dtypes: unknown ['int8']"),
        (["tests.testing.planted:good", "--max-examples", "0"], "--max-examples must be at least 1, got 0"),
    ]
    for argv, message in cases:
        assert main(["conform"] + argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("refattn conform: ") and message in err, (argv, err)


def test_conform_imports_from_the_current_directory(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_kernel_i12.py").write_text(textwrap.dedent("""
        import numpy as np

        def attention(q, k, v, *, causal, scale, mask):   # o only, like torch's SDPA
            from refattn.reference import attention as ref
            return ref(q, k, v, causal=causal, scale=scale, mask=mask)[0].astype(q.dtype)

        def broken_caps(q, k, v, **kw):
            return v
        broken_caps.capabilities = {"max_n": 0}
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", str(tmp_path))])
    assert main(["conform", "my_kernel_i12:attention", "--max-examples", "10"]) == 0
    assert "returns            o\n" in capsys.readouterr().out
    assert main(["conform", "my_kernel_i12:broken_caps"]) == 2
    assert "my_kernel_i12:broken_caps.capabilities: Capabilities: need 1 <= min_n <= max_n" in capsys.readouterr().err


def test_pytest_fixture(attention_conformance):
    import pytest

    from refattn.testing import ConformanceError
    from tests.testing.planted import BROKEN, good

    assert attention_conformance(good, max_examples=10).examples == 10
    with pytest.raises(ConformanceError, match="FAIL last_partial_tile\\[64\\]"):
        attention_conformance(BROKEN["last_partial_tile"])


def test_conform_uses_a_functions_declared_capabilities(capsys):
    from tests.optional import require

    require("torch")
    # torch_sdpa carries TORCH_SDPA_CAPABILITIES; overriding causal with bottom_right names the difference.
    assert main(["conform", "refattn.testing:torch_sdpa", "--max-examples", "15"]) == 0
    capsys.readouterr()
    assert main(["conform", "refattn.testing:torch_sdpa", "--capabilities",
                 '{"causal": ["bottom_right"], "backward": false}']) == 1
    assert "convention difference, causal alignment" in capsys.readouterr().out
