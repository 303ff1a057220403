"""The conformance kit's detection table: each planted bug, run N times at the kit's defaults, unseeded.

    python tools/kit_detection.py                 # 20 runs of every kernel, 2 processes
    python tools/kit_detection.py --runs 5 --jobs 1 --only good inter_tile_rescale

The kernels are the tiled NumPy kernels of ``tests/testing/planted.py``: the
correct one at tile widths 16, 32, 64, 128, every planted bug at its tile
width, and the tile-sensitive bugs (inter-tile rescale, last partial tile) at
every width. Each run is ``check_attention(kernel)`` with nothing but the
defaults (fresh hypothesis randomness every run). The table prints, per
kernel, how many runs ended as expected (FAIL for a bug, PASS for a correct
kernel), the failure kinds seen, the mean and the longest seconds per run, and
the number of examples of the passing runs. It is a report, not a test: the
test suite keeps a lean version (tests/testing/test_planted.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def kernels():
    from tests.testing.planted import ALL_TILES, KERNELS

    found = dict(KERNELS)
    found.update(ALL_TILES)
    return found


def one_run(name: str):
    from refattn.testing import check_attention

    fn = kernels()[name]
    start = time.perf_counter()
    report = check_attention(fn, raise_on_failure=False)
    seconds = time.perf_counter() - start
    f = report.failure
    kind = "pass" if f is None else f.kind + (f"/{f.convention}" if f.convention else "") + (
        f"/{f.output}" if f.output else "")
    return name, report.passed, kind, seconds, report.examples


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="unseeded runs per kernel (default 20)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--only", nargs="*", default=None, help="kernel names or prefixes to run")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.jobs < 1:
        parser.error("--runs and --jobs must be >= 1")
    names = sorted(kernels(), key=lambda n: (not n.startswith("good"), n))
    if args.only:
        names = [n for n in names if any(n.startswith(o) for o in args.only)]
    tasks = [n for n in names for _ in range(args.runs)]
    results: dict[str, list] = {n: [] for n in names}
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for name, passed, kind, seconds, examples in pool.map(one_run, tasks):
            results[name].append((passed, kind, seconds, examples))
    wall = time.perf_counter() - start

    print(f"kit detection table: {args.runs} unseeded runs per kernel at the kit's defaults, {args.jobs} processes")
    print(f"{'kernel':<28} {'expected':<8} {'as expected':>11} {'mean s':>7} {'max s':>6} {'examples':>8}  outcomes")
    for name in names:
        rows = results[name]
        expect_pass = name.startswith("good")
        ok = sum(passed == expect_pass for passed, *_ in rows)
        mean = sum(r[2] for r in rows) / len(rows)
        longest = max(r[2] for r in rows)
        examples = Counter(r[3] for r in rows if r[0])
        ex = ", ".join(str(e) for e in sorted(examples)) or "-"
        kinds = ", ".join(f"{k} x{n}" for k, n in Counter(r[1] for r in rows).most_common())
        print(f"{name:<28} {'PASS' if expect_pass else 'FAIL':<8} {ok:>5} of {len(rows):<3} {mean:>7.1f} "
              f"{longest:>6.1f} {ex:>8}  {kinds}")
    total = sum(len(r) for r in results.values())
    print(f"{total} runs in {wall:.0f} s wall ({wall * args.jobs / total:.1f} s per run per process)")
    return 0 if all(sum(p == n.startswith("good") for p, *_ in r) == len(r) for n, r in results.items()) else 1


if __name__ == "__main__":
    sys.exit(main())
