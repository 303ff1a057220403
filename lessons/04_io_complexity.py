"""Lesson 4: IO complexity. How HBM traffic scales with N and with the SRAM size M.

The FlashAttention paper (Theorem 2) counts HBM accesses, the element
transfers of lesson 3. Standard attention needs Theta(N d + N^2): it writes and
reads the N x N matrices S and P whatever the SRAM size. FlashAttention needs
Theta(N^2 d^2 / M): K and V are read once per query block, there are about
N / Br query blocks, and Br grows with M (Br is about M / (4 d)), so the traffic
falls as M grows. (Theta(f) means "grows like f, up to a constant factor".)

Proposition 3 of the paper says no exact attention algorithm can do
asymptotically better than N^2 d^2 / M for every M between d and N d: tiling is
optimal, up to constants. At the two ends: with M = N d everything fits and
the traffic is just reading Q, K, V and writing O (about 4 N d); with M close to
d the tiles are tiny and the re-reads dominate.

This lesson sweeps M and N with the counted kernels, checks the Theta(N^2 d^2/M)
shape exactly, and reproduces the paper's Figure 2 (GPT-2 medium attention on
an A100) on the simulated A100 preset. The sweeps run the kernels with
``count_only=True``: the same loops, loads and stores with the arithmetic
skipped, so the counts are exact and even a 64k-token problem takes under a
second (docs/contract.md).
"""

import time

import _course as c
import numpy as np

import refattn
from refattn.bench.dense import figure2
from refattn.bench.sweeps import count_run
from refattn.data import random_qkv

c.intro(__doc__, "IO complexity")

n, d = 512, 32
q, k, v = random_qkv(n, d, dtype=np.float32, seed=4)

c.say(f"""Step 1. Sweep the SRAM size M (elements) at N = {n}, d = {d}. Columns: FA2's query block Br and
number of query blocks Tr, the FA2 and standard totals (elements), and the K + V reads of FA2 scaled
by M / (N^2 d^2), the constant hidden in Theta(N^2 d^2 / M).""")
print(f"    {'M':>8} {'Br':>4} {'Tr':>4} {'FA2 total':>10} {'standard':>10} {'K+V reads * M/(N^2 d^2)':>24}")
rows = {}
for M in (512, 1024, 2048, 4096, 16384, 32768, 1_000_000):
    fa2 = refattn.flash_forward(q, k, v, sram=M, variant="fa2", count_only=True)
    std = refattn.standard_forward(q, k, v, sram=M, count_only=True)
    kv = fa2.traffic.of("K")[0] + fa2.traffic.of("V")[0]
    rows[M] = (fa2, std, kv)
    br, tr = fa2.plan.blocks["Br"], fa2.plan.tiles["Tr"]
    print(f"    {M:>8} {br:>4} {tr:>4} {fa2.traffic.total:>10} {std.traffic.total:>10} "
          f"{kv * M / (n * n * d * d):>24.3g}")
    c.claim(kv == 2 * fa2.plan.tiles["Tr"] * n * d,
            f"M = {M}: K and V are read exactly Tr = {fa2.plan.tiles['Tr']} times each")
full = refattn.flash_forward(q, k, v, sram=4096, variant="fa2")  # the same kernel, arithmetic included
c.claim(full.traffic == rows[4096][0].traffic and (full.flops, full.exps) == (rows[4096][0].flops, rows[4096][0].exps),
        "a full run at M = 4096 counts exactly what its count-only run counted (and also computes O)")
regular = [M for M in rows if rows[M][0].plan.blocks["Br"] * 4 * d == M]
c.show("sizes where Br = M/(4d) exactly (the paper's rule, not clipped)", regular)
c.claim(len(regular) >= 3 and all(rows[M][2] * M == 8 * n * n * d * d for M in regular),
        "there, K + V reads = 8 N^2 d^2 / M exactly: doubling M halves them (Theta(N^2 d^2 / M))")
big = rows[1_000_000][0]
c.claim(big.traffic.total == 4 * n * d + n,
        "with M large enough for one query block (Tr = 1) FA2 moves 4Nd + N: read Q, K, V once, write O and L")
c.claim(rows[512][0].traffic.total > rows[512][1].traffic.total,
        "with a tiny SRAM (M = 512, Br = 4) FA2 moves MORE than standard attention: the re-reads dominate")
c.claim(rows[32768][1].traffic.total > 10 * rows[32768][0].traffic.total,
        "with M = 32768 standard attention moves more than 10x what FA2 moves")

c.say("""Step 2. Sweep N at a fixed SRAM: the A100-like preset ("a100": 192 KB per SM, 2-byte elements,
so M = 98304 elements), d = 64. Both counts grow with N, but the ratio standard / FA2 grows too,
because FA2's N^2 term carries the small factor d^2/M.""")
ratios = []
for nn in (256, 512, 1024, 2048, 4096, 16384):
    fa2, std = count_run("fa2", nn, 64, "a100"), count_run("standard", nn, 64, "a100")
    ratios.append(std.traffic.total / fa2.traffic.total)
    c.show(f"N = {nn:5d}", f"standard {std.traffic.total:>9}, FA2 {fa2.traffic.total:>8} elements, "
           f"ratio {ratios[-1]:.1f}x")
c.claim(all(b > a for a, b in zip(ratios, ratios[1:])), "the standard / FA2 ratio grows with N on the a100 preset")
t0 = time.perf_counter()
huge = count_run("fa2", 65536, 128, "a100")
c.show("FA2 at N = 65536, d = 128 (count-only)", f"{huge.traffic.total:.3e} elements in {huge.n_steps} tile steps, "
       f"counted in {time.perf_counter() - t0:.2f} s")

c.say("""Step 3. The paper's Figure 2 (left): GPT-2 medium attention (N = 1024, d = 64, 16 heads, batch 64)
forward and backward on an A100. refattn runs one head with the real kernels, multiplies the counts
by 16 x 64 (heads are independent, so this is exact) and converts traffic and FLOPs to a simulated
time with a roofline: time = max(bytes / HBM bandwidth, FLOPs / peak FLOP rate). The paper's
measured numbers are printed beside ours. The backward pass (lesson 5) recomputes P, so
FlashAttention does MORE arithmetic, yet moves far fewer bytes and so runs faster.""")
table = figure2(False)
(_, std_gb, _, std_ms, _, std_gf, _, _), (_, fl_gb, _, fl_ms, _, fl_gf, _, _) = table.rows
c.claim(std_gb / fl_gb > 4, f"FlashAttention moves {std_gb / fl_gb:.1f}x fewer bytes (paper 9.2x; its baseline "
        "also runs mask and dropout kernels)")
c.claim(fl_gf > std_gf, f"FlashAttention counts more FLOPs ({fl_gf:.0f} vs {std_gf:.0f} G; paper 75.2 vs 66.6)")
c.claim(fl_ms < std_ms, f"yet its simulated time is lower: {fl_ms:.1f} ms vs {std_ms:.1f} ms (paper 7.3 vs 41.7)")
c.say("""The FLOP columns differ from the paper in absolute terms: refattn counts 2 FLOPs per multiply-add
of every matrix product, the paper does not state its convention. Compare the ratios.""")
c.done(4)
