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

Both engines are built from MAC lines (8 multiply-accumulate units each); the
cycle counts below come from refattn's PE-array model (refattn.pe_array), a
grid of processing elements (PEs) through which operands flow in steps (a
*systolic array*).
"""

import _course as c
import numpy as np

from refattn.data.vit import load_deit_tiny_mask, vit_like_qkv
from refattn.pe_array import simulate_gemm
from refattn.reference import attention, attention_probs
from refattn.vitcod import (
    average_maps,
    cutoff_for_density,
    dense_baseline,
    density,
    fixed_mask,
    mask_recall,
    simulate_layer,
    split_attention,
    split_mask,
    unsplit_sparse_baseline,
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
c.say("""Step 5. The two engines on one layer (refattn.vitcod.simulate_layer; 64 lines x 8 MACs, 500
MHz). The 64 lines are split between the engines in proportion to their work (MACs). Per head of
layer 2 (the one with G = 70): lines dense/sparse, and SDDMM + SpMM cycles of each engine (the engines
run side by side, so a stage costs the slower of the two):""")
layer = simulate_layer(keep[2])
for h, hc in enumerate(layer.heads):
    c.show(f"head {h}", f"G = {hc.g:2d}, nnz = {hc.nnz}, lines {hc.dense_lines}/{hc.sparse_lines}, "
           f"denser {hc.dense_sddmm + hc.dense_spmm}, sparser {hc.sparse_sddmm + hc.sparse_spmm}, "
           f"head {hc.compute} cycles")
util = layer.utilization
c.show("utilisation of the denser / sparser engine", f"{util['dense']:.2f} / {util['sparse']:.2f}")
c.claim(all(hc.compute == max(hc.dense_sddmm, hc.sparse_sddmm) + max(hc.dense_spmm, hc.sparse_spmm)
            for hc in layer.heads), "each head costs max(SDDMM) + max(SpMM) over the two engines")
totals = {name: sum(f(keep[i]).total for i in range(12)) for name, f in
          (("split", simulate_layer), ("dense", dense_baseline), ("unsplit", unsplit_sparse_baseline))}
c.say("""All 12 layers, cycles (each layer: max of its data transfer and its compute, lesson 11):
ViTCoD's split; dense attention on the same 512 MACs (every score); every kept entry on one sparser
engine with all 64 lines (no split).""")
for name, cyc in totals.items():
    c.show(f"{name:8s}", f"{cyc:,} cycles")
c.claim(totals["dense"] > 4 * totals["split"], "the 95 % sparse split runs over 4x faster than dense attention")
c.claim(totals["unsplit"] < totals["split"], "in refattn's model, the unsplit sparser engine is faster still")
c.say("""The last line is an honest result of the model, not of ViTCoD's hardware: refattn's sparser
engine is idealised (it charges nothing for fetching irregular K and V rows beyond the index
bytes), while the denser engine pays the systolic array's fill, drain and idle columns for a
G = 1 product. ViTCoD's case for the split rests on the cost of those irregular fetches, which a
real sparse engine pays. Lesson 11 looks at the data movement.""")

c.done(10)
