"""Where the GPU index build spends its time (``python benchmarks/index_build_profile.py``).

H = 4, d = 128, bf16, vertical 1000 / slash 100, at N = 32k and 128k: do_bench median of the whole build
called from Python and replayed as a CUDA graph, one profiled build listing every kernel it launches with
its device time, and the Python functions that take the host's time (cProfile of 50 builds).
"""

import cProfile
import pstats

import torch
from torch.profiler import ProfilerActivity, profile
from triton.testing import do_bench

from gpu_optional.index_build import graphed_vertical_slash_index, vertical_slash_index


def main():
    for n in (32768, 131072):
        gen = torch.Generator(device="cuda").manual_seed(n)
        q, k = (torch.randn((1, 4, n, 128), generator=gen, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        build = lambda q=q, k=k: vertical_slash_index(q, k, 1000, 100, block=64)  # noqa: E731
        build()
        ms = do_bench(build, warmup=25, rep=100, return_mode="median")
        replay, _ = graphed_vertical_slash_index(q, k, 1000, 100, block=64)
        ms_graph = do_bench(replay, warmup=25, rep=100, return_mode="median")
        print(f"N={n}: build {ms:.3f} ms, as a CUDA graph {ms_graph:.3f} ms (medians)", flush=True)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            build()
            torch.cuda.synchronize()
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
