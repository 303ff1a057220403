"""Lesson 7: sparse patterns. A-shape, vertical-slash and block-sparse attention.

FlashAttention (lessons 3-6) is exact but still computes all N^2 scores. For a
long prompt read by a causal language model (the *prefill*), MInference
(arXiv 2407.02490) observed that each head puts almost all of its attention
mass on a few recurring shapes, and only computes those. Three shapes, each
described by an *index set*: for every query block of 64 rows, the list of key
blocks (64 keys each) and single key columns the kernel computes.

  A-shape          the first n_init keys ("sink" tokens every query looks at)
                   plus a causal local window of the last n_local keys.
  Vertical-slash   a few key columns (vertical lines: tokens everyone attends
  (VS)             to) plus a few diagonals (slashes: "the token k positions
                   back"), chosen per prompt from the scores of the last queries.
  Block-sparse     for each query block, the top_k key blocks by a cheap
  (BS)             estimate (block-averaged Q and K).

Two numbers judge an index set on one input:
  density  = entries the kernel computes / entries the causal mask leaves visible
             (whole 64 x 64 tiles count fully: the kernel computes tiles, not
             single scores);
  recall   = the attention mass of exact (dense) attention that the set keeps,
             averaged over query rows (1.0 = nothing lost).
Good sparse attention keeps recall near 1 at low density. Causal masks are
bottom-right aligned throughout, as in the rest of refattn.
"""

import _course as c
import numpy as np

from refattn.bench.real import head_densities
from refattn.data.synthetic import structured_qkv
from refattn.patterns import build_index
from refattn.reference import attention_probs

c.intro(__doc__, "MInference")

# ---------------------------------------------------------------------------
n = 1024
q, k, v, desc = structured_qkv(n, 64, 3, seed=0)
c.say(f"""Step 1. Structured synthetic data (refattn.data.synthetic.structured_qkv): random Q and K
have no pattern, so here each of 3 heads (N = {n} tokens, d = 64) has one planted shape, built into
its Q and K, and the generator says where it put it:""")
for h, info in enumerate(desc):
    extra = {"vertical_slash": f"sinks {info['sinks']}, {len(info['retrieval'])} retrieval columns "
                               f"{info['retrieval'][:4]}..., local band width {info['local_width']}",
             "a_shape": f"{len(info['sinks'])} sink keys, wide local band width {info['local_width']}",
             "block_sparse": "64-token segments with one of 8 topics; a query attends to earlier keys of its "
                             "topic"}[info["kind"]]
    c.show(f"head {h} ({info['kind']})", extra)

probs = [attention_probs(q[h], k[h], causal=True)[0] for h in range(3)]  # float64, (N, N) each
nb = n // 64
c.say(f"""Each head's causal attention P (float64 reference), summed over 64 x 64 tiles: row = query
block, column = key block, a {nb} x {nb} picture per head. A character shows the share of the query
block's attention mass in that tile: ' ' < 0.5 %, '.' < 2 %, ':' < 5 %, '+' < 15 %, '#' >= 15 %. The
upper triangle is hidden by the causal mask.""")
shares = [p.reshape(nb, 64, nb, 64).sum(axis=(1, 3)) / 64 for p in probs]  # (nb, nb), rows sum to 1
chars = np.array(list(" .:+#"))
print("    " + "".join(f"{desc[h]['kind']:<{nb + 4}}" for h in range(3)))
for qb in range(nb):
    print("    " + "".join("".join(chars[np.searchsorted([0.005, 0.02, 0.05, 0.15], s[qb], side="right")])
                           + "    " for s in shares))
c.say("""Head 0: a bright first column (the sinks), the diagonal (the local band) and a few columns of
tiles (the retrieval tokens). Head 1: the first column and a wide band along the diagonal: an A. Head 2:
scattered tiles (earlier segments of the same topic).""")
for h in range(3):
    c.claim(np.allclose(shares[h].sum(axis=1), 1.0), f"head {h}: each query block's tile shares sum to 1")
c.claim(all(shares[h][:, 0].mean() > 0.05 for h in (0, 1)), "heads 0 and 1 put over 5 % of their mass on the first "
        "key block (the sinks) on average")

# ---------------------------------------------------------------------------
params = {"a_shape": {"n_init": 64, "n_local": 256}, "vertical_slash": {"vertical_size": 64, "slash_size": 64},
          "block_sparse": {"top_k": 4}}
c.say(f"""Step 2. The three index sets for head 0 (refattn.patterns.build_index), with A-shape
{params['a_shape']}, VS {params['vertical_slash']}, BS {params['block_sparse']}. 'blocks' counts the
(query block, key block) tiles listed; 'strips' the single key columns (each a 64 x 1 strip of scores,
gathered 64 at a time into one tile by the kernel). The set may cover slightly more than the
element-level pattern, since tiles have edges; it never covers less.""")
for name, pr in params.items():
    res = build_index(name, q[0], k[0], pr)
    iset = res.index_set
    c.show(f"{name:15s}", f"{iset.n_blocks:3d} blocks, {iset.n_strips:3d} strips, density {iset.density():.3f}")
    if name != "block_sparse":  # BS has no element-level pattern: it is defined by its tiles
        covered = iset.to_mask()[res.element_mask()].all()
        c.claim(covered, f"the {name} index set covers its element-level mask")
dense_tiles = nb * (nb + 1) // 2
c.say(f"""For comparison, dense causal attention is {dense_tiles} tiles ({nb} query blocks, the diagonal
tile included). A VS strip costs 1/64 of a tile.""")

# ---------------------------------------------------------------------------
sweeps = {
    "a_shape": [{"n_init": 64, "n_local": w} for w in (64, 128, 192, 256, 384, 512, 768, 1024)],
    "vertical_slash": [{"vertical_size": a, "slash_size": b}
                       for a, b in ((30, 50), (64, 64), (128, 128), (256, 256), (512, 512), (1024, 1024))],
    "block_sparse": [{"top_k": t} for t in (1, 2, 3, 4, 6, 8, 12, 16)],
}
c.say("""Step 3. Which pattern fits which head? For every head and pattern, sweep the pattern's size
(A-shape: local window 64..1024; VS: 30..1024 columns and 50..1024 diagonals; BS: 1..16 key blocks),
and keep the smallest density whose recall is at least 95 % (refattn.bench.real.head_densities;
recall from the float64 reference). Lower is better.""")
print(f"    {'head (planted)':<22}{'A-shape':>9}{'VS':>9}{'BS':>9}")
names = list(sweeps)
for h in range(3):
    found = head_densities(q[h], k[h], sweeps=sweeps, target=0.95)
    dens = [found[p]["density"] for p in names]
    print(f"    {h} ({desc[h]['kind']}){'':<{19 - len(desc[h]['kind'])}}" + "".join(f"{x:>9.3f}" for x in dens))
    best = names[int(np.argmin(dens))]
    c.claim(best == desc[h]["kind"], f"head {h}: its planted pattern ({best}) needs the lowest density for 95 % "
            f"recall ({min(dens):.3f}, i.e. {1 - min(dens):.0%} of the visible scores skipped)")
c.say("""No one pattern fits every head: the VS set misses head 2's topic blocks, head 1's band
alternates in sign token to token (the data is built that way), so BS's block averages cancel it,
and the A-shape cannot reach the retrieval columns of head 0 without covering nearly everything.
Lesson 9 picks per head.""")

# ---------------------------------------------------------------------------
c.say("""Step 4. Real attention. refattn.data.real runs the pretrained all-MiniLM-L6-v2 sentence
encoder in NumPy on a bundled public-domain text (Pride and Prejudice, chapter 1).""")
try:
    from refattn.data.real import LABEL, minilm_attention

    real = minilm_attention(max_tokens=512)
except ImportError as exc:
    real = None
    c.not_run("step 4 (real attention)", f"{exc}")
if real is not None:
    c.say(f"""Be clear what this is: {LABEL}. It has {real.layers} layers x {real.heads} heads, N =
{real.n_tokens} tokens, and attends in both directions.""")
    a = real.attn  # (layers, heads, N, N), the model's own (bidirectional) attention
    n_real = a.shape[-1]
    top_col = np.argmax(a.mean(axis=2), axis=-1)  # most attended key of each head
    cls_heads = int((top_col == 0).sum())
    c.show("heads whose most-attended key is [CLS] (token 0)", f"{cls_heads} of {top_col.size}")
    c.claim(cls_heads > top_col.size / 2, "in most heads the special token [CLS] is the strongest column: a "
            "vertical line")
    i, j = np.indices((n_real, n_real))
    band = np.abs(i - j) <= 4
    local = (a * band).sum(axis=-1).mean(axis=-1)  # mass within 4 tokens, per head
    c.show("share of entries within 4 tokens of the diagonal", f"{band.mean():.4f}")
    c.show("attention mass there, median head / most local head", f"{np.median(local):.3f} / {local.max():.3f}")
    c.claim(np.median(local) > 3 * band.mean(), "the median head puts over 3x the uniform share on the nearest "
            "diagonals: slashes")
    c.say("""MInference's patterns are causal, so the encoder's own Q and K are now masked causally (an
assumption for the lesson; the encoder itself was not trained that way). Densities for 95 % recall,
three heads of layer 2, block 64 (so N = 512 has only 8 x 8 tiles, 36 of them visible):""")
    real_sweeps = {
        "a_shape": [{"n_init": 64, "n_local": w} for w in range(64, 513, 64)],
        "vertical_slash": [{"vertical_size": s, "slash_size": max(s, 50)} for s in (30, 64, 128, 256, 512)],
        "block_sparse": [{"top_k": t} for t in range(1, 9)],
    }
    print(f"    {'layer 2 head':<14}{'A-shape':>9}{'VS':>9}{'BS':>9}")
    best_real = []
    for h in range(3):
        found = head_densities(*real.head(2, h)[:2], scale=real.scale, sweeps=real_sweeps)
        dens = [found[p]["density"] for p in names]
        best_real.append(min(dens))
        print(f"    {h:<14}" + "".join(f"{x:>9.3f}" for x in dens))
    c.claim(max(best_real) < 0.9, "each of these heads keeps 95 % of its causal mass with under 90 % of the tiles")
    c.say("""Real heads do carry the same shapes, but at 512 tokens a 64-wide tile is an eighth of the
sequence, so the savings are small. MInference targets prompts of 100k tokens and more, where a
window of a few thousand keys is a few percent of each row.""")

c.done(7)
