"""Lesson 13: sliding windows and grouped-query attention (GQA): what they save, counted.

Two ideas that every recent long-context model ships, and that change the
counts of lesson 3 in opposite places:

* A *sliding window* lets query i see only the keys within a band around its
  own position: key j is visible iff i + Nk - Nq - left <= j <= i + Nk - Nq + right
  (both bounds inclusive; docs/variants.md). With causal masking the right edge
  is 0. A tiled kernel skips every tile outside the band, so its work and its
  K/V traffic stop growing with N: they grow with N * window instead of N^2.
* *GQA* lets a group of G query heads share one key/value head (query head h
  reads KV head h // G; MQA is one KV head for all). The KV heads in HBM shrink
  by G. Whether the *traffic* shrinks depends on the loop order: a kernel that
  keeps K_j, V_j on chip while it runs the G query heads reads them once per
  group; one whose on-chip state is a single query head's rows reads them once
  per query head, as if nothing were shared.

Every number below is counted by the kernels' own loads and stores.
"""

import _course as c
import numpy as np

import refattn
from refattn.reference import attention, combined_mask

c.intro(__doc__, "FlashAttention forward")

c.say("""Step 1. The window mask for Nq = 4 queries and Nk = 8 keys with window (left, right) = (2, 0):
query i sits at key position i + 4 and sees that key and the 2 before it (1 = visible).""")
keep = combined_mask(4, 8, window=(2, 0))
for row in keep.astype(int):
    print("    ", row)
c.claim(all(int(r.sum()) == 3 for r in keep), "each query sees left + right + 1 = 3 keys: both bounds inclusive")
c.claim(np.array_equal(combined_mask(4, 8, causal=True, window=(2, 5)), keep),
        "with causal=True the right edge becomes 0, as in FlashAttention")

c.say("""Step 2. FA2 on N = 1024, d = 32, 64 x 64 tiles (16 x 16 = 256 tiles), causal, without and with a
window of 128 keys to the left. The trace records one skip event for each tile the kernel never loads.""")
n, d, blk = 1024, 32, 64
q, k, v = (np.random.default_rng(s).standard_normal((n, d)).astype(np.float32) for s in (1, 2, 3))
runs = {}
for name, kw in (("dense", {}), ("causal", dict(causal=True)), ("window", dict(causal=True, window=(128, 0)))):
    runs[name] = refattn.flash_forward(q, k, v, sram=40_000, block=(blk, blk), trace=True, **kw)
tiles = (n // blk) ** 2
for name, r in runs.items():
    skips = sum(1 for e in r.trace.events if e.kind == "skip")
    kv_reads = r.traffic.reads["K"] + r.traffic.reads["V"]
    c.show(f"{name:7s} visited tiles", f"{tiles - skips:4d} of {tiles}; K+V reads {kv_reads:>9,} elements; "
           f"FLOPs {r.flops:>12,}")
vis_w = tiles - sum(1 for e in runs["window"].trace.events if e.kind == "skip")
# a 64-row query block with 128 keys to its left touches the key blocks i-2, i-1, i (fewer at the start)
c.claim(vis_w == 3 * (n // blk) - 3, f"the window visits 3 tiles per query block ({vis_w} = 3*16 - 3 at the start)")
o_ref, _ = attention(q, k, v, causal=True, window=(128, 0))
c.claim(np.abs(runs["window"].o - o_ref).max() < 1e-5, "and its output equals the float64 reference")
ratio = runs["causal"].flops / runs["window"].flops
c.show("FLOPs causal / window", f"{ratio:.2f}")

c.say("""Step 3. How the K/V traffic grows with N. Without a window FA2 reads all of K and V once per query
block: Tr * N * (d + dv), quadratic in N. With the window each query block reads a fixed number of key
blocks, so the reads per query row stay flat.""")
per_row = {}
for n_ in (512, 1024, 2048):
    q_, k_, v_ = (np.random.default_rng(s).standard_normal((n_, d)).astype(np.float32) for s in (4, 5, 6))
    for name, kw in (("causal", dict(causal=True)), ("window", dict(causal=True, window=(128, 0)))):
        r = refattn.flash_forward(q_, k_, v_, sram=40_000, block=(blk, blk), **kw)
        per_row[name, n_] = (r.traffic.reads["K"] + r.traffic.reads["V"]) / n_
    c.show(f"N = {n_:4d}: K+V reads per query row", f"causal {per_row['causal', n_]:8.1f}   "
           f"window {per_row['window', n_]:6.1f}")
growth = per_row["causal", 2048] / per_row["causal", 512]
c.claim(growth > 3, f"causal: reads per row grow with N ({growth:.2f}x from N = 512 to 2048)")
c.claim(abs(per_row["window", 2048] - per_row["window", 1024]) / per_row["window", 1024] < 0.05,
        "window: reads per row are flat in N (within 5 %)")

c.say("""Step 4. GQA with 8 query heads and 8, 2 or 1 KV heads (MHA, GQA with groups of 4, MQA), N = 256.
FA1 runs the query heads of a group inside its key-block loop and reads each K_j once per KV head; FA2
keeps one query head's rows on chip and reads K_j once per query head and query block; the backward
(key blocks outer, like FA1) also writes dK and dV once per KV head.""")
hq, n4 = 8, 256
rng = np.random.default_rng(7)
q4 = rng.standard_normal((hq, n4, d)).astype(np.float32)
do4 = rng.standard_normal((hq, n4, d)).astype(np.float32)
rows = {}
for hkv in (8, 2, 1):
    k4 = rng.standard_normal((hkv, n4, d)).astype(np.float32)
    v4 = rng.standard_normal((hkv, n4, d)).astype(np.float32)
    kw = dict(sram=8_000, num_kv_heads=hkv)
    fa1 = refattn.flash_forward(q4, k4, v4, variant="fa1", **kw)
    fa2 = refattn.flash_forward(q4, k4, v4, variant="fa2", **kw)
    bwd = refattn.flash_backward(q4, k4, v4, fa1.o, fa1.lse, do4, **kw)
    rows[hkv] = dict(stored=k4.size + v4.size, fa1=fa1.traffic.reads["K"], fa2=fa2.traffic.reads["K"],
                     bwd=bwd.traffic.reads["K"] + bwd.traffic.writes["dK"])
    c.show(f"Hkv = {hkv}", f"K+V in HBM {rows[hkv]['stored']:>7,}; K reads FA1 {rows[hkv]['fa1']:>7,}, "
           f"FA2 {rows[hkv]['fa2']:>7,}; backward K reads + dK writes {rows[hkv]['bwd']:>7,}")
    if hkv == 2:
        mha = refattn.flash_forward(q4, np.repeat(k4, 4, 0), np.repeat(v4, 4, 0), variant="fa1", sram=8_000)
        c.claim(np.array_equal(mha.o, fa1.o), "GQA equals MHA with each KV head repeated for its group")
for key in ("stored", "fa1", "bwd"):
    c.claim(rows[8][key] == 4 * rows[2][key] == 8 * rows[1][key],
            f"{key}: falls by the group size G (8 -> 2 -> 1 KV heads: x1, x1/4, x1/8)")
c.claim(rows[8]["fa2"] == rows[2]["fa2"] == rows[1]["fa2"],
        "FA2's K reads do not fall: one query head's rows on chip, so K_j is read again for every head")
c.say(f"""So GQA cuts the KV cache by {rows[8]['stored'] // rows[1]['stored']}x for MQA here and, in the
loop orders that keep K_j on chip across the group (FA1, the backward), the K traffic by the same factor;
FA2 would need the group's G query blocks on chip at once to do the same (FlashAttention-3 packs them so).""")

c.done(13)
