"""Count-only runs (docs/contract.md): the same loop with the arithmetic skipped.

For every counting kernel and random problems (sizes that cross tile
boundaries, causal modes, boolean masks, Nq != Nk, d != dv), a count-only run
returns exactly the full run's traffic, peak SRAM, FLOPs, exponentials,
n_steps, simulated time and trace, and no outputs; stepping a count-only run
stops at the same place. A count-only run of a large problem never allocates
an (N, d) array (tracemalloc), let alone an (N, N) one.
"""

import tracemalloc

import numpy as np
import pytest

from refattn import reference
from refattn.index_set import IndexSet
from refattn.kernels.flash import flash_forward
from refattn.kernels.flash_backward import flash_backward
from refattn.kernels.sparse import sparse_forward
from refattn.kernels.standard import standard_backward, standard_forward

KERNELS = ("fa1", "fa2", "flash_backward", "standard_forward", "standard_backward", "sparse")


def _problem(seed):
    rng = np.random.default_rng(seed)
    nq, nk = (int(x) for x in rng.integers(9, 40, 2))
    d, dv = (int(x) for x in rng.integers(2, 9, 2))
    q = rng.standard_normal((2, nq, d))
    k = rng.standard_normal((2, nk, d))
    v = rng.standard_normal((2, nk, dv))
    do = rng.standard_normal((2, nq, dv))
    causal = [False, True, "top_left"][seed % 3]
    mask = rng.random((2, nq, nk)) < 0.7 if seed % 2 else None
    return rng, q, k, v, do, causal, mask


def _run(kernel, seed, **kw):
    rng, q, k, v, do, causal, mask = _problem(seed)
    nq, nk = q.shape[1], k.shape[1]
    if kernel in ("fa1", "fa2"):
        return flash_forward(q, k, v, sram=int(rng.integers(150, 900)), variant=kernel, causal=causal, mask=mask,
                             **kw)
    if kernel == "flash_backward":
        o, lse = reference.attention(q, k, v, causal=causal, mask=mask)
        return flash_backward(q, k, v, o, lse, do, sram=int(rng.integers(300, 1200)), causal=causal, mask=mask,
                              **kw)
    if kernel == "standard_forward":
        return standard_forward(q, k, v, sram=int(rng.integers(40, 400)), causal=causal, mask=mask, **kw)
    if kernel == "standard_backward":
        o, _ = reference.attention(q, k, v, causal=causal, mask=mask)
        return standard_backward(q, k, v, o, do, sram=int(rng.integers(60, 400)), causal=causal, mask=mask, **kw)
    block = 4
    nqb, nkb = -(-nq // block), -(-nk // block)
    blocks = [sorted(rng.choice(nkb, size=int(rng.integers(0, nkb + 1)), replace=False).tolist())
              for _ in range(nqb)]
    columns = []
    for listed in blocks:  # single columns outside the listed key blocks
        free = [c for c in range(nk) if c // block not in listed]
        columns.append(sorted(rng.choice(free, size=int(rng.integers(0, len(free) + 1)), replace=False).tolist()))
    iset = IndexSet.from_lists(nq, nk, blocks, columns, block=block)
    return sparse_forward(q, k, v, iset, sram=400, causal=causal, **kw)


def _same_counts(full, count):
    assert count.outputs == {}
    assert count.traffic == full.traffic
    assert count.peak_sram == full.peak_sram
    assert (count.flops, count.exps, count.n_steps) == (full.flops, full.exps, full.n_steps)
    assert count.plan == full.plan


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("kernel", KERNELS)
def test_count_only_equals_the_full_run(kernel, seed):
    full = _run(kernel, seed, trace=True)
    count = _run(kernel, seed, trace=True, count_only=True)
    _same_counts(full, count)
    assert np.array_equal(count.trace.records, full.trace.records)
    assert count.simulated_time("a100") == full.simulated_time("a100")
    untraced = _run(kernel, seed, count_only=True)
    _same_counts(full, untraced)
    assert untraced.trace is None
    # stepping a count-only run stops where the full run stops, with the same counters so far
    k = max(1, full.n_steps // 2)
    a, b = _run(kernel, seed, stop_after=k), _run(kernel, seed, stop_after=k, count_only=True)
    assert b.stopped and b.state.step == a.state.step == k
    assert b.state.traffic == a.state.traffic and b.state.sram == a.state.sram
    assert (b.state.phase, b.state.rows, b.state.cols) == (a.state.phase, a.state.rows, a.state.cols)
    assert b.state.arrays == {}


def test_float32_count_only_takes_the_parallel_paths_counts():
    """Large enough for the parallel full-run drivers (forward and backward): same counts."""
    rng = np.random.default_rng(7)
    q, k, v, do = (rng.standard_normal((1, 700, 24)).astype(np.float32) for _ in range(4))
    fwd = flash_forward(q, k, v, sram=4000, causal=True)
    _same_counts(fwd, flash_forward(q, k, v, sram=4000, causal=True, count_only=True))
    bwd = flash_backward(q, k, v, fwd.o, fwd.lse, do, sram=8000, causal=True)
    _same_counts(bwd, flash_backward(q, k, v, fwd.o, fwd.lse, do, sram=8000, causal=True, count_only=True))


def test_count_only_never_allocates_an_n_by_d_output():
    n, d = 16384, 64
    nd_bytes = n * d * 4  # one (N, d) float32 array: 4 MiB
    q = np.zeros((n, d), np.float32)
    lse = np.zeros(n, np.float32)
    runs = {
        "fa2": lambda: flash_forward(q, q, q, sram="a100", count_only=True),
        "fa1": lambda: flash_forward(q, q, q, sram="a100", variant="fa1", count_only=True),
        "flash_backward": lambda: flash_backward(q, q, q, q, lse, q, sram="a100", count_only=True),
        "standard_forward": lambda: standard_forward(q, q, q, sram="a100", count_only=True),
        "standard_backward": lambda: standard_backward(q, q, q, q, q, sram="a100", count_only=True),
    }
    for name, run in runs.items():
        small = {"q": q[:64], "lse": lse[:64]}
        del small  # (compilation happens on the first call; it allocates nothing of size N x d)
        run()
        tracemalloc.start()
        result = run()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert result.outputs == {}
        assert peak < nd_bytes / 2, (name, peak)


def test_count_only_gqa_checks_every_head_without_expanding_k_and_v():
    """A count-only GQA run expanded K and V to every query head (G copies) only to check them."""
    hq, hkv, n, d = 8, 2, 4096, 64
    rng = np.random.default_rng()
    q = rng.standard_normal((hq, n, d)).astype(np.float32)
    k, v = rng.standard_normal((2, hkv, n, d)).astype(np.float32)
    mask = rng.random((hq, n, 64)) < 0.5  # per query head: grouped like q
    for variant in ("fa2", "fa1"):
        full = flash_forward(q[:, :256], k[:, :256], v[:, :256], sram=8000, variant=variant, causal=True,
                             num_kv_heads=hkv, window=(40, 0))
        counted = flash_forward(q[:, :256], k[:, :256], v[:, :256], sram=8000, variant=variant, causal=True,
                                num_kv_heads=hkv, window=(40, 0), count_only=True)
        _same_counts(full, counted)
    masked = dict(q=q[:, :64], k=k[:, :64], v=v[:, :64], mask=mask[:, :64], num_kv_heads=hkv, sram=8000)
    _same_counts(flash_forward(**masked), flash_forward(**masked, count_only=True))
    flash_forward(q, k, v, sram="a100", num_kv_heads=hkv, count_only=True)  # compiled
    tracemalloc.start()
    flash_forward(q, k, v, sram="a100", num_kv_heads=hkv, count_only=True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < q.nbytes / 2, peak  # K expanded to every query head alone is q.nbytes (V as much again)
    k[1, 3000, 5] = np.nan  # a KV head that only the second group reads: still checked
    with pytest.raises(ValueError, match="NaN|finite"):
        flash_forward(q, k, v, sram="a100", num_kv_heads=hkv, count_only=True)
