"""``python -m gpu_optional.bench [--quick] [--csv DIR] [--sections dense,sparse,standard]``: the Triton
kernels on a real GPU.

1. **Correctness first**: every kernel (and the torch baselines) against
   refattn's float64 reference on the same random inputs, ``||out - ref|| / ||ref||``.
   At large N the reference is computed for the last R query rows of one head
   (bottom-right causal makes those rows exactly the full problem's rows).
2. **Dense**: median time (CUDA events, ``triton.testing.do_bench``, warm-up
   excluded) of the Triton forward and backward beside torch SDPA's flash and
   cuDNN backends; TFLOP/s with 4*B*H*N^2*d (halved if causal, x2.5 backward).
   Batch*N = 16k tokens, H*d = 2048 (FlashAttention-2's setting), bf16.
3. **Sparse** (MInference vertical-slash, bf16, d = 128): index building on
   the GPU + the sparse Triton kernel, against the dense Triton kernel and
   FlexAttention with a BlockMask from the same index set (FlexAttention cannot
   gather single columns, so its mask lists the blocks that hold them: a superset).
   Inputs are random, so the chosen diagonals scatter; ``density`` is the
   fraction of causally visible entries the kernel computes (whole tiles and strips). Up to N = 1M
   tokens (512k and 1M: dense timed over 3 runs, FlexAttention left out); ``recall`` is the dense
   attention mass the index set keeps on the last rows, ``err vs dense`` the sparse output's error there.
4. **Standard attention and the simulator** (d = 64, 16 heads, non-causal, forward and backward):
   torch matmul-softmax-matmul (S and P through HBM) and the Triton FlashAttention kernels, each beside
   the time refattn's simulator predicts for the same problem on the "h200" preset with its HBM bandwidth
   and matmul rate measured by microbenchmarks in the same run (:mod:`gpu_optional.predict`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np
import torch
import torch.nn.functional as F
import triton

from refattn.bench.table import Table
from refattn.reference import attention, attention_backward

DT = torch.bfloat16
DEV = "cuda"
SMOKE = False  # --smoke: tiny float32 shapes on the CPU under TRITON_INTERPRET=1, to check this script itself


def _bench(fn):
    if SMOKE:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    fn()
    torch.cuda.synchronize()
    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def _bench_few(fn, runs=3):
    """Median of a few CUDA-event timed runs after one warm run (calls of a second or more)."""
    if SMOKE:
        return _bench(fn)
    fn()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times))


def _rel(out, ref):
    out = out.detach().double().cpu().numpy()
    return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-300))


def _np(x):
    return x.detach().double().cpu().numpy()


def _sdpa(backend):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    be = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[backend]

    def fn(q, k, v, causal):
        with sdpa_kernel(be):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return fn


def _empty():
    if DEV == "cuda":
        torch.cuda.empty_cache()


def _flops(b, h, n, d, causal):
    return 4.0 * b * h * n * n * d / (2 if causal else 1)


# ---------------------------------------------------------------- dense
def dense(quick):
    from gpu_optional.flash import flash_attention, flash_backward, flash_forward

    t = Table(f"gpu dense attention ({str(DT).split('.')[-1]})",
              ["impl", "pass", "N", "d", "causal", "B", "H", "ms", "TFLOP/s", "x best SDPA", "rel err"])
    ns = [8192, 2048] if quick else [8192, 1024, 2048, 4096, 16384, 32768]   # 8192 first: the autotuner tunes there
    ds = [128] if quick else [128, 64]
    if SMOKE:
        ns, ds = [96], [32]
    impls = {"triton": None, "sdpa-flash": _sdpa("flash"), "sdpa-cudnn": _sdpa("cudnn")}
    for d in ds:
        for causal in (False, True):
            for n in ns:
                b, h = (1, 2) if SMOKE else (max(1, 16384 // n), 2048 // d)
                gen = torch.Generator(device=DEV).manual_seed(n + d)
                q, k, v, do = (torch.randn((b, h, n, d), generator=gen, device=DEV, dtype=DT) for _ in range(4))
                # correctness: last R rows of head (0, 0) against the float64 reference (bottom-right causal
                # makes them the full problem's rows); the backward's dq of those rows needs only them too
                R = min(256, n)
                q64, k64, v64, do64 = _np(q[0, 0, -R:]), _np(k[0, 0]), _np(v[0, 0]), _np(do[0, 0, -R:])
                ro, _ = attention(q64, k64, v64, causal=causal)
                rdq = attention_backward(q64, k64, v64, do64, causal=causal)[0]
                res = {}
                for name, fn in impls.items():
                    try:
                        if fn is None:
                            f_fwd = lambda q=q, k=k, v=v, c=causal: flash_forward(q, k, v, causal=c, check_finite=False)
                            o = f_fwd()[0]
                        else:
                            f_fwd = lambda fn=fn, q=q, k=k, v=v, c=causal: fn(q, k, v, c)
                            o = f_fwd()
                        err = _rel(o[0, 0, -R:], ro)
                        ms = _bench(f_fwd)
                        res[(name, "fwd")] = (ms, err)
                        qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
                        if fn is None:
                            o2, lse = flash_forward(q, k, v, causal=causal, check_finite=False)
                            f_bwd = lambda q=q, k=k, v=v, o2=o2, lse=lse, do=do, c=causal: flash_backward(
                                q, k, v, o2, lse, do, causal=c)
                        else:
                            o2 = fn(qg, kg, vg, causal)
                            f_bwd = lambda o2=o2, ins=(qg, kg, vg), do=do: torch.autograd.grad(
                                o2, ins, do, retain_graph=True)
                        err = _rel(f_bwd()[0][0, 0, -R:], rdq)
                        ms = _bench(f_bwd)
                        res[(name, "bwd")] = (ms, err)
                        del o2
                    except Exception as exc:  # a backend missing on this GPU/torch: say so, go on
                        print(f"[dense] {name} d={d} causal={causal} N={n}: {type(exc).__name__}: {exc}"[:300],
                              flush=True)
                for ps in ("fwd", "bwd"):
                    fl = _flops(b, h, n, d, causal) * (2.5 if ps == "bwd" else 1.0)
                    best = min((res[(nm, ps)][0] for nm in impls if nm != "triton" and (nm, ps) in res),
                               default=float("nan"))
                    for name in impls:
                        if (name, ps) not in res:
                            continue
                        ms, err = res[(name, ps)]
                        t.add(name, ps, n, d, causal, b, h, round(ms, 4), round(fl / ms / 1e9, 1),
                              round(best / ms, 3), err)
                del q, k, v, do
                _empty()
    # backward correctness: full gradients at a size the float64 reference handles
    for causal in (False, True):
        gen = torch.Generator(device=DEV).manual_seed(11)
        nb, db = (64, 32) if SMOKE else (1024, 128)
        q, k, v, do = (torch.randn((1, 1, nb, db), generator=gen, device=DEV, dtype=DT) for _ in range(4))
        qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
        o, _ = flash_attention(qg, kg, vg, causal=causal)
        o.backward(do)
        ref = attention_backward(_np(q[0, 0]), _np(k[0, 0]), _np(v[0, 0]), _np(do[0, 0]), causal=causal)
        errs = [_rel(g[0, 0], r) for g, r in zip((qg.grad, kg.grad, vg.grad), ref)]
        t.notes.append(f"triton backward vs float64 at N={nb}, d={db}, causal={causal}: "
                       f"dq {errs[0]:.2e}, dk {errs[1]:.2e}, dv {errs[2]:.2e}")
    t.notes.append("x best SDPA: time of the faster SDPA backend / this time (>1 = faster than SDPA)")
    t.notes.append("rel err: ||x - ref||/||ref|| on the last 256 rows of head (0,0) against the float64 reference: "
                   "x = o for fwd, x = dq for bwd (dk, dv need every row: see the full-gradient notes above)")
    t.print()
    return [t]


# ---------------------------------------------------------------- sparse
def _flex_block_mask(listed, nq, nk, block):
    from torch.nn.attention.flex_attention import BlockMask

    z, nqb, nkb = listed.shape
    num = listed.sum(-1).to(torch.int32)
    idx = torch.argsort((~listed).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    off = nk - nq

    def causal_mod(b, h, qi, kj):
        return kj <= qi + off

    try:
        return BlockMask.from_kv_blocks(num[None], idx[None], BLOCK_SIZE=block, mask_mod=causal_mod,
                                        seq_lengths=(nq, nk))
    except TypeError:  # older torch: no seq_lengths
        return BlockMask.from_kv_blocks(num[None], idx[None], BLOCK_SIZE=block, mask_mod=causal_mod)


def _coarsen(listed, f):
    """(Z, R, C) bool at block b -> (Z, ceil(R/f), ceil(C/f)) at block f*b (any sub-block listed)."""
    if f == 1:
        return listed
    z, r, c = listed.shape
    pad = torch.zeros((z, -(-r // f) * f, -(-c // f) * f), dtype=torch.bool, device=listed.device)
    pad[:, :r, :c] = listed
    return pad.view(z, pad.shape[1] // f, f, pad.shape[2] // f, f).any(4).any(2)


def _listed_with_columns(dev, z):
    """(Z, nqb, nkb) bool: listed key blocks OR blocks holding a listed column (FlexAttention's superset)."""
    nqb, nkb = dev.n_query_blocks, -(-dev.nk // dev.block)
    listed = torch.zeros((z, nqb, nkb), dtype=torch.bool, device=dev.block_offsets.device)
    for offs, idx, div in ((dev.block_offsets, dev.block_indices, 1), (dev.column_offsets, dev.column_indices,
                                                                         dev.block)):
        counts = (offs[:, 1:] - offs[:, :-1]).reshape(-1).long()
        rows = torch.repeat_interleave(torch.arange(z * nqb, device=offs.device), counts)
        used = idx[int(offs[0, 0]):int(offs[-1, -1])]          # the arrays may be longer (sized by a bound)
        listed.view(z * nqb, nkb)[rows, used.long() // div] = True
    return listed


def _last_rows_mask(dev, rows, head=0):
    """(rows, Nk) bool: what head ``head``'s index set lists for the last ``rows`` queries (rows % block == 0)."""
    b, nq = dev.block, dev.nq
    qb0 = (nq - rows) // b
    bo, co = dev.block_offsets[head].cpu().numpy(), dev.column_offsets[head].cpu().numpy()
    bi = dev.block_indices[int(bo[qb0]):int(bo[-1])].cpu().numpy()
    ci = dev.column_indices[int(co[qb0]):int(co[-1])].cpu().numpy()
    mask = np.zeros((rows, dev.nk), bool)
    for qb in range(qb0, dev.n_query_blocks):
        r0 = qb * b - (nq - rows)
        for kb in bi[bo[qb] - bo[qb0]:bo[qb + 1] - bo[qb0]]:
            mask[r0:r0 + b, kb * b:(kb + 1) * b] = True
        mask[r0:r0 + b, ci[co[qb] - co[qb0]:co[qb + 1] - co[qb0]]] = True
    return mask


def _recall(q, k, mask):
    """Mean over the last rows of head (0, 0) of the causal dense attention mass inside ``mask``."""
    r, n = mask.shape
    s = (q[0, 0, -r:].float() @ k[0, 0].float().T) * q.shape[-1] ** -0.5
    hidden = torch.arange(n, device=q.device)[None, :] > torch.arange(n - r, n, device=q.device)[:, None]
    p = torch.softmax(s.masked_fill(hidden, float("-inf")), dim=-1)
    return float((p * torch.from_numpy(mask).to(q.device)).sum(-1).mean())


def _reference_last_rows(q, k, v, rows, mask, on_gpu):
    """Causal attention of the last ``rows`` queries of head (0, 0), masked by ``mask`` (rows, N) if given:
    refattn's float64 reference, or (``on_gpu``, N > 128k, where it takes minutes) torch float32 on the GPU."""
    if not on_gpu:
        return attention(_np(q[0, 0, -rows:]), _np(k[0, 0]), _np(v[0, 0]), causal=True, mask=mask)[0]
    n = k.shape[-2]
    s = (q[0, 0, -rows:].float() @ k[0, 0].float().T) * q.shape[-1] ** -0.5
    keep = torch.arange(n, device=q.device)[None, :] <= torch.arange(n - rows, n, device=q.device)[:, None]
    if mask is not None:
        keep &= torch.from_numpy(mask).to(q.device)
    p = torch.softmax(s.masked_fill(~keep, float("-inf")), dim=-1)
    return (p @ v[0, 0].float()).double().cpu().numpy()


def sparse(quick):
    from gpu_optional.flash import flash_forward
    from gpu_optional.index_build import graphed_vertical_slash_index, vertical_slash_index
    from gpu_optional.sparse import sparse_attention

    t = Table(f"gpu sparse prefill (vertical-slash, {str(DT).split('.')[-1]}, causal)",
              ["impl", "N", "H", "vertical", "slash", "density", "ms", "x dense triton", "rel err", "recall",
               "err vs dense"])
    d, h = 128, 4
    cases = [(32768, [(1000, 100), (3000, 100)]), (131072, [(1000, 100), (4000, 100)]),
             (524288, [(1000, 100)]), (1048576, [(1000, 100)])]
    if quick:
        cases = [(32768, [(1000, 100)]), (131072, [(1000, 100)])]
    if SMOKE:
        cases, d, h = [(256, [(40, 60)])], 32, 2
    try:
        flex = torch.compile(__import__("torch.nn.attention.flex_attention", fromlist=["x"]).flex_attention)
    except Exception as exc:
        flex = None
        print(f"[sparse] no FlexAttention: {exc}", flush=True)
    for n, sizes in cases:
        t0 = time.time()
        first_row = len(t.rows)
        long = n > 131072
        timer = _bench_few if long else _bench
        gen = torch.Generator(device=DEV).manual_seed(n)
        q, k, v = (torch.randn((1, h, n, d), generator=gen, device=DEV, dtype=DT) for _ in range(3))
        dense_ms = timer(lambda q=q, k=k, v=v: flash_forward(q, k, v, causal=True, check_finite=False))
        R = min(128, n)
        ro_dense = _reference_last_rows(q, k, v, R, None, long)
        od = flash_forward(q, k, v, causal=True, check_finite=False)[0][0, 0, -R:].clone()
        t.add("dense triton", n, h, "-", "-", 1.0, round(dense_ms, 3), 1.0, _rel(od, ro_dense), 1.0, 0.0)
        for vs, ss in sizes:
            build = lambda q=q, k=k, vs=vs, ss=ss: vertical_slash_index(q, k, vs, ss, block=64)
            r = build()
            dev = r.index_set
            b = dev.block
            n_blocks = int(dev.block_offsets[-1, -1] - dev.block_offsets[0, 0])
            n_cols = int(dev.column_offsets[-1, -1] - dev.column_offsets[0, 0])
            density = (n_blocks * b * b + n_cols * b) / h / (n * (n + 1) / 2)
            # correctness on the last R rows of head 0: reference with the index set's mask rows
            mask = _last_rows_mask(dev, R)
            ro = _reference_last_rows(q, k, v, R, mask, long)
            o, _ = sparse_attention(q, k, v, dev, causal=True, check_finite=False)
            err = _rel(o[0, 0, -R:], ro)
            err_dense = _rel(o[0, 0, -R:], _np(od))
            recall = _recall(q, k, mask) if not SMOKE else float("nan")
            ms_build = _bench(build)
            ms_graph = float("nan")
            if not SMOKE:
                try:
                    replay, graphed = graphed_vertical_slash_index(q, k, vs, ss, block=64)
                    ms_graph = _bench(replay)
                    del replay, graphed
                except Exception as exc:
                    print(f"[sparse] CUDA graph N={n}: {type(exc).__name__}: {exc}"[:300], flush=True)
            ms_kernel = _bench(lambda q=q, k=k, v=v, dev=dev: sparse_attention(q, k, v, dev, causal=True,
                                                                                  check_finite=False))
            dens = round(density, 4)
            t.add("index build (gpu)", n, h, vs, ss, dens, round(ms_build, 3), "-", "-", "-", "-")
            t.add("index build (graph)", n, h, vs, ss, dens, round(ms_graph, 3), "-", "-", "-", "-")
            t.add("sparse triton", n, h, vs, ss, dens, round(ms_kernel, 3), round(dense_ms / ms_kernel, 2), err,
                  round(recall, 4), err_dense)
            t.add("build + sparse", n, h, vs, ss, dens, round(ms_build + ms_kernel, 3),
                  round(dense_ms / (ms_build + ms_kernel), 2), "-", "-", "-")
            t.add("graph build + sparse", n, h, vs, ss, dens, round(ms_graph + ms_kernel, 3),
                  round(dense_ms / (ms_graph + ms_kernel), 2), "-", "-", "-")
            if flex is not None and not long:
                try:
                    # FlexAttention's kernels need 128-wide blocks: coarsen the 64-wide index set (a superset)
                    fb = 128
                    listed = _coarsen(_listed_with_columns(dev, h), fb // b)
                    bm = _flex_block_mask(listed, n, n, fb)
                    of = flex(q, k, v, block_mask=bm)
                    fmask = np.repeat(listed[0, -(R // fb):].cpu().numpy(), fb, axis=1)[:, :n].repeat(fb, axis=0)
                    rf, _ = attention(_np(q[0, 0, -R:]), _np(k[0, 0]), _np(v[0, 0]), causal=True,
                                      mask=fmask[-R:])
                    errf = _rel(of[0, 0, -R:], rf)
                    fdens = float(listed.sum()) * fb * fb / h / (n * (n + 1) / 2)
                    ms_f = _bench(lambda q=q, k=k, v=v, bm=bm: flex(q, k, v, block_mask=bm))
                    t.add("flex BlockMask", n, h, vs, ss, round(fdens, 4), round(ms_f, 3),
                          round(dense_ms / ms_f, 2), errf, "-", "-")
                except Exception as exc:
                    print(f"[sparse] flex N={n} {vs},{ss}: {type(exc).__name__}: {exc}"[:400], flush=True)
            del r, dev, o
            _empty()
        del q, k, v
        _empty()
        print(f"[sparse] N={n}: {time.time() - t0:.0f} s", flush=True)
        Table(f"[sparse] rows so far for N={n}", t.columns, t.rows[first_row:]).print()  # survives a timeout
    t.notes.append("x dense triton: dense causal Triton forward time / this time (index building included in "
                   "'build + sparse'); N > 128k: dense timed as the median of 3 runs")
    t.notes.append("index build (gpu): gpu_optional.vertical_slash_index as called from Python (~15 launches); "
                   "(graph): the same build captured in one CUDA graph and replayed (graphed_vertical_slash_index)")
    t.notes.append("rel err: sparse output vs the float64 reference with the index set's mask (the kernel's "
                   "error), last 128 rows of head 0 (N > 128k: a float32 torch reference on the GPU); recall: mean "
                   "dense causal attention mass the index set keeps "
                   "on those rows; err vs dense: ||o_sparse - o_dense|| / ||o_dense|| there (the approximation). "
                   "Inputs are random (no structure to find): recall is about the density")
    t.notes.append("flex BlockMask: FlexAttention (torch.compile) with the blocks of the same index set plus the "
                   "blocks holding its single columns (it cannot gather columns), coarsened to its 128-wide "
                   "blocks; its density and error are against that mask; not run above 128k")
    t.print()
    return [t]


# ---------------------------------------------------------------- standard attention and the simulator
STANDARD_CASES = [(64, 1024), (4, 4096), (2, 8192), (1, 16384)]   # (batch, N); 16 heads, d = 64
STANDARD_H, STANDARD_D = 16, 64


def _start_simulation(quick):
    """Count one head of every standard case with refattn's simulator, in a process of its own."""
    cases = STANDARD_CASES[:2] if quick else STANDARD_CASES
    if SMOKE:
        cases = [(2, 64)]
    path = os.path.join(tempfile.mkdtemp(prefix="refattn_sim_"), "sim.json")
    sizes = [f"{n}:{STANDARD_D if not SMOKE else 16}" for _, n in cases]
    proc = subprocess.Popen([sys.executable, "-m", "gpu_optional.predict", path, *sizes])
    return proc, path, cases


def _time_standard_and_flash(b, h, n, d):
    """Measured ms of torch standard attention (whole, and its forward's three kernels) and the Triton
    kernels, forward and backward, non-causal."""
    from gpu_optional.flash import flash_backward, flash_forward
    from gpu_optional.predict import standard_attention

    gen = torch.Generator(device=DEV).manual_seed(n)
    q, k, v, do = (torch.randn((b, h, n, d), generator=gen, device=DEV, dtype=DT) for _ in range(4))
    qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
    out = {}
    with torch.no_grad():
        out[("standard", "fwd")] = _bench(lambda: standard_attention(q, k, v))
        s = (q * d**-0.5) @ k.transpose(-1, -2)
        out["QK^T"] = _bench(lambda: (q * d**-0.5) @ k.transpose(-1, -2))
        out["softmax"] = _bench(lambda: torch.softmax(s, dim=-1))
        p = torch.softmax(s, dim=-1)
        out["PV"] = _bench(lambda: p @ v)
        s = p = None
    o_std = standard_attention(qg, kg, vg)
    out[("standard", "bwd")] = _bench(lambda: torch.autograd.grad(o_std, (qg, kg, vg), do, retain_graph=True))
    o_std = None  # frees S and P before the flash kernels run
    _empty()
    out[("flash", "fwd")] = _bench(lambda: flash_forward(q, k, v, check_finite=False))
    o, lse = flash_forward(q, k, v, check_finite=False)
    out[("flash", "bwd")] = _bench(lambda: flash_backward(q, k, v, o, lse, do))
    return out


def standard(quick, sim):
    from gpu_optional import flash
    from gpu_optional.predict import (
        KERNEL_OVERHEAD_S,
        LAUNCHES,
        dq_recompute,
        measure_ceilings,
        measured_chip,
        predict,
    )

    proc, path, cases = sim
    if SMOKE:
        ceil = {"hbm_bandwidth": 1e10, "peak_flops": 1e11, "tile_flops": 1e11, "exp_rate": 1e9, "tile": "-",
                "softmax_bandwidth": {n: 1e10 for _, n in cases}}
    else:
        ceil = measure_ceilings(softmax_rows=[n for _, n in cases])
    chips = {"standard": measured_chip(ceil), "flash": measured_chip(ceil, matmul="tile_flops")}
    fused = bool(getattr(flash, "FUSED_BWD", False))
    t = Table(f"standard attention vs FlashAttention, measured and predicted ({str(DT).split('.')[-1]})",
              ["impl", "pass", "B", "H", "N", "d", "ms", "predicted ms", "bound", "measured/predicted",
               "overlap bound ms", "measured/overlap", "flash speed-up", "predicted speed-up"])
    parts = Table("where standard attention's forward goes (ms, measured / predicted)",
                  ["B", "N", "Q K^T", "softmax", "P V", "sum of the three", "whole forward"])
    proc.wait(timeout=900)
    with open(path) as f:
        sims = json.load(f)
    h = STANDARD_H if not SMOKE else 2
    for b, n in cases:
        d = STANDARD_D if not SMOKE else 16
        counts = sims[f"{n}:{d}"]
        counts["flash/bwd"] = dq_recompute(counts["flash/bwd"], n, d, fused)
        measured = _time_standard_and_flash(b, h, n, d)
        pred = {key: predict(counts[f"{key[0]}/{key[1]}"], chips[key[0]], b * h, LAUNCHES[key],
                             softmax_bandwidth=ceil["softmax_bandwidth"][n] if key == ("standard", "fwd") else None)
                for key in LAUNCHES}
        for ps in ("fwd", "bwd", "fwd+bwd"):
            keys = ("fwd", "bwd") if ps == "fwd+bwd" else (ps,)
            tm = {impl: sum(measured[(impl, x)] for x in keys) for impl in ("standard", "flash")}
            tp = {impl: sum(pred[(impl, x)]["time_s"] for x in keys) * 1e3 for impl in ("standard", "flash")}
            to = {impl: sum(pred[(impl, x)]["overlap_s"] for x in keys) * 1e3 for impl in ("standard", "flash")}
            for impl in ("standard", "flash"):
                bound = "/".join(sorted({pred[(impl, x)]["bound"] for x in keys}))
                t.add(impl, ps, b, h, n, d, round(tm[impl], 4), round(tp[impl], 4), bound,
                      round(tm[impl] / tp[impl], 3), round(to[impl], 4), round(tm[impl] / to[impl], 3),
                      round(tm["standard"] / tm["flash"], 2) if impl == "flash" else "-",
                      round(tp["standard"] / tp["flash"], 2) if impl == "flash" else "-")
        # the forward's three kernels: each GEMM moves its operands and S or P at the copy rate (n^2 per head
        # each way, the small operands besides), the softmax reads S and writes P at the softmax rate
        z, bw, el = b * h, ceil["hbm_bandwidth"], 2
        gemm_ms = (z * (n * n + 2 * n * d) * el / bw + KERNEL_OVERHEAD_S) * 1e3
        soft_ms = (z * 2 * n * n * el / ceil["softmax_bandwidth"][n] + KERNEL_OVERHEAD_S) * 1e3
        three = measured["QK^T"] + measured["softmax"] + measured["PV"]
        parts.add(b, n, f"{measured['QK^T']:.3f} / {gemm_ms:.3f}", f"{measured['softmax']:.3f} / {soft_ms:.3f}",
                  f"{measured['PV']:.3f} / {gemm_ms:.3f}", f"{three:.3f} / {2 * gemm_ms + soft_ms:.3f}",
                  f"{measured[('standard', 'fwd')]:.3f} / {pred[('standard', 'fwd')]['time_s'] * 1e3:.3f}")
    sm = ", ".join(f"N={n}: {r / 1e12:.2f}" for n, r in ceil["softmax_bandwidth"].items())
    t.notes.append(f"predicted: refattn's simulated kernels (standard F1-F3/B1-B5, FlashAttention-2) count one head's "
                   f"HBM traffic, FLOPs and exponentials on the h200 preset's SRAM; x B*H heads; time = max(bytes / "
                   f"{ceil['hbm_bandwidth'] / 1e12:.2f} TB/s, FLOPs / matmul rate + exps / "
                   f"{ceil['exp_rate'] / 1e12:.2f}e12 per s) + {KERNEL_OVERHEAD_S * 1e6:.0f} us per kernel launch "
                   f"({', '.join(f'{a} {p} {c}' for (a, p), c in LAUNCHES.items())}); matmul rate: standard "
                   f"{ceil['peak_flops'] / 1e12:.0f} TFLOP/s (8192^3 bf16 cuBLAS), flash "
                   f"{ceil['tile_flops'] / 1e12:.0f} TFLOP/s (the Triton forward's loop without its softmax, "
                   f"tiling {ceil['tile']}); standard forward: the softmax pass (S read, P written) at the softmax "
                   f"rate ({sm} TB/s); flash backward: " + ("one pass, dQ by atomics" if fused else
                                                             "+4 N^2 d FLOPs and N^2 exps per head for the separate "
                                                             "dQ kernel's recomputation of S and dP") +
                   "; every rate measured in this run by a microbenchmark, none fitted to the attention times")
    t.notes.append("overlap bound: the same counts if the matmuls and the exponentials overlapped perfectly, "
                   "max(memory, matmuls, exponentials) (the roofline's own rule for memory and compute): a kernel "
                   "lies between it and the prediction (matmuls and softmax in series)")
    t.notes.append("flash speed-up: standard time / Triton FlashAttention time (the paper reports up to 7.6x at "
                   "GPT-2 sizes on an A100); non-causal")
    parts.notes.append("predicted per kernel: a GEMM moves N^2 + 2 N d elements per head at the copy rate, the "
                       "softmax 2 N^2 at the softmax rate, + the launch overhead each")
    t.print()
    parts.print()
    return [t, parts]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m gpu_optional.bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a few shapes only")
    p.add_argument("--csv", default=None, help="folder to write the tables as CSV")
    p.add_argument("--sections", default="dense,sparse,standard")
    p.add_argument("--smoke", action="store_true", help="tiny float32 run on the CPU under TRITON_INTERPRET=1")
    args = p.parse_args(argv)
    global SMOKE, DEV, DT
    if args.smoke:
        SMOKE, DEV, DT = True, "cpu", torch.float32
        if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
            print("--smoke needs TRITON_INTERPRET=1 set before Python starts", file=sys.stderr)
            return 2
    elif os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") or not torch.cuda.is_available():
        print("gpu_optional.bench needs a CUDA GPU (and TRITON_INTERPRET unset or 0)", file=sys.stderr)
        return 2
    if not SMOKE:
        props = torch.cuda.get_device_properties(0)
        print(f"device: {props.name}, {props.multi_processor_count} SMs; torch {torch.__version__}, "
              f"triton {triton.__version__}", flush=True)
    tables = []
    sections = args.sections.split(",")
    # the simulator counts on the CPU while the GPU times the other sections
    sim = _start_simulation(args.quick) if "standard" in sections else None
    for name in sections:
        t0 = time.time()
        try:
            if name == "standard":
                tables += standard(args.quick, sim)
            else:
                tables += {"dense": dense, "sparse": sparse}[name](args.quick)
        except Exception:
            traceback.print_exc()
        print(f"[{name}] {time.time() - t0:.0f} s", flush=True)
        if args.csv:
            for tb in tables:
                tb.write_csv(args.csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
