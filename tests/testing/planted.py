"""A small tiled online-softmax kernel in NumPy, and deliberately broken copies of it.

``tiled_attention`` is FlashAttention-2's loop (key blocks of ``BLOCK``
columns, running max ``m``, sum ``l``, unnormalised accumulator) written
plainly; each planted bug changes one line of it. The kit must pass the good
one and catch every broken one within its default example budget.
"""

import numpy as np

from refattn.reference import combined_mask

BLOCK = 4


def tiled_attention(q, k, v, *, causal=False, scale=None, mask=None, bug=None):
    dtype = q.dtype
    q, k, v = (np.asarray(x, np.float64 if dtype == np.float64 else np.float32) for x in (q, k, v))
    nq, nk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    scale = 1.0 / np.sqrt(d) if scale is None else scale
    lead = np.broadcast_shapes(q.shape[:-2], k.shape[:-2])
    offset = nk - nq if causal in (True, "bottom_right") else 0
    if bug == "causal_off_by_one":
        offset -= 1  # j < i + offset instead of j <= i + offset
    keep = combined_mask(nq, nk, False, mask)
    keep = np.ones((nq, nk), bool) if keep is None else keep
    if causal:
        keep = keep & (np.arange(nk)[None, :] <= np.arange(nq)[:, None] + offset)
    keep = np.broadcast_to(keep, lead + (nq, nk))
    m = np.full(lead + (nq, 1), -np.inf, q.dtype)
    l = np.zeros(lead + (nq, 1), q.dtype)
    acc = np.zeros(lead + (nq, v.shape[-1]), q.dtype)
    n_blocks = nk // BLOCK if bug == "drop_last_partial_block" else -(-nk // BLOCK)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        for j0 in range(0, n_blocks * BLOCK, BLOCK):
            kj, vj = k[..., j0:j0 + BLOCK, :], v[..., j0:j0 + BLOCK, :]
            s = scale * (q @ np.swapaxes(kj, -1, -2))
            s = np.where(keep[..., j0:j0 + BLOCK], s, -np.inf)
            if bug == "no_max_subtraction":
                m_new = np.zeros_like(m)
            else:
                m_new = np.maximum(m, s.max(axis=-1, keepdims=True))
            shift = np.where(np.isneginf(m_new), 0.0, m_new)  # fully masked so far: shift by 0
            p = np.exp(s - shift)
            alpha = np.exp(m - shift)
            if bug == "inverted_rescale":
                alpha = np.exp(shift - m)  # the FA2 paper's erratum: the factor inverted
                alpha = np.where(np.isfinite(alpha), alpha, 0.0)
            l = alpha * l + p.sum(axis=-1, keepdims=True)
            acc = alpha * acc + p @ vj
            m = m_new
        if bug == "nan_on_masked_rows":
            o = acc / l
        else:
            o = np.where(l > 0, acc / np.where(l > 0, l, 1.0), 0.0)
        lse = np.where(l[..., 0] > 0, np.where(np.isneginf(m), 0, m)[..., 0] + np.log(l[..., 0]), -np.inf)
    return o.astype(dtype), lse.astype(dtype)


def good(q, k, v, *, causal=False, scale=None, mask=None):
    return tiled_attention(q, k, v, causal=causal, scale=scale, mask=mask)


def _broken(bug):
    def fn(q, k, v, *, causal=False, scale=None, mask=None):
        return tiled_attention(q, k, v, causal=causal, scale=scale, mask=mask, bug=bug)

    fn.__qualname__ = f"tiled_attention[{bug}]"
    return fn


BUGS = ("no_max_subtraction", "inverted_rescale", "causal_off_by_one", "nan_on_masked_rows",
        "drop_last_partial_block")
BROKEN = {bug: _broken(bug) for bug in BUGS}
no_max_subtraction = BROKEN["no_max_subtraction"]
nan_on_masked_rows = BROKEN["nan_on_masked_rows"]
