"""The kit with attention variants (docs/variants.md): torch's SDPA and FlexAttention pass through their
adapters; planted variant bugs are caught, and named only when they follow another documented convention."""

import numpy as np
import pytest

from refattn.testing import Capabilities, check_attention
from tests.optional import require

VARIANTS = ("gqa", "window", "softcap", "alibi")
CAP = Capabilities(dtypes=("float64", "float32"), max_n=48, max_d=16, variants=VARIANTS, backward=False)


def numpy_variants(q, k, v, *, causal=False, scale=None, mask=None, num_kv_heads=None, window=None, softcap=None,
                   alibi_slopes=None, bug=None):
    """Attention with the variants, written from docs/variants.md; ``bug`` plants one realistic mistake."""
    dt = q.dtype
    nq, nk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    if num_kv_heads is not None:
        group = q.shape[-3] // num_kv_heads
        if bug == "gqa_modulo":  # head h reads KV head h % Hkv
            k, v = (np.concatenate([x] * group, axis=-3) for x in (k, v))
        else:  # head h reads KV head h // group
            k, v = (np.repeat(x, group, axis=-3) for x in (k, v))
    scale = 1 / np.sqrt(d) if scale is None else scale
    s = (q @ np.swapaxes(k, -1, -2)).astype(np.float64) * scale
    i = np.arange(nq)[:, None] + nk - nq  # the query's place on the key axis (bottom-right)
    j = np.arange(nk)[None, :]
    keep = np.ones((nq, nk), bool)
    if causal:
        keep &= j <= (i if causal == "bottom_right" else np.arange(nq)[:, None])
    if window is not None:
        left, right = (-1 if x is None else x for x in window)
        shift = 1 if bug == "window_shifted" else 0
        if left >= 0:
            keep &= (j > i - left) if bug == "window_off_by_one" else (j >= i - left - shift)
        if right >= 0:
            keep &= j <= i + right - shift
    if mask is not None:
        keep = keep & mask
    if softcap is not None and bug == "softcap_zero":
        s = softcap * np.tanh(s / softcap) if softcap > 0 else 0 * s
    elif softcap and bug != "softcap_after_mask":
        s = softcap * np.tanh(s / softcap)
    if alibi_slopes is not None:
        sign = -1 if bug == "alibi_sign" else 1
        s = s - sign * np.asarray(alibi_slopes)[..., None, None] * np.abs(i - j)
    s = np.where(keep, s, -np.inf)
    if softcap and bug == "softcap_after_mask":  # the cap turns -inf into -softcap
        s = softcap * np.tanh(s / softcap)
    m = s.max(-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    p = np.exp(s - m)
    total = p.sum(-1, keepdims=True)
    p = np.where(total > 0, p / np.where(total > 0, total, 1), 0)
    return (p @ v.astype(np.float64)).astype(dt)


VARLEN_CAP = Capabilities(dtypes=("float64", "float32"), max_n=48, max_d=16, variants=VARIANTS + ("varlen",),
                          backward=False)


def numpy_varlen(q, k, v, *, cu_seqlens_q=None, cu_seqlens_k=None, mask=None, bug=None, **kw):
    """A packed-batch kernel as one writes it: each sequence sliced out and run on its own by
    :func:`numpy_variants` into an output buffer; ``bug`` plants one varlen mistake."""
    if cu_seqlens_q is None:
        return numpy_variants(q, k, v, mask=mask, **kw)
    o = np.full(q.shape[:-1] + (v.shape[-1],), 7.0 if bug == "varlen_padding_untouched" else 0.0, q.dtype)
    for b in range(len(cu_seqlens_q) - 1):
        (q0, q1), (k0, k1) = cu_seqlens_q[b:b + 2], cu_seqlens_k[b:b + 2]
        if q1 == q0 or k1 == k0:
            o[..., q0:q1, :] = 0  # nothing to attend
            continue
        if bug == "varlen_prev_key" and k0 > 0:
            k0 -= 1  # the slice starts one key early: the previous sequence's last key is seen
        seq_kw = dict(kw, causal="top_left") if bug == "varlen_top_left" and kw.get("causal") else kw
        part = None if mask is None else np.asarray(mask)[..., q0:q1, k0:k1]
        o[..., q0:q1, :] = numpy_variants(q[..., q0:q1, :], k[..., k0:k1, :], v[..., k0:k1, :], mask=part, **seq_kw)
    return o


def test_a_correct_packed_batch_kernel_with_every_variant_passes():
    report = check_attention(numpy_varlen, capabilities=VARLEN_CAP, max_examples=60, seed=1)
    assert report.failure is None
    assert report.semantics.variants["cu_seqlens_q"] > 0 and "cu_seqlens_q" in str(report)


@pytest.mark.parametrize("bug,convention", [
    ("varlen_prev_key", None),  # a query sees the previous sequence's last key: a bug
    ("varlen_top_left", "varlen causal alignment"),
    ("varlen_padding_untouched", "varlen padding rows"),
])
def test_planted_varlen_bugs_are_caught_and_named_only_when_they_follow_a_convention(bug, convention):
    def kernel(q, k, v, **kw):
        return numpy_varlen(q, k, v, bug=bug, **kw)

    report = check_attention(kernel, capabilities=VARLEN_CAP, max_examples=100, seed=6, raise_on_failure=False)
    assert report.failure is not None, f"{bug} was not caught"
    assert report.failure.convention == convention, (bug, report.failure.convention, str(report))
    assert "cu_seqlens_q" in report.failure.problem.variants
    if convention is None:
        assert not report.failure.message.startswith("convention difference")


def test_a_correct_kernel_with_every_variant_passes():
    report = check_attention(numpy_variants, capabilities=CAP, max_examples=60, seed=1)
    assert report.failure is None
    assert "variants" in str(report) and "num_kv_heads" in str(report)


@pytest.mark.parametrize("bug,convention", [
    ("window_off_by_one", "window exclusive left bound"),
    ("window_shifted", None),  # one off on both edges: no documented convention
    ("softcap_after_mask", None),  # a bug, not a convention: hidden keys come back at -softcap
    ("softcap_zero", "softcap 0 read as a cap of zero"),
    ("alibi_sign", "ALiBi sign"),
    ("gqa_modulo", "GQA head mapping"),
])
def test_planted_variant_bugs_are_caught_and_named_only_when_they_follow_a_convention(bug, convention):
    def kernel(q, k, v, **kw):
        return numpy_variants(q, k, v, bug=bug, **kw)

    report = check_attention(kernel, capabilities=CAP, max_examples=100, seed=2, raise_on_failure=False)
    assert report.failure is not None, f"{bug} was not caught"
    assert report.failure.convention == convention, (bug, report.failure.convention, str(report))
    if convention is None:  # a plain mismatch (perhaps saying which convention it was ruled out from)
        assert not report.failure.message.startswith("convention difference")


def test_variants_are_only_passed_to_kernels_that_declare_them():
    seen = set()

    def kernel(q, k, v, *, causal, scale, mask, **rest):
        seen.update(rest)
        return numpy_variants(q, k, v, causal=causal, scale=scale, mask=mask, **rest)

    check_attention(kernel, capabilities=Capabilities(dtypes=("float64",), max_n=24), max_examples=20, seed=3)
    assert not seen
    check_attention(kernel, capabilities=Capabilities(dtypes=("float64",), max_n=24, variants=("window",)),
                    max_examples=20, seed=3)
    assert seen == {"window"}


def test_torch_sdpa_passes_with_gqa_and_a_sliding_window():
    require("torch")
    from refattn.testing import TORCH_SDPA_CAPABILITIES, torch_sdpa

    assert {"gqa", "window"} <= set(TORCH_SDPA_CAPABILITIES.variants)
    report = check_attention(torch_sdpa, capabilities=TORCH_SDPA_CAPABILITIES, max_examples=40, seed=4)
    assert report.failure is None
    assert report.semantics.variants["num_kv_heads"] > 0 and report.semantics.variants["window"] > 0


def test_torch_flex_attention_passes_with_every_variant():
    require("torch")
    from refattn.testing import TORCH_FLEX_CAPABILITIES, torch_flex

    report = check_attention(torch_flex, capabilities=TORCH_FLEX_CAPABILITIES, max_examples=20, seed=5)
    assert report.failure is None
    assert set(report.semantics.variants) == {"num_kv_heads", "window", "softcap", "alibi_slopes"}


def test_varlen_draws_cover_empty_and_one_token_sequences_and_padding():
    from hypothesis import given, settings

    from refattn.testing.strategies import problems

    seen = set()

    @settings(max_examples=150, database=None)
    @given(problems(Capabilities(dtypes=("float64",), max_n=40, variants=("varlen",))))
    def draw(p):
        if "cu_seqlens_q" not in p.variants:
            return
        cu_q, cu_k = p.variants["cu_seqlens_q"], p.variants["cu_seqlens_k"]
        assert cu_q.dtype == cu_k.dtype == np.int32 and cu_q.size == cu_k.size
        for cu, n in ((cu_q, p.nq), (cu_k, p.nk)):
            assert cu[0] == 0 and np.all(np.diff(cu) >= 0) and cu[-1] <= n
        lengths = np.concatenate([np.diff(cu_q), np.diff(cu_k)])
        seen.update({"empty"} if (lengths == 0).any() else set())
        seen.update({"one token"} if (lengths == 1).any() else set())
        seen.update({"padding"} if cu_q[-1] < p.nq else set())
        assert not p.keep()[..., p.padding_rows(), :].any()  # padding rows see nothing

    draw()
    assert seen == {"empty", "one token", "padding"}
