"""A/B of the dense Triton kernels' knobs on a GPU (``python benchmarks/dense_ab.py``).

* wider autotune lists for the forward, dK/dV and dQ kernels: prints the config each picks;
* (h200_dense_ab.log only) causal tile ordering, longest query blocks first, on and off: a version of
  flash.py with that switch measured +0.8 % / +1.4 % (d = 128 fwd / bwd) and -0.9 % / -0.4 % (d = 64), within
  run-to-run spread, so the switch was taken out again.

bf16, N = 8192, B = 2, H*d = 2048, the shape the benchmark tunes at; each time is do_bench's median, beside
SDPA's cuDNN backend measured in the same run.
"""

# ruff: noqa: B023  (every lambda is timed at once, inside its loop iteration)
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

import gpu_optional.flash as fl
from gpu_optional._common import configs

WIDER = {
    fl._fwd_kernel: [(128, 64, 4, 3), (128, 128, 8, 3), (128, 64, 8, 3), (128, 128, 8, 2), (128, 64, 4, 4),
                     (128, 128, 4, 3), (64, 64, 4, 3)],
    fl._bwd_dkdv_kernel: [(64, 128, 8, 3), (32, 128, 4, 3), (64, 128, 8, 2), (64, 128, 4, 3), (128, 128, 8, 2),
                          (64, 64, 4, 3)],
    fl._bwd_dq_kernel: [(128, 64, 8, 3), (128, 32, 4, 3), (128, 64, 8, 2), (128, 128, 8, 2), (128, 64, 4, 3),
                        (64, 64, 4, 3)],
}


def bench(fn):
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def main():
    for kern, lst in WIDER.items():
        kern.configs = configs(lst, lst[0], lst[0])
        kern.cache.clear()
    n = 8192
    print(f"{'d':>4} {'causal':>6} {'pass':>4} {'LPT':>4} {'ms':>8} {'TFLOP/s':>8} {'x cuDNN':>8}  config")
    for d in (128, 64):
        b, h = 2, 2048 // d
        gen = torch.Generator(device="cuda").manual_seed(d)
        q, k, v, do = (torch.randn((b, h, n, d), generator=gen, device="cuda", dtype=torch.bfloat16)
                       for _ in range(4))
        for causal in (False, True):
            flops = 4.0 * b * h * n * n * d / (2 if causal else 1)
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                ref_f = bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))
                qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
                og = F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal)
                ref_b = bench(lambda: torch.autograd.grad(og, (qg, kg, vg), do, retain_graph=True))
            for lpt in (True,):
                ms_f = bench(lambda: fl.flash_forward(q, k, v, causal=causal, check_finite=False))
                o, lse = fl.flash_forward(q, k, v, causal=causal, check_finite=False)
                ms_b = bench(lambda: fl.flash_backward(q, k, v, o, lse, do, causal=causal))
                cfg = {kern.fn.__name__: str(kern.best_config) for kern in WIDER}
                print(f"{d:4d} {causal!s:>6} {'fwd':>4} {lpt!s:>4} {ms_f:8.3f} {flops / ms_f / 1e9:8.1f} "
                      f"{ref_f / ms_f:8.3f}  {cfg['_fwd_kernel']}", flush=True)
                print(f"{d:4d} {causal!s:>6} {'bwd':>4} {lpt!s:>4} {ms_b:8.3f} {2.5 * flops / ms_b / 1e9:8.1f} "
                      f"{ref_b / ms_b:8.3f}  dkdv {cfg['_bwd_dkdv_kernel']}; dq {cfg['_bwd_dq_kernel']}",
                      flush=True)


if __name__ == "__main__":
    main()
