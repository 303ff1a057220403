"""Dense Triton FlashAttention (forward, backward, autograd) against the float64 reference."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refattn.reference import attention, attention_backward
from tests.gpu.helpers import (
    DEVICE,
    DTYPES,
    INTERPRET,
    NEEDS,
    RTOL,
    check_lse,
    np64,
    randn,
    rel_err,
    skip_without_device,
    torch,
)

pytestmark = NEEDS

CAUSAL = [False, True, "top_left"]


def _run(lead, nq, nk, d, dv, causal, dtype, seed, scale=None, spread=1.0, grad_tol=None):
    skip_without_device()
    from gpu_optional import flash_attention

    gen = torch.Generator().manual_seed(seed)
    q = randn(lead + (nq, d), dtype, gen, spread).requires_grad_()
    k = randn(lead + (nk, d), dtype, gen, spread).requires_grad_()
    v = randn(lead + (nk, dv), dtype, gen).requires_grad_()
    o, lse = flash_attention(q, k, v, causal=causal, scale=scale)
    assert o.shape == lead + (nq, dv) and o.dtype == dtype and lse.shape == lead + (nq,)
    do = randn(o.shape, dtype, gen)
    o.backward(do)
    q64, k64, v64, do64 = np64(q), np64(k), np64(v), np64(do)
    ro, rlse = attention(q64, k64, v64, causal=causal, scale=scale)
    rdq, rdk, rdv = attention_backward(q64, k64, v64, do64, causal=causal, scale=scale)
    tol = RTOL[dtype]
    assert not torch.isnan(o).any()
    assert rel_err(o, ro) <= tol
    check_lse(lse, rlse, atol=50 * tol)
    # a gradient can be ~0 exactly (Nk = 1: dq = 0); measure it against the size of dV as well
    floor = np.linalg.norm(rdv)
    for name, g, r in (("dq", q.grad, rdq), ("dk", k.grad, rdk), ("dv", v.grad, rdv)):
        assert not torch.isnan(g).any(), name
        err = np.linalg.norm(np64(g) - r) / max(np.linalg.norm(r), floor, 1e-300)
        assert err <= (grad_tol or 4 * tol), (name, err)


@settings(max_examples=6)
@given(nq=st.integers(1, 80), nk=st.integers(1, 80), d=st.integers(1, 40), dv_same=st.booleans(),
       causal=st.sampled_from(CAUSAL), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31 - 1))
def test_flash_forward_backward_random(nq, nk, d, dv_same, causal, dtype, seed):
    dv = d if dv_same else (d % 23) + 9
    _run((2,), nq, nk, d, dv, causal, dtype, seed)


@pytest.mark.parametrize("causal", [True, "top_left"])
def test_flash_fully_masked_rows(causal):
    # bottom-right with Nq > Nk leaves the first Nq - Nk rows with no visible key: o = 0, lse = -inf
    _run((1, 2), 70, 23, 16, 16, causal, torch.float32, seed=1)


def test_flash_large_logits_and_head_dim_200():
    # logits of size ~1e3: float32 rounding of S (~6e-5 absolute) bounds the gradients' accuracy at ~1e-4
    _run((1,), 33, 47, 200, 72, True, torch.float32, seed=2, spread=30.0, grad_tol=2e-3)


def test_flash_single_row_and_key():
    _run((1,), 1, 1, 16, 16, False, torch.float16, seed=3)


def test_flash_bad_input_is_refused():
    skip_without_device()
    from gpu_optional import flash_attention

    q = torch.randn(2, 8, 16, device=DEVICE)
    with pytest.raises(ValueError, match="share the head dim"):
        flash_attention(q, torch.randn(2, 8, 12, device=DEVICE), q)
    with pytest.raises(TypeError, match="dtype"):
        flash_attention(q.double(), q.double(), q.double())
    with pytest.raises(ValueError, match="NaN or Inf"):
        flash_attention(q, q, q * float("nan"))
    with pytest.raises(ValueError, match="leading"):
        flash_attention(q, q[:1], q[:1])
    with pytest.raises(ValueError, match="causal"):
        flash_attention(q, q, q, causal="diagonal")
    with pytest.raises(ValueError, match="up to 256"):
        big = torch.randn(1, 4, 300, device=DEVICE)
        flash_attention(big, big, big)


@pytest.mark.needs_cuda
@pytest.mark.parametrize("causal", [False, True])
def test_flash_bf16_on_gpu_at_size(causal):
    """The configs the benchmark times, at a real size (GPU only: bf16 and autotuning)."""
    if not torch.cuda.is_available() or DEVICE != "cuda":
        pytest.skip("needs a CUDA GPU and TRITON_INTERPRET=0")
    _run((1, 2), 1000, 1000, 128, 128, causal, torch.bfloat16, seed=4)


def _spy_grid(monkeypatch, fl):
    """Record the forward's launch grids, each with its config's BLOCK_M."""
    grids, make_grid = [], fl._fwd_grid

    def spy(*args):
        grid = make_grid(*args)
        return lambda meta: grids.append((grid(meta), meta["BLOCK_M"])) or grids[-1][0]
    monkeypatch.setattr(fl, "_fwd_grid", spy)
    return grids


# flash.py's switches against the plain path (pointer loads, two backward kernels): tensor-descriptor (TMA)
# loads in the forward and in the backward, the fused backward with atomic dQ, the persistent forward
PATHS = [(True, False, False, 0), (False, True, False, 0), (False, False, True, 0), (True, True, True, 1)]


@pytest.mark.parametrize("tma,tma_bwd,fused,persistent", PATHS)
def test_flash_paths_agree(monkeypatch, tma, tma_bwd, fused, persistent):
    skip_without_device()
    import gpu_optional.flash as fl

    gen = torch.Generator().manual_seed(7)
    # Nq, Nk cross the tiles (interpreter: 32 x 16; GPU: the default configs) and leave tails; d = 24 float32
    # rows are 96 bytes: TMA allowed. Causal bottom-right with Nq > Nk: fully masked rows too.
    q, k, v, do = (randn((2, n, 24), torch.float32, gen) for n in (150, 97, 97, 150))
    outs, make_descriptor, grids = {}, fl.descriptor, _spy_grid(monkeypatch, fl)
    for key in ((False, False, False, 0), (tma, tma_bwd, fused, persistent)):
        monkeypatch.setattr(fl, "TMA", key[0])
        monkeypatch.setattr(fl, "TMA_BWD", key[1])
        monkeypatch.setattr(fl, "FUSED_BWD", key[2])
        monkeypatch.setattr(fl, "PERSISTENT", key[3])
        made = []
        monkeypatch.setattr(fl, "descriptor", lambda *a, made=made: made.append(1) or make_descriptor(*a))
        grids.clear()
        o, lse = fl.flash_forward(q, k, v, causal=True)
        outs[key] = (o, lse) + fl.flash_backward(q, k, v, o, lse, do, causal=True)
        assert bool(made) == (key[0] or key[1])  # the TMA path really ran (or really did not)
        assert grids and all(len(g) == (1 if key[3] else 2) for g, _ in grids)  # so did the persistent one
    base, got = outs[(False, False, False, 0)], outs[(tma, tma_bwd, fused, persistent)]
    rdq, _, _ = attention_backward(np64(q), np64(k), np64(v), np64(do), causal=True)
    exact = ["o", "lse", "dk", "dv"] + ([] if fused else ["dq"])  # atomics add dQ in any order
    for i, name in enumerate(["o", "lse", "dq", "dk", "dv"]):
        if name in exact and INTERPRET:
            assert torch.equal(got[i], base[i]), name
        elif name == "lse":
            check_lse(got[i], np64(base[i]), atol=1e-4)
        else:
            assert rel_err(got[i], np64(base[i])) <= RTOL[torch.float32], name
    assert rel_err(got[2], rdq) <= 4 * RTOL[torch.float32]


@pytest.mark.parametrize("tma", [False, True])
@pytest.mark.parametrize("nq,nk", [(150, 97), (128, 160)])
@pytest.mark.parametrize("causal", [False, True, "top_left"])
def test_flash_persistent_forward_agrees(monkeypatch, causal, nq, nk, tma):
    # the persistent grid (a few programs, each looping over work units; causal: pairs of query blocks)
    # against one program per tile: the same tiles, so bitwise equal under the interpreter. Interpreter tiles
    # are 32 rows: 150 rows give an odd number of query blocks (a middle block alone), 128 an even one.
    skip_without_device()
    import gpu_optional.flash as fl

    gen = torch.Generator().manual_seed(9)
    q, k, v = (randn((3, n, 24), torch.float32, gen) for n in (nq, nk, nk))
    monkeypatch.setattr(fl, "TMA", tma)
    outs, grids = {}, _spy_grid(monkeypatch, fl)
    for persistent in (0, 1):
        monkeypatch.setattr(fl, "PERSISTENT", persistent)
        grids.clear()
        outs[persistent] = fl.flash_forward(q, k, v, causal=causal)
        assert grids
        for grid, block_m in grids:
            n_m = -(-nq // block_m)
            units = 3 * ((n_m + 1) // 2 if causal else n_m)
            if persistent:  # a 1-D grid, fewer programs than units under the interpreter (2): programs loop
                assert len(grid) == 1 and grid[0] == min(fl.sm_count(q.device), units), grid
                assert grid[0] < units or not INTERPRET
            else:
                assert grid == (n_m, 3)
    (o0, lse0), (o1, lse1) = outs[0], outs[1]
    if INTERPRET:
        assert torch.equal(o1, o0) and torch.equal(lse1, lse0)
    ro, rlse = attention(np64(q), np64(k), np64(v), causal=causal)
    assert rel_err(o1, ro) <= RTOL[torch.float32]
    check_lse(lse1, rlse, atol=1e-4)


@pytest.mark.parametrize("tma", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_flash_tails_do_not_read_the_next_head(monkeypatch, tma, causal):
    # TMA tiles past a head's last row hold the next head's rows; with Inf there (check_finite=False),
    # head 0 must still get its own exact answer: the kernels zero those rows before any 0 * x
    skip_without_device()
    import gpu_optional.flash as fl

    monkeypatch.setattr(fl, "TMA", tma)
    monkeypatch.setattr(fl, "TMA_BWD", tma)
    gen = torch.Generator().manual_seed(8)
    q, k, v, do = (randn((2, 40, 16), torch.float32, gen) for _ in range(4))
    for x in (q, k, v, do):
        x[1] = float("inf")
    o, lse = fl.flash_forward(q, k, v, causal=causal, check_finite=False)
    dq, dk, dv = fl.flash_backward(q, k, v, o, lse, do, causal=causal)
    ro, _ = attention(np64(q[0]), np64(k[0]), np64(v[0]), causal=causal)
    grads = attention_backward(np64(q[0]), np64(k[0]), np64(v[0]), np64(do[0]), causal=causal)
    assert rel_err(o[0], ro) <= RTOL[torch.float32]
    for name, g, r in zip(("dq", "dk", "dv"), (dq, dk, dv), grads):
        assert rel_err(g[0], r) <= 4 * RTOL[torch.float32], name
