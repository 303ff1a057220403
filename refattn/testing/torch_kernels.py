"""PyTorch's attention functions in the kit's signature, with the variants they can express.

Both take torch tensors (the :func:`~refattn.testing.adapters.from_torch`
adapter converts) and the kit's keywords: ``causal``, ``scale``, ``mask``
(boolean, True = keep) and the declared variants (docs/variants.md).

* :func:`sdpa`: ``torch.nn.functional.scaled_dot_product_attention``. GQA is
  SDPA's own ``enable_gqa=True``. SDPA has no window and no ALiBi argument, so
  they are written here the way a user writes them for SDPA: the window as a
  boolean ``attn_mask`` (bottom-right aligned, both bounds inclusive), ALiBi
  as a float ``attn_mask`` (``-slope * |i + Nk - Nq - j|``, ``-inf`` where
  hidden). Its ``is_causal`` is top-left aligned; with a mask or a window the
  causal part is folded into the mask, top-left, as ``is_causal`` would apply
  it. No softcap.
* :func:`flex`: FlexAttention (``torch.nn.attention.flex_attention``), every
  variant: causal (either alignment), the window and the boolean mask in a
  ``mask_mod`` (a ``BlockMask``), softcap and ALiBi in a ``score_mod`` (cap,
  then bias, as FlashAttention orders them), GQA with ``enable_gqa=True``.
  Leading dims are folded to FlexAttention's ``(B, H, N, d)`` with the last
  one as heads. Run eagerly on CPU (no ``torch.compile``): forward only.

torch is imported when a function is called.
"""

from __future__ import annotations

import importlib

import numpy as np


def _torch():
    try:
        return importlib.import_module("torch")
    except ImportError:
        raise ImportError("this adapter needs torch, which is not installed") from None


def _positions(torch, nq, nk, top_left=False):
    i = torch.arange(nq).unsqueeze(-1) + (0 if top_left else nk - nq)  # the query's place on the key axis
    j = torch.arange(nk).unsqueeze(0)
    return i, j


def _window_keep(torch, nq, nk, window):
    i, j = _positions(torch, nq, nk)
    left, right = (-1 if s is None else s for s in window)
    keep = torch.ones(nq, nk, dtype=torch.bool)
    if left >= 0:
        keep &= j >= i - left
    if right >= 0:
        keep &= j <= i + right
    return keep


def sdpa(q, k, v, *, causal=False, scale=None, mask=None, num_kv_heads=None, window=None, alibi_slopes=None):
    """``scaled_dot_product_attention`` with GQA, a window (as a mask) and ALiBi (as a float mask)."""
    torch = _torch()
    F = torch.nn.functional
    nq, nk = q.shape[-2], k.shape[-2]
    gqa = num_kv_heads is not None
    if mask is None and window is None and alibi_slopes is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=bool(causal), scale=scale, enable_gqa=gqa)
    keep = torch.ones(nq, nk, dtype=torch.bool)
    if causal:
        keep = keep.tril()  # top-left, as is_causal
    if window is not None:
        keep = keep & _window_keep(torch, nq, nk, window)
    if mask is not None:
        keep = keep & mask
    attn = keep
    if alibi_slopes is not None:
        i, j = _positions(torch, nq, nk)
        slopes = torch.as_tensor(np.asarray(alibi_slopes, np.float64)).to(q.dtype)
        bias = -slopes[..., None, None] * (i - j).abs().to(q.dtype)
        attn = bias.masked_fill(~keep, float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn, scale=scale, enable_gqa=gqa)


def flex(q, k, v, *, causal=False, scale=None, mask=None, num_kv_heads=None, window=None, softcap=None,
         alibi_slopes=None):
    """FlexAttention with every variant (see the module docstring); returns ``o``."""
    torch = _torch()
    fa = importlib.import_module("torch.nn.attention.flex_attention")
    lead, nq, nk = tuple(q.shape[:-2]), q.shape[-2], k.shape[-2]
    heads = lead[-1] if lead else 1
    batch = int(np.prod(lead[:-1])) if len(lead) > 1 else 1
    to4 = lambda x: x.reshape((batch, x.shape[-3] if x.dim() >= 3 else 1) + tuple(x.shape[-2:]))
    q4, k4, v4 = to4(q), to4(k), to4(v)
    off = nk - nq if causal in (True, "bottom_right") else 0
    left, right = (-1, -1) if window is None else (-1 if s is None else s for s in window)
    m4 = None
    if mask is not None:
        m4 = torch.broadcast_to(mask, lead + (nq, nk)).reshape(batch, heads, nq, nk)

    def mask_mod(b, h, qi, kj):
        ok = kj >= 0
        if causal:
            ok = ok & (kj <= qi + off)
        if left >= 0:
            ok = ok & (kj >= qi + (nk - nq) - left)
        if right >= 0:
            ok = ok & (kj <= qi + (nk - nq) + right)
        if m4 is not None:
            ok = ok & m4[b, h, qi, kj]
        return ok

    slopes = None
    if alibi_slopes is not None:
        slopes = torch.as_tensor(np.broadcast_to(np.asarray(alibi_slopes, np.float64), (heads,)).copy()).to(q.dtype)
    cap = float(softcap or 0.0)

    def score_mod(score, b, h, qi, kj):
        if cap > 0:
            score = cap * torch.tanh(score / cap)
        if slopes is not None:
            score = score - slopes[h] * (qi + (nk - nq) - kj).abs()
        return score

    block_mask = fa.create_block_mask(mask_mod, batch, heads, nq, nk, device="cpu")
    o = fa.flex_attention(q4, k4, v4, score_mod=score_mod, block_mask=block_mask, scale=scale,
                          enable_gqa=num_kv_heads is not None)
    return o.reshape(lead + (nq, v.shape[-1]))
