"""gpu_optional.predict: the simulator's counts turned into a prediction on a measured chip (no GPU needed)."""

import pytest

from gpu_optional.predict import KERNEL_OVERHEAD_S, measured_chip, predict, simulate
from refattn.memory import CHIPS


def test_measured_chip_replaces_only_the_two_rates():
    chip = measured_chip({"hbm_bandwidth": 4.0e12, "peak_flops": 7.0e14})
    ref = CHIPS["h200"]
    assert (chip.hbm_bandwidth, chip.peak_flops) == (4.0e12, 7.0e14)
    assert (chip.sram_bytes, chip.units, chip.bytes_per_element) == (ref.sram_bytes, ref.units, ref.bytes_per_element)


def test_predict_is_heads_times_one_head_plus_launches():
    chip = measured_chip({"hbm_bandwidth": 1.0e12, "peak_flops": 1.0e15})
    counts = {"reads": {"Q": 1000, "S": 4000}, "writes": {"S": 4000}, "flops": 10**6, "exps": 0}
    one = predict(counts, chip, 1, 0)
    # memory-bound: 9000 elements * 2 bytes / 1e12 B/s; 16 heads: 16 times that, + 3 launches
    assert one["bound"] == "memory" and one["time_s"] == pytest.approx(9000 * 2 / 1e12)
    many = predict(counts, chip, 16, 3)
    assert many["time_s"] == pytest.approx(16 * one["time_s"] + 3 * KERNEL_OVERHEAD_S)


def test_simulate_counts_standard_and_flash():
    """Standard attention writes S and P (n^2 each) to HBM; FlashAttention does not; same matmul FLOPs."""
    n, d = 48, 16
    sim = simulate(n, d)
    std, fl = sim[("standard", "fwd")], sim[("flash", "fwd")]
    assert std["writes"]["S"] == n * n and std["writes"]["P"] == n * n
    assert "S" not in fl["writes"] and "P" not in fl["writes"]
    assert std["flops"] == fl["flops"] == 4 * n * n * d
    assert sim[("standard", "bwd")]["flops"] > 0 and sim[("flash", "bwd")]["flops"] > 0
