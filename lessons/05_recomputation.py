"""Lesson 5: recomputation. The backward pass without storing P.

Training needs gradients. Given dO, the gradient of the loss with respect to
the output O, the backward pass of attention computes dQ, dK and dV. The
formulas (lesson 1's notation; D is one number per query row):

    dV = P^T dO
    dP = dO V^T
    D  = rowsum(dO * O)            (equals rowsum(P * dP))
    dS = P * (dP - D)              (the softmax's derivative, row by row)
    dQ = scale * dS K,   dK = scale * dS^T Q

Every line needs P, the N x N probability matrix. Standard attention keeps P
in HBM from the forward pass: O(N^2) memory per head and N^2 traffic to read it
back. FlashAttention keeps only the log-sum-exp L (N numbers, lesson 1) and
*recomputes* P tile by tile: P = exp(scale * Q_i K_j^T - L_i). That costs extra
arithmetic (S is computed twice) but saves memory and traffic, and on a GPU
traffic is what takes the time.
"""

import _course as c
import numpy as np

import refattn
from refattn.data import random_qkv
from refattn.reference import attention_backward

c.intro(__doc__, "Backward")

n, d = 256, 32
q, k, v = random_qkv(n, d, dtype=np.float64, seed=6)
do = np.random.default_rng(7).standard_normal((n, d))

c.say(f"""Step 1. Gradients from three implementations on N = {n}, d = {d}, in float64: the reference
(refattn.reference.attention_backward), the standard kernel (which reads the P its forward stored)
and the FlashAttention backward (which reads only L). They must agree to rounding.""")
ref = attention_backward(q, k, v, do)
M = 8192
fwd = refattn.flash_forward(q, k, v, sram=M, variant="fa2")
fb = refattn.flash_backward(q, k, v, fwd.o, fwd.lse, do, sram=M)
sf = refattn.standard_forward(q, k, v, sram=M)
sb = refattn.standard_backward(q, k, v, sf.o, do, sram=M)
for name, r in (("flash", fb), ("standard", sb)):
    err = max(float(np.abs(getattr(r, g) - x).max()) for g, x in zip(("dq", "dk", "dv"), ref))
    c.show(f"{name:8s} largest gradient error", f"{err:.1e}")
    c.claim(err < 1e-10, f"{name} backward equals the reference gradients (float64)")

c.say("""Step 2. Memory. Beyond the inputs (Q, K, V, O, dO) and the gradients, what does each backward keep
in HBM? The standard kernel's forward wrote S and P (N^2 each), its backward writes dP and dS (N^2
each) and D. FlashAttention writes D (N numbers) and reads the L its forward wrote (N numbers).""")
grads = {"dQ", "dK", "dV", "O"}
extra_std = {t: w for t, (_, w) in ((t, sf.traffic.of(t)) for t in sf.traffic.writes) if t not in grads}
extra_std.update({t: w for t, w in sb.traffic.writes.items() if t not in grads})
extra_fl = {t: w for t, w in fwd.traffic.writes.items() if t not in grads}
extra_fl.update({t: w for t, w in fb.traffic.writes.items() if t not in grads})
c.show("standard: intermediate elements written (forward + backward)", extra_std)
c.show("flash:    intermediate elements written (forward + backward)", extra_fl)
c.claim(sum(extra_std.values()) >= 4 * n * n, "standard writes at least 4 N^2 intermediate elements (S, P, dP, dS)")
c.claim(sum(extra_fl.values()) == 2 * n, "FlashAttention writes only 2N: L (forward) and D (backward), O(N) memory")

c.say("""Step 3. The price: arithmetic. The flash backward computes S = Q K^T again in every tile: 2 N^2 d
more FLOPs (2 per multiply-add) than a backward that reads P.""")
c.show("standard backward FLOPs", sb.flops)
c.show("flash backward FLOPs", fb.flops)
c.claim(fb.flops - sb.flops == 2 * n * n * d, "the difference is exactly 2 N^2 d: one recomputation of S")

c.say("""Step 4. The gain: traffic. The same comparison on the A100-like preset (M = 98304 elements) at
N = 1024, d = 64 (float32). The simulated time is a roofline (lesson 4): max(bytes / bandwidth,
FLOPs / peak).""")
q2, k2, v2 = random_qkv(1024, 64, dtype=np.float32, seed=8)
do2 = np.random.default_rng(9).standard_normal((1024, 64)).astype(np.float32)
f2 = refattn.flash_forward(q2, k2, v2, sram="a100")
fb2 = refattn.flash_backward(q2, k2, v2, f2.o, f2.lse, do2, sram="a100")
s2 = refattn.standard_forward(q2, k2, v2, sram="a100")
sb2 = refattn.standard_backward(q2, k2, v2, s2.o, do2, sram="a100")
t_fl, t_std = fb2.simulated_time(), sb2.simulated_time()
c.show("backward traffic (elements): standard / flash", f"{sb2.traffic.total} / {fb2.traffic.total}")
c.show("simulated backward time: standard / flash", f"{t_std['time_s'] * 1e6:.2f} us / {t_fl['time_s'] * 1e6:.2f} us")
c.claim(fb2.flops > sb2.flops and fb2.traffic.total < sb2.traffic.total and t_fl["time_s"] < t_std["time_s"],
        "more FLOPs, less traffic, less simulated time: recomputation wins when memory is the bottleneck")
c.done(5)
