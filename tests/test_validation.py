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
    ("string scale", Q, K, V, {"scale": "2"}, TypeError, "scale must be a real number"),
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


# ---------------------------------------------------------------------------
# Edges found in issue 19: byte order, overflow, SRAM size, gradient inputs
# ---------------------------------------------------------------------------
def _every_kernel(q, k, v, **kw):
    """{kernel: outputs} of every simulated kernel on (q, k, v) (causal, small M)."""
    from refattn import flash_backward, flash_forward, sparse_forward, standard_backward, standard_forward
    from refattn.index_set import IndexSet

    do = np.ones(q.shape[:-1] + (v.shape[-1],), q.dtype)
    o, lse = attention(q, k, v, causal=True)
    iset = IndexSet.from_lists(q.shape[-2], k.shape[-2], [[0, 1]] * 2, [[]] * 2, block=4)
    runs = {
        "fa1": lambda: flash_forward(q, k, v, sram=300, variant="fa1", causal=True, **kw),
        "fa2": lambda: flash_forward(q, k, v, sram=300, variant="fa2", causal=True, **kw),
        "flash_backward": lambda: flash_backward(q, k, v, o, lse, do, sram=600, causal=True, **kw),
        "standard_forward": lambda: standard_forward(q, k, v, sram=300, causal=True, **kw),
        "standard_backward": lambda: standard_backward(q, k, v, o, do, sram=300, causal=True, **kw),
        "sparse": lambda: sparse_forward(q, k, v, iset, sram=300, causal=True, **kw),
    }
    return runs


def test_big_endian_inputs_are_converted_not_crashed_on():
    q, k, v = (x[:, :6].astype(np.float32) for x in (Q, K, V))
    native = {name: run() for name, run in _every_kernel(q, k, v).items()}
    swapped = _every_kernel(q.astype(">f4"), k.astype(">f4"), v.astype(">f4"))
    for name, run in swapped.items():
        res = run()
        for out, x in native[name].outputs.items():
            np.testing.assert_array_equal(res.outputs[out], x, err_msg=f"{name}.{out}")


def test_overflow_is_refused_naming_the_input():
    q, k, v = (x[:, :6].astype(np.float32) for x in (Q, K, V))
    for run in _every_kernel(q, k, v, scale=1e39).values():
        with pytest.raises(ValueError, match="scale = 1e\\+39 is beyond the range of float32"):
            run()
    for run in _every_kernel(q * np.float32(1e20), k * np.float32(1e20), v).values():
        with pytest.raises(ValueError, match="scores scale \\* q.k could overflow float32"):
            run()
    for run in _every_kernel(q, k, np.full_like(v, 3e38)).values():
        with pytest.raises(ValueError, match="v is too large for float32"):
            run()
    # the same values in float64 are computed, and correctly
    big = _every_kernel(Q[:, :6] * 1e20, K[:, :6] * 1e20, V[:, :6], scale=1e-39)
    ref, _ = attention(Q[:, :6] * 1e20, K[:, :6] * 1e20, V[:, :6], scale=1e-39, causal=True)
    np.testing.assert_allclose(big["fa2"]().o, ref, atol=1e-12)
    np.testing.assert_allclose(big["standard_forward"]().o, ref, atol=1e-12)


def test_sram_must_be_a_sane_integer():
    from refattn import flash_forward

    with pytest.raises(ValueError, match="too large"):
        flash_forward(Q, K, V, sram=10**19)


def test_standard_backward_gradients_follow_the_input_shapes_and_dtypes():
    from refattn import flash_backward, standard_backward
    from refattn.reference import attention_backward

    q = rng.standard_normal((2, 40, 16)).astype(np.float32)
    k = rng.standard_normal((1, 40, 16)).astype(np.float32)  # shared over the batch
    v = rng.standard_normal((2, 40, 16)).astype(np.float32)
    do = rng.standard_normal((2, 40, 16)).astype(np.float32)
    o, lse = attention(q, k, v)  # float64, as the reference returns it
    want = attention_backward(q, k, v, do)
    std = standard_backward(q, k, v, o, do, sram=2000)  # o in another float dtype is accepted, like flash's
    fl = flash_backward(q, k, v, o, lse, do, sram=2000)
    for res in (std, fl):
        for got, ref in zip((res.dq, res.dk, res.dv), want):
            assert got.shape == ref.shape and got.dtype == np.float32
            np.testing.assert_allclose(got, ref, atol=2e-5)
    assert std.stopped is False and std.state is None  # a full run is not "stopped"
