"""The device top-k of the index build (gpu_optional.index_build._top): the CPU's stable top-k, exactly."""

import numpy as np
import pytest

from tests.gpu.helpers import DEVICE, NEEDS, skip_without_device, torch

pytestmark = NEEDS


@pytest.mark.parametrize("nk,vsize,ssize,chunks", [(2500, 700, 60, 64), (1500, 1500, 90, 64), (2100, 300, 50, 2)])
@pytest.mark.parametrize("torch_topk", [False, True])
def test_select_equals_stable_top_k(nk, vsize, ssize, chunks, torch_topk, monkeypatch):
    """The radix select (default) and torch.topk + sort: ties at the k-th value (few distinct scores), scores
    that differ only in their lowest bits (the last, 7-bit radix pass decides), zeros, forced indices beyond k
    (ssize < force_slash: ties among +inf), k = Nk, empty chunks (2500 keys in 8 chunks of 512), chunks of
    several 512-key steps (2 chunks: counts carried across steps and chunks); PC for both rows."""
    skip_without_device()
    from gpu_optional import index_build
    from gpu_optional.index_build import _top
    from refattn.patterns.vertical_slash import _top as cpu_top

    monkeypatch.setattr(index_build, "TORCH_TOPK", torch_topk)
    monkeypatch.setattr(index_build, "SELECT_CHUNKS", chunks)
    rng = np.random.default_rng(nk)
    few = rng.choice(np.float32([0.0, 0.25, 0.5, 1.0, 3.0]), size=nk)
    ulps = (np.float32(1.0) + rng.integers(0, 6, size=nk) * np.finfo(np.float32).eps).astype(np.float32)
    ulps[rng.random(nk) < 0.2] = 0.0
    spread = (rng.random(nk) * 2.0 ** rng.integers(-40, 3, size=nk)).astype(np.float32)   # every exponent
    vert, slash = np.stack([few, ulps, spread]), np.stack([ulps, few, spread])
    scores = torch.from_numpy(np.stack([vert, slash])).to(DEVICE)             # (2, Z = 3, Nk)
    cols, offs, pc = _top(scores, vsize, ssize, 30, 100)
    for z in range(3):
        want_c, want_o = cpu_top(vert[z], vsize, 30), cpu_top(slash[z], ssize, 100)
        assert np.array_equal(cols[z].cpu().numpy(), want_c)
        assert np.array_equal(offs[z].cpu().numpy(), want_o)
        for row, want in ((0, want_c), (1, want_o)):   # PC: how many chosen indices are <= each index
            chosen = np.zeros(nk, np.int64)
            chosen[want] = 1
            assert np.array_equal(pc[row, z].cpu().numpy(), np.cumsum(chosen))


@pytest.mark.parametrize("est_programs", [512, 4])
def test_long_estimate_and_estimate_api_agree_with_cpu(est_programs, monkeypatch):
    """last_q = 100 (LP = 128 rows padded, 32-wide key tiles: each diagonal's sum gathered from up to 9 tiles'
    shares) equals the CPU build; vertical_slash_estimate (which writes the estimate and sums the diagonals
    from it) gives the same scores as the fused build. est_programs = 4: 8 key tiles per probabilities
    program, the last program's tiles partly past Nk."""
    skip_without_device()
    from gpu_optional import index_build, vertical_slash_estimate
    from tests.gpu.test_sparse import _check_index_equals_cpu

    monkeypatch.setattr(index_build, "EST_PROGRAMS", est_programs)
    gen = torch.Generator().manual_seed(3)
    q, k = (torch.randn((2, 300, 24), generator=gen).to(DEVICE) for _ in range(2))
    r = _check_index_equals_cpu(q, k, 40, 60, 32, last_q=100)
    est, vert, slash = vertical_slash_estimate(q, k, last_q=100)
    assert est.shape == (2, 100, 300)
    assert torch.allclose(vert, r.vertical_scores, rtol=1e-5, atol=1e-7)
    assert torch.allclose(slash, r.slash_scores, rtol=1e-5, atol=1e-7)
