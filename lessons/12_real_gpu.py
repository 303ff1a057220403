"""Lesson 12: on a real GPU. The Triton kernels, and what the simulator predicted.

Everything so far ran on a *simulated* memory hierarchy: refattn's kernels
count every HBM transfer, and a roofline turns counts into a predicted time,
time = max(bytes / HBM bandwidth, FLOPs / peak FLOP rate). The roofline is a
lower bound: a real kernel cannot move data faster than the memory allows nor
compute faster than the chip's peak.

This lesson runs the same algorithm, FlashAttention-2, written in Triton
(gpu_optional.flash_attention), on a real NVIDIA GPU, and compares:

* its output with the float64 reference (fp16 inputs, tolerance 1e-2: fp16 keeps
  about 3 decimal digits, and the P V product is accumulated in fp32);
* its measured time with the simulator's prediction on the H100-like preset;
* its speed against naive attention in PyTorch (S and P materialised in HBM),
  next to the simulator's predicted ratio standard / flash.

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

import numpy as np  # noqa: E402
from triton.testing import do_bench  # noqa: E402

import refattn  # noqa: E402
from gpu_optional import flash_attention  # noqa: E402
from refattn.memory import Traffic, simulated_time  # noqa: E402
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


def naive(q, k, v):
    s = (q @ k.transpose(-1, -2)) * d ** -0.5  # S written to HBM, (heads, N, N)
    return torch.softmax(s, dim=-1) @ v         # P written, read back


c.say("""Step 2. Measured time (triton.testing.do_bench: median of many runs, after warm-up) of the Triton
FlashAttention forward and of naive attention in PyTorch, which writes S and P to GPU memory.""")
t_flash = do_bench(lambda: flash_attention(q, k, v)) * 1e-3
t_naive = do_bench(lambda: naive(q, k, v)) * 1e-3
c.show("Triton FlashAttention-2 forward", f"{t_flash * 1e3:.3f} ms")
c.show("naive PyTorch attention", f"{t_naive * 1e3:.3f} ms")

c.say(f"""Step 3. The simulator's prediction. One head is run through refattn's counted kernels (float32
arithmetic, 2-byte storage, SRAM of the "h100" preset); the counts are multiplied by {heads} heads
(exact: heads are independent) and turned into a roofline time on the H100-like preset.""")
qs, ks, vs = (x[0].float().cpu().numpy() for x in (q, k, v))
pred = {}
for name, r in (("flash", refattn.flash_forward(qs, ks, vs, sram="h100", variant="fa2")),
                ("standard", refattn.standard_forward(qs, ks, vs, sram="h100"))):
    traffic = Traffic({t: x * heads for t, x in r.traffic.reads.items()},
                      {t: x * heads for t, x in r.traffic.writes.items()}, 2)
    pred[name] = simulated_time(traffic, r.flops * heads, "h100")
    c.show(f"predicted {name:8s}", f"{pred[name]['time_s'] * 1e3:.3f} ms ({pred[name]['bound']}-bound, "
           f"{pred[name]['bytes'] / 1e9:.2f} GB)")
c.show("measured / predicted, flash", f"{t_flash / pred['flash']['time_s']:.1f}x")
c.show("speed-up of flash over naive: predicted / measured",
       f"{pred['standard']['time_s'] / pred['flash']['time_s']:.1f}x / {t_naive / t_flash:.1f}x")
c.claim(t_flash >= pred["flash"]["time_s"], "the measured time is above the roofline prediction (a lower bound)")
c.claim(pred["standard"]["time_s"] > pred["flash"]["time_s"] and t_naive > t_flash,
        "simulator and GPU agree on the direction: FlashAttention beats materialising S and P")
c.say("""The gap between measured and predicted time is what the roofline leaves out: kernel launch,
the softmax's exponentials (not counted as matmul FLOPs), imperfect overlap of loads and math, and
an H100-like preset that may differ from the GPU in hand.""")
c.done(12)
