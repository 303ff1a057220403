"""The attention variants as the simulated kernels take them (semantics: docs/variants.md).

The flash kernels accept the reference's variant keywords (``num_kv_heads``,
``window``, ``softcap``, ``alibi_slopes``). :func:`prepare_variants` checks them
(:func:`refattn.variants.check_variants`), flattens the inputs like
:func:`refattn.kernels.common.prepare` and turns the variants into what the
jitted loops take:

* a **band** ``(causal, off, lo)``: key c is visible to row r iff
  ``r + lo <= c <= r + off`` when ``causal`` is 1 (no bound at all when 0).
  Causal (either alignment) and the window's right edge give ``off`` (the
  smaller wins: they are and-ed), the window's left edge gives ``lo``
  (``NO_LO`` when unbounded). The tile visibility test
  (:func:`refattn.kernels.common.visibility`) skips tiles outside the band;
  :func:`~refattn.kernels.common.score_tile` masks the tiles that cross its edges;
* ``vt = (group, lo, aoff, softcap, slopes)``: ``group`` query heads per KV head
  (flattened query head b reads KV head ``b // group``), the band's ``lo``,
  ``aoff = Nk - Nq`` (the ALiBi alignment), the cap (0 = off) and one ALiBi slope
  per flattened query head (0 = off).

Variable-length batches (``cu_seqlens``) are refused here with a clear error:
the simulated kernels run one rectangular problem per head (use
:func:`refattn.reference.attention`, or split the batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refattn.kernels.common import NO_LO, Prepared, prepare
from refattn.variants import Variants, check_variants, expand_kv


@dataclass
class KernelVariants:
    """The checked variants of one kernel call, in the loops' terms (module docstring)."""

    var: Variants
    group: int  # query heads per KV head (1 without GQA)
    causal: int  # 1 when the band has any edge
    off: int  # upper edge: c <= r + off
    lo: int  # lower edge: c >= r + lo (NO_LO: none)
    aoff: int  # Nk - Nq
    softcap: float  # 0 = off
    slopes: np.ndarray  # (B,) one ALiBi slope per flattened query head, in the input dtype
    k: np.ndarray  # (B // group, Nk, d): the KV heads as they sit in HBM
    v: np.ndarray  # (B // group, Nk, dv)
    kv_lead: tuple  # leading dims of the KV heads (restore dk, dv to them)

    def vt(self, dt):
        """The tuple the jitted loops take (module docstring)."""
        return (self.group, self.lo, self.aoff, dt.type(self.softcap), self.slopes)

    @property
    def details(self) -> dict:
        """For ``Plan.details``: the variants in force."""
        v = self.var
        return {"num_kv_heads": v.num_kv_heads, "window": v.window, "softcap": v.softcap,
                "alibi": v.alibi_slopes is not None}


def band(nq, nk, causal, window):
    """``(causal, off, lo)`` of the module docstring for a causal mode and a normalised window."""
    his, lo = [], NO_LO
    if causal == "bottom_right":
        his.append(nk - nq)
    elif causal == "top_left":
        his.append(0)
    if window is not None:
        left, right = window
        if right >= 0:
            his.append(nk - nq + right)
        if left >= 0:
            lo = nk - nq - left
    if not his and lo == NO_LO:
        return 0, 0, NO_LO
    off = min(his) if his else -NO_LO
    if off < lo:  # an empty band: every key hidden, every tile skipped
        lo = -NO_LO
    return 1, off, lo


def prepare_variants(q, k, v, *, scale=None, causal=False, mask=None, num_kv_heads=None, window=None,
                     softcap=None, alibi_slopes=None, cu_seqlens_q=None, cu_seqlens_k=None,
                     where="kernel", count_only=False) -> tuple[Prepared, KernelVariants]:
    """Check and flatten the inputs and the variants of a flash kernel call (``count_only``: as in
    :func:`refattn.kernels.common.prepare`, the loops then get placeholders)."""
    var = check_variants(q, k, v, num_kv_heads=num_kv_heads, window=window, softcap=softcap,
                         alibi_slopes=alibi_slopes, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                         where=where)
    if var.varlen:
        raise ValueError(f"{where}: variable-length batches (cu_seqlens) are not supported by the simulated "
                         "kernels; run each sequence on its own or use refattn.reference.attention")
    group = 1
    if var.num_kv_heads is not None:
        hq = np.shape(q)[-3]
        group = hq // var.num_kv_heads
        p = prepare(q, expand_kv(np.asarray(k), hq), expand_kv(np.asarray(v), hq), scale=scale, causal=causal,
                    mask=mask, where=where, count_only=count_only)
        kv_lead = p.lead[:-1] + (var.num_kv_heads,)

        def flat(x, like):
            x = np.broadcast_to(np.asarray(x), kv_lead + np.shape(x)[-2:])
            return np.ascontiguousarray(x.reshape((-1,) + x.shape[-2:]), dtype=like.dtype)

        kf, vf = (p.k, p.v) if count_only else (flat(k, p.k), flat(v, p.v))
    else:
        p = prepare(q, k, v, scale=scale, causal=causal, mask=mask, where=where, count_only=count_only)
        kv_lead, kf, vf = p.lead, p.k, p.v
    bcode, off, lo = band(p.nq, p.nk, p.causal, var.window)
    dt = p.q.dtype
    if var.alibi_slopes is None:
        slopes = np.zeros(p.batch, dt)
    else:
        slopes = np.ascontiguousarray(np.broadcast_to(var.alibi_slopes, p.lead).reshape(-1), dtype=dt)
    kvar = KernelVariants(var, group, bcode, off, lo, p.nk - p.nq, var.softcap or 0.0, slopes, kf, vf,
                          tuple(kv_lead))
    return p, kvar
