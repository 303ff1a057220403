"""Lesson 8: dynamic index building. Vertical-slash indices from the last 64 queries.

Lesson 7's vertical-slash (VS) pattern keeps a few key columns and a few
diagonals. Which ones depends on the prompt: the token every later query looks
back at (a name, a number to retrieve) sits at a different position in every
prompt. MInference therefore builds the VS index set *online*, for each prompt
and head, from a cheap estimate:

  1. take the last 64 queries (last_q = 64) and compute their exact causal
     attention to all N keys: A = softmax(scale * Q[-64:] K^T), 64 x N, float32;
  2. vertical score of key column c = sum of A[:, c] over those 64 rows;
     slash score of diagonal offset delta = sum of A along the diagonal where
     query position - key position = delta;
  3. keep the top vertical_size columns and top slash_size diagonals. The
     first 30 columns and the nearest 100 diagonals are always kept (sinks and
     the local neighbourhood), and count towards the sizes;
  4. turn columns and diagonals into an index set (lesson 7): diagonals become
     key blocks, columns outside those blocks become single columns.

The estimate costs 64 x N scores instead of the N^2 / 2 of causal attention.
This lesson builds it with refattn.patterns.vertical_slash, checks that it
finds the planted columns, measures recall against density (both defined in
lesson 7), and shows why an index set built for one prompt fails on another.
"""

import _course as c
import numpy as np

from refattn.data.synthetic import structured_qkv
from refattn.patterns import vertical_slash
from refattn.patterns.metrics import recall
from refattn.reference import attention_probs

c.intro(__doc__, "MInference")

n = 2048
q, k, v, desc = structured_qkv(n, 64, 1, seed=0, kinds=("vertical_slash",))
q, k = q[0], k[0]  # one head, (N, 64) each
planted = desc[0]["retrieval"]

# ---------------------------------------------------------------------------
c.say(f"""Step 1. One VS-shaped head of structured synthetic data (lesson 7), N = {n}, seed 0. Its
planted retrieval columns (keys every later query attends to) are at {planted}; keys 0-3 are
sinks. Build the index with vertical_size = 64 and slash_size = 64.""")
res = vertical_slash(q, k, vertical_size=64, slash_size=64)
c.show("estimate shape (last queries x keys)", res.estimate.shape)
c.claim(res.estimate.shape == (64, n) and np.allclose(res.estimate.sum(axis=1), 1, atol=1e-5),
        "the estimate is 64 rows of causal softmax probabilities (each row sums to 1)")
share = 64 * n / (n * (n + 1) / 2)
c.show("estimate scores / causal attention scores", f"64 x {n} / ({n} x {n + 1} / 2) = {share:.4f}")
c.say(f"""That share is 128 / (N + 1): {share:.1%} here, 0.01 % for a 1M-token prompt. It is cheap, but not
free: MInference reports that index building takes 5-30 % of the prefill time.""")
vs = res.vertical_scores
median = float(np.median(vs))
c.show("vertical score of the planted columns", np.round(vs[planted], 2))
c.show("median vertical score of all columns", f"{median:.4f}")
c.claim(set(planted) <= set(res.columns.tolist()), "all 8 planted retrieval columns are among the 64 chosen columns")
c.claim(min(vs[planted]) > 100 * median, "each planted column scores over 100x the median column")
ss = res.slash_scores
top_diag = np.argsort(-ss)[:8]
c.show("slash scores of offsets 0-7 (the planted band)", np.round(ss[:8], 3))
c.show("median slash score of all offsets", f"{np.median(ss):.5f}")
c.claim(min(ss[:8]) > 10 * np.median(ss), "each diagonal of the planted band scores over 10x the median diagonal")
c.show("the 8 best-scoring offsets", top_diag)
c.say(f"""The best offsets need not be the band: a strong column crosses the 64 estimated rows on 64
neighbouring diagonals and lends them its mass (the sinks, seen from the last rows, sit at offsets about
{n - 64}..{n - 1}). Keeping such diagonals is cheap, and the forced nearest 100 offsets cover the band
anyway.""")

# ---------------------------------------------------------------------------
c.say("""Step 2. Recall against density as the sizes grow (refattn.patterns.metrics.recall, float64
reference). The first 30 columns and nearest 100 diagonals go in first, as far as the sizes allow
(they count towards them); sizes below 30 columns or 50 diagonals are raised to that minimum.""")
print(f"    {'vertical_size':>14} {'slash_size':>11} {'density':>8} {'recall':>7}  planted columns found")
rows = []
for vsize, ssize in ((30, 50), (64, 64), (128, 128), (256, 256), (512, 512)):
    r = vertical_slash(q, k, vsize, ssize)
    found = int(np.isin(planted, r.columns).sum())
    rows.append((r.index_set.density(), recall(q, k, r.index_set), set(r.columns.tolist()), found))
    print(f"    {vsize:>14} {ssize:>11} {rows[-1][0]:>8.3f} {rows[-1][1]:>7.3f}  {found} of {len(planted)}")
c.say(f"""With vertical_size = 30 every column slot is taken by the 30 forced sink columns, so no
retrieval column fits and recall stays at {rows[0][1]:.2f}. From 64 columns on, the planted ones are in and
recall passes 0.95 at an eighth of the scores. Past that, density climbs fast (more diagonals mean more
tiles) for little extra recall.""")
c.claim(rows[0][3] == 0 and rows[1][3] == len(planted), "30 columns find no retrieval column; 64 find all of them")
c.claim(all(a[2] <= b[2] for a, b in zip(rows, rows[1:])) and all(a[1] <= b[1] + 1e-12 for a, b in zip(rows, rows[1:])),
        "larger sizes keep a superset of the columns (top-k of the same scores), so recall never drops")
c.claim(rows[1][1] >= 0.95 and rows[1][0] < 0.15, "64 + 64 keeps at least 95 % of the mass at under 15 % density")

# ---------------------------------------------------------------------------
q2, k2, _, desc2 = structured_qkv(n, 64, 1, seed=1, kinds=("vertical_slash",))
q2, k2 = q2[0], k2[0]
c.say(f"""Step 3. Why not build the index once, offline, and reuse it? A second prompt (seed 1) of the
same kind has its retrieval columns elsewhere: {desc2[0]['retrieval']}. Apply the index set built on
prompt 1 to prompt 2 (static), and compare with the set built on prompt 2 itself (dynamic).""")
static = recall(q2, k2, res.index_set)
dyn_res = vertical_slash(q2, k2, 64, 64)
dynamic = recall(q2, k2, dyn_res.index_set)
c.show("recall on prompt 2, static (prompt 1's index)", f"{static:.3f} at density {res.index_set.density():.3f}")
c.show("recall on prompt 2, dynamic (its own index)", f"{dynamic:.3f} at density {dyn_res.index_set.density():.3f}")
c.claim(dynamic >= 0.95 and static < dynamic - 0.05,
        "the static index loses recall on a new prompt (over 5 points); the dynamic one keeps >= 95 %")
ret2 = desc2[0]["retrieval"]
p2 = attention_probs(q2, k2, causal=True)[0]  # float64 (N, N), prompt 2
on_ret = p2[:, ret2].sum(axis=1).mean()  # mass per row on prompt 2's retrieval columns
kept_static = (p2 * res.index_set.to_mask())[:, ret2].sum(axis=1).mean() / on_ret
kept_dynamic = (p2 * dyn_res.index_set.to_mask())[:, ret2].sum(axis=1).mean() / on_ret
c.show("prompt 2: attention mass per row on its 8 retrieval columns", f"{on_ret:.3f}")
c.show("share of that mass kept, static / dynamic", f"{kept_static:.3f} / {kept_dynamic:.3f}")
c.claim(kept_static < 0.3 and kept_dynamic > 0.95,
        "the static index keeps under 30 % of the retrieval mass (only where its tiles happen to cover a column); "
        "the dynamic one keeps over 95 %")
c.say("""The sinks and the local band are the same in both prompts, so the static set still keeps
those; what it loses is exactly the retrieval columns, the information a long-context question
needs. MInference reports the same on LLaMA-3 at 128k tokens: the top 4k columns of a prompt keep
96.8 % of its attention mass, the same columns reused on another prompt only 83.7 %.""")

c.done(8)
