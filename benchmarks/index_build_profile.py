"""Where the GPU index build spends its time (``python benchmarks/index_build_profile.py``).

H = 4, d = 128, bf16, at N = 32k (vertical 1000 / slash 100) and 128k (1000 / 100 and 4000 / 100): do_bench
median of the whole build called from Python and replayed as a CUDA graph, with the slash scores summed in
the probabilities kernel (``FUSED_SLASH``, the default) or from the written estimate, and the top-k by
torch.topk (the default) or by the Triton radix select (``TRITON_TOPK``), beside the sparse kernel on the
index set built (the build's share of build + sparse is the issue's goal); one profiled build
listing every kernel it launches with its device time; the Python functions that take the host's time
(cProfile of 50 builds at 32k).
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


def _ms(fn):
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def _check_kernels():
    """A small build; if tl.histogram or tl.gather fail to compile here, fall back (and say so)."""
    q = torch.randn((1, 4, 4096, 128), device="cuda", dtype=torch.bfloat16)
    for hist, fused in ((True, True), (True, False), (False, True), (False, False)):
        index_build.SELECT_HISTOGRAM, index_build.FUSED_SLASH, index_build.TRITON_TOPK = hist, fused, True
        try:
            vertical_slash_index(q, q, 1000, 100, block=64)
            break
        except Exception as exc:  # noqa: BLE001 (report and fall back)
            print(f"build failed with SELECT_HISTOGRAM={hist}, FUSED_SLASH={fused}: {type(exc).__name__}: "
                  f"{str(exc)[:300]}", flush=True)
    index_build.TRITON_TOPK = False
    print(f"SELECT_HISTOGRAM={index_build.SELECT_HISTOGRAM}, FUSED_SLASH={index_build.FUSED_SLASH}", flush=True)


def main():
    _check_kernels()
    fused_ok = index_build.FUSED_SLASH
    print(f"{'N':>7} {'vertical':>8} {'slash':>5} {'fused':>5} {'top-k':>6} {'build ms':>8} {'graph ms':>8} "
          f"{'sparse ms':>9} {'share':>6} {'share (graph)':>13}", flush=True)
    for n, vs, ss in CASES:
        gen = torch.Generator(device="cuda").manual_seed(n)
        q, k, v = (torch.randn((1, 4, n, 128), generator=gen, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        for fused, triton_topk in ((True, False), (False, False), (True, True)) if fused_ok else ((False, False),):
            index_build.FUSED_SLASH, index_build.TRITON_TOPK = fused, triton_topk
            build = lambda q=q, k=k, vs=vs, ss=ss: vertical_slash_index(q, k, vs, ss, block=64)  # noqa: E731
            iset = build().index_set
            ms = _ms(build)
            replay, _ = graphed_vertical_slash_index(q, k, vs, ss, block=64)
            ms_graph = _ms(replay)
            ms_sparse = _ms(lambda q=q, k=k, v=v, iset=iset: sparse_attention(q, k, v, iset, causal=True,
                                                                               check_finite=False))
            topk = "triton" if triton_topk else "torch"
            print(f"{n:>7} {vs:>8} {ss:>5} {str(fused):>5} {topk:>6} {ms:8.3f} {ms_graph:8.3f} {ms_sparse:9.3f} "
                  f"{ms / (ms + ms_sparse):6.1%} {ms_graph / (ms_graph + ms_sparse):13.1%}", flush=True)
        index_build.FUSED_SLASH, index_build.TRITON_TOPK = fused_ok, False
        if vs != 1000:
            continue
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            build()
            torch.cuda.synchronize()
        print(f"N={n}, vertical {vs}, slash {ss}: kernels of one build")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))
        if n == 32768:
            torch.cuda.synchronize()
            pr = cProfile.Profile()
            pr.enable()
            for _ in range(50):
                build()
            torch.cuda.synchronize()
            pr.disable()
            pstats.Stats(pr).sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main()
