"""Lesson 1: naive attention and the softmax.

Attention takes three matrices for one head: queries Q (N x d), keys K (N x d)
and values V (N x d). N is the number of tokens, d the head dimension. Each
query row asks "which keys match me?": the score matrix S = scale * Q K^T
(N x N, scale = 1/sqrt(d)) holds every query-key dot product. The softmax turns
each row of S into probabilities, P[i, j] = exp(S[i, j]) / sum_j' exp(S[i, j'])
(each row of P sums to 1), and the output is O = P V, a weighted average of the
value rows.

The naive way stores S and P whole: two N x N matrices per head. This lesson
uses refattn's float64 reference (refattn.reference), which does exactly that,
to show (1) how big those matrices get, (2) why the naive softmax overflows on
large scores, and (3) the row-max trick that fixes it, plus the log-sum-exp,
a number the later lessons keep instead of P.
"""

import _course as c
import numpy as np
from scipy.special import logsumexp

from refattn.data import random_qkv
from refattn.reference import attention, attention_probs

c.intro(__doc__, "FlashAttention forward")

# ---------------------------------------------------------------------------
c.say("""Step 1. Compute attention with the reference on N = 6 tokens, d = 4, and look at P and O.""")
q, k, v = random_qkv(6, 4, dtype=np.float64, seed=1)
p, lse = attention_probs(q, k)
o, _ = attention(q, k, v)
np.set_printoptions(precision=3, suppress=True)
print("    P (6 x 6), row i = how much query i attends to each key:")
print("\n".join("      " + str(row) for row in p))
c.show("row sums of P", p.sum(axis=1))
c.claim(np.allclose(p.sum(axis=1), 1.0), "every row of P sums to 1 (it is a probability distribution)")
c.claim(np.allclose(o, p @ v), "O = P V: each output row is a P-weighted average of the value rows")

# ---------------------------------------------------------------------------
c.say("""Step 2. How big do S and P get? Both are N x N per head. In 16-bit floats (2 bytes) one
matrix of one head takes 2 N^2 bytes, while Q, K, V and O together take only 4 N d * 2 bytes.
The table prints both for d = 64.""")
d = 64
print(f"    {'N':>8} {'S or P, one head':>18} {'Q,K,V,O, one head':>19}")
sizes = {}
for n in (1_024, 4_096, 16_384, 65_536, 131_072):
    sizes[n] = 2 * n * n
    print(f"    {n:>8} {sizes[n] / 2**20:>15.0f} MiB {4 * n * d * 2 / 2**20:>15.1f} MiB")
c.claim(sizes[131_072] / sizes[65_536] == 4, "doubling N makes S and P four times larger (quadratic)")
c.claim(sizes[131_072] >= 32 * 2**30,
        "at N = 128k one score matrix of ONE head is 32 GiB, and a model has dozens of heads per layer")
c.say("""The inputs grow only linearly (N d), the scores quadratically (N^2). Keeping S and P is the
cost that FlashAttention (lesson 3) removes.""")

# ---------------------------------------------------------------------------
c.say("""Step 3. The naive softmax overflows. exp(x) is larger than the biggest float64 (about 1.8e308)
once x > 709.8. Scores that large happen when q and k have large entries. Below, q and k are
scaled by 40 so that some scores exceed 709; the textbook formula exp(S)/sum(exp(S)) is evaluated
with NumPy for comparison (this is the trap, not refattn's code).""")
q_big, k_big = 40 * q, 40 * k
s_big = (q_big @ k_big.T) / np.sqrt(q.shape[1])
c.show("largest score", float(s_big.max()))
with np.errstate(over="ignore", invalid="ignore"):
    naive = np.exp(s_big) / np.exp(s_big).sum(axis=1, keepdims=True)
c.show("rows of the naive softmax containing NaN", int(np.isnan(naive).any(axis=1).sum()))
c.claim(np.isnan(naive).any(), "the naive softmax gives NaN (inf / inf) on large scores")

c.say("""The row-max trick: softmax is unchanged when the same number is subtracted from a whole row,
because exp(s - m) / sum exp(s' - m) = exp(s) / sum exp(s'). Subtracting the row max m makes every
exponent <= 0, so nothing overflows, and the largest term is exp(0) = 1, so the sum is at least 1
and never 0. The reference does exactly this.""")
p_big, lse_big = attention_probs(q_big, k_big)
c.claim(np.all(np.isfinite(p_big)) and np.allclose(p_big.sum(axis=1), 1.0),
        "the reference (row max subtracted) stays finite on the same scores, rows still sum to 1")

# ---------------------------------------------------------------------------
c.say("""Step 4. The log-sum-exp. For each row, lse = log(sum_j exp(S[i, j])) = m + log(l), where m is
the row max and l = sum_j exp(S[i, j] - m) is the row sum after the shift. With lse in hand,
P[i, j] = exp(S[i, j] - lse[i]): one number per row is enough to rebuild P from S. That is why the
fast kernels store lse (N numbers) instead of P (N^2 numbers). Here the reference's lse is
compared with SciPy's independent logsumexp.""")
s = (q @ k.T) / np.sqrt(q.shape[1])
c.show("lse of the 6 rows", lse)
c.claim(np.allclose(lse, logsumexp(s, axis=1)), "refattn's lse equals SciPy's logsumexp of each row of S")
c.claim(np.allclose(p, np.exp(s - lse[:, None])), "P = exp(S - lse): the lse rebuilds P from S")
c.claim(np.allclose(lse_big, logsumexp(s_big, axis=1)), "lse is also exact for the huge scores of step 3")

c.done(1)
