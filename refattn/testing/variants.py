"""The attention variants in the conformance kit: what is drawn, and the nearby conventions it can name.

A kernel declares the variants it supports with ``Capabilities(variants=...)``,
any of :data:`VARIANT_KINDS` (drawn by :func:`refattn.testing.strategies.variant_arguments`,
each declared one in half the problems):

* ``"gqa"``: ``num_kv_heads`` (k and v carry fewer heads on axis -3);
* ``"window"``: ``window=(left, right)``;
* ``"softcap"``: ``softcap`` (0.0 is drawn too: it means *off*);
* ``"alibi"``: ``alibi_slopes`` (one per query head);
* ``"varlen"``: ``cu_seqlens_q`` and ``cu_seqlens_k`` (a packed batch of 1 to 4
  sequences on axis -2: empty sequences, 1-token sequences and padding rows
  and keys after the last sequence all come up).

Only declared variants are ever passed to the kernel, as keyword arguments
with refattn's names; the float64 reference computes the expected output with
the same arguments (semantics: docs/variants.md).

When a kernel's output does not match, :func:`alternatives` lists the other
conventions that real kernels follow for the variants of the problem, each
with the reference output it implies; the kit names one only when the kernel
matches it on the minimal example and on a fresh probe, otherwise the failure
stays a mismatch. The conventions:

* window: an **exclusive** left or right bound (one key fewer on that side),
  or the window **top-left aligned** (``i - left <= j <= i + right``);
* softcap: a cap asked for but **ignored**; ``softcap=0`` read as a **cap of
  zero** (every score becomes 0, so the softmax is uniform over visible keys)
  rather than as *off*;
* ALiBi: the **opposite sign** (``+slope * |.|``) or **top-left alignment**
  (``|i - j|``);
* GQA: query head h reading KV head ``h % Hkv`` (KV heads **tiled**) instead
  of ``h // (Hq / Hkv)`` (repeated);
* varlen: causal masking aligned **top-left per sequence** when bottom-right
  was asked (or the reverse), which differs whenever a sequence has
  ``Nq_b != Nk_b``; and **padding rows left unwritten** (FlashAttention's
  varlen kernels leave the output rows after ``cu_seqlens_q[-1]`` untouched;
  refattn's convention is o = 0, lse = -inf there), named by
  :mod:`refattn.testing.diagnose` when every row of every sequence agrees
  and only padding rows differ.

With ``cu_seqlens`` the window and ALiBi conventions are applied per sequence
(local positions, each sequence's own ``Nq_b``, ``Nk_b``).

Applying the softcap after the mask is not a convention: hidden keys come back
with the finite score ``-softcap`` and the output matches none of the above, so
it is reported as a plain mismatch.
"""

from __future__ import annotations

import numpy as np

from refattn import reference
from refattn.variants import token_positions

VARIANT_KINDS = ("gqa", "window", "softcap", "alibi", "varlen")
#: The names of the nearby conventions :func:`alternatives` can offer.
VARIANT_CONVENTIONS = ("window exclusive left bound", "window exclusive right bound", "window alignment",
                       "softcap ignored", "softcap 0 read as a cap of zero", "ALiBi sign", "ALiBi alignment",
                       "GQA head mapping", "varlen causal alignment", "varlen padding rows")


def describe(variants: dict) -> str:
    parts = []
    for name, val in variants.items():
        if name == "alibi_slopes":
            val = np.round(np.asarray(val), 4).tolist()
        elif name.startswith("cu_seqlens"):
            val = np.asarray(val).tolist()
        parts.append(f"{name}={val}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------
# Other conventions: the reference output each implies
# ---------------------------------------------------------------------------
def _positions(nq, nk, variants):
    """``(loc_q, pos_q, pos_k)`` of :func:`refattn.variants.token_positions`: per sequence with ``cu_seqlens``."""
    _, loc_q, pos_q, _, pos_k = token_positions(nq, nk, variants.get("cu_seqlens_q"), variants.get("cu_seqlens_k"))
    return loc_q, pos_q, pos_k


def _window_keep(nq, nk, left, right, variants, *, top_left=False, open_left=False, open_right=False):
    loc_q, pos_q, pos_k = _positions(nq, nk, variants)
    i = (loc_q if top_left else pos_q)[:, None]
    j = pos_k[None, :]
    keep = np.ones((nq, nk), bool)
    if left >= 0:
        keep &= j > i - left if open_left else j >= i - left
    if right >= 0:
        keep &= j < i + right if open_right else j <= i + right
    return keep


def _with(q, k, v, base: dict, variants: dict, **change):
    """The reference with some variants changed (``change`` values of None drop a keyword)."""
    kw = dict(base)
    kw.update(variants)
    for name, val in change.items():
        if val is None:
            kw.pop(name, None)
        else:
            kw[name] = val
    return reference.attention(q, k, v, **kw)


def _misaligned(nq, nk, variants):
    """True when top-left and bottom-right alignment differ: ``Nq != Nk``, for some sequence with ``cu_seqlens``."""
    loc_q, pos_q, _ = _positions(nq, nk, variants)
    return bool(np.any(loc_q != pos_q))


def alternatives(q, k, v, base: dict, variants: dict):
    """``[(name, explanation, (o, lse))]``: the other conventions that apply to this problem.

    ``base``: the reference keywords other than the variants (``scale``,
    ``causal``, ``mask``); ``variants``: the drawn variant keywords.
    """
    out = []
    nq, nk = q.shape[-2], k.shape[-2]
    window = variants.get("window")
    if window is not None:
        left, right = (-1 if s is None else s for s in window)
        user_mask = base.get("mask")

        def masked(keep):
            m = keep if user_mask is None else (keep & np.asarray(user_mask, bool))
            return _with(q, k, v, base, variants, window=None, mask=m)

        if left >= 0:
            out.append(("window exclusive left bound",
                        f"the kernel treats the window's left bound as exclusive (j > i + Nk - Nq - {left}); "
                        f"refattn's bounds are inclusive (FlashAttention): left={left} keeps {left} keys before "
                        f"the diagonal", masked(_window_keep(nq, nk, left, right, variants, open_left=True))))
        if right >= 0:
            out.append(("window exclusive right bound",
                        f"the kernel treats the window's right bound as exclusive (j < i + Nk - Nq + {right}); "
                        f"refattn's bounds are inclusive (FlashAttention)",
                        masked(_window_keep(nq, nk, left, right, variants, open_right=True))))
        if _misaligned(nq, nk, variants):
            out.append(("window alignment",
                        "the kernel aligns the window top-left (i - left <= j <= i + right); refattn aligns it "
                        "bottom-right like causal (i + Nk - Nq - left <= j <= i + Nk - Nq + right)",
                        masked(_window_keep(nq, nk, left, right, variants, top_left=True))))
    cap = variants.get("softcap")
    if cap is not None and cap > 0:
        out.append(("softcap ignored",
                    f"the kernel ignores softcap={cap:g}: its output is the uncapped attention",
                    _with(q, k, v, base, variants, softcap=None)))
    if cap == 0:
        out.append(("softcap 0 read as a cap of zero",
                    "the kernel reads softcap=0 as a cap of zero (every score becomes 0); refattn and "
                    "FlashAttention read 0 as 'softcap off'",
                    _with(np.zeros_like(q), k, v, base, variants, softcap=None)))
    slopes = variants.get("alibi_slopes")
    if slopes is not None and np.any(np.asarray(slopes) != 0):
        out.append(("ALiBi sign", "the kernel adds +slope * |i + Nk - Nq - j|; the ALiBi bias is -slope * |.|",
                    _with(q, k, v, base, variants, alibi_slopes=-np.asarray(slopes))))
        if _misaligned(nq, nk, variants):
            loc_q, _, pos_k = _positions(nq, nk, variants)
            bias = -np.asarray(slopes, np.float64)[..., None, None] * np.abs(loc_q[:, None] - pos_k[None, :])
            out.append(("ALiBi alignment",
                        "the kernel aligns the ALiBi distance top-left (|i - j|); refattn and FlashAttention use "
                        "|i + Nk - Nq - j|",
                        _with(q, k, v, base, variants, alibi_slopes=None, bias=bias)))
    causal = base.get("causal")
    if variants.get("cu_seqlens_q") is not None and causal and _misaligned(nq, nk, variants):
        mode = "bottom_right" if causal is True else causal
        other = "top_left" if mode == "bottom_right" else "bottom_right"
        out.append(("varlen causal alignment",
                    f"the kernel aligns the causal mask of each sequence {other} but {mode} was asked (refattn "
                    f"and FlashAttention align it bottom-right per sequence: j <= i + Nk_b - Nq_b)",
                    _with(q, k, v, dict(base, causal=other), variants)))
    hkv = variants.get("num_kv_heads")
    if hkv is not None and 1 < hkv < q.shape[-3]:
        reps = q.shape[-3] // hkv
        tile = lambda x: np.concatenate([x] * reps, axis=-3)
        out.append(("GQA head mapping",
                    f"query head h reads KV head h % {hkv} (KV heads tiled); refattn, FlashAttention and SDPA's "
                    f"enable_gqa read KV head h // {reps} (each KV head repeated for its group)",
                    _with(q, tile(k), tile(v), base, variants, num_kv_heads=None)))
    return out
