"""The simulated hierarchy: counters, SRAM occupancy, trace replay, plan checks, chips and time."""

import numba
import numpy as np
import pytest

from refattn import memory
from refattn.memory import (
    CHIPS,
    Sram,
    SramTooSmall,
    Traffic,
    as_sram,
    get_chip,
    make_trace,
    new_mem,
    require_fits,
    simulated_time,
)


@numba.njit(cache=True)
def _toy_kernel(mem, n_blocks, rows, d):
    """Copy Q to O block by block: load Q block, hold an S tile, store O; one step per block."""
    for b in range(n_blocks):
        memory.set_head(mem, 7)
        memory.load(mem, memory.T_Q, 0, b * rows, (b + 1) * rows, 0, d)
        memory.load(mem, memory.T_K, 1, 0, 1, 0, d)  # replaces the slot
        memory.load_more(mem, memory.T_K, 1, 1, 2, 0, d)  # appends: the slot holds 2 rows
        memory.hold(mem, memory.T_S, 2, b * rows, (b + 1) * rows, 0, 2)
        memory.count_flops(mem, 2 * rows * 2 * d, rows * 2)
        memory.store(mem, memory.T_O, 0, b * rows, (b + 1) * rows, 0, d)
        memory.free(mem, 2)
        if b == 1:
            memory.skip(mem, 0, rows, 4, 6)
        if memory.end_step(mem):
            return True
    return False


def test_counters_occupancy_and_trace():
    mem = new_mem(100, trace_capacity=64)
    assert not _toy_kernel(mem, 3, 4, 5)
    tr = Traffic.from_counts(mem.counts)
    assert tr.reads == {"Q": 60, "K": 30} and tr.writes == {"O": 60}
    assert tr.total == 150 and tr.bytes == 300 and tr.of("K") == (30, 0) and tr.of("V") == (0, 0)
    assert int(mem.ops[0]) == 3 * 80 and int(mem.ops[1]) == 24
    assert int(mem.sram[1]) == 20 + 10 + 8  # Q block + two K rows + S tile
    assert int(mem.sram[0]) == 30  # S freed, Q and K slots still full
    trace = make_trace(mem, slot_names=("Q", "K", "S"))
    assert trace.n_steps == 3 and len(trace) == 3 * 6 + 1
    ev = trace.events[0]
    got = (ev.kind, ev.tensor, ev.slot, ev.head, ev.rows, ev.cols, ev.elements)
    assert got == ("load", "Q", 0, 7, (0, 4), (0, 5), 20)
    assert ev.step == 1 and not ev.append and trace.events[2].append  # steps are 1-based; load_more appends
    assert trace.events_at(0) == [] and [e.kind for e in trace.events_at(2)][-1] == "skip"
    assert trace.traffic_until(3) == tr
    assert trace.traffic_until(0) == Traffic({}, {})
    assert trace.traffic_until(1) == Traffic({"Q": 20, "K": 10}, {"O": 20})
    held = trace.sram_at(1)
    assert set(held) == {"Q", "K"} and held["Q"].rows == (0, 4)  # S was freed at the end of the step
    # the gathered slot holds both rows: its elements are the slot's count, its rows their span
    assert held["K"] == memory.SlotContent("K", (0, 2), (0, 5), 10)
    assert sum(x.elements for x in held.values()) == int(mem.sram[0])


def test_stop_after_and_trace_overflow():
    mem = new_mem(100, trace_capacity=64, stop_after=2)
    assert _toy_kernel(mem, 3, 4, 5)
    assert int(mem.cursor[1]) == 2 and Traffic.from_counts(mem.counts).total == 100
    small = new_mem(100, trace_capacity=3)
    _toy_kernel(small, 3, 4, 5)
    with pytest.raises(RuntimeError, match="trace overflow"):
        make_trace(small)
    assert make_trace(new_mem(10)) is None


def test_traffic_addition_and_str():
    a = Traffic({"Q": 3}, {"O": 1})
    b = Traffic({"Q": 2, "K": 5}, {})
    c = a + b
    assert c.reads == {"Q": 5, "K": 5} and c.writes == {"O": 1} and c.total == 11
    assert c.rows() == [("Q", 5, 0), ("K", 5, 0), ("O", 0, 1)]
    assert "total 11 elements = 22 B" in str(c)


def test_require_fits_and_sram_validation():
    require_fits(10, Sram(10), "x")
    with pytest.raises(SramTooSmall, match="SRAM too small: my plan needs 11 elements on chip, but M = 10"):
        require_fits(11, Sram(10), "my plan")
    assert issubclass(SramTooSmall, ValueError)
    for bad, exc in ((0, ValueError), (-5, ValueError), (2.5, TypeError), (True, TypeError), ("10", TypeError)):
        with pytest.raises(exc, match="SRAM capacity M"):
            Sram(bad)
    with pytest.raises(ValueError, match="bytes_per_element"):
        Sram(10, bytes_per_element=0)
    assert as_sram(64) == Sram(64) and as_sram(Sram(5, 1)).bytes_per_element == 1
    s = as_sram("a100")
    assert s.capacity == 192 * 1024 // 2 and s.chip is CHIPS["a100"]


def test_chip_presets_and_simulated_time():
    for name, chip in CHIPS.items():
        assert get_chip(name) is chip and chip.source and chip.hbm_bandwidth > 0 and chip.peak_flops > 0
    assert get_chip("A100") is CHIPS["a100"] and get_chip(CHIPS["h100"]) is CHIPS["h100"]
    with pytest.raises(ValueError, match="unknown chip preset"):
        get_chip("tpu")
    a100 = CHIPS["a100"]
    tr = Traffic({"Q": 10**9}, {})
    t = simulated_time(tr, 10, "a100")
    assert t["bytes"] == 2 * 10**9 and t["bound"] == "memory"
    assert t["time_s"] == pytest.approx(2e9 / a100.hbm_bandwidth)
    t = simulated_time(Traffic({"Q": 1}, {}), 10**15, a100)
    assert t["bound"] == "compute" and t["time_s"] == pytest.approx(1e15 / a100.peak_flops)
    assert CHIPS["h100"].hbm_bandwidth > a100.hbm_bandwidth  # the H100 preset is faster


def test_simulated_time_charges_exponentials_in_series_with_the_matmuls():
    """compute = flops / peak + exps / exp_rate on a chip with an exp_rate; exps cost nothing without one."""
    import dataclasses

    chip = dataclasses.replace(CHIPS["a100"], peak_flops=1e15, exp_rate=1e12, hbm_bandwidth=1e12)
    t = simulated_time(Traffic({"Q": 10**6}, {}), 10**12, chip, exps=10**9)
    assert t["exp_s"] == pytest.approx(1e-3) and t["compute_s"] == pytest.approx(1e-3 + 1e-3)
    assert t["bound"] == "compute" and t["time_s"] == pytest.approx(2e-3)       # memory: 2e6 B / 1e12 = 2 us
    assert t["overlap_s"] == pytest.approx(1e-3)                                 # max(2 us, 1 ms, 1 ms)
    t = simulated_time(Traffic({"Q": 10**9}, {}), 10**12, chip, exps=10**9)     # memory 2 ms >= compute 2 ms
    assert t["bound"] == "memory" and t["time_s"] == pytest.approx(2e-3)
    plain = simulated_time(Traffic({"Q": 1}, {}), 10**12, CHIPS["a100"], exps=10**9)
    assert CHIPS["a100"].exp_rate is None and plain["exp_s"] == 0.0
    assert plain["time_s"] == pytest.approx(1e12 / CHIPS["a100"].peak_flops)
    # a kernel's result charges its own counted exponentials on the h200 preset (which has an exp_rate)
    from refattn import flash_forward

    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((40, 8)).astype(np.float32) for _ in range(3))
    r = flash_forward(q, k, v, sram="h200", variant="fa2")
    h200 = CHIPS["h200"]
    assert r.exps >= 40 * 40
    assert r.simulated_time()["compute_s"] == pytest.approx(r.flops / h200.peak_flops + r.exps / h200.exp_rate)


def test_kernel_result_simulated_time_needs_a_chip():
    from refattn.kernels.standard import standard_forward

    q = np.ones((4, 2), np.float32)
    r = standard_forward(q, q, q, sram="a100")
    assert r.simulated_time()["bytes"] == r.traffic.total * 2
    r2 = standard_forward(q, q, q, sram=1000)
    with pytest.raises(ValueError, match="no chip given"):
        r2.simulated_time()
    assert r2.simulated_time("h100")["time_s"] > 0
