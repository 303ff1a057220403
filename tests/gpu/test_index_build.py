"""The device top-k of the index build (gpu_optional.index_build._top): the CPU's stable top-k, exactly."""

import numpy as np
import pytest

from tests.gpu.helpers import DEVICE, NEEDS, skip_without_device, torch

pytestmark = NEEDS


def _keys(scores, forced):
    """(rows, Nk) float32 scores -> the int64 keys the kernels write: score bits << 32 | ~index, the first
    ``forced`` scores +inf."""
    s = scores.copy()
    s[:, :forced] = np.inf
    keys = (s.view(np.int32).astype(np.int64) << 32) + (2147483647 - np.arange(s.shape[1]))
    return torch.from_numpy(keys).to(DEVICE)


@pytest.mark.parametrize("nk,vsize,ssize", [(2500, 700, 60), (1500, 1500, 90)])
@pytest.mark.parametrize("triton_topk,histogram", [(False, True), (True, True), (True, False)])
def test_select_equals_stable_top_k(nk, vsize, ssize, triton_topk, histogram, monkeypatch):
    """torch.topk + sort, and the Triton radix select (histogram or comparison counts): ties at the k-th value
    (few distinct scores), scores that differ only in their lowest bits (the last radix pass decides), zeros,
    forced indices beyond k (ssize < force_slash: ties among +inf), k = Nk, Nk over the 1024-wide chunks of
    the compaction (ranks carried across chunks); PC for both rows."""
    skip_without_device()
    from gpu_optional import index_build
    from gpu_optional.index_build import _top
    from refattn.patterns.vertical_slash import _top as cpu_top

    monkeypatch.setattr(index_build, "TRITON_TOPK", triton_topk)
    monkeypatch.setattr(index_build, "SELECT_HISTOGRAM", histogram)
    rng = np.random.default_rng(nk)
    few = rng.choice(np.float32([0.0, 0.25, 0.5, 1.0, 3.0]), size=nk)
    ulps = (np.float32(1.0) + rng.integers(0, 6, size=nk) * np.finfo(np.float32).eps).astype(np.float32)
    ulps[rng.random(nk) < 0.2] = 0.0
    vert, slash = np.stack([few, ulps]), np.stack([ulps, few])
    keys = torch.stack([_keys(vert, 30), _keys(slash, 100)])                  # (2, Z = 2, Nk)
    cols, offs, pc = _top(keys, vsize, ssize)
    for z in range(2):
        want_c, want_o = cpu_top(vert[z], vsize, 30), cpu_top(slash[z], ssize, 100)
        assert np.array_equal(cols[z].cpu().numpy(), want_c)
        assert np.array_equal(offs[z].cpu().numpy(), want_o)
        for row, want in ((0, want_c), (1, want_o)):   # PC: how many chosen indices are <= each index
            chosen = np.zeros(nk, np.int64)
            chosen[want] = 1
            assert np.array_equal(pc[row, z].cpu().numpy(), np.cumsum(chosen))


def test_long_estimate_and_estimate_api_agree_with_cpu():
    """last_q = 100 (LP = 128 rows padded, 32-wide key tiles: each diagonal's sum gathered from up to 9 tiles'
    shares) equals the CPU build; vertical_slash_estimate (which writes the estimate and sums the diagonals
    from it) gives the same scores as the fused build."""
    skip_without_device()
    from gpu_optional import vertical_slash_estimate
    from tests.gpu.test_sparse import _check_index_equals_cpu

    gen = torch.Generator().manual_seed(3)
    q, k = (torch.randn((2, 300, 24), generator=gen).to(DEVICE) for _ in range(2))
    r = _check_index_equals_cpu(q, k, 40, 60, 32, last_q=100)
    est, vert, slash = vertical_slash_estimate(q, k, last_q=100)
    assert est.shape == (2, 100, 300)
    assert torch.allclose(vert, r.vertical_scores, rtol=1e-5, atol=1e-7)
    assert torch.allclose(slash, r.slash_scores, rtol=1e-5, atol=1e-7)
