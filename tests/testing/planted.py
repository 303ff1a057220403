"""Tiled NumPy attention kernels as a kernel author writes them, and copies each carrying one realistic bug.

``tiled_attention`` is FlashAttention-2's forward loop over key tiles of
``tile`` columns (running max ``m``, sum ``l`` and an unnormalised
accumulator), with the head dim processed in vectors of ``VECTOR`` lanes;
``tiled_backward`` is its backward over the same tiles, from the forward's lse.
Both work in float32 for float32 inputs (float64 for float64) and return the
input's dtype. Each planted bug changes one thing:

==========================  ==========================================================  =====
bug                         what the code does wrong                                    tile
==========================  ==========================================================  =====
``inter_tile_rescale``      rescales the running sum/accumulator by e^(m_new - m_old),  128
                            the inverted factor, between key tiles
``last_partial_tile``       pads the last key tile with zeros and forgets to mask the   64
                            padded keys (they score 0 and weigh in the softmax)
``causal_off_by_one``       the shifted-diagonal path (Nq != Nk) uses j < i + offset;   32
                            the square path is right
``head_dim_tail``           drops the head-dim tail past the last full 8-lane vector    16
                            in q.k (only when d > 8)
``scale_past_d128``         head dims above 128 run as 128-wide passes and the default  128
                            scale is taken from the pass width: 1/sqrt(128)
``finite_mask_fill``        fills masked scores with -1e4 instead of -inf               64
``output_dtype``            returns float64 for float32 inputs                          32
``in_place``                pre-scales the caller's q in place (q *= scale)             16
``lse_log2``                returns lse in base-2 logarithms (an exp2 kernel)           128
``nan_rows``                divides by l = 0 on fully masked rows (NaN)                 32
``dk_missing_scale``        the backward's dk = dS^T Q without the softmax scale        64
==========================  ==========================================================  =====

``KERNELS`` maps a name to each kernel: ``good[16]`` .. ``good[128]`` and
``<bug>[<tile>]`` for every bug at its tile (plus the tile-sensitive bugs at
every tile width, in ``ALL_TILES``). Every kernel has ``.backward``, so the
kit checks gradients by default.
"""

import math

import numpy as np

VECTOR = 8
TILES = (16, 32, 64, 128)
BUG_TILE = {
    "inter_tile_rescale": 128, "last_partial_tile": 64, "causal_off_by_one": 32, "head_dim_tail": 16,
    "scale_past_d128": 128, "finite_mask_fill": 64, "output_dtype": 32, "in_place": 16, "lse_log2": 128,
    "nan_rows": 32, "dk_missing_scale": 64,
}
BUGS = tuple(BUG_TILE)
TILE_SENSITIVE = ("inter_tile_rescale", "last_partial_tile")


def _keep(nq, nk, lead, causal, mask, bug):
    keep = np.ones((nq, nk), bool) if mask is None else np.asarray(mask, bool)
    if causal:
        offset = nk - nq if causal in (True, "bottom_right") else 0
        i, j = np.arange(nq)[:, None], np.arange(nk)[None, :]
        diagonal = j <= i + offset
        if bug == "causal_off_by_one" and nq != nk:
            diagonal = j < i + offset
        keep = keep & diagonal
    return np.broadcast_to(keep, lead + (nq, nk))


def _scale(d, scale, bug):
    if scale is not None:
        return scale
    if bug == "scale_past_d128" and d > 128:
        return 1.0 / math.sqrt(128)
    return 1.0 / math.sqrt(d)


def _scores(q, kj, bug):
    """q . k over the head dim in VECTOR-lane chunks, then the tail."""
    d = q.shape[-1]
    full = d // VECTOR * VECTOR
    s = q[..., :full] @ np.swapaxes(kj[..., :full], -1, -2)
    if bug == "head_dim_tail" and d > VECTOR:
        return s
    return s + q[..., full:] @ np.swapaxes(kj[..., full:], -1, -2)


def tiled_attention(q, k, v, *, causal=False, scale=None, mask=None, tile=64, bug=None):
    in_dtype = q.dtype
    work = np.float64 if in_dtype == np.float64 else np.float32
    d = q.shape[-1]
    scale = _scale(d, scale, bug)
    if bug == "in_place":
        q *= q.dtype.type(scale)  # saves a multiply per score... on the caller's array
        scale = 1.0
    q, k, v = (np.asarray(x, work) for x in (q, k, v))
    nq, nk = q.shape[-2], k.shape[-2]
    lead = np.broadcast_shapes(q.shape[:-2], k.shape[:-2])
    keep = _keep(nq, nk, lead, causal, mask, bug)
    fill = -1e4 if bug == "finite_mask_fill" else -np.inf
    m = np.full(lead + (nq, 1), -np.inf, work)
    l = np.zeros(lead + (nq, 1), work)
    acc = np.zeros(lead + (nq, v.shape[-1]), work)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        for j0 in range(0, nk, tile):
            kj, vj, keep_j = k[..., j0:j0 + tile, :], v[..., j0:j0 + tile, :], keep[..., j0:j0 + tile]
            if bug == "last_partial_tile" and kj.shape[-2] < tile:  # pad to a full tile...
                pad = tile - kj.shape[-2]
                kj = np.concatenate([kj, np.zeros(kj.shape[:-2] + (pad, d), work)], axis=-2)
                vj = np.concatenate([vj, np.zeros(vj.shape[:-2] + (pad, vj.shape[-1]), work)], axis=-2)
                keep_j = np.concatenate([keep_j, np.ones(keep_j.shape[:-1] + (pad,), bool)], axis=-1)  # ...unmasked
            s = work(scale) * _scores(q, kj, bug)
            s = np.where(keep_j, s, work(fill))
            m_new = np.maximum(m, s.max(axis=-1, keepdims=True))
            shift = np.where(np.isneginf(m_new), 0.0, m_new).astype(work)  # fully masked so far: shift by 0
            p = np.exp(s - shift)
            alpha = np.exp(m - shift)
            if bug == "inter_tile_rescale":
                alpha = np.exp(shift - m)  # the FA2 paper's erratum: the factor inverted
                alpha = np.where(np.isfinite(alpha), alpha, 0.0).astype(work)
            l = alpha * l + p.sum(axis=-1, keepdims=True)
            acc = alpha * acc + p @ vj
            m = m_new
        if bug == "nan_rows":
            o = acc / l
        else:
            o = np.where(l > 0, acc / np.where(l > 0, l, 1.0), 0.0)
        m0 = np.where(np.isneginf(m), 0, m)[..., 0]
        lse = np.where(l[..., 0] > 0, m0 + np.log(l[..., 0]), -np.inf)
        if bug == "lse_log2":
            lse = lse / np.log(2.0)
    out_dtype = np.float64 if bug == "output_dtype" else in_dtype
    return o.astype(out_dtype), lse.astype(out_dtype)


def tiled_backward(q, k, v, do, *, causal=False, scale=None, mask=None, tile=64, bug=None):
    """dq, dk, dv over key tiles from the forward's lse (FlashAttention-2's backward, one pass per tile)."""
    in_dtype = q.dtype
    work = np.float64 if in_dtype == np.float64 else np.float32
    fwd_bug = None if bug == "dk_missing_scale" else bug
    o, lse = tiled_attention(q.copy(), k, v, causal=causal, scale=scale, mask=mask, tile=tile, bug=fwd_bug)
    q, k, v, do, o = (np.asarray(x, work) for x in (q, k, v, do, o))
    lse = np.asarray(lse, work)[..., None]
    scale = work(_scale(q.shape[-1], scale, bug))
    nq, nk = q.shape[-2], k.shape[-2]
    lead = np.broadcast_shapes(q.shape[:-2], k.shape[:-2])
    keep = _keep(nq, nk, lead, causal, mask, bug)
    delta = np.sum(do * o, axis=-1, keepdims=True)
    dq = np.zeros(lead + q.shape[-2:], work)
    dk = np.zeros(lead + k.shape[-2:], work)
    dv = np.zeros(lead + v.shape[-2:], work)
    with np.errstate(invalid="ignore", over="ignore"):
        for j0 in range(0, nk, tile):
            kj, vj = k[..., j0:j0 + tile, :], v[..., j0:j0 + tile, :]
            s = scale * (q @ np.swapaxes(kj, -1, -2))
            p = np.where(keep[..., j0:j0 + tile] & np.isfinite(lse), np.exp(s - lse), 0.0).astype(work)
            dv[..., j0:j0 + tile, :] = np.swapaxes(p, -1, -2) @ do
            ds = p * (do @ np.swapaxes(vj, -1, -2) - delta)
            dq += scale * (ds @ kj)
            dk_j = np.swapaxes(ds, -1, -2) @ q
            dk[..., j0:j0 + tile, :] = dk_j if bug == "dk_missing_scale" else scale * dk_j
    return tuple(x.astype(in_dtype) for x in (dq, dk, dv))


def kernel(tile, bug=None):
    """The tiled kernel with ``tile``-wide key tiles and ``bug`` (None: correct), with its ``.backward``."""
    def fn(q, k, v, *, causal=False, scale=None, mask=None):
        return tiled_attention(q, k, v, causal=causal, scale=scale, mask=mask, tile=tile, bug=bug)

    def backward(q, k, v, do, *, causal=False, scale=None, mask=None):
        return tiled_backward(q, k, v, do, causal=causal, scale=scale, mask=mask, tile=tile, bug=bug)

    fn.__qualname__ = f"{bug or 'good'}[{tile}]"
    fn.backward = backward
    return fn


KERNELS = {f"good[{t}]": kernel(t) for t in TILES}
KERNELS.update({f"{bug}[{t}]": kernel(t, bug) for bug, t in BUG_TILE.items()})
ALL_TILES = {f"{bug}[{t}]": kernel(t, bug) for bug in TILE_SENSITIVE for t in TILES}
BROKEN = {bug: KERNELS[f"{bug}[{t}]"] for bug, t in BUG_TILE.items()}
good = KERNELS["good[64]"]
good_128 = KERNELS["good[128]"]
inter_tile_rescale = BROKEN["inter_tile_rescale"]
nan_rows = BROKEN["nan_rows"]
