"""MInference vertical-slash index building on the device (torch ops, batched over heads).

Same function as ``refattn.patterns.vertical_slash`` (read its docstring for the
choices), for every batch*head at once, so a whole prefill step stays on the GPU:

1. **Estimate** (float32): ``A = softmax(scale * Q[-L:] K^T)`` with the causal
   mask, ``L = min(last_q, Nq)``. Vertical score of column c: ``sum_i A[i, c]``;
   slash score of offset ``delta = i + off - j``: the sum of A along that
   diagonal (gathered row by row, deterministic). ``off = Nk - Nq``.
2. **Top-k**: the first ``force_vertical`` columns and the nearest
   ``force_slash`` offsets score +inf; a stable sort keeps the top
   ``max(vertical_size, 30)`` columns and ``max(slash_size, 50)`` offsets
   (clamped to Nk; ties go to the lower index).
3. **Index set**: per query block ``[m0, m1)`` (``last = m1 - 1 + off``), key
   block kb is listed iff some chosen offset's key range ``[m0 + off - delta,
   last - delta]`` (clipped to [0, Nk)) meets it, i.e. iff a chosen delta lies in
   ``[max(m0 + off - kb*b - b + 1, m0 + off - Nk + 1), last - kb*b]``: one
   prefix-count lookup per (query block, key block). Chosen columns ``c <= last``
   outside the listed blocks become single columns. The same sets as merging
   the diagonal ranges and covering each merged range with aligned blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gpu_optional.sparse import DeviceIndexSet
from refattn.validation import check_scale

__all__ = ["VerticalSlashIndex", "vertical_slash_estimate", "vertical_slash_index"]

MIN_VERTICAL, MIN_SLASH = 30, 50


@dataclass(frozen=True)
class VerticalSlashIndex:
    index_set: DeviceIndexSet
    columns: torch.Tensor          # (Z, vertical_size) chosen key columns, sorted
    offsets: torch.Tensor          # (Z, slash_size) chosen diagonal offsets, sorted
    vertical_scores: torch.Tensor  # (Z, Nk) float64
    slash_scores: torch.Tensor     # (Z, Nk) float64, by offset delta


def _flat(x, name):
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(f"vertical_slash_index: {name} must be a torch tensor (..., N, d)")
    return x.reshape(-1, x.shape[-2], x.shape[-1])


def vertical_slash_estimate(q, k, *, last_q=64, scale=None):
    """``(estimate (Z, L, Nk) float32, vertical (Z, Nk) float64, slash (Z, Nk) float64)``."""
    q3, k3 = _flat(q, "q"), _flat(k, "k")
    if q3.shape[0] != k3.shape[0] or q3.shape[2] != k3.shape[2]:
        raise ValueError(f"vertical_slash_index: q {tuple(q.shape)} and k {tuple(k.shape)} do not match")
    z, nq, d = q3.shape
    nk = k3.shape[1]
    scale = check_scale(scale, d, "vertical_slash_index")
    L = min(int(last_q), nq)
    off = nk - nq
    dev = q3.device
    qi = torch.arange(nq - L, nq, device=dev) + off                        # (L,) last visible key per row
    j = torch.arange(nk, device=dev)
    s = scale * torch.matmul(q3[:, -L:].float(), k3.float().transpose(1, 2))  # (Z, L, Nk) float32
    if nk >= L:
        # every estimated row sees key 0; the causal cut lies in the last L columns: mask only those,
        # then one fused softmax
        tail = s[:, :, nk - L:]
        tail.masked_fill_(j[None, None, nk - L:] > qi[None, :, None], float("-inf"))
        est = torch.softmax(s, dim=2)
    else:  # some rows see no key at all: the safe shift (0 for an all -inf row) and 0 output
        s = s.masked_fill(j[None, None, :] > qi[None, :, None], float("-inf"))
        mx = s.amax(dim=2, keepdim=True)
        mx = torch.where(torch.isneginf(mx), torch.zeros_like(mx), mx)
        e = torch.exp(s - mx)
        tot = e.sum(dim=2, keepdim=True)
        est = torch.where(tot > 0, e / torch.where(tot > 0, tot, torch.ones_like(tot)), torch.zeros_like(e))
    vertical = est.sum(dim=1, dtype=torch.float64)                         # (Z, Nk)
    # slash[delta] = sum_r est[r, qi[r] - delta]: gather each row along its diagonal
    delta = torch.arange(nk, device=dev)
    col = qi[:, None] - delta[None, :]                                     # (L, Nk)
    ok = col >= 0
    g = torch.gather(est, 2, col.clamp(min=0).expand(z, L, nk))
    slash = torch.where(ok[None], g, 0.0).sum(dim=1, dtype=torch.float64)
    return est, vertical, slash


def _top(scores, size, forced):
    s = scores.clone()
    s[:, :forced] = float("inf")
    order = torch.sort(-s, dim=1, stable=True).indices[:, :size]
    return torch.sort(order, dim=1).values


def vertical_slash_index(q, k, vertical_size, slash_size, *, last_q=64, block=64, scale=None,
                         force_vertical=30, force_slash=100) -> VerticalSlashIndex:
    """Vertical-slash index sets for every batch*head of ``q (..., Nq, d)``, ``k (..., Nk, d)``."""
    if int(last_q) < 1 or int(block) < 1:
        raise ValueError(f"vertical_slash_index: need last_q >= 1 and block >= 1, got {last_q}, {block}")
    est, vertical, slash = vertical_slash_estimate(q, k, last_q=last_q, scale=scale)
    z, _, nk = est.shape
    nq = q.shape[-2]
    off = nk - nq
    dev = est.device
    vsize = min(nk, max(int(vertical_size), MIN_VERTICAL))
    ssize = min(nk, max(int(slash_size), MIN_SLASH))
    columns = _top(vertical, vsize, min(force_vertical, nk))              # (Z, V)
    offsets = _top(slash, ssize, min(force_slash, nk))                    # (Z, S)
    # prefix count of chosen offsets: cnt[x + 1] = #{delta <= x}
    hit = torch.zeros((z, nk), dtype=torch.int32, device=dev)
    hit.scatter_(1, offsets, 1)
    cnt = torch.cat([torch.zeros((z, 1), dtype=torch.int32, device=dev), hit.cumsum(1, dtype=torch.int32)], 1)
    nqb, nkb = -(-nq // block), -(-nk // block)
    m0 = torch.arange(nqb, device=dev)[:, None] * block                    # (nqb, 1)
    last = torch.clamp(m0 + block, max=nq) - 1 + off
    kb0 = torch.arange(nkb, device=dev)[None, :] * block                   # (1, nkb)
    lo = torch.maximum(m0 + off - kb0 - block + 1, m0 + off - nk + 1).clamp(min=0)
    hi = torch.minimum(last - kb0, torch.full_like(last - kb0, nk - 1))
    valid = hi >= lo                                                       # (nqb, nkb)
    hi_c, lo_c = hi.clamp(min=-1, max=nk - 1), lo.clamp(min=0, max=nk)
    n_hit = (torch.gather(cnt, 1, (hi_c + 1).reshape(1, -1).expand(z, -1))
             - torch.gather(cnt, 1, lo_c.reshape(1, -1).expand(z, -1))).reshape(z, nqb, nkb)
    listed = (n_hit > 0) & valid[None]                                     # (Z, nqb, nkb)
    # single columns: chosen, causally visible to the block, outside listed blocks
    in_block = torch.gather(listed, 2, (columns // block)[:, None, :].expand(z, nqb, -1))   # (Z, nqb, V)
    single = (columns[:, None, :] <= last[None]) & ~in_block
    iset = DeviceIndexSet(nq, nk, block, *_csr(listed), *_csr(single, columns))
    return VerticalSlashIndex(iset, columns, offsets, vertical, slash)


def _csr(keep, values=None):
    """Boolean (Z, R, C) -> (offsets (Z, R + 1) int32 global, indices int32), row-major, sorted per row."""
    z, r, _ = keep.shape
    counts = keep.reshape(z * r, -1).sum(1)
    cum = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    rows = (torch.arange(z, device=keep.device)[:, None] * r + torch.arange(r + 1, device=keep.device)[None, :])
    offsets = cum[rows].to(torch.int32)
    zi, _, ci = torch.nonzero(keep, as_tuple=True)
    idx = ci if values is None else values[zi, ci]
    return offsets, idx.to(torch.int32).contiguous()
