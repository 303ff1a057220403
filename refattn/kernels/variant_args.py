"""The attention variants as the simulated kernels take them (semantics: docs/variants.md).

The flash kernels accept the reference's variant keywords (``num_kv_heads``,
``window``, ``softcap``, ``alibi_slopes``, ``cu_seqlens_q``/``cu_seqlens_k``).
:func:`prepare_variants` checks them (:func:`refattn.variants.check_variants`),
flattens the inputs like :func:`refattn.kernels.common.prepare` and turns the
variants into what the jitted loops take:

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
  per flattened query head (0 = off);
* the **tile layout** (:meth:`KernelVariants.layout`), the tables the flash
  loops walk (one loop for rectangular and packed problems):

  - ``seqs`` (S, 12) int64, one row per *segment*: ``[q0, q1, k0, k1, causal,
    off, lo, aoff, rb0, rb1, cb0, cb1]``: query rows ``[q0, q1)`` attend to key
    rows ``[k0, k1)`` only, under the band ``(causal, off, lo)`` and the ALiBi
    offset ``aoff``, all in *global* (packed) row and column numbers (a
    sequence's local band ``c - k0 <= r - q0 + off_b`` is ``c <= r + off_b + k0 - q0``);
    its row blocks are ``rblocks[rb0:rb1]`` and its key blocks ``cblocks[cb0:cb1]``;
  - ``rblocks`` (sum Tr_s, 3) and ``cblocks`` (sum Tc_s, 3): ``[segment, start, stop)``,
    blocks of Br rows (Bc keys) cut per segment, the last one of each segment partial.

  A rectangular problem is one segment ``[0, Nq) x [0, Nk)`` with the band
  above. A packed batch (``cu_seqlens``) has one segment per sequence b,
  ``[cu_q[b], cu_q[b+1]) x [cu_k[b], cu_k[b+1])`` with the band and ALiBi
  offset of that sequence's own ``Nq_b``, ``Nk_b``, then up to two *padding*
  segments: the padding queries ``[cu_q[-1], Nq)`` with no keys, and the
  padding keys ``[cu_k[-1], Nk)`` with no queries. A segment with no queries
  or no keys gets the empty band (every tile hidden, ``lo = -NO_LO``). So
  tiles never cross a sequence boundary and no key of another sequence is
  ever loaded; what a segment with an empty side costs is in the kernels'
  docstrings (its rows or keys are still written: O = 0, L = -inf; dQ = 0;
  dK = dV = 0).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from refattn.kernels.common import NO_LO, Prepared, prepare
from refattn.variants import Variants, check_variants, expand_kv

#: Columns of the ``seqs`` table of :meth:`KernelVariants.layout`.
SEQ_COLUMNS = ("q0", "q1", "k0", "k1", "causal", "off", "lo", "aoff", "rb0", "rb1", "cb0", "cb1")


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
    segments: tuple = ()  # ((q0, q1, k0, k1, causal, off, lo, aoff), ...): module docstring, global numbers

    def vt(self, dt):
        """The tuple the jitted loops take (module docstring)."""
        return (self.group, self.lo, self.aoff, dt.type(self.softcap), self.slopes)

    @property
    def seqlens(self) -> list:
        """``[(Nq_s, Nk_s)]`` of the segments (one for a rectangular problem)."""
        return [(q1 - q0, k1 - k0) for q0, q1, k0, k1, *_ in self.segments]

    def layout(self, bq: int, bk: int):
        """``(seqs, rblocks, cblocks)``: the tile tables for blocks ``bq`` x ``bk`` (module docstring)."""
        seqs = np.zeros((len(self.segments), len(SEQ_COLUMNS)), np.int64)
        blocks = {"r": [], "c": []}
        counts = {"r": 0, "c": 0}
        for s, (q0, q1, k0, k1, *band) in enumerate(self.segments):
            seqs[s, :8] = (q0, q1, k0, k1, *band)
            for side, lo, hi, width, col in (("r", q0, q1, bq, 8), ("c", k0, k1, bk, 10)):
                starts = np.arange(lo, hi, width, dtype=np.int64)
                blocks[side].append(np.stack([np.full_like(starts, s), starts, np.minimum(starts + width, hi)], 1))
                seqs[s, col:col + 2] = counts[side], counts[side] + starts.size
                counts[side] += starts.size
        rblocks, cblocks = (np.concatenate(blocks[side] or [np.zeros((0, 3), np.int64)]) for side in "rc")
        return seqs, rblocks, cblocks

    @property
    def details(self) -> dict:
        """For ``Plan.details``: the variants in force."""
        v = self.var
        out = {"num_kv_heads": v.num_kv_heads, "window": v.window, "softcap": v.softcap,
               "alibi": v.alibi_slopes is not None}
        if v.varlen:
            cu_q, cu_k = v.cu_seqlens_q, v.cu_seqlens_k
            nq, nk = (max(seg[col] for seg in self.segments) for col in (1, 3))
            out.update(varlen=True, sequences=int(cu_q.size - 1), padding_q=nq - int(cu_q[-1]),
                       padding_k=nk - int(cu_k[-1]))
        return out


def block_counts(seqlens, bq: int, bk: int):
    """``([Tr_s], [Tc_s])``: row and key blocks of each segment of ``seqlens`` = ``[(Nq_s, Nk_s)]``."""
    return [-(-a // bq) for a, _ in seqlens], [-(-b // bk) for _, b in seqlens]


def segment_table(nq, nk, causal, window, cu_q=None, cu_k=None):
    """The segments ``(q0, q1, k0, k1, causal, off, lo, aoff)`` of a problem (module docstring)."""
    if cu_q is None:
        return ((0, nq, 0, nk, *band(nq, nk, causal, window), nk - nq),)
    spans = [(int(cu_q[b]), int(cu_q[b + 1]), int(cu_k[b]), int(cu_k[b + 1])) for b in range(cu_q.size - 1)]
    if cu_q[-1] < nq:
        spans.append((int(cu_q[-1]), nq, int(cu_k[-1]), int(cu_k[-1])))  # padding queries: no keys
    if cu_k[-1] < nk:
        spans.append((nq, nq, int(cu_k[-1]), nk))  # padding keys: no queries
    out = []
    for q0, q1, k0, k1 in spans:
        nq_b, nk_b, shift = q1 - q0, k1 - k0, k0 - q0
        code, off, lo = band(nq_b, nk_b, causal, window) if nq_b and nk_b else (1, 0, -NO_LO)
        off, lo = (x if abs(x) >= -NO_LO // 2 else x + shift for x in (off, lo))  # (the sentinels stay)
        out.append((q0, q1, k0, k1, code, off, lo, nk_b - nq_b + shift))
    return tuple(out)


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


def _prepare_grouped(q, k, v, mask, hkv, group, *, scale, causal, where) -> Prepared:
    """:func:`prepare` of a count-only GQA call without expanding K and V to every query head: q is viewed as
    (..., Hkv, G, Nq, d) and k, v as (..., Hkv, 1, Nk, .), which broadcast exactly like the expanded arrays
    (query head h = kv * G + g), so every input is checked in full; only the sizes are kept."""
    q, k, v = (np.asarray(x) for x in (q, k, v))
    q5 = q.reshape(q.shape[:-3] + (hkv, group) + q.shape[-2:])
    k5, v5 = np.expand_dims(k, -3), np.expand_dims(v, -3)
    m5 = mask
    if mask is not None and np.ndim(mask) >= 3:
        m = np.asarray(mask)
        m5 = (m.reshape(m.shape[:-3] + (hkv, group) + m.shape[-2:]) if m.shape[-3] == hkv * group
              else np.expand_dims(m, -3))
    p = prepare(q5, k5, v5, scale=scale, causal=causal, mask=m5, where=where, count_only=True)
    return replace(p, lead=p.lead[:-2] + (hkv * group,))


def prepare_variants(q, k, v, *, scale=None, causal=False, mask=None, num_kv_heads=None, window=None,
                     softcap=None, alibi_slopes=None, cu_seqlens_q=None, cu_seqlens_k=None,
                     where="kernel", count_only=False, allow_varlen=False) -> tuple[Prepared, KernelVariants]:
    """Check and flatten the inputs and the variants of a flash kernel call (``count_only``: as in
    :func:`refattn.kernels.common.prepare`, the loops then get placeholders).

    ``allow_varlen``: the calling kernel walks :meth:`KernelVariants.layout` (the flash kernels);
    otherwise ``cu_seqlens`` are refused with a clear error."""
    var = check_variants(q, k, v, num_kv_heads=num_kv_heads, window=window, softcap=softcap,
                         alibi_slopes=alibi_slopes, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                         where=where)
    if var.varlen and not allow_varlen:
        raise ValueError(f"{where}: variable-length batches (cu_seqlens) are not supported by this kernel; "
                         "run each sequence on its own, or use refattn.flash_forward / flash_backward or "
                         "refattn.reference.attention")
    group = 1
    if var.num_kv_heads is not None:
        hq = np.shape(q)[-3]
        group = hq // var.num_kv_heads
        if count_only:  # the same checks on views grouped (..., Hkv, G, N, .): no expanded copy of K and V
            p = _prepare_grouped(q, k, v, mask, var.num_kv_heads, group, scale=scale, causal=causal, where=where)
        else:
            p = prepare(q, expand_kv(np.asarray(k), hq), expand_kv(np.asarray(v), hq), scale=scale,
                        causal=causal, mask=mask, where=where)
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
    segments = segment_table(p.nq, p.nk, p.causal, var.window, var.cu_seqlens_q, var.cu_seqlens_k)
    kvar = KernelVariants(var, group, bcode, off, lo, p.nk - p.nq, var.softcap or 0.0, slopes, kf, vf,
                          tuple(kv_lead), segments)
    return p, kvar
