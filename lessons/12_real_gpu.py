"""Lesson 12: on a real GPU. The Triton kernels, and what the simulator predicted.

Everything so far ran on a *simulated* memory hierarchy: refattn's kernels
count every HBM transfer, and a roofline turns counts into a predicted time,
time = max(bytes / HBM bandwidth, FLOPs / matmul rate). The roofline is a
lower bound for one kernel that overlaps its loads and its math perfectly.

This lesson runs the same algorithm, FlashAttention-2, written in Triton
(gpu_optional.flash_attention), on a real NVIDIA GPU, and compares:

* its output with the float64 reference (fp16 inputs, tolerance 1e-2: fp16 keeps
  about 3 decimal digits, and the P V product is accumulated in fp32);
* its measured time, and that of standard attention in PyTorch (S and P
  materialised in HBM), with the simulator's prediction for each on the "h200"
  preset, whose rates are *measured* first on the GPU in hand by
  microbenchmarks, never fitted to the attention timings: a large copy (HBM
  bandwidth), a large matrix product (cuBLAS's matmul rate), the Triton
  kernel's loop with its softmax taken out (the matmul rate at the tiles it
  issues), its softmax with the matmuls taken out (exponentials per second),
  and torch's softmax alone (its streaming rate); each kernel launch adds a
  stated 5 microseconds.

It needs torch with CUDA and triton. Without them it says so and exits cleanly.
"""

import _course as c

c.intro(__doc__, "IO complexity")

try:
    import torch
    import triton  # noqa: F401  (needed by gpu_optional)
except ImportError as exc:
    c.skip(12, f"needs torch and triton ({exc.name} is not installed); install the [gpu] extra on a CUDA machine")
if not torch.cuda.is_available():
    c.skip(12, f"no CUDA GPU visible to torch {torch.__version__}; run it on a machine with an NVIDIA GPU")

import dataclasses  # noqa: E402

import numpy as np  # noqa: E402
from triton.testing import do_bench  # noqa: E402

from gpu_optional import flash_attention, flash_forward  # noqa: E402
from gpu_optional.predict import (  # noqa: E402
    KERNEL_OVERHEAD_S,
    LAUNCHES,
    measure_ceilings,
    measured_chip,
    predict,
    simulate,
    standard_attention,
)
from refattn.memory import CHIPS  # noqa: E402
from refattn.reference import attention  # noqa: E402

heads, n, d = 16, 4096, 64
gpu = torch.cuda.get_device_name(0)
c.say(f"""Step 1. Correctness on {gpu}: {heads} heads, N = {n}, d = {d}, fp16. Head 0 is compared with the
float64 reference computed on the CPU from the same fp16 numbers.""")
gen = torch.Generator(device="cuda").manual_seed(0)
q, k, v = (torch.randn(heads, n, d, device="cuda", dtype=torch.float16, generator=gen) for _ in range(3))
o, lse = flash_attention(q, k, v)
o_ref, lse_ref = attention(q[0].float().cpu().numpy(), k[0].float().cpu().numpy(), v[0].float().cpu().numpy())
err = float(np.abs(o[0].float().cpu().numpy() - o_ref).max())
c.show("largest error of head 0 against the float64 reference", f"{err:.1e}")
c.claim(err < 1e-2, "the Triton FlashAttention output matches the reference within the fp16 tolerance 1e-2")
c.claim(np.allclose(lse[0].cpu().numpy(), lse_ref, atol=1e-2), "its log-sum-exp matches too")

c.say(f"""Step 2. The ceilings of this GPU, measured (gpu_optional.predict.measure_ceilings): HBM bandwidth
from a 2 GiB device-to-device copy (bytes read + written per second); the matmul rate of an 8192^3 bf16
product (cuBLAS); the matmul rate of the flash kernel's own loop without its softmax (per 128-row tile of
queries: S = Q K_j^T, O += S V_j); the rate of its softmax without the matmuls (row max, exp2, row sum on a
register tile: the special-function units compute the exponentials); torch's softmax over rows of {n}.""")
ceil = measure_ceilings(softmax_rows=[n])
chips = {"standard": measured_chip(ceil), "flash": measured_chip(ceil, matmul="tile_flops")}
c.show("HBM bandwidth (copy)", f"{ceil['hbm_bandwidth'] / 1e12:.2f} TB/s (h200 preset's datasheet: 4.8)")
c.show("matmul rate, cuBLAS 8192^3 (bf16)", f"{ceil['peak_flops'] / 1e12:.0f} TFLOP/s (datasheet: 989)")
c.show("matmul rate, the flash loop's tiles", f"{ceil['tile_flops'] / 1e12:.0f} TFLOP/s (tiling {ceil['tile']})")
c.show("softmax elements (exp2 and its row max / sum)", f"{ceil['exp_rate'] / 1e12:.2f}e12 per s (datasheet: "
       f"{CHIPS['h200'].exp_rate / 1e12:.1f}e12 exponentials per s)")
c.show(f"torch softmax, rows of {n}", f"{ceil['softmax_bandwidth'][n] / 1e12:.2f} TB/s")

c.say("""Step 3. Measured forward times (triton.testing.do_bench: median of many runs after warm-up) of the
Triton FlashAttention forward and of standard attention in PyTorch (matmul, softmax, matmul).""")
t_flash = do_bench(lambda: flash_forward(q, k, v, check_finite=False), return_mode="median") * 1e-3
t_std = do_bench(lambda: standard_attention(q, k, v), return_mode="median") * 1e-3

c.say(f"""Step 4. The simulator's prediction. One head is run through refattn's counted kernels (float32
arithmetic, 2-byte storage, the h200 preset's SRAM); its counts times {heads} heads (exact: heads are
independent) give time = max(bytes / bandwidth, FLOPs / matmul rate + exponentials / their rate) (matmuls
and softmax in series: the same warps issue both), standard attention's softmax pass at torch's softmax rate,
plus {KERNEL_OVERHEAD_S * 1e6:.0f} us per launch.""")
counts = simulate(n, d)
pred = {impl: predict(counts[(impl, "fwd")], chips[impl], heads, LAUNCHES[(impl, "fwd")],
                      softmax_bandwidth=ceil["softmax_bandwidth"][n] if impl == "standard" else None)
        for impl in ("standard", "flash")}
for impl, t in (("standard", t_std), ("flash", t_flash)):
    p = pred[impl]
    c.show(f"{impl:8s} measured / predicted", f"{t * 1e3:.3f} ms / {p['time_s'] * 1e3:.3f} ms = "
           f"{t / p['time_s']:.2f}x ({p['bound']}-bound, {p['bytes'] / 1e9:.2f} GB, exponentials "
           f"{p['exp_s'] * 1e3:.3f} ms)")
plain = predict(counts[("flash", "fwd")], dataclasses.replace(chips["flash"], exp_rate=None), heads,
                LAUNCHES[("flash", "fwd")])
c.show("flash predicted from its matmul FLOPs alone", f"{plain['time_s'] * 1e3:.3f} ms: measured / predicted = "
       f"{t_flash / plain['time_s']:.2f}x")
c.show("flash if its matmuls and softmax overlapped perfectly (a lower bound)",
       f"{pred['flash']['overlap_s'] * 1e3:.3f} ms: measured / bound = {t_flash / pred['flash']['overlap_s']:.2f}x")
c.show("speed-up of flash over standard: measured / predicted",
       f"{t_std / t_flash:.1f}x / {pred['standard']['time_s'] / pred['flash']['time_s']:.1f}x")
c.claim(pred["standard"]["time_s"] > pred["flash"]["time_s"] and t_std > t_flash,
        "simulator and GPU agree on the direction: FlashAttention beats materialising S and P")
c.say(f"""Standard attention is memory-bound (S and P are N x N per head): its prediction is bytes over the
measured rates. FlashAttention is compute-bound, and at d = {d} a score costs 4 d = {4 * d} matmul FLOPs but
also an exponential on the special-function units (16 per SM per clock against the tensor cores' ~4000
FLOPs): the softmax takes {pred['flash']['exp_s'] * 1e3:.3f} ms beside the matmuls' \
{(pred['flash']['compute_s'] - pred['flash']['exp_s']) * 1e3:.3f} ms, which is why the roofline on matmul
FLOPs alone predicts it {t_flash / plain['time_s']:.1f}x too fast. A kernel that overlaps the two
(FlashAttention-3's ping-pong of two warp groups) would approach max(matmuls, softmax) instead of their sum;
the benchmark table (python -m gpu_optional.bench --sections standard) shows both for N = 1k-16k, forward
and backward.""")
c.done(12)
