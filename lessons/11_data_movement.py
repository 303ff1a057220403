"""Lesson 11: data movement and the auto-encoder.

Lesson 10 counted compute cycles. An accelerator must also bring Q, K, V and
the index lists from off-chip memory (DRAM) and send O back. ViTCoD's
simulator assumes 8-bit data (1 byte per element), 76.8 GiB/s of off-chip
bandwidth and a 500 MHz clock: about 165 bytes per cycle, against 512 MACs per
cycle (64 lines x 8 MACs).

A layer's *preload* is the cycles its bytes take to arrive; its *compute* is
the engines' cycles. Transfers and compute overlap (double buffering: the next
data arrives while the current data is computed on), so a layer costs
max(preload, compute). It is *memory-bound* when preload is larger (more
compute units would not help) and *compute-bound* otherwise (more bandwidth
would not help).

ViTCoD's *auto-encoder* attacks the bytes of Q and K: at every (token,
channel) position the H head values of Q form a vector of H numbers; a linear
encoder maps it to ceil(H/2) numbers, which are sent instead, and a linear
decoder on chip rebuilds H numbers before Q K^T (the same for K; V is not
compressed). For DeiT-Tiny, H = 3 heads become 2: a third less Q and K
traffic, paid for with decoder cycles and some error, which ViTCoD recovers by
fine-tuning the network with the auto-encoder in place.

This lesson counts bytes per operand with refattn's counted kernel
(refattn.vitcod_forward, summarised per layer by refattn.vitcod.simulate_layer),
decides memory- or compute-bound, and sets it beside the public ViTCoD
simulator's model (refattn.vitcod.vitcod_public_network), which refattn
reproduces exactly.
"""

import _course as c
import numpy as np

from refattn.data.vit import load_deit_tiny_mask, vit_like_qkv
from refattn.reference import attention
from refattn.vitcod import Hardware, fit_head_autoencoder, simulate_layer, split_mask, vitcod_public_network
from refattn.vitcod.kernel import F
from refattn.vitcod.vitcod_model import PUBLISHED_TOTALS

c.intro(__doc__, "ViTCoD")

keep, _ = load_deit_tiny_mask()  # DeiT-Tiny 95 % mask (lesson 10): (12 layers, 3 heads, 197, 197)
hw = Hardware()
n, d, heads = 197, 64, 3
per_cycle = hw.bandwidth_bytes_per_s / hw.freq_hz
c.show("bytes per cycle (76.8 GiB/s / 500 MHz)", f"{per_cycle:.1f}")
c.show("MACs per cycle", hw.macs)

# ---------------------------------------------------------------------------
plain = simulate_layer(keep[2], d=d)
ae = simulate_layer(keep[2], d=d, autoencoder=True)
c.say(f"""Step 1. Off-chip bytes of layer 2 (3 heads, N = {n}, d = {d}), without and with the auto-encoder
(AE), as the counted kernel (refattn.vitcod_forward) loads and stores them. Q, K, V, O: N x d x
heads bytes each; index: per head, one byte per kept entry of the sparse part (column ids < 256)
plus N + 1 two-byte row pointers; mask: which entries of the dense N x G part are kept, one bit
each (N x ceil(G/8) bytes per head); with the AE, Q and K arrive as codes and the decoder's
weights come once per layer.""")
ops = ("Q", "K", "Q codes", "K codes", "V", "O", "index", "mask", "decoder")
print(f"    {'operand':<9}{'plain':>8}{'with AE':>9}")
for op in ops:
    print(f"    {op:<9}{plain.bytes.get(op, 0):>8}{ae.bytes.get(op, 0):>9}")
splits = [split_mask(keep[2, h], 50) for h in range(heads)]
c.claim(plain.bytes["Q"] == n * d * heads and plain.bytes["index"] == sum(s.nnz + 2 * (n + 1) for s in splits),
        "Q is N*d*H bytes; the index lists are nnz + 2(N + 1) bytes per head")
c.claim(ae.bytes["Q codes"] * 3 == plain.bytes["Q"] * 2 and ae.bytes["K codes"] * 3 == plain.bytes["K"] * 2
        and ae.bytes["V"] == plain.bytes["V"], "the AE sends Q and K as 2 encoded heads of 3; V is unchanged")
c.say("""The index lists are small next to the operands: the mask is 95 % sparse and each kept entry
costs one byte, against 64 bytes for a row of K.""")

# ---------------------------------------------------------------------------
macs = sum(h.dense_macs + h.sparse_macs for h in plain.heads)
nbytes = sum(plain.bytes.values())
c.say("""Step 2. Memory- or compute-bound? Arithmetic intensity = useful MACs / bytes moved; the chip's
balance point = MACs per cycle / bytes per cycle. Above the balance point even perfect engines would
be compute-bound. The kernel also says what bounds each step: an engine, or an on-chip buffer's
read port (lesson 10).""")
c.show("layer 2: useful MACs / bytes", f"{macs:,} / {nbytes:,} = {macs / nbytes:.1f} MACs per byte")
c.show("balance point", f"{hw.macs} / {per_cycle:.1f} = {hw.macs / per_cycle:.2f} MACs per byte")
c.show("layer 2 without AE: HBM / compute cycles", f"{plain.preload} / {plain.compute} -> {plain.bound}-bound")
c.show("layer 2 with AE: HBM / compute cycles (decode included)", f"{ae.preload} / {ae.compute} -> {ae.bound}-bound")
c.claim(plain.preload == int(np.ceil(nbytes / per_cycle)), "HBM cycles = the layer's bytes / bytes per cycle, "
        "rounded up once")
c.claim(ae.preload < plain.preload, "the AE shortens the HBM transfers")
dec = ae.result.counters[:, 0]  # the load step of each head: the decoder and its reads of the codes
dec_cyc = int(dec[:, F["decode_cycles"]].sum())
dec_port = int(dec[:, F["port_Q"]].sum())
c.show("decoder per layer: MAC cycles / Q-buffer port cycles to read the codes", f"{dec_cyc} / {dec_port}")
hidden = plain.compute >= plain.preload
why = ("So the bytes the AE saves were already hidden behind compute, while decoding adds work before "
       "each head" if hidden else "So the bytes the AE saves shorten the side that bounds it")
setter = "the buffer port, not the MACs," if dec_port > dec_cyc else "the MACs"
c.say(f"""Layer 2 is {plain.bound}-bound without the AE: HBM needs {plain.preload} cycles, the engines and
buffers {plain.compute}. {why}: the layer takes {ae.total} cycles with the AE instead of {plain.total}.
Decoding one head reads all its codes from the Q and K buffers (the decoded heads do not fit
there together), so {setter} sets the decoder's time.""")
c.claim((heads + 2) * n * d * hw.data_bytes > hw.q_buffer,
        "all decoded Q heads and the codes together would not fit the 53 KB Q buffer")
c.claim(not hidden or ae.total >= plain.total,
        "when HBM transfers hide behind compute, the AE cannot make the layer faster")
all_plain = sum(simulate_layer(keep[i], d=d).total for i in range(12))
all_ae = sum(simulate_layer(keep[i], d=d, autoencoder=True).total for i in range(12))
c.show("all 12 layers, refattn's counted model, without / with AE", f"{all_plain:,} / {all_ae:,} cycles")

# ---------------------------------------------------------------------------
pub = vitcod_public_network(keep)
pub_plain = vitcod_public_network(keep, autoencoder=False)
c.say("""Step 3. The public ViTCoD simulator's model, restated in refattn.vitcod.vitcod_model. It looks
at head 0 of each layer with the 3 heads in parallel, uses ideal engine formulas (no fill or drain,
no buffer ports), and charges each token's transfer rounded up to whole cycles:""")
tok_qk, tok_v = hw.transfer_cycles(2 * d), hw.transfer_cycles(3 * d)
c.show("one AE-compressed Q or K token (2 heads x 64 bytes)", f"{2 * d / per_cycle:.2f} cycles -> charged {tok_qk}")
c.show("one V token (3 heads x 64 bytes)", f"{3 * d / per_cycle:.2f} cycles -> charged {tok_v}")
c.show("network with AE: preload / decode + compute / total", f"{pub['preload']} / "
       f"{pub['decode'] + pub['compute']} / {pub['total']} ({pub['bound']}-bound)")
c.show("network without AE (refattn's switch)", f"{pub_plain['preload']} / "
       f"{pub_plain['decode'] + pub_plain['compute']} / {pub_plain['total']} ({pub_plain['bound']}-bound)")
c.claim(pub["total"] == PUBLISHED_TOTALS["total"] == 9492,
        "the restated model gives exactly the 9492 cycles of the authors' published log")
c.claim(pub["bound"] == "memory" and pub_plain["total"] > 1.4 * pub["total"],
        "their model is memory-bound, so the AE's saved bytes count: without it the total is over 1.4x larger")
same = (all_ae < all_plain) == (pub["total"] < pub_plain["total"])
c.say(f"""Same mask, same chip, {'the same verdict' if same else 'opposite verdicts'} on the AE. Their
rounding makes a V token cost {tok_v} cycles instead of {3 * d / per_cycle:.2f}, and their ideal engines make
compute small, so their model is memory-bound and the AE pays. refattn's kernel charges the bytes
once, runs the dense part on the systolic PE-array model and makes the sparse part pay its
gathers, so {'compute (buffer ports and engines)' if plain.bound != 'memory' else 'HBM'} dominates
and the AE's decoder {'costs more than it saves' if all_ae > all_plain else 'pays for itself'}. Which holds on
silicon depends on what the real memory system and engines do; a model only says which
assumption decides it.""")

# ---------------------------------------------------------------------------
q, k, _ = vit_like_qkv(8, seed=1)  # fit on 8 images ...
q2, k2, v2 = vit_like_qkv(4, seed=2)  # ... test on 4 new ones
c.say("""Step 4. The auto-encoder itself (refattn.vitcod.fit_head_autoencoder): the best linear 3 -> 2
code in the least-squares sense (from an SVD), fitted on the Q and K of 8 synthetic ViT images
(lesson 10), tested on 4 new ones. Errors are relative Frobenius norms.""")
ae_q, ae_k = fit_head_autoencoder(q), fit_head_autoencoder(k)
exact = fit_head_autoencoder(q, bottleneck=3)
o, _ = attention(q2, k2, v2)
o_ae, _ = attention(ae_q.reconstruct(q2), ae_k.reconstruct(k2), v2)
out_err = float(np.linalg.norm(o_ae - o) / np.linalg.norm(o))
c.show("reconstruction error of Q / K", f"{ae_q.relative_error(q2):.3f} / {ae_k.relative_error(k2):.3f}")
c.show("error of the attention output with decoded Q and K", f"{out_err:.3f}")
c.claim(exact.relative_error(q2) < 1e-12, "with 3 of 3 heads kept the code is exact (the check on the fit)")
c.claim(ae_q.bytes_ratio() == 2 / 3 and ae_q.relative_error(q2) > 0.01,
        "with 2 of 3 heads the code sends 2/3 of the bytes and loses information")
c.say("""Compressing Q and K alone, with no retraining, changes the output a lot: softmax magnifies
small changes in the scores. ViTCoD trains the encoder and decoder inside the network and fine-tunes
the model with them (DeiT-Base top-1: 81.8 % dense, 81.58 % with the auto-encoder), which this
closed-form fit does not model. The byte count above holds either way.""")

c.done(11)
