"""Lesson 3: tiling. FlashAttention's forward on a simulated memory hierarchy.

A GPU has two memories that matter here. HBM (high-bandwidth memory) is large
(tens of GB) but slow to reach; SRAM (on-chip memory, per streaming
multiprocessor) is tiny (about 200 KB) but an order of magnitude faster.
Arithmetic happens on data in SRAM, so every matrix is *loaded* from HBM and
results are *stored* back. For attention the time goes mostly into these
transfers, not into the multiply-adds.

refattn simulates this. The SRAM holds M elements (M is counted in elements,
as in the FlashAttention paper). Every kernel moves data only through counted
loads and stores, so `result.traffic` is what the kernel really moved,
per tensor, in elements. `result.peak_sram` is the most it held on chip at once.

Standard attention (lesson 1) writes S and P to HBM and reads them back: N^2
traffic. FlashAttention cuts Q into blocks of Br rows and K, V into blocks of
Bc rows, so that one tile of scores (Br x Bc) fits in SRAM, and combines the
tiles with the online softmax of lesson 2. S and P never reach HBM.

There are two loop orders. FA1 (FlashAttention, Algorithm 1) loops over key
blocks outside and query blocks inside; it must read and write the partial
output O and the statistics m, l of every query block once per key block.
FA2 (FlashAttention-2) swaps the loops: each query block stays on chip while
all key blocks stream past, so O is written once. The kernels' docstrings
(refattn/kernels/flash.py) give the traffic of each as a closed form; this
lesson checks the counters against those formulas.
"""

import _course as c
import numpy as np

import refattn
from refattn.data import random_qkv
from refattn.reference import attention

c.intro(__doc__, "FlashAttention forward")

n, d, M = 512, 32, 4096
q, k, v = random_qkv(n, d, dtype=np.float32, seed=3)
o_ref, _ = attention(q, k, v)

c.say(f"""Step 1. Run three kernels on N = {n} tokens, d = {d}, with an SRAM of M = {M} elements (float32
arithmetic). Each must give the reference output; the float32 tolerance is 1e-5.""")
std = refattn.standard_forward(q, k, v, sram=M)
fa1 = refattn.flash_forward(q, k, v, sram=M, variant="fa1")
fa2 = refattn.flash_forward(q, k, v, sram=M, variant="fa2")
for name, r in (("standard", std), ("FA1", fa1), ("FA2", fa2)):
    err = float(np.abs(r.o - o_ref).max())
    c.show(f"{name:8s} largest error vs float64 reference", f"{err:.1e}; peak SRAM {r.peak_sram} of M = {M}")
    c.claim(err < 1e-5 and r.peak_sram <= M, f"{name} is exact to float32 rounding and fits in M")

c.say("""Step 2. The block sizes. FA1 uses the paper's rule Bc = ceil(M/(4d)), Br = min(Bc, d); FA2 swaps
the roles (Br large, because its traffic falls with Br). Each kernel then shrinks its blocks until
its on-chip footprint fits M. Tr = ceil(N/Br) and Tc = ceil(N/Bc) are the numbers of query and key
blocks.""")
for name, r in (("FA1", fa1), ("FA2", fa2)):
    p = r.plan
    c.show(name, f"Br = {p.blocks['Br']}, Bc = {p.blocks['Bc']}, Tr = {p.tiles['Tr']}, Tc = {p.tiles['Tc']}, "
                 f"footprint {p.on_chip} elements")

c.say("""Step 3. The counted HBM traffic, in elements, per tensor (reads r, writes w). S and P appear
only for the standard kernel.""")
print(f"    {'tensor':>7} {'standard':>17} {'FA1':>17} {'FA2':>17}")
names = [t for t, _, _ in std.traffic.rows()] + [t for t, _, _ in fa1.traffic.rows() if t not in dict(
    (x, 0) for x, _, _ in std.traffic.rows())]
for t in names:
    cells = [f"r{r.traffic.of(t)[0]:>7} w{r.traffic.of(t)[1]:>7}" for r in (std, fa1, fa2)]
    print(f"    {t:>7} " + " ".join(f"{x:>17}" for x in cells))
print(f"    {'total':>7} " + " ".join(f"{r.traffic.total:>17}" for r in (std, fa1, fa2)))
c.claim("S" in std.traffic.writes and "S" not in fa2.traffic.writes and "P" not in fa2.traffic.writes,
        "only the standard kernel writes S and P to HBM")

c.say("""Step 4. The closed forms from the kernels' docstrings (no causal mask, Nq = Nk = N, dv = d):
standard 4N^2 + 4Nd + N (S written, read, P written, read; Q, K, V read, O written; the lse L);
FA2 Nd + Tr N 2d + Nd + N (Q once, K and V once per query block, O and L once);
FA1 2Nd + Tc N (3d + 4) + N(d + 5) (K and V once; Q, O read and O, l, m read and written per key block).""")
tr, tc = fa2.plan.tiles["Tr"], fa1.plan.tiles["Tc"]
passes = std.plan.details["passes"]  # (rows R, inner C) per pass
t1 = -(-n // passes["F1"][0])  # query-row blocks of pass F1
t3 = -(-n // passes["F3"][0])
c.show("standard kernel's passes F1 and F3 use row blocks of", f"{passes['F1'][0]} rows: T1 = {t1}, T3 = {t3}")
c.claim(std.plan.details["softmax"] == "whole rows", "pass F2 (softmax) holds whole rows, so it reads S once")
closed = {
    "standard": 4 * n * n + n * d * (1 + t1 + t3 + 1) + n,
    "FA2": n * d + tr * n * 2 * d + n * d + n,
    "FA1": n * 2 * d + tc * n * (d + 2 * d + 4) + n * (d + 5),
}
for name, r in (("standard", std), ("FA1", fa1), ("FA2", fa2)):
    c.show(f"{name:8s} counted {r.traffic.total:>8} elements, closed form", closed[name])
    c.claim(r.traffic.total == closed[name], f"{name}: the counted traffic equals its closed form exactly")

c.say(f"""Step 5. What the numbers mean. FA2 reads K and V Tr = {tr} times and everything else once; FA1
re-reads and re-writes O and the statistics Tc = {tc} times, which is why FA2 moves less. Both
avoid the 4 N^2 term of standard attention.""")
c.show("standard / FA2 traffic", f"{std.traffic.total / fa2.traffic.total:.2f}x")
c.show("FA1 / FA2 traffic", f"{fa1.traffic.total / fa2.traffic.total:.2f}x")
c.claim(fa2.traffic.total < fa1.traffic.total < std.traffic.total, "FA2 < FA1 < standard in HBM traffic here")
big = refattn.standard_forward(q, k, v, sram=10**6)
c.claim(big.traffic.total == 4 * n * n + 4 * n * d + n,
        "with M = 10^6 the standard kernel moves exactly 4N^2 + 4Nd + N (T1 = T3 = 1)")
c.say("""Lesson 4 shows how these ratios move with N and M.""")
c.done(3)
