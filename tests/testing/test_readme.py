"""The README's "Test your own kernel" examples run as written (with a smaller example budget)."""

import functools
import re
import sys
from pathlib import Path

import refattn.testing
from refattn.cli import main

README = Path(__file__).resolve().parents[2] / "README.md"


def _blocks():
    text = README.read_text()
    section = text[text.index("## Test your own kernel"):]
    section = section[:section.index("\n## ", 5)]
    return re.findall(r"```python\n(.*?)```", section, re.S), re.findall(r"```\n(refattn conform .*?)\n```", section)


def test_numpy_example_conforms_from_the_shell(tmp_path, monkeypatch, capsys):
    (numpy_block, _), (command,) = _blocks()
    (tmp_path / "mykernel.py").write_text(numpy_block)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "mykernel", raising=False)
    argv = command.split()[1:2] + [command.split()[2]] + ["--capabilities", '{"dtypes": ["float32"]}']
    assert argv[:2] == ["conform", "mykernel:attention"] and "--capabilities '{\"dtypes\": [\"float32\"]}'" in command
    assert main(argv + ["--max-examples", "25"]) == 0, capsys.readouterr().out
    assert "returns            o\n" in capsys.readouterr().out


def test_torch_example_conforms(monkeypatch, capsys):
    from tests.optional import require

    require("torch")
    (_, torch_block), _ = _blocks()
    monkeypatch.setattr(refattn.testing, "check_attention",
                        functools.partial(refattn.testing.check_attention, max_examples=15))
    exec(compile(torch_block, "README torch example", "exec"), {})
    assert capsys.readouterr().out.startswith("PASS torch(sdpa): 15 examples")
