"""Lesson 2: the online softmax, one pass with a running max and a running sum.

Lesson 1 computed the softmax of a row of scores in two passes: first the row
max m, then the sum l = sum_j exp(s_j - m). Both need the whole row. The online
softmax reads the row in chunks (say 4 keys at a time) and keeps three running
values per query row:

    m  the largest score seen so far,
    l  the sum of exp(s_j - m) over the keys seen so far,
    o  the sum of exp(s_j - m) * v_j over the keys seen so far (unnormalised output).

When a new chunk raises the max from m_old to m_new, everything accumulated so
far was computed with the wrong shift. It is repaired by one multiplication:
exp(s - m_old) * exp(m_old - m_new) = exp(s - m_new). So

    l <- exp(m_old - m_new) * l + sum_chunk exp(s_j - m_new)
    o <- exp(m_old - m_new) * o + sum_chunk exp(s_j - m_new) * v_j

and at the end O = o / l. The rescaling is an identity, not an approximation:
the result is exact. This is the heart of FlashAttention: the chunks become
tiles of K and V that fit on chip (lesson 3). Here the running values are
written out for one row, then checked against the float64 reference and
against the state that refattn's FlashAttention-2 kernel holds after each tile.
"""

import _course as c
import numpy as np

import refattn
from refattn.data import random_qkv
from refattn.reference import attention

c.intro(__doc__, "FlashAttention forward")

n_q, n_k, d, chunk = 4, 16, 8, 4
q, k, v = random_qkv(n_q, d, nk=n_k, dtype=np.float64, seed=2)
scale = 1 / np.sqrt(d)

c.say(f"""Step 1. One query row (row 0), {n_k} keys read in chunks of {chunk}. After each chunk the
table prints the running max m, the running sum l, and the rescaling factor exp(m_old - m_new)
applied to what was accumulated before (1.0 when the max did not change).""")
s = scale * (q[0] @ k.T)  # the 16 scores of row 0 (what a kernel computes one chunk at a time)
m, l, o = -np.inf, 0.0, np.zeros(d)
history = []
print(f"    {'keys':>7} {'chunk max':>10} {'m':>8} {'factor':>8} {'l':>8}")
for j0 in range(0, n_k, chunk):
    sj = s[j0:j0 + chunk]
    m_new = max(m, sj.max())
    factor = np.exp(m - m_new)  # exp(-inf) = 0 on the first chunk: nothing accumulated yet
    p_tilde = np.exp(sj - m_new)
    l = factor * l + p_tilde.sum()
    o = factor * o + p_tilde @ v[j0:j0 + chunk]
    m = m_new
    history.append((m, l))
    print(f"    {j0:>3}-{j0 + chunk - 1:<3} {sj.max():>10.4f} {m:>8.4f} {factor:>8.4f} {l:>8.4f}")

o_ref, lse_ref = attention(q, k, v)
c.claim(np.allclose(o / l, o_ref[0], rtol=0, atol=1e-14), "o / l after the last chunk equals the reference output row")
c.claim(np.isclose(m + np.log(l), lse_ref[0]), "m + log(l) equals the reference log-sum-exp (lesson 1)")
c.claim(m == s.max() and np.isclose(l, np.exp(s - s.max()).sum()),
        "the running m and l end as the two-pass values: row max and shifted sum")

# ---------------------------------------------------------------------------
c.say("""Step 2. Why the rescaling is exact: split the keys into two halves, compute exact attention
on each half with the reference, and merge with the two log-sum-exps. With L = log(e^La + e^Lb),
the merged output is O = e^(La - L) Oa + e^(Lb - L) Ob: the same repair, one level up. Nothing
about the split is approximate, so the merge equals attention over all keys to rounding.""")
oa, la = attention(q, k[:8], v[:8])
ob, lb = attention(q, k[8:], v[8:])
L = np.logaddexp(la, lb)
merged = np.exp(la - L)[:, None] * oa + np.exp(lb - L)[:, None] * ob
err = np.abs(merged - o_ref).max()
c.show("largest difference between the merged halves and attention over all keys", f"{err:.1e}")
c.claim(err < 1e-14 and np.allclose(L, lse_ref), "merging two exact halves by their lse gives exact attention")

# ---------------------------------------------------------------------------
c.say(f"""Step 3. The same running state inside refattn's FlashAttention-2 kernel (refattn.flash_forward,
variant "fa2") on the simulated memory hierarchy. With tiles of {n_q} queries x {chunk} keys there
are {n_k // chunk} steps, one per key tile; stop_after=k stops after tile k and returns the kernel's
m and l for its query rows. sram=4096 is the simulated on-chip memory in elements (lesson 3).""")
for step, (m_hand, l_hand) in enumerate(history, start=1):
    r = refattn.flash_forward(q, k, v, sram=4096, variant="fa2", block=(n_q, chunk), stop_after=step)
    st = r.state
    m_k, l_k = st.arrays["m"], st.arrays["l"]
    print(f"    after tile {step}: kernel m[0] = {m_k[0]:.4f}, l[0] = {l_k[0]:.4f}; "
          f"keys {st.cols[0]}-{st.cols[1] - 1} just read")
    c.claim(np.isclose(m_k[0], m_hand) and np.isclose(l_k[0], l_hand),
            f"tile {step}: the kernel's m and l for row 0 equal the hand-written running values")
full = refattn.flash_forward(q, k, v, sram=4096, variant="fa2", block=(n_q, chunk))
c.claim(np.allclose(full.o, o_ref, atol=1e-13), "the full kernel output equals the reference for all 4 rows")
c.say("""The kernel never held more than one tile of scores: 4 x 4 = 16 numbers instead of the 4 x 16
score matrix. Lesson 3 counts what that saves in memory traffic.""")

c.done(2)
