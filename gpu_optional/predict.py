"""The simulator's prediction for a real GPU: refattn's counted kernels on the "h200" preset, with its two
rates replaced by microbenchmarks measured on the GPU in hand.

* :func:`measure_ceilings` times a device-to-device copy (HBM bandwidth = bytes read + written / time) and
  an 8192^3 bf16 matrix product on random data (matmul rate = 2 n^3 / time): the roofline's two ceilings,
  measured, never fitted to attention timings.
* :func:`simulate` runs refattn's simulated kernels (standard attention F1-F3 / B1-B5 and FlashAttention-2
  forward / backward) on ONE head of random float32 data: their counters give the HBM traffic and the
  matmul FLOPs. Heads are independent, so B*H heads cost exactly B*H times one head's counts.
* :func:`predict` turns the counts into time: ``max(bytes / bandwidth, FLOPs / rate)`` (refattn's roofline,
  :func:`refattn.memory.simulated_time`) plus ``KERNEL_OVERHEAD_S`` per kernel launch the torch or Triton
  code makes (stated, not fitted).

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


def measure_ceilings(device="cuda"):
    """``{"hbm_bandwidth": B/s, "peak_flops": FLOP/s}`` measured on ``device`` (medians of do_bench)."""
    import torch
    from triton.testing import do_bench

    def copy_rate():
        x = torch.randn(2**30, device=device, dtype=torch.bfloat16)     # 2 GiB: far above the 60 MB L2
        y = torch.empty_like(x)
        ms = do_bench(lambda: y.copy_(x), warmup=25, rep=200, return_mode="median")
        return 2 * x.numel() * x.element_size() / (ms * 1e-3)

    bandwidth = copy_rate()
    n = 8192
    gen = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn((n, n), generator=gen, device=device, dtype=torch.bfloat16) for _ in range(2))
    ms = do_bench(lambda: a @ b, warmup=25, rep=200, return_mode="median")
    return {"hbm_bandwidth": bandwidth, "peak_flops": 2.0 * n**3 / (ms * 1e-3)}


def measured_chip(ceilings, preset="h200"):
    """The preset with its bandwidth and matmul rate replaced by the measured ones."""
    return dataclasses.replace(get_chip(preset), name=f"{get_chip(preset).name}, measured rates",
                               hbm_bandwidth=ceilings["hbm_bandwidth"], peak_flops=ceilings["peak_flops"])


def simulate(n, d, preset="h200", seed=0):
    """Counted traffic (elements) and FLOPs of one head, N = n, head dim d, non-causal, on the preset's SRAM.

    Returns ``{(impl, pass): {"reads": {...}, "writes": {...}, "flops": int, "exps": int}}``.
    """
    import refattn

    rng = np.random.default_rng(seed)
    q, k, v, do = (rng.standard_normal((n, d)).astype(np.float32) for _ in range(4))
    out = {}
    sf = refattn.standard_forward(q, k, v, sram=preset)
    sb = refattn.standard_backward(q, k, v, sf.o, do, sram=preset)
    ff = refattn.flash_forward(q, k, v, sram=preset, variant="fa2")
    fb = refattn.flash_backward(q, k, v, ff.o, ff.lse, do, sram=preset)
    for key, r in ((("standard", "fwd"), sf), (("standard", "bwd"), sb), (("flash", "fwd"), ff),
                   (("flash", "bwd"), fb)):
        out[key] = {"reads": r.traffic.reads, "writes": r.traffic.writes, "flops": int(r.flops),
                    "exps": int(r.exps)}
    return out


def predict(counts, chip, heads, launches):
    """Seconds: roofline of ``heads`` x one head's counts on ``chip`` + launches x KERNEL_OVERHEAD_S."""
    traffic = Traffic({t: x * heads for t, x in counts["reads"].items()},
                      {t: x * heads for t, x in counts["writes"].items()}, chip.bytes_per_element)
    r = simulated_time(traffic, counts["flops"] * heads, chip)
    return dict(r, time_s=r["time_s"] + launches * KERNEL_OVERHEAD_S)


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
