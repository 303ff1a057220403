"""The kit itself: the checks a careful author expects, honest diagnosis, verdicts and the semantics sheet."""

import numpy as np
import pytest

from refattn.reference import attention, attention_backward
from refattn.testing import Capabilities, ConformanceError, Tolerance, check_attention
from tests.testing.planted import BROKEN, good

ALL_DTYPES = ("float64", "float32", "float16", "bfloat16")
SMALL = dict(max_n=24, max_d=9)  # the tests of the checks themselves need no tile-sized draws


def reference_fn(q, k, v, *, causal, scale, mask):
    o, lse = attention(q, k, v, causal=causal, scale=scale, mask=mask)
    return o.astype(q.dtype), lse.astype(q.dtype)


def reference_backward(q, k, v, do, *, causal, scale, mask):
    return attention_backward(q, k, v, do, causal=causal, scale=scale, mask=mask)


def test_reference_passes_every_dtype_with_gradients():
    report = check_attention(reference_fn, backward=reference_backward, max_examples=60,
                             capabilities=Capabilities(dtypes=ALL_DTYPES, backward=True, **SMALL))
    assert report.passed and report.examples == 60
    assert set(report.coverage) >= {"none", "causal"}
    assert report.semantics.gradients > 0


def test_tiled_numpy_kernel_passes_in_low_precision():
    # Computes in float32 and rounds the output to float16 / bfloat16: the dtype rule must allow that.
    report = check_attention(good, capabilities=Capabilities(dtypes=ALL_DTYPES), max_examples=60)
    assert report.passed, report.text()


def test_o_or_o_lse_is_found_from_what_the_function_returns():
    def o_only(q, k, v, *, causal, scale, mask):
        return reference_fn(q, k, v, causal=causal, scale=scale, mask=mask)[0]

    report = check_attention(o_only, capabilities=Capabilities(**SMALL), max_examples=20)
    assert report.passed and report.semantics.returns == "o"
    assert "returns            o" in report.text()
    with pytest.raises(ConformanceError, match=r"capabilities.lse=True expects \(o, lse\)"):
        check_attention(o_only, capabilities=Capabilities(lse=True, **SMALL), max_examples=5)

    def lse_broken(q, k, v, **kw):
        o, lse = reference_fn(q, k, v, **kw)
        return o, lse + 1
    # lse=False: a second returned value is not checked
    assert check_attention(lse_broken, capabilities=Capabilities(lse=False, **SMALL), max_examples=10).passed
    assert not check_attention(lse_broken, capabilities=Capabilities(**SMALL), max_examples=10,
                               raise_on_failure=False).passed


def test_output_dtype_is_checked_unless_declared():
    def float64_out(q, k, v, **kw):
        return attention(q, k, v, **kw)  # float64 whatever comes in
    cap = Capabilities(dtypes=("float32",), **SMALL)
    with pytest.raises(ConformanceError, match="o has dtype float64 for float32 inputs, expected float32") as info:
        check_attention(float64_out, capabilities=cap, max_examples=5)
    assert info.value.report.failure.kind == "dtype"
    declared = Capabilities(dtypes=("float32",), output_dtype="float64", **SMALL)
    assert check_attention(float64_out, capabilities=declared, max_examples=10).passed


def test_inputs_modified_in_place_are_caught_and_the_reference_uses_the_originals():
    def rounds_v(q, k, v, **kw):
        o = reference_fn(q, k, v, **kw)  # correct output for the inputs it was given...
        v[...] = np.round(v, 1)  # ...but it rounds the caller's v afterwards
        return o
    with pytest.raises(ConformanceError, match="modified its input v in place") as info:
        check_attention(rounds_v, capabilities=Capabilities(**SMALL), max_examples=20)
    assert info.value.report.failure.kind == "mutation"
    assert "FAILED: the kernel modified its input v" in info.value.report.text()


def test_nan_anywhere_is_a_failure_with_its_location():
    def nan_at_last_row(q, k, v, **kw):
        o, lse = reference_fn(q, k, v, **kw)
        if o.shape[-2] > 2:
            o = o.copy()
            o[..., -1, 0] = np.nan
        return o, lse
    with pytest.raises(ConformanceError) as info:
        check_attention(nan_at_last_row, capabilities=Capabilities(**SMALL), max_examples=30)
    f = info.value.report.failure
    assert f.kind == "nonfinite" and f.problem.nq == 3 and f.index[-2:] == (2, 0)
    assert "o holds 1 non-finite values" in str(info.value) and "query row 2, column 0" in str(info.value)


def test_nondeterminism_is_caught_unless_waived():
    rng = np.random.default_rng(0)

    def jitter(q, k, v, **kw):
        o, lse = reference_fn(q, k, v, **kw)
        return (np.nextafter(o, np.inf) if rng.integers(0, 2) else o), lse  # one ulp, now and then
    cap = Capabilities(dtypes=("float64",), **SMALL)
    with pytest.raises(ConformanceError, match="two calls on the same inputs gave different o") as info:
        check_attention(jitter, capabilities=cap, max_examples=40)
    assert info.value.report.failure.kind == "nondeterministic"
    waived = Capabilities(dtypes=("float64",), deterministic=False, **SMALL)
    report = check_attention(jitter, capabilities=waived, max_examples=20)
    assert report.passed and "not checked (waived)" in report.text()


def test_capabilities_are_respected():
    """A kernel that refuses what it never claimed is not failed for it."""
    def narrow(q, k, v, *, causal, scale, mask):
        assert q.dtype == np.float32 and mask is None and scale is None and causal in (False, "top_left")
        assert q.ndim == 2 and q.shape[0] <= 8 and k.shape[0] == q.shape[0] and q.shape[1] == v.shape[1]
        assert q.shape[1] in (4, 8)
        return reference_fn(q, k, v, causal=causal, scale=None, mask=None)[0]
    cap = Capabilities(dtypes=("float32",), causal=("top_left",), masks=(), lse=False, scale=False, max_n=8,
                       head_dims=(4, 8), max_lead=0, nq_ne_nk=False, dv_ne_d=False, fully_masked_rows="unsupported")
    assert check_attention(narrow, capabilities=cap, max_examples=40).passed


def test_unsupported_fully_masked_rows_are_never_drawn():
    def no_empty_rows(q, k, v, *, causal, scale, mask):
        o, lse = reference_fn(q, k, v, causal=causal, scale=scale, mask=mask)
        assert np.all(np.isfinite(lse)), "a fully masked row was drawn"
        return o, lse
    check_attention(no_empty_rows, capabilities=Capabilities(fully_masked_rows="unsupported"), max_examples=100)


def test_nan_convention_is_accepted_when_declared():
    assert check_attention(BROKEN["nan_rows"], max_examples=40,
                           capabilities=Capabilities(fully_masked_rows="nan")).passed


def test_crash_and_wrong_shape_are_reported():
    def crashes(q, k, v, *, causal, scale, mask):
        raise RuntimeError("tile loop fell over")
    with pytest.raises(ConformanceError, match="raised RuntimeError: tile loop fell over"):
        check_attention(crashes, max_examples=5)

    def transposed(q, k, v, *, causal, scale, mask):
        o, lse = reference_fn(q, k, v, causal=causal, scale=scale, mask=mask)
        return np.swapaxes(o, -1, -2), lse
    with pytest.raises(ConformanceError, match="o has shape"):
        check_attention(transposed, capabilities=Capabilities(**SMALL), max_examples=30)


def top_left_only(q, k, v, *, causal, **kw):
    return reference_fn(q, k, v, causal=causal and "top_left", **kw)


def off_by_one_when_shifted(q, k, v, *, causal, scale, mask):
    """bottom-right causal that uses j < i + Nk - Nq when Nq != Nk: equals top-left only when Nk - Nq = 1."""
    nq, nk = q.shape[-2], k.shape[-2]
    if causal == "bottom_right" and nq != nk:
        i, j = np.arange(nq)[:, None], np.arange(nk)[None, :]
        keep = j < i + nk - nq
        mask = keep if mask is None else (mask & keep)
        causal = False
    return reference_fn(q, k, v, causal=causal, scale=scale, mask=mask)


@pytest.mark.parametrize("name, fn, text", [
    ("lse units", lambda q, k, v, **kw: (reference_fn(q, k, v, **kw)[0], reference_fn(q, k, v, **kw)[1] / np.log(2)),
     "base-2 logarithms"),
    ("scale ignored", lambda q, k, v, *, scale, **kw: reference_fn(q, k, v, scale=None, **kw),
     "ignores scale="),
    ("mask inverted", lambda q, k, v, *, mask, **kw: reference_fn(q, k, v, mask=None if mask is None else ~mask, **kw),
     "True = masked out"),
    ("causal alignment", top_left_only, "aligns the causal mask top_left"),
])
def test_convention_differences_are_named(name, fn, text):
    with pytest.raises(ConformanceError) as info:
        check_attention(fn, capabilities=Capabilities(dtypes=("float64",), **SMALL), name=name)
    assert info.value.report.failure.convention == name
    assert text in str(info.value)


def test_an_off_by_one_is_not_called_a_convention_even_where_it_matches_one():
    cap = Capabilities(dtypes=("float64",), causal=("bottom_right",), masks=(), **SMALL)
    # On the problem where it equals top-left (Nk = Nq + 1) the kit still says it is no convention.
    with pytest.raises(ConformanceError) as info:
        check_attention(off_by_one_when_shifted, capabilities=cap, max_examples=100)
    f = info.value.report.failure
    assert f.convention is None and f.kind == "mismatch"
    if f.problem.nk == f.problem.nq + 1:
        assert "not a convention difference: on this minimal example the output equals the top_left" in str(info.value)


def test_gradient_bug_is_caught():
    def bad_backward(q, k, v, do, *, causal, scale, mask):
        dq, dk, dv = reference_backward(q, k, v, do, causal=causal, scale=scale, mask=mask)
        return dq, dk, dv * 1.01  # a 1% error in dV
    with pytest.raises(ConformanceError, match="dv differs") as info:
        check_attention(reference_fn, backward=bad_backward, capabilities=Capabilities(**SMALL))
    assert "key row" in str(info.value)
    assert "FAILED: dv" in str(info.value)


def test_backward_must_exist_when_claimed():
    with pytest.raises(ValueError, match="no backward function"):
        check_attention(reference_fn, capabilities=Capabilities(backward=True))
    with pytest.raises(ValueError, match="max_examples must be an integer >= 1"):
        check_attention(reference_fn, max_examples=0)


def test_tolerance_override_is_used():
    # float32 arithmetic cannot meet a float64-sized absolute tolerance...
    with pytest.raises(ConformanceError, match=r"atol\(o\) = 1e-30 \(fixed\)"):
        check_attention(good, capabilities=Capabilities(dtypes=("float32",), values=("normal",), backward=False),
                        tolerance=Tolerance(atol=1e-30), max_examples=40)
    # ...and a per-dtype multiplier is accepted.
    assert check_attention(good, capabilities=Capabilities(dtypes=("float32",)), max_examples=20,
                           tolerance={"float32": Tolerance(c=16)}).passed


def test_report_without_raising_and_seeded():
    r1 = check_attention(BROKEN["last_partial_tile"], raise_on_failure=False, seed=3)
    r2 = check_attention(BROKEN["last_partial_tile"], raise_on_failure=False, seed=3)
    assert not r1.passed and r1.text(details=False) == r2.text(details=False)


def test_four_verdicts_and_the_semantics_sheet():
    report = check_attention(good, max_examples=30, seed=5)
    text = report.text()
    for protocol in ("refattn", "FlashAttention", "FlexAttention", "PyTorch SDPA"):
        assert report.verdicts[protocol].judged == 30
        assert f"  {protocol}" in text
    assert report.verdicts["refattn"].passed and report.verdicts["PyTorch SDPA"].passed
    for row in ("returns", "causal alignment", "fully masked rows", "scale", "dtypes", "sizes", "determinism",
                "inputs", "gradients"):
        assert f"\n  {row:<18} " in text
    broken = check_attention(BROKEN["inter_tile_rescale"], raise_on_failure=False)
    for protocol in ("refattn", "FlashAttention", "FlexAttention", "PyTorch SDPA"):
        assert not broken.verdicts[protocol].passed  # every project's rule rejects the inverted rescale


def test_an_infinite_ratio_names_nan_only_when_o_held_one():
    """A rule that allows no error (plain == reference) gives an infinite ratio for any error; the report
    said "NaN in o" for it although o held none (seen on a planted JAX kernel)."""
    from refattn.testing.protocols import Verdict

    class _Draw:
        def describe(self):
            return "a draw"

    no_error_allowed, with_nan = Verdict("FlashAttention"), Verdict("FlashAttention")
    no_error_allowed.add(float("inf"), _Draw(), nan=False)
    with_nan.add(float("inf"), _Draw(), nan=True)
    assert "NaN" not in no_error_allowed.text() and "allows none" in no_error_allowed.text()
    assert "inf (NaN in o)" in with_nan.text()
