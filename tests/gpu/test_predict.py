"""gpu_optional.predict: the simulator's counts turned into a prediction on a measured chip (no GPU needed),
and the microbenchmark kernels it measures the rates with (under the interpreter or on the GPU)."""

import numpy as np
import pytest

from gpu_optional.predict import KERNEL_OVERHEAD_S, dq_recompute, measured_chip, predict, simulate
from refattn.memory import CHIPS
from tests.gpu.helpers import DEVICE, NEEDS, skip_without_device, torch

CEIL = {"hbm_bandwidth": 4.0e12, "peak_flops": 7.0e14, "tile_flops": 5.0e14, "exp_rate": 3.0e12}


def test_measured_chip_replaces_the_rates():
    ref = CHIPS["h200"]
    chip = measured_chip(CEIL)
    assert (chip.hbm_bandwidth, chip.peak_flops, chip.exp_rate) == (4.0e12, 7.0e14, 3.0e12)
    assert measured_chip(CEIL, matmul="tile_flops").peak_flops == 5.0e14
    assert (chip.sram_bytes, chip.units, chip.bytes_per_element) == (ref.sram_bytes, ref.units, ref.bytes_per_element)
    assert measured_chip({"hbm_bandwidth": 1.0, "peak_flops": 1.0}).exp_rate == ref.exp_rate  # not measured: kept


def test_predict_is_heads_times_one_head_plus_launches():
    chip = measured_chip({"hbm_bandwidth": 1.0e12, "peak_flops": 1.0e15, "exp_rate": 1.0e12})
    counts = {"reads": {"Q": 1000, "S": 4000}, "writes": {"S": 4000}, "flops": 10**6, "exps": 0}
    one = predict(counts, chip, 1, 0)
    # memory-bound: 9000 elements * 2 bytes / 1e12 B/s; 16 heads: 16 times that, + 3 launches
    assert one["bound"] == "memory" and one["time_s"] == pytest.approx(9000 * 2 / 1e12)
    many = predict(counts, chip, 16, 3)
    assert many["time_s"] == pytest.approx(16 * one["time_s"] + 3 * KERNEL_OVERHEAD_S)
    # compute: 1e9 FLOPs / 1e15 + 1e7 exps / 1e12 = 1 us + 10 us, in series; memory 18 ns
    busy = predict(dict(counts, flops=10**9, exps=10**7), chip, 1, 0)
    assert busy["bound"] == "compute" and busy["time_s"] == pytest.approx(1e-6 + 1e-5)
    assert busy["overlap_s"] == pytest.approx(1e-5)                  # the bound if matmuls and exps overlapped


def test_predict_charges_the_softmax_pass_at_its_own_rate():
    """Standard forward: the S read and the P write go at the softmax rate, the rest through the roofline."""
    chip = measured_chip({"hbm_bandwidth": 2.0e12, "peak_flops": 1.0e18})
    counts = {"reads": {"Q": 100, "S": 1000}, "writes": {"S": 1000, "P": 1000}, "flops": 0, "exps": 0}
    r = predict(counts, chip, 2, 1, softmax_bandwidth=1.0e12)
    softmax = 2 * (1000 + 1000) * 2 / 1.0e12
    rest = 2 * (100 + 1000) * 2 / 2.0e12
    assert r["softmax_s"] == pytest.approx(softmax)
    assert r["time_s"] == pytest.approx(softmax + rest + KERNEL_OVERHEAD_S)


def test_dq_recompute_adds_the_second_pass_unless_fused():
    counts = {"reads": {}, "writes": {}, "flops": 10 * 64 * 64 * 8, "exps": 64 * 64}
    assert dq_recompute(counts, 64, 8, fused=True) is counts
    two = dq_recompute(counts, 64, 8, fused=False)
    assert (two["flops"], two["exps"]) == (14 * 64 * 64 * 8, 2 * 64 * 64)


def test_simulate_counts_standard_and_flash():
    """Standard attention writes S and P (n^2 each) to HBM; FlashAttention does not; same matmul FLOPs;
    the exponentials: n^2 for the standard softmax, n^2 plus the rescalings for flash, n^2 in its backward."""
    n, d = 48, 16
    sim = simulate(n, d)
    std, fl = sim[("standard", "fwd")], sim[("flash", "fwd")]
    assert std["writes"]["S"] == n * n and std["writes"]["P"] == n * n
    assert "S" not in fl["writes"] and "P" not in fl["writes"]
    assert std["flops"] == fl["flops"] == 4 * n * n * d
    assert std["exps"] == n * n and fl["exps"] >= n * n and sim[("flash", "bwd")]["exps"] == n * n
    assert sim[("flash", "bwd")]["flops"] == 10 * n * n * d and sim[("standard", "bwd")]["flops"] == 8 * n * n * d


@NEEDS
def test_tile_matmuls_is_flash_loop_without_softmax():
    """sum_j (Q K_j^T) V_j over 2 key tiles and 2 query tiles: (Q K^T) V, exactly what it claims to time."""
    skip_without_device()
    from gpu_optional.microbench import tile_matmuls

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn((2, 64, 16), generator=gen).to(DEVICE) for _ in range(3))
    o = tile_matmuls(q, k, v, block_m=32, block_n=32, num_warps=4, num_stages=2)
    want = (q.double() @ k.double().transpose(1, 2)) @ v.double()
    assert torch.allclose(o.double().cpu(), want.cpu(), rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="multiple"):
        tile_matmuls(q[:, :50], k[:, :50], v[:, :50], block_m=32, block_n=32)


@NEEDS
def test_softmax_elements_does_the_rounds_it_counts():
    """Row sums after 3 rounds of max / exp2 / sum / bf16 rounding, against the same rounds in numpy."""
    skip_without_device()
    from gpu_optional.microbench import softmax_elements

    gen = torch.Generator().manual_seed(1)
    x = torch.rand((32, 16), generator=gen)
    got = softmax_elements(x.to(DEVICE), 1.5, 3, block_m=16, block_n=16).cpu().numpy()
    xs, want = x.numpy().astype(np.float32), np.zeros(32, np.float32)
    for _ in range(3):
        p = np.exp2(xs - xs.max(1, keepdims=True))
        want += p.sum(1)
        xs = torch.from_numpy(p).to(torch.bfloat16).float().numpy() * np.float32(1.5)
    np.testing.assert_allclose(got, want, rtol=1e-2)   # each round adds ~1/3 of the sum; bf16 rounding modes differ
