"""Sparse FlashAttention forward in Triton on refattn's index set.

The index set (``refattn.index_set.IndexSet``) lists, per query block of
``block`` rows, key blocks and single key columns. On the device it is four
int32 arrays in CSR form; :class:`DeviceIndexSet` holds one set per
batch*head (or one set shared by all), concatenated, with per-set offsets
already shifted into the concatenated index arrays.

One program per (query block, batch*head)::

    load Q_i                                       # (block, d)
    for kb in key blocks of i:                     # dense tiles K[kb*block : (kb+1)*block]
        online-softmax step (as in flash.py) with the element mask
            (j < Nk) and, if causal, j <= i + Nk - Nq
    for each group of `block` listed columns c:    # gathered into one dense tile
        K_c = K[c], V_c = V[c];  same online-softmax step
    O_i = acc / l;  LSE_i = ln-units log-sum-exp   # empty row: O = 0, LSE = -inf

Every step uses the safe shift (0 while a row's max is still -inf), since a
sparse row's first tile may be fully masked. The result equals
``reference.attention(q, k, v, mask=index_set.to_mask(causal=causal))``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import triton
import triton.language as tl

from gpu_optional._common import INTERPRET, LOG2E, block_dim, check_qkv, flatten, numel_lead, precision
from refattn.index_set import IndexSet

__all__ = ["DeviceIndexSet", "to_device", "sparse_attention"]


@dataclass(frozen=True)
class DeviceIndexSet:
    """Index sets on a device. ``*_offsets``: (n_sets, n_qblocks + 1) int32, global into ``*_indices``.

    The index arrays may be longer than ``offsets[-1, -1]`` (a builder that avoids a host sync sizes them by
    an upper bound); only the entries the offsets point at are read."""

    nq: int
    nk: int
    block: int
    block_offsets: torch.Tensor
    block_indices: torch.Tensor
    column_offsets: torch.Tensor
    column_indices: torch.Tensor

    @property
    def n_sets(self) -> int:
        return int(self.block_offsets.shape[0])

    @property
    def n_query_blocks(self) -> int:
        return -(-self.nq // self.block)

    def to_host(self) -> list[IndexSet]:
        """Back to refattn IndexSets (one per set), e.g. to build the reference mask."""
        bo, bi = self.block_offsets.cpu().numpy().astype(np.int64), self.block_indices.cpu().numpy().astype(np.int64)
        co, ci = self.column_offsets.cpu().numpy().astype(np.int64), self.column_indices.cpu().numpy().astype(np.int64)
        out = []
        for s in range(self.n_sets):
            b0, c0 = bo[s, 0], co[s, 0]
            out.append(IndexSet(self.nq, self.nk, self.block, bo[s] - b0, bi[b0:bo[s, -1]],
                                co[s] - c0, ci[c0:co[s, -1]]))
        return out


def to_device(index_sets, device) -> DeviceIndexSet:
    """One IndexSet or a sequence of them (one per batch*head) -> :class:`DeviceIndexSet`."""
    if isinstance(index_sets, DeviceIndexSet):
        return index_sets
    sets = [index_sets] if isinstance(index_sets, IndexSet) else list(index_sets)
    if not sets or not all(isinstance(s, IndexSet) for s in sets):
        raise TypeError("to_device: expected an IndexSet or a non-empty sequence of IndexSets")
    nq, nk, block = sets[0].nq, sets[0].nk, sets[0].block
    if any((s.nq, s.nk, s.block) != (nq, nk, block) for s in sets):
        raise ValueError("to_device: all index sets must share nq, nk and block")
    boffs, coffs, bidx, cidx = [], [], [], []
    nb = nc = 0
    for s in sets:
        boffs.append(s.block_offsets + nb)
        coffs.append(s.column_offsets + nc)
        bidx.append(s.block_indices)
        cidx.append(s.column_indices)
        nb += len(s.block_indices)
        nc += len(s.column_indices)

    def t(parts, stack):
        a = np.stack(parts) if stack else np.concatenate(parts)
        return torch.from_numpy(a.astype(np.int32)).to(device)

    return DeviceIndexSet(nq, nk, block, t(boffs, True), t(bidx, False), t(coffs, True), t(cidx, False))


@triton.jit
def _step(acc, l_i, m_i, q, k, v, keep, qk_scale, PREC: tl.constexpr):
    """One masked online-softmax step on a (BLOCK_M, BLOCK_N) tile."""
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
    s = tl.where(keep, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(s - m_shift[:, None])
    alpha = tl.math.exp2(m_i - m_shift)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PREC)
    return acc, l_i, m_new


@triton.jit
def _sparse_fwd_kernel(Q, K, V, O, LSE, BOFF, BIDX, COFF, CIDX,
                       stride_qz, stride_qn, stride_kz, stride_kn, stride_vz, stride_vn, stride_oz, stride_on,
                       stride_setz, N_Q, N_K, OFFSET, qk_scale,
                       D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                       CAUSAL: tl.constexpr, PREC: tl.constexpr, BLOCK: tl.constexpr):
    qb = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    offs_m = qb * BLOCK + tl.arange(0, BLOCK)
    arange_n = tl.arange(0, BLOCK)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    dmask = offs_d[None, :] < D
    dvmask = offs_dv[None, :] < DV
    q = tl.load(Q + z * stride_qz + offs_m[:, None] * stride_qn + offs_d[None, :],
                mask=(offs_m[:, None] < N_Q) & dmask, other=0.0)                 # (BLOCK, BLOCK_D)
    K += z * stride_kz
    V += z * stride_vz
    m_i = tl.full([BLOCK], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK], tl.float32)
    acc = tl.zeros([BLOCK, BLOCK_DV], tl.float32)
    row = (z * stride_setz + qb).to(tl.int64)
    # ---- key blocks: dense tiles
    b0 = tl.load(BOFF + row)
    b1 = tl.load(BOFF + row + 1)
    for t in range(b0, b1):
        kb = tl.load(BIDX + t)
        offs_n = kb * BLOCK + arange_n
        nmask = offs_n[:, None] < N_K
        k = tl.load(K + offs_n[:, None] * stride_kn + offs_d[None, :], mask=nmask & dmask, other=0.0)
        v = tl.load(V + offs_n[:, None] * stride_vn + offs_dv[None, :], mask=nmask & dvmask, other=0.0)
        keep = offs_n[None, :] < N_K
        if CAUSAL:
            keep = keep & (offs_n[None, :] <= offs_m[:, None] + OFFSET)
        acc, l_i, m_i = _step(acc, l_i, m_i, q, k, v, keep, qk_scale, PREC)
    # ---- single columns, gathered BLOCK at a time
    c0 = tl.load(COFF + row)
    c1 = tl.load(COFF + row + 1)
    for t in range(c0, c1, BLOCK):
        offs_c = t + arange_n
        valid = offs_c < c1
        cols = tl.load(CIDX + offs_c, mask=valid, other=0)
        k = tl.load(K + cols[:, None] * stride_kn + offs_d[None, :], mask=valid[:, None] & dmask, other=0.0)
        v = tl.load(V + cols[:, None] * stride_vn + offs_dv[None, :], mask=valid[:, None] & dvmask, other=0.0)
        keep = valid[None, :]
        if CAUSAL:
            keep = keep & (cols[None, :] <= offs_m[:, None] + OFFSET)
        acc, l_i, m_i = _step(acc, l_i, m_i, q, k, v, keep, qk_scale, PREC)
    has = l_i > 0
    o = acc / tl.where(has, l_i, 1.0)[:, None]
    lse = tl.where(has, (m_i + tl.math.log2(tl.where(has, l_i, 1.0))) / 1.4426950408889634, float("-inf"))
    tl.store(O + z * stride_oz + offs_m[:, None] * stride_on + offs_dv[None, :], o.to(O.dtype.element_ty),
             mask=(offs_m[:, None] < N_Q) & dvmask)
    tl.store(LSE + z * N_Q + offs_m, lse, mask=offs_m < N_Q)


def sparse_attention(q, k, v, index_set, *, causal=True, scale=None, check_finite=True):
    """Sparse attention forward. Returns ``(o, lse)`` (lse float32, natural log).

    ``index_set``: an IndexSet (shared by all batch*heads), a sequence of one per
    batch*head (flattened leading dims), or a :class:`DeviceIndexSet`.
    ``causal``: the element causal mask applied on top (bottom-right by default).
    """
    where = "gpu_optional.sparse_attention"
    mode, offset, scale, lead = check_qkv(q, k, v, causal, scale, where, check_finite=check_finite)
    dev = to_device(index_set, q.device)
    z = numel_lead(lead)
    nq, nk = q.shape[-2], k.shape[-2]
    if (dev.nq, dev.nk) != (nq, nk):
        raise ValueError(f"{where}: index set was built for (nq, nk) = ({dev.nq}, {dev.nk}), inputs have ({nq}, {nk})")
    if dev.block not in (16, 32, 64, 128):
        raise ValueError(f"{where}: index-set block must be 16, 32, 64 or 128 for the Triton kernel, got {dev.block}")
    if dev.n_sets not in (1, z):
        raise ValueError(f"{where}: {dev.n_sets} index sets for {z} batch*heads (give 1 or {z})")
    q3, k3, v3 = flatten(q), flatten(k), flatten(v)
    d, dv = q3.shape[2], v3.shape[2]
    o = torch.empty((z, nq, dv), dtype=q.dtype, device=q.device)
    lse = torch.empty((z, nq), dtype=torch.float32, device=q.device)
    stride_set = 0 if dev.n_sets == 1 else dev.block_offsets.stride(0)
    bd, bdv = block_dim(d), block_dim(dv)
    warps = 4 if max(bd, bdv) <= 128 or dev.block <= 32 else 8
    _sparse_fwd_kernel[(dev.n_query_blocks, z)](
        q3, k3, v3, o, lse, dev.block_offsets, dev.block_indices, dev.column_offsets, dev.column_indices,
        q3.stride(0), q3.stride(1), k3.stride(0), k3.stride(1), v3.stride(0), v3.stride(1),
        o.stride(0), o.stride(1), stride_set, nq, nk, offset, scale * LOG2E,
        D=d, DV=dv, BLOCK_D=bd, BLOCK_DV=bdv, CAUSAL=mode is not None, PREC=precision(q.dtype),
        BLOCK=dev.block, **({} if INTERPRET else {"num_warps": warps, "num_stages": 3}))
    return o.reshape(*lead, nq, dv), lse.reshape(*lead, nq)
