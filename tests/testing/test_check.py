"""The kit itself: passes correct kernels, catches planted bugs with a minimal example, names conventions."""

import numpy as np
import pytest

from refattn.reference import attention, attention_backward
from refattn.testing import Capabilities, ConformanceError, Tolerance, check_attention
from tests.testing.planted import BROKEN, good

ALL_DTYPES = ("float64", "float32", "float16", "bfloat16")


def reference_fn(q, k, v, *, causal, scale, mask):
    return attention(q, k, v, causal=causal, scale=scale, mask=mask)


def reference_backward(q, k, v, do, *, causal, scale, mask):
    return attention_backward(q, k, v, do, causal=causal, scale=scale, mask=mask)


def test_reference_passes_every_dtype_with_gradients():
    report = check_attention(reference_fn, backward=reference_backward, max_examples=80,
                             capabilities=Capabilities(dtypes=ALL_DTYPES, backward=True))
    assert report.passed and report.examples == 80
    assert set(report.coverage) >= {"none", "causal"}


def test_tiled_numpy_kernel_passes_in_low_precision():
    # Computes in float32 and rounds the output to float16 / bfloat16: the dtype rule must allow that.
    report = check_attention(good, capabilities=Capabilities(dtypes=ALL_DTYPES), max_examples=80)
    assert report.passed, report.text()


@pytest.mark.parametrize("bug", sorted(BROKEN))
def test_planted_bug_is_caught_with_a_minimal_example(bug):
    with pytest.raises(ConformanceError) as info:
        check_attention(BROKEN[bug])  # the default example budget
    report = info.value.report
    text = str(info.value)
    assert text.startswith(f"FAIL tiled_attention[{bug}]") and "minimal example:" in text
    p = report.failure.problem
    assert report.failure.kind == "mismatch" and report.failure.output in ("o", "lse")
    assert "query row" in text and "out of tolerance" in text
    if bug == "no_max_subtraction":
        assert "large_logits" in p.values or "outliers" in p.values  # only big logits overflow exp
    elif bug == "causal_off_by_one":
        assert p.causal is not None and "causal" in text
        assert p.nq <= 2 and p.nk <= 2  # shrunk to the smallest causal case
    elif bug == "nan_on_masked_rows":
        assert report.failure.convention == "fully masked rows"
        assert "convention difference, fully masked rows" in text and "returns NaN" in text
        assert p.fully_masked_rows().any()
    elif bug == "drop_last_partial_block":
        assert p.nk % 4 != 0 and p.nk < 4  # shrunk below one block
    elif bug == "inverted_rescale":
        assert p.nk > 4  # needs a second key block
        assert p.nq == 1 and p.v.shape[-1] == 1 and p.lead == ()  # shrunk to one query row, dv = 1


def test_capabilities_are_respected():
    """A kernel that refuses what it never claimed is not failed for it."""
    def narrow(q, k, v, *, causal, scale, mask):
        assert q.dtype == np.float32 and mask is None and scale is None and causal in (False, "top_left")
        assert q.ndim == 2 and q.shape[0] <= 8 and k.shape[0] == q.shape[0] and q.shape[1] == v.shape[1]
        return attention(q, k, v, causal=causal)[0]
    cap = Capabilities(dtypes=("float32",), causal=("top_left",), masks=(), lse=False, scale=False,
                       max_n=8, max_lead=0, nq_ne_nk=False, dv_ne_d=False, fully_masked_rows="unsupported")
    assert check_attention(narrow, capabilities=cap, max_examples=60).passed


def test_unsupported_fully_masked_rows_are_never_drawn():
    def no_empty_rows(q, k, v, *, causal, scale, mask):
        o, lse = attention(q, k, v, causal=causal, scale=scale, mask=mask)
        assert np.all(np.isfinite(lse)), "a fully masked row was drawn"
        return o, lse
    check_attention(no_empty_rows, capabilities=Capabilities(fully_masked_rows="unsupported"), max_examples=150)


def test_nan_convention_is_accepted_when_declared():
    assert check_attention(BROKEN["nan_on_masked_rows"], max_examples=60,
                           capabilities=Capabilities(fully_masked_rows="nan")).passed


def test_crash_and_wrong_shape_are_reported():
    def crashes(q, k, v, *, causal, scale, mask):
        raise RuntimeError("tile loop fell over")
    with pytest.raises(ConformanceError, match="raised RuntimeError: tile loop fell over"):
        check_attention(crashes, max_examples=5)

    def o_only(q, k, v, *, causal, scale, mask):
        return reference_fn(q, k, v, causal=causal, scale=scale, mask=mask)[0]
    with pytest.raises(ConformanceError, match=r"capabilities.lse=True expects \(o, lse\)"):
        check_attention(o_only, max_examples=5)

    def transposed(q, k, v, *, causal, scale, mask):
        o, lse = reference_fn(q, k, v, causal=causal, scale=scale, mask=mask)
        return np.swapaxes(o, -1, -2), lse
    with pytest.raises(ConformanceError, match="o has shape"):
        check_attention(transposed, max_examples=30)


@pytest.mark.parametrize("name, fn, text", [
    ("lse units", lambda q, k, v, **kw: (reference_fn(q, k, v, **kw)[0], reference_fn(q, k, v, **kw)[1] / np.log(2)),
     "base-2 logarithms"),
    ("scale ignored", lambda q, k, v, *, scale, **kw: reference_fn(q, k, v, scale=None, **kw),
     "ignores scale="),
    ("mask inverted", lambda q, k, v, *, mask, **kw: reference_fn(q, k, v, mask=None if mask is None else ~mask, **kw),
     "True = masked out"),
    ("causal alignment", lambda q, k, v, *, causal, **kw: reference_fn(q, k, v, causal=causal and "top_left", **kw),
     "aligns the causal mask top_left"),
])
def test_convention_differences_are_named(name, fn, text):
    with pytest.raises(ConformanceError) as info:
        check_attention(fn, capabilities=Capabilities(dtypes=("float64",)), name=name)
    assert info.value.report.failure.convention == name
    assert text in str(info.value)


def test_gradient_bug_is_caught():
    def bad_backward(q, k, v, do, *, causal, scale, mask):
        dq, dk, dv = reference_backward(q, k, v, do, causal=causal, scale=scale, mask=mask)
        return dq, dk, dv * 1.01  # a 1% error in dV
    with pytest.raises(ConformanceError, match="dv differs") as info:
        check_attention(reference_fn, backward=bad_backward, capabilities=Capabilities(backward=True))
    assert "key row" in str(info.value)


def test_backward_must_exist_when_claimed():
    with pytest.raises(ValueError, match="no backward function"):
        check_attention(reference_fn, capabilities=Capabilities(backward=True))


def test_tolerance_override_is_used():
    # float32 arithmetic cannot meet a float64-sized absolute tolerance...
    with pytest.raises(ConformanceError, match=r"atol\(o\) = 1e-30 \(fixed\)"):
        check_attention(good, capabilities=Capabilities(dtypes=("float32",), values=("normal",)),
                        tolerance=Tolerance(atol=1e-30), max_examples=40)
    # ...and a per-dtype multiplier is accepted.
    assert check_attention(good, capabilities=Capabilities(dtypes=("float32",)), max_examples=20,
                           tolerance={"float32": Tolerance(c=16)}).passed


def test_report_without_raising_and_seeded():
    r1 = check_attention(BROKEN["drop_last_partial_block"], raise_on_failure=False, seed=3)
    r2 = check_attention(BROKEN["drop_last_partial_block"], raise_on_failure=False, seed=3)
    assert not r1.passed and r1.text() == r2.text()
