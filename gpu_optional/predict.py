"""The simulator's prediction for a real GPU: refattn's counted kernels on the "h200" preset, with its rates
replaced by microbenchmarks measured on the GPU in hand.

* :func:`measure_ceilings` measures, never fits to attention timings:

  - ``hbm_bandwidth``: a 2 GiB device-to-device copy (bytes read + written / time);
  - ``peak_flops``: an 8192^3 bf16 matrix product (cuBLAS), the matmul ceiling of torch's standard attention;
  - ``tile_flops``: ``gpu_optional.microbench.tile_matmuls``, FlashAttention-2's forward loop *without* its
    softmax (per 128-row query tile: ``S = Q K_j^T``, ``O += bf16(S) V_j``): the rate the Triton kernel's
    matmuls can reach at the tile shapes it issues, best of a few tilings;
  - ``exp_rate``: ``gpu_optional.microbench.softmax_elements``, the online softmax's per-score work on a
    register tile (row max, ``exp2``, row sum, the bf16 rounding) with no matmul and no memory traffic:
    scores per second;
  - ``softmax_bandwidth[N]``: ``torch.softmax`` over a 256 MiB bf16 tensor with rows of N (bytes read +
    written / time): the streaming rate of standard attention's S -> P pass.
* :func:`simulate` runs refattn's simulated kernels (standard attention F1-F3 / B1-B5 and FlashAttention-2
  forward / backward) on ONE head of random float32 data: their counters give the HBM traffic, the matmul
  FLOPs and the exponentials. Heads are independent, so B*H heads cost exactly B*H times one head's counts.
* :func:`predict` turns the counts into time with :func:`refattn.memory.simulated_time`:
  ``max(bytes / bandwidth, FLOPs / matmul rate + exps / exp_rate)`` (matmuls and exponentials in series:
  the same warps issue both) plus ``KERNEL_OVERHEAD_S`` per kernel launch (stated, not fitted). Standard
  attention's forward runs its softmax as a kernel of its own, so the S -> P pass's traffic (S read, P
  written) is charged at the measured softmax streaming rate, after the two matmuls' roofline.
  FlashAttention uses ``tile_flops``, standard attention ``peak_flops`` (cuBLAS).

``python -m gpu_optional.predict OUT.json N:d ...`` runs :func:`simulate` in a process of its own, so the
bench can count on the CPU while the GPU is timing something else.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np

from refattn.memory import Traffic, get_chip, simulated_time

#: launch + tail cost added per kernel (a few microseconds on Hopper with a warm CUDA context); stated, not fitted
KERNEL_OVERHEAD_S = 5e-6
#: kernels each implementation launches: torch standard attention (scale q, Q K^T, softmax, P V / their
#: backward: dP, dV, softmax backward, dQ, dK, scale) and the Triton kernels (forward / preprocess, dK dV, dQ)
LAUNCHES = {("standard", "fwd"): 4, ("standard", "bwd"): 6, ("flash", "fwd"): 1, ("flash", "bwd"): 3}


def standard_attention(q, k, v):
    """Standard attention in torch (the paper's baseline): S = (scale Q) K^T and P = softmax(S) go through HBM."""
    import torch

    s = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
    return torch.softmax(s, dim=-1) @ v


def measure_ceilings(device="cuda", softmax_rows=(), d=64):
    """The rates above, measured on ``device`` (medians of do_bench); ``softmax_bandwidth`` for each row
    length in ``softmax_rows``. Returns a dict (rates in B/s, FLOP/s, exponentials/s), with ``tile`` the
    best tiling."""
    import torch
    from triton.testing import do_bench

    from gpu_optional.microbench import TILINGS, softmax_elements, tile_matmuls

    gen = torch.Generator(device=device).manual_seed(0)

    def ms(fn):
        return do_bench(fn, warmup=25, rep=200, return_mode="median")

    def copy_rate():
        x = torch.randn(2**30, device=device, dtype=torch.bfloat16)     # 2 GiB: far above the 60 MB L2
        y = torch.empty_like(x)
        return 2 * x.numel() * x.element_size() / (ms(lambda: y.copy_(x)) * 1e-3)

    def gemm_rate(n=8192):
        a, b = (torch.randn((n, n), generator=gen, device=device, dtype=torch.bfloat16) for _ in range(2))
        return 2.0 * n**3 / (ms(lambda: a @ b) * 1e-3)

    def tile_rates(z=32, n=8192):                                       # 32 heads x N = 8192 x d
        q, k, v = (torch.randn((z, n, d), generator=gen, device=device, dtype=torch.bfloat16) for _ in range(3))
        return {t: 4.0 * z * n * n * d / (ms(lambda t=t: tile_matmuls(q, k, v, *t)) * 1e-3) for t in TILINGS}

    def exp_rate(programs=132 * 8, reps=256, bm=128, bn=64):
        x = torch.rand((programs * bm, bn), generator=gen, device=device)
        return programs * bm * bn * reps / (ms(lambda: softmax_elements(x, 1.4427, reps, bm, bn)) * 1e-3)

    def softmax_rate(rows):
        s = torch.randn((2**27 // rows, rows), generator=gen, device=device, dtype=torch.bfloat16)
        return 2 * s.numel() * s.element_size() / (ms(lambda: torch.softmax(s, dim=-1)) * 1e-3)

    out = {"hbm_bandwidth": copy_rate(), "peak_flops": gemm_rate()}
    tiles = tile_rates()
    out["tile"] = max(tiles, key=tiles.get)
    out["tile_flops"] = tiles[out["tile"]]
    out["exp_rate"] = exp_rate()
    out["softmax_bandwidth"] = {rows: softmax_rate(rows) for rows in softmax_rows}
    return out


def measured_chip(ceilings, preset="h200", matmul="peak_flops"):
    """The preset with its bandwidth, matmul rate (``ceilings[matmul]``: "peak_flops" for cuBLAS,
    "tile_flops" for the Triton kernel) and exponential rate replaced by the measured ones."""
    chip = get_chip(preset)
    return dataclasses.replace(chip, name=f"{chip.name}, measured rates", hbm_bandwidth=ceilings["hbm_bandwidth"],
                               peak_flops=ceilings[matmul], exp_rate=ceilings.get("exp_rate", chip.exp_rate))


def simulate(n, d, preset="h200", seed=0):
    """Counted traffic (elements) and FLOPs of one head, N = n, head dim d, non-causal, on the preset's SRAM.

    Returns ``{(impl, pass): {"reads": {...}, "writes": {...}, "flops": int, "exps": int}}``.
    """
    import refattn

    rng = np.random.default_rng(seed)
    q, k, v, do, o = (rng.standard_normal((n, d)).astype(np.float32) for _ in range(5))
    lse = np.zeros(n, np.float32)
    out = {}
    # count_only: the kernels' own loops with the arithmetic skipped (same counts, no N x N arrays)
    sf = refattn.standard_forward(q, k, v, sram=preset, count_only=True)
    sb = refattn.standard_backward(q, k, v, o, do, sram=preset, count_only=True)
    ff = refattn.flash_forward(q, k, v, sram=preset, variant="fa2", count_only=True)
    fb = refattn.flash_backward(q, k, v, o, lse, do, sram=preset, count_only=True)
    for key, r in ((("standard", "fwd"), sf), (("standard", "bwd"), sb), (("flash", "fwd"), ff),
                   (("flash", "bwd"), fb)):
        out[key] = {"reads": r.traffic.reads, "writes": r.traffic.writes, "flops": int(r.flops),
                    "exps": int(r.exps)}
    return out


def dq_recompute(counts, n, d, fused):
    """The Triton backward's own extra work over the simulator's one-pass backward (refattn's counts 10 N^2 d
    FLOPs and N^2 exponentials per head): unless ``fused`` (dQ by atomics in the dK dV pass), its separate dQ
    kernel recomputes S and dP, ``4 N^2 d`` FLOPs and ``N^2`` exponentials more per head."""
    if fused:
        return counts
    return dict(counts, flops=counts["flops"] + 4 * n * n * d, exps=counts["exps"] + n * n)


def predict(counts, chip, heads, launches, softmax_bandwidth=None):
    """Seconds: roofline of ``heads`` x one head's counts on ``chip`` + launches x KERNEL_OVERHEAD_S.

    With ``softmax_bandwidth`` (standard attention's forward), the S read and the P write are its softmax
    kernel's: charged at that rate, after the roofline of the rest (the kernels run one after another)."""
    reads = {t: x * heads for t, x in counts["reads"].items()}
    writes = {t: x * heads for t, x in counts["writes"].items()}
    softmax_s = 0.0
    if softmax_bandwidth is not None:
        moved = reads.pop("S", 0) + writes.pop("P", 0)
        softmax_s = moved * chip.bytes_per_element / softmax_bandwidth
    r = simulated_time(Traffic(reads, writes, chip.bytes_per_element), counts["flops"] * heads, chip,
                       exps=counts["exps"] * heads)
    extra = softmax_s + launches * KERNEL_OVERHEAD_S
    return dict(r, softmax_s=softmax_s, time_s=r["time_s"] + extra, overlap_s=r["overlap_s"] + extra)


def main(argv=None):
    out_path, *sizes = argv if argv is not None else sys.argv[1:]
    result = {}
    for s in sizes:
        n, d = (int(x) for x in s.split(":"))
        result[s] = {f"{impl}/{ps}": v for (impl, ps), v in simulate(n, d).items()}
        with open(out_path, "w") as f:
            json.dump(result, f)
        print(f"[predict] simulated N={n} d={d}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
