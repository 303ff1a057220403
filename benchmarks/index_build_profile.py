"""Where the GPU index build spends its time (``python benchmarks/index_build_profile.py``).

H = 4, d = 128, bf16, at N = 32k (vertical 1000 / slash 100) and 128k (1000 / 100 and 4000 / 100): do_bench
median of the whole build as shipped (radix select top-k, key tiles per probabilities program), called from
Python and replayed as a CUDA graph, beside the previous top-k (torch.topk + sort, ``TORCH_TOPK``) and the
previous probabilities kernel (one key tile per program), and the sparse kernel on the index set built (the
build's share of build + sparse is the issue's goal). Before timing, the radix select's index set is checked
equal to torch.topk's at every size. Then one profiled build per size listing every kernel with its device
time, and the Python functions that take the host's time (cProfile of 50 builds at 32k).
"""

import cProfile
import pstats

import torch
from torch.profiler import ProfilerActivity, profile
from triton.testing import do_bench

from gpu_optional import index_build
from gpu_optional.index_build import graphed_vertical_slash_index, vertical_slash_index
from gpu_optional.sparse import sparse_attention

CASES = [(32768, 1000, 100), (131072, 1000, 100), (131072, 4000, 100)]
#: (name, TORCH_TOPK, EST_PROGRAMS): the shipped build first
VARIANTS = [("shipped", False, 512), ("torch top-k", True, 512), ("1 tile/prog", False, 1 << 30)]


def _ms(fn):
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def _set(torch_topk, est_programs):
    index_build.TORCH_TOPK, index_build.EST_PROGRAMS = torch_topk, est_programs


def _same_index(a, b):
    ia, ib = a.index_set, b.index_set
    return all(torch.equal(x, y) for x, y in ((a.columns, b.columns), (a.offsets, b.offsets),
                                              (ia.block_offsets, ib.block_offsets),
                                              (ia.column_offsets, ib.column_offsets)))


def main():
    print(f"{'N':>7} {'vertical':>8} {'slash':>5} {'variant':>12} {'build ms':>8} {'graph ms':>8} {'sparse ms':>9} "
          f"{'share':>6} {'share (graph)':>13}", flush=True)
    rows = []
    for n, vs, ss in CASES:
        gen = torch.Generator(device="cuda").manual_seed(n)
        q, k, v = (torch.randn((1, 4, n, 128), generator=gen, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        build = lambda q=q, k=k, vs=vs, ss=ss: vertical_slash_index(q, k, vs, ss, block=64)  # noqa: E731
        _set(True, 512)
        want = build()
        _set(False, 512)
        got = build()
        torch.cuda.synchronize()
        print(f"N={n} {vs}/{ss}: radix select index set == torch.topk's: {_same_index(got, want)}", flush=True)
        ms_sparse = _ms(lambda q=q, k=k, v=v, iset=got.index_set: sparse_attention(q, k, v, iset, causal=True,
                                                                                   check_finite=False))
        for name, torch_topk, est_programs in VARIANTS:
            _set(torch_topk, est_programs)
            ms = _ms(build)
            replay, _ = graphed_vertical_slash_index(q, k, vs, ss, block=64)
            ms_graph = _ms(replay)
            line = (f"{n:>7} {vs:>8} {ss:>5} {name:>12} {ms:8.3f} {ms_graph:8.3f} {ms_sparse:9.3f} "
                    f"{ms / (ms + ms_sparse):6.1%} {ms_graph / (ms_graph + ms_sparse):13.1%}")
            rows.append(line)
            print(line, flush=True)
        _set(False, 512)
        if vs != 1000:
            continue
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            build()
            torch.cuda.synchronize()
        print(f"N={n}, vertical {vs}, slash {ss}: kernels of one build (shipped)")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=16, max_name_column_width=60))
        if n == 32768:
            torch.cuda.synchronize()
            pr = cProfile.Profile()
            pr.enable()
            for _ in range(50):
                build()
            torch.cuda.synchronize()
            pr.disable()
            pstats.Stats(pr).sort_stats("tottime").print_stats(10)
    print("\nsummary (H = 4, d = 128, bf16; ms, do_bench median)")
    print(f"{'N':>7} {'vertical':>8} {'slash':>5} {'variant':>12} {'build ms':>8} {'graph ms':>8} {'sparse ms':>9} "
          f"{'share':>6} {'share (graph)':>13}")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
