"""Float64 ground truth for attention: forward, backward and masks.

Everything else in refattn is tested against this module, so it is written
for clarity, not speed: it materialises the full (Nq, Nk) score matrix.

Conventions (see README):

* Shapes ``q (..., Nq, d)``, ``k (..., Nk, d)``, ``v (..., Nk, dv)``; the
  leading dims (batch, heads) must be equal or broadcastable.
* ``scale`` defaults to ``1/sqrt(d)``.
* ``causal=True`` or ``causal="bottom_right"``: key ``j`` is visible to query
  ``i`` iff ``j <= i + Nk - Nq`` (FlashAttention >= 2.1).
  ``causal="top_left"``: ``j <= i`` (PyTorch's ``is_causal``).
* ``mask`` is a boolean array broadcastable to ``(..., Nq, Nk)``; True means
  *keep*. It is combined (logical and) with the causal mask.
* A row with no visible key gives output 0 and log-sum-exp -inf, never NaN.
* The log-sum-exp is in natural-log units: ``lse = m + log(l)``.
* Variants (keyword arguments of every function here; semantics and sources
  in ``docs/variants.md``, helpers in :mod:`refattn.variants`):
  ``num_kv_heads`` (GQA/MQA: query head h reads KV head ``h // (Hq/Hkv)``),
  ``window=(left, right)`` (key j visible iff
  ``i + Nk - Nq - left <= j <= i + Nk - Nq + right``; -1/None unbounded; and-ed
  with causal), ``softcap`` (scores -> ``softcap * tanh(s / softcap)``, before
  mask and bias; None or 0 = off), ``alibi_slopes`` (bias
  ``-slope * |i + Nk - Nq - j|``, one slope per head), ``cu_seqlens_q`` /
  ``cu_seqlens_k`` (packed variable-length batch; padding rows give 0 and
  lse -inf), ``bias`` (a finite additive score bias, added with ALiBi's).
  The lse is that of the final scores (capped, biased, masked).

Math (docs/algorithms.md)::

    S = scale * Q K^T            (masked entries excluded)
    P = softmax(S) row-wise      (row max subtracted before exp)
    O = P V,   lse = m + log(sum_j exp(S_ij - m))
    dV = P^T dO;  dP = dO V^T;  D = rowsum(dO * O);  dS = P * (dP - D)
    dQ = scale * dS K;  dK = scale * dS^T Q
"""

from __future__ import annotations

import numpy as np

from refattn.validation import CAUSAL_MODES, check_attention_inputs, check_scale, normalize_causal, unbroadcast
from refattn.variants import (
    alibi_bias,
    apply_softcap,
    check_variants,
    expand_kv,
    group_sum,
    normalize_window,
    softcap_grad_factor,
    variant_keep,
)

__all__ = [
    "CAUSAL_MODES",
    "attention",
    "attention_backward",
    "attention_probs",
    "causal_mask",
    "combined_mask",
]


def causal_mask(nq: int, nk: int, alignment: str = "bottom_right") -> np.ndarray:
    """Boolean (nq, nk) mask, True where key j is visible to query i.

    ``bottom_right``: ``j <= i + nk - nq`` (FlashAttention >= 2.1).
    ``top_left``: ``j <= i`` (PyTorch ``is_causal``).
    """
    alignment = normalize_causal(alignment)
    offset = nk - nq if alignment == "bottom_right" else 0
    i = np.arange(nq)[:, None]
    j = np.arange(nk)[None, :]
    return j <= i + offset


def combined_mask(nq: int, nk: int, causal=False, mask=None, *, window=None, cu_seqlens_q=None,
                  cu_seqlens_k=None) -> np.ndarray | None:
    """The keep-mask that ``causal``, ``window``, the ``cu_seqlens`` and ``mask`` together describe,
    or None if all kept."""
    mode = normalize_causal(causal)
    out = None
    window = normalize_window(window, "reference.combined_mask")
    if window is not None or cu_seqlens_q is not None:
        out = variant_keep(nq, nk, mode, window, cu_seqlens_q, cu_seqlens_k)
    elif mode is not None:
        out = causal_mask(nq, nk, mode)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        out = mask if out is None else (out & mask)
    return out


def attention_probs(q, k, *, scale=None, causal=False, mask=None, num_kv_heads=None, window=None, softcap=None,
                    alibi_slopes=None, cu_seqlens_q=None, cu_seqlens_k=None, bias=None):
    """Return ``(P, lse)``: the float64 softmax probabilities and log-sum-exp.

    P has shape ``(..., Nq, Nk)``; rows with no visible key are all zero and
    their lse is -inf. Variant keywords as in :func:`attention`.
    """
    var = check_variants(q, k, k, num_kv_heads=num_kv_heads, window=window, softcap=softcap,
                         alibi_slopes=alibi_slopes, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                         bias=bias, where="reference.attention_probs")
    q64, k64, _ = _as64(q, k, None)
    if var.num_kv_heads is not None:
        k64 = expand_kv(k64, q64.shape[-3])
    p, lse, _ = _probs(q64, k64, _default_scale(q64.shape[-1], scale), causal, mask, var)
    return p, lse


def _probs(q64, k64, scale, causal, mask, var):
    """Softmax of the final scores; also returns the capped scores (for the softcap gradient)."""
    nq, nk = q64.shape[-2], k64.shape[-2]
    keep = combined_mask(nq, nk, causal, mask, window=var.window, cu_seqlens_q=var.cu_seqlens_q,
                         cu_seqlens_k=var.cu_seqlens_k)
    capped = apply_softcap(scale * np.einsum("...id,...jd->...ij", q64, k64), var.softcap)
    s = capped
    if var.alibi_slopes is not None:
        s = s + alibi_bias(var.alibi_slopes, nq, nk, var.cu_seqlens_q, var.cu_seqlens_k)
    if var.bias is not None:
        s = s + var.bias
    if keep is not None:
        s = np.where(keep, s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    # A fully masked row has m = -inf: shift by 0 instead so exp(-inf) = 0.
    m_safe = np.where(np.isneginf(m), 0.0, m)
    p_unnorm = np.exp(s - m_safe)
    l = p_unnorm.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(l > 0, p_unnorm / np.where(l > 0, l, 1.0), 0.0)
        lse = np.where(l[..., 0] > 0, m_safe[..., 0] + np.log(np.where(l[..., 0] > 0, l[..., 0], 1.0)), -np.inf)
    return p, lse, capped


def _checked(q, k, v, where, mask, causal, **variants):
    """Check inputs and variants; return ``(var, q64, k64, v64)`` with k, v expanded to the query heads."""
    var = check_variants(q, k, v, where=where, **variants)
    if var.num_kv_heads is not None:
        hq = np.shape(q)[-3]
        k, v = expand_kv(np.asarray(k), hq), expand_kv(np.asarray(v), hq)
    check_attention_inputs(q, k, v, mask=mask, causal=causal, where=where)
    return (var, *_as64(q, k, v))


def attention(q, k, v, *, scale=None, causal=False, mask=None, num_kv_heads=None, window=None, softcap=None,
              alibi_slopes=None, cu_seqlens_q=None, cu_seqlens_k=None, bias=None):
    """Exact attention in float64. Returns ``(o, lse)``.

    ``o``: ``(..., Nq, dv)`` float64; ``lse``: ``(..., Nq)`` float64 (natural log).
    Variants (module docstring, ``docs/variants.md``): ``num_kv_heads``
    (q ``(..., Hq, Nq, d)``, k and v ``(..., Hkv, Nk, .)``), ``window``,
    ``softcap``, ``alibi_slopes`` (broadcast over the leading dims, last axis =
    query heads), ``cu_seqlens_q`` / ``cu_seqlens_k`` (packed tokens on axis -2),
    ``bias`` (finite, broadcastable to ``(..., Nq, Nk)``, added to the scores
    after the softcap, with the ALiBi bias).
    """
    var, q64, k64, v64 = _checked(q, k, v, "reference.attention", mask, causal, num_kv_heads=num_kv_heads,
                                  window=window, softcap=softcap, alibi_slopes=alibi_slopes,
                                  cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, bias=bias)
    p, lse, _ = _probs(q64, k64, _default_scale(q64.shape[-1], scale), causal, mask, var)
    o = np.einsum("...ij,...jd->...id", p, v64)
    return o, lse


def attention_backward(q, k, v, do, *, scale=None, causal=False, mask=None, num_kv_heads=None, window=None,
                       softcap=None, alibi_slopes=None, cu_seqlens_q=None, cu_seqlens_k=None, bias=None):
    """Exact gradients of ``sum(O * dO)`` in float64. Returns ``(dq, dk, dv)``.

    ``do`` has the shape of the output o (leading dims broadcast from q, k, v);
    each gradient has the shape of its input (summed over broadcast dims).
    Variant keywords as in :func:`attention`. With softcap the score gradient
    is multiplied by ``1 - tanh^2(s / softcap)``; with GQA the gradients of the
    query heads of a group are summed onto their KV head.
    """
    var, q64, k64, v64 = _checked(q, k, v, "reference.attention_backward", mask, causal,
                                  num_kv_heads=num_kv_heads, window=window, softcap=softcap,
                                  alibi_slopes=alibi_slopes, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                                  bias=bias)
    do64 = np.asarray(do, dtype=np.float64)
    lead = np.broadcast_shapes(q64.shape[:-2], k64.shape[:-2], v64.shape[:-2])
    expected = lead + (q64.shape[-2], v64.shape[-1])  # the shape of o (leading dims broadcast)
    try:
        bad = np.broadcast_shapes(do64.shape, expected) != expected or do64.ndim != len(expected)
    except ValueError:  # shapes that do not broadcast at all
        bad = True
    if bad:
        raise ValueError(
            f"reference.attention_backward: do has shape {do64.shape}, expected {expected} (the shape of o)")
    if not np.all(np.isfinite(do64)):
        raise ValueError("reference.attention_backward: do contains NaN or Inf")
    scale = _default_scale(q64.shape[-1], scale)
    p, _, capped = _probs(q64, k64, scale, causal, mask, var)
    o = np.einsum("...ij,...jd->...id", p, v64)
    dv = np.einsum("...ij,...id->...jd", p, do64)
    dp = np.einsum("...id,...jd->...ij", do64, v64)
    d_row = np.sum(do64 * o, axis=-1, keepdims=True)
    ds = p * (dp - d_row)
    if var.softcap is not None:
        ds = ds * softcap_grad_factor(capped, var.softcap)
    dq = scale * np.einsum("...ij,...jd->...id", ds, k64)
    dk = scale * np.einsum("...ij,...id->...jd", ds, q64)
    if var.num_kv_heads is not None:
        dk, dv = group_sum(dk, var.num_kv_heads), group_sum(dv, var.num_kv_heads)
    # Leading dims may have been broadcast; reduce gradients back to input shapes.
    return unbroadcast(dq, np.shape(q)), unbroadcast(dk, np.shape(k)), unbroadcast(dv, np.shape(v))




def _as64(q, k, v):
    q64 = np.asarray(q, dtype=np.float64)
    k64 = np.asarray(k, dtype=np.float64)
    v64 = None if v is None else np.asarray(v, dtype=np.float64)
    return q64, k64, v64


def _default_scale(d, scale):
    return check_scale(scale, d, "reference")
