"""The ``refattn`` command: ``refattn app | lesson N | bench | check | warmup | conform``.

Each subcommand imports its module only when run, so ``refattn --help`` is fast.
``refattn app`` replaces its own process with Streamlit's (``os.execv``), so
stopping it (Ctrl-C, ``kill PID``) stops the server.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _cmd_app(args) -> int:
    try:
        import viz_app
    except ImportError:
        print("the app needs the [app] extra: pip install -e '.[app]'", file=sys.stderr)
        return 2
    app = Path(viz_app.__file__).parent / "app.py"
    cmd = [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(args.port),
           "--server.address", args.address, "--browser.gatherUsageStats", "false"]
    if args.headless:
        cmd += ["--server.headless", "true"]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, cmd)  # the server takes this process's place (and PID): no child left behind


def lesson_paths() -> dict[int, Path]:
    """{number: path} of the lessons in the project's ``lessons/`` folder."""
    folder = PROJECT_ROOT / "lessons"
    found = {}
    for p in sorted(folder.glob("[0-9][0-9]_*.py")):
        found[int(p.name[:2])] = p
    return found


def _cmd_lesson(args) -> int:
    lessons = lesson_paths()
    if args.number is None:
        for n, p in lessons.items():
            print(f"{n:2d}  {p.name}")
        return 0
    if args.number not in lessons:
        print(f"no lesson {args.number}; lessons are {sorted(lessons)}", file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, str(lessons[args.number])])


def _cmd_bench(args) -> int:
    from refattn.bench import run_sections

    if args.gpu:
        missing = [m for m in ("torch", "triton") if importlib.util.find_spec(m) is None]
        if missing:
            print(f"refattn bench --gpu needs {' and '.join(missing)} (the [gpu] extra, on a CUDA machine): "
                  "not run", file=sys.stderr)
            return 2
        return subprocess.call([sys.executable, "-m", "gpu_optional.bench"] + (["--quick"] if args.quick else []))
    return run_sections(args.section, quick=args.quick, csv=args.csv)


def _cmd_check(args) -> int:
    return importlib.import_module("refattn.selfcheck").main(quick=args.quick)


def _cmd_warmup(args) -> int:
    return importlib.import_module("refattn.warmup").main()


def _cmd_conform(args) -> int:
    return importlib.import_module("refattn.testing.command").main(args)


def build_parser() -> argparse.ArgumentParser:
    from refattn.bench import SECTIONS

    parser = argparse.ArgumentParser(prog="refattn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("app", help="open the visualiser in the browser (Streamlit)")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--address", default="127.0.0.1")
    p.add_argument("--headless", action="store_true", help="do not open a browser window")
    p.set_defaults(func=_cmd_app)

    p = sub.add_parser("lesson", help="run lesson N (no N: list them)")
    p.add_argument("number", type=int, nargs="?")
    p.set_defaults(func=_cmd_lesson)

    p = sub.add_parser("bench", help="benchmarks: wall time and simulated traffic, printed as tables")
    p.add_argument("section", nargs="*",
                   help=f"sections to run (default all): {', '.join(SECTIONS)}")
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke test")
    p.add_argument("--csv", metavar="DIR", help="also write each table as CSV into DIR")
    p.add_argument("--gpu", action="store_true", help="run the Triton benchmark (python -m gpu_optional.bench)")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("check", help="quick self-test: kernels against the float64 reference")
    p.add_argument("--quick", action="store_true")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("warmup", help="compile every kernel once (Numba caches them), so later runs start fast")
    p.set_defaults(func=_cmd_warmup)

    p = sub.add_parser("conform", help="property-test an attention function: refattn conform pkg.mod:fn")
    p.add_argument("target", help="package.module:function")
    p.add_argument("--max-examples", type=int, default=None, help="examples to draw (default 100)")
    p.add_argument("--capabilities", default=None, help="JSON object of capabilities (see refattn.testing)")
    p.add_argument("--seed", type=int, default=None, help="fix hypothesis's random choices (default: fresh)")
    p.set_defaults(func=_cmd_conform)
    for p in sub.choices.values():  # each subcommand knows its parser, for its own usage message
        p.set_defaults(subparser=p)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # e.g. `refattn bench --quik`: the subcommand's usage, not the top-level one
        args.subparser.error(f"unrecognized arguments: {' '.join(extra)}")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
