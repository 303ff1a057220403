"""Float32 accuracy where float32 sums used to lose too much (issue 19).

The baseline is a plain float32 implementation (S, softmax, P V materialised
with NumPy); ``refattn bench accuracy`` prints the full tables, against
PyTorch's CPU SDPA too.
"""

import numpy as np
import pytest

from refattn import flash_backward, flash_forward, standard_backward, standard_forward
from refattn.bench.accuracy import outlier_inputs, plain_float32
from refattn.reference import attention, attention_backward


def _rmse(a, b):
    return float(np.sqrt(np.mean((a.astype(np.float64) - b) ** 2)))


def test_standard_kernel_sums_its_softmax_accurately_on_outlier_inputs():
    # FlashAttention-3's protocol: N(0, 1) plus N(0, 100) outliers with probability 0.001
    rng = np.random.default_rng(0)
    q, k, v = (outlier_inputs(rng, (2, 1024, 64)).astype(np.float32) for _ in range(3))
    do = rng.standard_normal((2, 1024, 64)).astype(np.float32)
    o_ref, _ = attention(q, k, v)
    g_ref = attention_backward(q, k, v, do)
    plain = plain_float32(q, k, v, do)
    fwd = standard_forward(q, k, v, sram="a100")
    assert _rmse(fwd.o, o_ref) <= 1.5 * _rmse(plain[0], o_ref)
    bwd = standard_backward(q, k, v, fwd.o, do, sram="a100")
    for got, base, ref in zip((bwd.dq, bwd.dk, bwd.dv), plain[1:], g_ref):
        assert _rmse(got, ref) <= 1.5 * _rmse(base, ref)


def test_flash_backward_meets_flashattentions_rule_with_many_query_blocks():
    # FlashAttention's test rule: max error <= 2 x a plain same-dtype implementation's + 1e-5
    rng = np.random.default_rng(1)
    q = rng.standard_normal((100000, 32)).astype(np.float32)
    k, v = (rng.standard_normal((16, 32)).astype(np.float32) for _ in range(2))
    do = rng.standard_normal((100000, 32)).astype(np.float32)
    g_ref = attention_backward(q, k, v, do)
    plain = plain_float32(q, k, v, do)[1:]
    fwd = flash_forward(q, k, v, sram="a100")
    res = flash_backward(q, k, v, fwd.o, fwd.lse, do, sram="a100")
    assert res.plan.tiles["Tr"] > 1000  # dK, dV sum over thousands of query blocks
    for got, base, ref in zip((res.dq, res.dk, res.dv), plain, g_ref):
        assert np.abs(got - ref).max() <= 2 * np.abs(base - ref).max() + 1e-5


@pytest.mark.parametrize("kernel", ["flash", "standard"])
def test_one_key_gives_exactly_zero_dk(kernel):
    # with one key every query sees only it: P = 1, dP = D, dS = 0, so dK = 0 exactly
    rng = np.random.default_rng(2)
    q = rng.standard_normal((20000, 32)).astype(np.float32)
    k, v = (rng.standard_normal((1, 32)).astype(np.float32) for _ in range(2))
    do = rng.standard_normal((20000, 32)).astype(np.float32)
    if kernel == "flash":
        fwd = flash_forward(q, k, v, sram="a100")
        res = flash_backward(q, k, v, fwd.o, fwd.lse, do, sram="a100")
    else:
        res = standard_backward(q, k, v, standard_forward(q, k, v, sram="a100").o, do, sram="a100")
    assert np.all(res.dk == 0)
    np.testing.assert_allclose(res.dv, attention_backward(q, k, v, do)[2], rtol=1e-5)
