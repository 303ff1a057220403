"""Lesson 6: causal masks, their two alignments, fully masked rows and the numerical traps.

A language model generating text must not let token i look at later tokens:
a *causal mask* hides key j from query i when j is "in the future". Masked
scores are set to -inf before the softmax, so they get probability 0.

With as many queries as keys (Nq = Nk) "the future" is clear: j > i. With
Nq != Nk (e.g. 3 new queries attending to 5 keys, 2 of them from a cache), two
conventions exist:

* bottom-right (FlashAttention >= 2.1, refattn's default): the LAST query sees
  all keys; key j is visible to query i iff j <= i + Nk - Nq;
* top-left (PyTorch's is_causal): the FIRST query sees key 0; j <= i.

When Nq > Nk, bottom-right leaves the first Nq - Nk queries with no visible key
at all: a *fully masked row*. Its softmax is 0/0. refattn's convention: output
0 and log-sum-exp -inf, never NaN. Tiled kernels also gain from the mask:
tiles that lie wholly in the future are skipped, nearly halving the work.
"""

import _course as c
import numpy as np

import refattn
from refattn.data import random_qkv
from refattn.reference import attention, causal_mask

c.intro(__doc__, "FlashAttention forward")

c.say("""Step 1. The two alignments for Nq = 3 queries and Nk = 5 keys (1 = visible).""")
br, tl = causal_mask(3, 5, "bottom_right"), causal_mask(3, 5, "top_left")
print("    bottom-right           top-left")
for a, b in zip(br.astype(int), tl.astype(int)):
    print(f"    {a}    {b}")
c.claim(br[-1].all() and tl[0].sum() == 1, "bottom-right: the last query sees every key; top-left: the first sees one")
c.claim(np.array_equal(causal_mask(4, 4, "bottom_right"), causal_mask(4, 4, "top_left")),
        "with Nq = Nk the two conventions agree")

c.say("""Step 2. Fully masked rows. Nq = 5 queries and Nk = 3 keys, bottom-right: queries 0 and 1 see no
key. The textbook softmax with -inf scores computes exp(-inf - (-inf)) = exp(NaN) for them. The
reference and the FA2 kernel instead use 0 as the shift of such a row (docs/design.md).""")
q, k, v = random_qkv(5, 8, nk=3, dtype=np.float32, seed=10)
with np.errstate(invalid="ignore"):
    s = np.where(causal_mask(5, 3), q @ k.T, -np.inf)
    naive = np.exp(s - s.max(axis=1, keepdims=True))
c.show("rows of the naive masked softmax that are NaN", np.flatnonzero(np.isnan(naive).any(axis=1)).tolist())
o_ref, lse_ref = attention(q, k, v, causal=True)
fa2 = refattn.flash_forward(q, k, v, sram=1024, causal=True)
c.show("reference lse", lse_ref)
c.show("FA2 kernel lse", fa2.lse)
for name, o, lse in (("reference", o_ref, lse_ref), ("FA2 kernel", fa2.o, fa2.lse)):
    c.claim(np.all(o[:2] == 0) and np.all(np.isneginf(lse[:2])) and not np.isnan(o).any(),
            f"{name}: fully masked rows give output 0 and lse -inf, and nothing is NaN")
c.claim(np.allclose(fa2.o, o_ref, atol=1e-6), "the kernel equals the reference on the visible rows too")

c.say("""Step 3. Large logits. Scores of several thousand overflow exp in float32 (its limit is about 88)
unless the running max is subtracted first (lessons 1-2). Q and K are scaled by 8 here. The float32
kernel is compared with the float64 reference within 1e-4: a float32 score of size s carries a
rounding error of about 6e-8 * s (2e-5 here), and exp turns it into a relative error of that size.""")
q3, k3, v3 = random_qkv(128, 16, dtype=np.float32, seed=11)
q3, k3 = 8 * q3, 8 * k3
r3 = refattn.flash_forward(q3, k3, v3, sram=2048, causal=True)
o3, _ = attention(q3, k3, v3, causal=True)
c.show("largest score", float((q3 @ k3.T).max() / 4))
err3 = float(np.abs(r3.o - o3).max())
c.show("largest error of the float32 kernel", f"{err3:.1e}")
c.claim(np.isfinite(r3.o).all() and err3 < 1e-4,
        "the float32 kernel stays finite and matches the float64 reference within 1e-4")

c.say("""Step 4. Skipping. With N = 512 and 64 x 64 tiles there are 8 x 8 = 64 tiles; the causal mask hides
the 28 above the diagonal completely, so FA2 skips them (no loads, no arithmetic) and masks only the
8 diagonal tiles element by element.""")
q4, k4, v4 = random_qkv(512, 32, dtype=np.float32, seed=12)
dense = refattn.flash_forward(q4, k4, v4, sram=20_000, block=(64, 64))
causal = refattn.flash_forward(q4, k4, v4, sram=20_000, block=(64, 64), causal=True, trace=True)
skips = sum(1 for e in causal.trace.events if e.kind == "skip")
c.show("skip events in the causal run's trace", skips)
c.show("FLOPs causal / dense", f"{causal.flops / dense.flops:.4f} (= 36/64 = {36 / 64:.4f})")
c.claim(skips == 28 and causal.flops * 64 == dense.flops * 36, "28 tiles skipped; FLOPs fall to 36/64 of dense")
c.claim(causal.traffic.total < dense.traffic.total, "and the skipped tiles' K and V are never read")
c.done(6)
