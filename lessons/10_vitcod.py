"""Lesson 10: ViTCoD. Fixed sparse masks, split into a denser and a sparser part.

Vision transformers (ViTs) read an image as tokens: one CLS token (a summary
token the classifier reads) plus one token per 16 x 16 patch, 197 tokens for a
224 x 224 image. ViTCoD (HPCA 2023, arXiv 2210.09573) is an accelerator
co-designed with a sparse attention for them. Unlike MInference (lessons 7-9),
its masks are *fixed*:

  1. Pruning. Average each head's softmax attention map over many images; in
     each query row keep the highest keys until their probability adds up to
     a cut-off (a per-row "top-p"); always keep the CLS row and column. The
     model is fine-tuned with this mask and it is used for every image.
  2. Reordering. A key column kept by many rows (more than 50 of 197) is a
     *global token*. Moving the G global tokens to the front (rows and columns
     alike) leaves a dense N x G block and a thin, irregular remainder.
  3. Two engines. The *denser engine* computes the N x G block as ordinary
     matrix products; the *sparser engine* computes only the kept entries of
     the rest from index lists (SDDMM: sampled scores Q K^T at listed (i, j);
     SpMM: the sparse probabilities times V).

Both engines are built from MAC lines (8 multiply-accumulate units each). The
split runs as a counted kernel (refattn.vitcod_forward) whose denser engine is
refattn's PE-array model (refattn.pe_array), a grid of processing elements
(PEs) through which operands flow in steps (a *systolic array*); the model and
its assumptions are in docs/vitcod.md.
"""

import _course as c
import numpy as np

from refattn.bench.vitcod import compare, designs, sweep_table
from refattn.data.vit import load_deit_tiny_mask, vit_like_qkv
from refattn.pe_array import simulate_gemm
from refattn.reference import attention, attention_probs
from refattn.vitcod import (
    Hardware,
    average_maps,
    cutoff_for_density,
    density,
    fixed_mask,
    mask_recall,
    split_attention,
    split_mask,
    vitcod_forward,
)

c.intro(__doc__, "ViTCoD")

# ---------------------------------------------------------------------------
q, k, v = vit_like_qkv(8, seed=1)  # (8 images, 3 heads, 197 tokens, 64)
c.say("""Step 1. Pruning. refattn.data.vit.vit_like_qkv makes ViT-like inputs: CLS + 14 x 14 patches,
3 heads, d = 64, with the structure ViTCoD exploits (patches attend to neighbouring patches, a few
global tokens, per-image noise). Average the maps of 8 images, pick the cut-off that keeps 10 % of
the entries (refattn.vitcod.cutoff_for_density), and fix the mask.""")
avg = average_maps(q, k)  # (3, 197, 197)
cut = cutoff_for_density(avg, 0.10)
mask = fixed_mask(avg, cut)  # (3, 197, 197) bool, True = kept
q2, k2, v2 = vit_like_qkv(4, seed=2)  # 4 new images, same heads
p_new = attention_probs(q2, k2)[0]
random_mask = np.random.default_rng(0).random(mask.shape) < density(mask)
rec_seen = mask_recall(mask, attention_probs(q, k)[0])
rec_new = mask_recall(mask, p_new)
rec_rand = mask_recall(random_mask, p_new)
c.show("cut-off (probability kept per row of the average map)", f"{cut:.3f}")
c.show("mask density", f"{density(mask):.3f}")
c.show("recall (mass kept, lesson 7): images it was built from / new images / random mask",
       f"{rec_seen:.3f} / {rec_new:.3f} / {rec_rand:.3f}")
c.claim(rec_new > 0.9, "on new images the fixed mask still keeps over 90 % of the attention mass")
c.claim(abs(rec_rand - density(mask)) < 0.03, "a random mask of the same density keeps only about its density")
c.say("""This is why a fixed mask works for vision: the structure is in the positions (neighbours on the
grid), not in the content. Text is different (lesson 8): ViTCoD cites about 90 % fixed sparsity
for ViTs at <= 1.5 % accuracy loss, against about 50 % for text models, which need per-input masks.""")

# ---------------------------------------------------------------------------
sp = split_mask(mask[0])
c.say(f"""Step 2. Reorder and split (refattn.vitcod.split_mask) head 0's mask: G = {sp.g} global token(s)
go to the front; the denser part is 197 x {sp.g} ({197 * sp.g} scores, {sp.dense_kept} of them kept),
the sparser part has nnz = {sp.nnz} kept entries, stored as one list of key columns per query row.""")
c.claim(np.array_equal(sp.mask(), mask[0]), "the split is lossless: undoing the permutation gives the mask back")
o_split, _ = split_attention(q2[0, 0], k2[0, 0], v2[0, 0], mask[0])
o_ref, _ = attention(q2[0, 0], k2[0, 0], v2[0, 0], mask=mask[0])
err = float(np.abs(o_split - o_ref).max())
c.show("largest difference, split attention vs masked float64 reference", f"{err:.1e}")
c.claim(err < 1e-12, "dense part + sparse lists + one softmax across both = masked attention, to rounding")

# ---------------------------------------------------------------------------
keep, g_authors = load_deit_tiny_mask()  # (12 layers, 3 heads, 197, 197), the authors' counts of G
g = np.array([[split_mask(keep[layer, h], 50).g for h in range(3)] for layer in range(12)])
c.say(f"""Step 3. A real mask: the fixed mask of a fine-tuned DeiT-Tiny (12 layers x 3 heads) at 95 %
sparsity, from the public ViTCoD repository. Density {keep.mean():.4f}. Global tokens G per head
(threshold 50 rows), layers 0-11, heads 0/1/2:""")
print("    " + "  ".join(f"L{layer}:{'/'.join(str(x) for x in g[layer])}" for layer in range(12)))
c.claim(np.array_equal(g, g_authors), "refattn's G equals the ViTCoD authors' count for all 36 heads")
c.claim((g == 1).sum() > 18 and g.max() == 70, "most heads have only CLS as global token (G = 1); one has 70")

# ---------------------------------------------------------------------------
n, d = 197, 64
c.say("""Step 4. The PE array. refattn.pe_array.simulate_gemm runs a matrix product (M x K) @ (K x N)
on an R x C array. Weight-stationary ("ws") mapping: each PE holds one element of the right
operand, the K x N operand is cut into ceil(K/R) x ceil(N/C) folds, and each fold takes
M + 2R + C - 2 cycles (preload R rows, stream M rows, fill and drain the skew). Utilisation =
useful MACs / (cycles x PEs). The denser engine here is R = 8 (one 8-wide slice of d per MAC line)
by C = 64 lines.""")
for label, cols_n in (("Q K^T, all 197 keys (dense attention)", n), ("Q K_G^T, G = 1 global key", 1)):
    r = simulate_gemm(n, cols_n, d, rows=8, cols=64, dataflow="ws")
    closed = -(-d // 8) * -(-cols_n // 64) * (n + 2 * 8 + 64 - 2) - 1
    c.show(label, f"{r.cycles} cycles, utilisation {r.utilization:.3f}")
    c.claim(r.cycles == closed, f"{label}: cycles = folds x (M + 2R + C - 2) - 1 = {closed}")
c.say("""A 197 x 1 product uses one column of the array: 1 % utilisation. Most DeiT-Tiny heads have
G = 1, so their dense part is tiny and badly shaped for a systolic array.""")

# ---------------------------------------------------------------------------
c.say("""Step 5. The split as a kernel (refattn.vitcod_forward). It runs head after head on the
simulated accelerator (refattn.vitcod.Hardware: 64 lines x 8 MACs at 500 MHz, ViTCoD's buffers),
in five steps per head: load, SDDMM (scores), softmax, SpMM (scores times V), store. The 64 lines
are split between the engines in proportion to their work. The denser engine is an 8 x Ld
systolic array (step 4): a global key is loaded into it once and every query streams past it.
The sparser engine's lines each take pieces of the index lists and, for every kept (i, j),
*gather* row j of K (and later of V) from its buffer: a row serves one score. Every byte moved
and every buffer read is counted by the kernel's own loop, and the cycles follow from those
counts and the stated rates.""")
qd, kd, vd = (np.random.default_rng(5).standard_normal((3, n, d)) for _ in range(3))
res = vitcod_forward(qd, kd, vd, keep[2], threshold=50)
ref, _ = attention(qd, kd, vd, mask=keep[2])
err = float(np.abs(res.o - ref).max())
c.show("layer 2 (G = 70/1/1), kernel output vs masked float64 reference", f"{err:.1e}")
c.claim(err < 1e-12, "the counted kernel computes exactly masked attention")
step = 2  # head 0's SDDMM
st = vitcod_forward(qd, kd, vd, keep[2], threshold=50, stop_after=step).state
lines = st.arrays["line_engine"]
busy = st.arrays["line_cycles"]
dense_busy = int(busy[lines == 0].max())
sparse_busy = busy[lines == 1]
cnt = st.arrays["counters"]
c.show(f"step {step} ({st.phase} of head {st.head}): lines dense / sparse",
       f"{(lines == 0).sum()} / {(lines == 1).sum()}")
c.show("denser engine: busy cycles (the array's folds)", dense_busy)
c.show("sparser engine: busy cycles per line, min / max", f"{sparse_busy.min()} / {sparse_busy.max()}")
c.show("K buffer: rows gathered by the sparser engine / port cycles", f"{cnt['sparse_K_rows']} / {cnt['port_K']}")
c.show("the step's cycles (the slowest of engines and buffer ports)", cnt["stage_cycles"])
c.claim(cnt["stage_cycles"] == max(cnt["dense_cycles"], cnt["sparse_cycles"], cnt["port_Q"], cnt["port_K"],
                                   cnt["port_V"], cnt["port_idx"], cnt["port_out"]),
        "a step costs its slowest resource: engines and buffer ports overlap")
c.claim(st.arrays["line_entries"].sum() == res.plan.details["heads"][0]["nnz"],
        "the sparser lines together compute every sparse entry of the head")
slowest = "the denser engine" if cnt["stage_cycles"] == cnt["dense_cycles"] else "a buffer port or the sparser lines"
c.say(f"""In this step the sparser lines compute for at most {sparse_busy.max()} cycles, but the K
buffer needs {cnt['port_K']} cycles to deliver their {cnt['sparse_K_rows']} gathered rows (one row per
cycle from a {res.hw.buffer_read_bytes}-byte port), so {'they wait on the buffer' if cnt['port_K'] >
sparse_busy.max() else 'the buffer keeps up with them'}; an idealised sparse engine would not charge
that wait. The step as a whole is set by {slowest} ({cnt['stage_cycles']} cycles): head 0 has
G = {res.plan.details['heads'][0]['g']} global tokens, and the array streams all {n} queries past
each fold of them.""")

# ---------------------------------------------------------------------------
c.say("""Step 6. The designs on the same counted hardware, all 12 layers (each layer: max of its data
transfer and its compute, lesson 11): dense attention on the denser engine with all 64 lines;
every kept entry on one sparser engine with all 64 lines (no split); ViTCoD's split.""")
nets = designs(keep, threshold=50, with_ae=False)
for name, net in nets.items():
    c.show(f"{name:15s}", f"{net.total:,} cycles, utilisation dense {net.utilization('dense'):.3f} / sparse "
           f"{net.utilization('sparse'):.3f}, {net.bound()}")
sp, un, dn = nets["ViTCoD split"], nets["unsplit sparse"], nets["dense"]
c.claim(dn.total > 3 * sp.total, "the 95 % sparse split runs over 3x faster than dense attention")
wins = [i for i in range(12) if sp.layers[i].total < un.layers[i].total]
g1 = [i for i in range(12) if g[i].max() <= 1]
g1_lose = [i for i in g1 if i not in wins]
c.say(f"""Split against unsplit: {compare(sp.total, un.total, "the split", "the unsplit sparse engine")}
over the network; layer by layer the split is faster in layers {wins}. Of the layers whose heads
keep at most one global token ({g1}), it is slower in {g1_lose}: there the denser engine gets an
N x 1 product, which keeps one column of its array busy (step 4), and that takes longer than the
few entries it removes from the sparser engine. Where G is large (layer 2: 70, layer 11:
{'/'.join(str(x) for x in g[11])}) the global keys are reused by every query and the split pays.""")
c.claim(2 in wins and 11 in wins, "the layers with many global tokens are where the split wins")
reads = sp.reads("dense"), sp.reads("sparse")
c.show("MACs per K element read from the buffer: denser / sparser engine",
       f"{reads[0]['macs'] / reads[0]['K']:.0f} / {reads[1]['macs'] / reads[1]['K']:.1f}")
c.claim(reads[0]["macs"] / reads[0]["K"] > 50 * reads[1]["macs"] / reads[1]["K"],
        "the denser engine reuses a global key for every query; a gathered key row serves one score")

# ---------------------------------------------------------------------------
c.say("""Step 7. Which way it goes depends on the buffers. refattn assumes each buffer has one read
port of W = 64 bytes per cycle with one address per cycle ("1 bank"). Sweeping W, and letting a
wide port serve several rows per cycle ("banked", no bank conflicts), shows where the split
beats the unsplit sparse engine and where it does not (refattn bench vitcod prints the table):""")
_, rows = sweep_table(keep, Hardware(), widths=(16, 64, 256))
for port, w, s_tot, u_tot, nwins in rows:
    c.show(f"W = {w:3d}, {port}", f"split {s_tot:,} vs unsplit {u_tot:,} cycles ({nwins}/12 layers split wins)")
banked_wide = [(w, s_tot, u_tot) for port, w, s_tot, u_tot, _ in rows if port == "banked" and w == 256][0]
narrow = [(w, s_tot, u_tot) for port, w, s_tot, u_tot, _ in rows if w == 16]
c.claim(all(s_tot < u_tot for _, s_tot, u_tot in narrow),
        "with narrow buffers the split wins: gathers are the bottleneck")
c.claim(banked_wide[1] > banked_wide[2], "with a wide, banked buffer the unsplit sparse engine wins again")
c.say("""So the split's advantage is exactly the cost of irregular K/V fetches: when the buffers
deliver gathered rows as fast as the sparser lines can use them, the idle columns of the denser
array for G = 1 heads cost more than the split saves. ViTCoD's own simulator charges neither the
gathers nor the array's fill and drain (lesson 11 shows its model).""")

c.done(10)
