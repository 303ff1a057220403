"""Microbenchmark kernels for :mod:`gpu_optional.predict`: the rates FlashAttention's Triton kernel depends on,
each measured alone (its matmuls at its tile shapes; its softmax's per-score work), never its attention time."""

import triton
import triton.language as tl

#: tilings (BLOCK_M, BLOCK_N, warps, stages) tried for the tile matmul rate; the best one counts
TILINGS = [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (128, 32, 4, 4)]


@triton.jit
def _tile_matmuls(Q, K, V, O, N, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """FlashAttention-2's forward loop without the softmax: O_i = sum_j bf16(Q_i K_j^T) V_j. (Z, N, D)
    contiguous, N a multiple of both blocks. 4 N^2 D FLOPs per head, the kernel's own tile shapes."""
    start_m = tl.program_id(0)
    base = tl.program_id(1).to(tl.int64) * N * D
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    q = tl.load(Q + base + offs_m[:, None] * D + offs_d[None, :])
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    for start in range(0, N, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        k = tl.load(K + base + offs_n[:, None] * D + offs_d[None, :])
        v = tl.load(V + base + offs_n[:, None] * D + offs_d[None, :])
        s = tl.dot(q, tl.trans(k))                                          # (BLOCK_M, BLOCK_N) float32
        acc = tl.dot(s.to(v.dtype), v, acc)
    tl.store(O + base + offs_m[:, None] * D + offs_d[None, :], acc.to(O.dtype.element_ty))


@triton.jit
def _softmax_elements(X, L, scale, REPS, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The online softmax's per-score work on one (BLOCK_M, BLOCK_N) float32 register tile, REPS times:
    m = rowmax(x), p = exp2(x - m), l += rowsum(p), x = scale * bf16(p) (each round depends on the last, so
    nothing is hoisted). REPS * BLOCK_M * BLOCK_N exponentials per program; no matmul, no memory in the loop."""
    pid = tl.program_id(0).to(tl.int64)
    rows = tl.arange(0, BLOCK_M)
    offs = pid * BLOCK_M * BLOCK_N + rows[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    x = tl.load(X + offs)
    l = tl.zeros([BLOCK_M], tl.float32)
    for _ in range(REPS):
        m = tl.max(x, 1)
        p = tl.exp2(x - m[:, None])
        l += tl.sum(p, 1)
        x = p.to(tl.bfloat16).to(tl.float32) * scale
    tl.store(L + pid * BLOCK_M + rows, l)


def tile_matmuls(q, k, v, block_m=128, block_n=64, num_warps=4, num_stages=3):
    """``sum_j bf16(q k_j^T) v_j`` per 128-row tile: (Z, N, D) -> (Z, N, D) (see :func:`_tile_matmuls`)."""
    import torch

    z, n, d = q.shape
    if n % block_m or n % block_n:
        raise ValueError(f"tile_matmuls: N = {n} must be a multiple of {block_m} and {block_n}")
    o = torch.empty_like(q)
    _tile_matmuls[(n // block_m, z)](q, k, v, o, n, D=d, BLOCK_M=block_m, BLOCK_N=block_n,
                                     num_warps=num_warps, num_stages=num_stages)
    return o


def softmax_elements(x, scale, reps, block_m=128, block_n=64):
    """Row sums ``l`` of :func:`_softmax_elements` on ``x`` (programs * block_m, block_n) float32."""
    import torch

    programs = x.shape[0] // block_m
    out = torch.empty(programs * block_m, dtype=torch.float32, device=x.device)
    _softmax_elements[(programs,)](x, out, scale, reps, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=8)
    return out
