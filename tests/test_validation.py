"""Bad input gets a clear error naming the problem, from the reference and from every kernel."""

import importlib

import numpy as np
import pytest

from refattn.reference import attention
from refattn.validation import check_scale, normalize_causal

rng = np.random.default_rng(0)
Q = rng.standard_normal((2, 6, 4))
K = rng.standard_normal((2, 7, 4))
V = rng.standard_normal((2, 7, 3))


def _kernel(name):
    def run(q, k, v, **kw):
        fn = getattr(importlib.import_module("refattn"), name)
        return fn(q, k, v, sram=4096, **kw)
    return run


def _standard_backward(q, k, v, **kw):
    from refattn import standard_backward

    do = np.zeros(np.shape(q)[:-1] + (np.shape(v)[-1],), getattr(q, "dtype", np.float64))
    return standard_backward(q, k, v, do, do, sram=4096, **kw)


def _flash_backward(q, k, v, **kw):
    from refattn import flash_backward

    o = np.zeros(np.shape(q)[:-1] + (np.shape(v)[-1],), getattr(q, "dtype", np.float64))
    lse = np.zeros(np.shape(q)[:-1], getattr(q, "dtype", np.float64))
    return flash_backward(q, k, v, o, lse, o, sram=4096, **kw)


FUNCS = {
    "reference": attention,
    "standard_forward": _kernel("standard_forward"),
    "standard_backward": _standard_backward,
    "flash_forward": _kernel("flash_forward"),
    "flash_backward": _flash_backward,
}

BAD = [
    # (label, q, k, v, kwargs, exception, message regex)
    ("d mismatch", Q, K[..., :3], V, {}, ValueError, "share the head dim d"),
    ("Nk mismatch", Q, K, V[:, :5], {}, ValueError, "share Nk"),
    ("lead dims", Q, np.stack([K[0]] * 3), np.stack([V[0]] * 3), {}, ValueError, "leading .* do not broadcast"),
    ("1-d q", Q[0, 0], K, V, {}, ValueError, "q must have at least 2 dims"),
    ("integer dtype", Q.astype(np.int64), K, V, {}, TypeError, "q must be a floating-point array"),
    ("NaN in k", Q, np.where(np.arange(4) == 2, np.nan, K), V, {}, ValueError, "k contains NaN or Inf"),
    ("Inf in v", Q, K, np.where(np.arange(3) == 0, np.inf, V), {}, ValueError, "v contains NaN or Inf"),
    ("d = 0", Q[..., :0], K[..., :0], V, {}, ValueError, "empty dimension"),
    ("N = 0", Q[:, :0], K, V, {}, ValueError, "empty dimension"),
    ("bad causal", Q, K, V, {"causal": "diagonal"}, ValueError, "causal must be"),
    ("non-bool mask", Q, K, V, {"mask": np.ones((6, 7))}, TypeError, "mask must be boolean"),
    ("mask shape", Q, K, V, {"mask": np.ones((6, 6), bool)}, ValueError, "mask shape .* does not broadcast"),
    ("NaN scale", Q, K, V, {"scale": float("nan")}, ValueError, "scale must be finite"),
]


@pytest.mark.parametrize("func", list(FUNCS))
@pytest.mark.parametrize("label,q,k,v,kw,exc,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_refused_with_a_clear_message(func, label, q, k, v, kw, exc, msg):
    with pytest.raises(exc, match=msg):
        FUNCS[func](q, k, v, **kw)


@pytest.mark.parametrize("func", ["standard_forward", "standard_backward", "flash_forward"])
def test_kernels_refuse_other_dtypes_and_mixed_dtypes(func):
    with pytest.raises(TypeError, match="float16; this kernel computes in float32, float64"):
        FUNCS[func](Q.astype(np.float16), K.astype(np.float16), V.astype(np.float16))
    with pytest.raises(TypeError, match="must share one dtype"):
        FUNCS[func](Q.astype(np.float32), K, V)


def test_reference_accepts_any_float_dtype_and_lists():
    o, _ = attention(Q.astype(np.float16), K.astype(np.float32), V)
    assert o.dtype == np.float64
    o2, _ = attention(Q[0].tolist(), K[0].tolist(), V[0].tolist())
    np.testing.assert_allclose(o2, attention(Q[0], K[0], V[0])[0])


def test_normalize_causal_and_scale():
    assert normalize_causal(False) is None and normalize_causal(None) is None
    assert normalize_causal(True) == "bottom_right" and normalize_causal("top_left") == "top_left"
    with pytest.raises(ValueError, match="causal must be"):
        normalize_causal(1.5)
    assert check_scale(None, 16) == 0.25 and check_scale(2, 16) == 2.0
    with pytest.raises(ValueError, match="scale must be finite"):
        check_scale(float("inf"), 4)


def test_kernels_refuse_bad_sram_and_stop_after():
    from refattn import standard_forward

    q32, k32, v32 = (x.astype(np.float32) for x in (Q, K, V))
    with pytest.raises(ValueError, match="SRAM capacity M must be positive"):
        standard_forward(q32, k32, v32, sram=0)
    with pytest.raises(TypeError, match="integer number of elements"):
        standard_forward(q32, k32, v32, sram=1.5)
    with pytest.raises(ValueError, match="unknown chip preset"):
        standard_forward(q32, k32, v32, sram="tpu9")
    with pytest.raises(ValueError, match="stop_after must be"):
        standard_forward(q32, k32, v32, sram=4096, stop_after=0)
