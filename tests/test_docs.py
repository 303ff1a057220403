"""The project cites only what it ships, and its kernel modules do not import each other."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("refattn", "viz_app", "lessons", "tests", "gpu_optional") for p in (ROOT / d).rglob("*.py")]


def test_no_citation_points_outside_the_repository():
    outside = re.compile("(ALGORITHMS|DESIGN)" + r"\.md")  # the design notes the project does not ship
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in SOURCES
            for i, line in enumerate(p.read_text().splitlines(), 1) if outside.search(line)]
    assert hits == []


def test_every_cited_doc_exists():
    cited = {m for p in SOURCES for m in re.findall(r"docs/([\w.-]+\.md)", p.read_text())}
    assert cited >= {"algorithms.md", "design.md", "contract.md"}
    assert all((ROOT / "docs" / name).is_file() for name in cited), cited


def test_kernel_modules_form_no_import_cycle():
    kernels = ROOT / "refattn" / "kernels"
    graph = {}
    for p in kernels.glob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
        graph[p.stem] = {n.rsplit(".", 1)[1] for n in names if n.startswith("refattn.kernels.")}
    algorithms = {"flash", "flash_backward", "standard", "sparse"}
    for name in algorithms:  # a kernel module imports only the shared modules, never another kernel
        assert graph[name] <= {"common", "contract", "variant_args"}, (name, graph[name])
    done, active = set(), set()

    def visit(n):
        assert n not in active, f"import cycle through refattn.kernels.{n}"
        if n not in done:
            active.add(n)
            for m in graph.get(n, ()):
                visit(m)
            active.discard(n)
            done.add(n)

    for n in graph:
        visit(n)
