"""``check_attention``: property-test an attention function against the float64 reference.

The property, for every drawn :class:`~refattn.testing.strategies.Problem`::

    fn(q, k, v, causal=..., scale=..., mask=...)  ==  refattn.reference.attention(...)

within :mod:`refattn.testing.tolerance`'s dtype rule, for ``o`` (and ``lse``
when the kernel claims one), and for ``dq, dk, dv`` when it claims a backward.
On failure hypothesis shrinks the problem; the kit replays the minimal one and
reports it with the error and where it lies (output, batch index, row, column,
the mask of that row). When the mismatch is a *known convention difference*
(causal alignment, fully masked rows, lse units, scale or mask ignored or
inverted), the report names it and says which capability declares it.
"""

from __future__ import annotations

import math
import traceback
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.errors import Flaky

from refattn import reference
from refattn.testing import tolerance as tolmod
from refattn.testing.strategies import Capabilities, Problem, current_dtype, problems

DEFAULT_MAX_EXAMPLES = 60
GRADIENTS = ("dq", "dk", "dv")


@dataclass
class Failure:
    """What went wrong on one problem."""

    problem: Problem
    kind: str  # "crash", "shape", "mismatch" or "convention"
    output: str = ""  # "o", "lse", "dq", "dk", "dv"
    message: str = ""
    convention: str | None = None  # the named convention difference, if any
    index: tuple | None = None  # index of the worst element in the output
    got: float | None = None
    want: float | None = None
    error: float | None = None
    allowed: float | None = None
    rule: str = ""


@dataclass
class ConformanceReport:
    """The outcome of :func:`check_attention`; ``str(report)`` is the readable text."""

    name: str
    capabilities: Capabilities
    examples: int = 0
    coverage: Counter = field(default_factory=Counter)
    failure: Failure | None = None

    @property
    def passed(self) -> bool:
        return self.failure is None

    def text(self) -> str:
        if self.passed:
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.coverage.items()))
            return f"PASS {self.name}: {self.examples} examples agree with the float64 reference ({kinds})"
        f = self.failure
        lines = [f"FAIL {self.name}: {f.kind}" + (f" ({f.convention})" if f.convention else "")]
        lines.append(f"  minimal example: {f.problem.describe()}")
        lines += ["  " + line for line in f.message.splitlines()]
        if f.rule:
            lines.append(f"  tolerance: {f.rule}")
        lines += ["  " + line for line in _arrays_text(f.problem).splitlines()]
        return "\n".join(lines)

    __str__ = text


class ConformanceError(AssertionError):
    """Raised by :func:`check_attention` on failure; ``.report`` holds the :class:`ConformanceReport`."""

    def __init__(self, report: ConformanceReport):
        super().__init__(report.text())
        self.report = report


class _Failed(Exception):
    pass


def _arrays_text(p: Problem, limit=48) -> str:
    """The minimal example's arrays, when they are small enough to read."""
    parts = []
    for name in ("q", "k", "v"):
        x = getattr(p, name)
        if x.size > limit:
            return "(arrays too large to print; rebuild them with the seed above via refattn.testing.problems)"
        parts.append(f"{name} = {np.array2string(x, precision=4, separator=', ')}")
    if p.mask is not None and p.mask.size <= 4 * limit:
        parts.append(f"mask = {np.array2string(p.mask.astype(int), separator=', ')}")
    return "\n".join(parts)


# ---------------------------------------------------------------- running one problem
def _call_kwargs(p: Problem, cap: Capabilities):
    mask = p.index_set if (p.index_set is not None and cap.index_set_objects) else p.mask
    return dict(causal=p.causal or False, scale=p.scale, mask=mask)


def _reference(p: Problem, causal="same", scale="same", mask="same"):
    causal = p.causal if causal == "same" else causal
    scale = p.scale if scale == "same" else scale
    mask = p.mask if isinstance(mask, str) and mask == "same" else mask
    return reference.attention(p.q, p.k, p.v, scale=scale, causal=causal or False, mask=mask)


def _bad_elements(got, want, bounds, skip_rows=None):
    """Boolean array of elements out of tolerance (NaN counts as bad; equal infinities agree)."""
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(got - want)
        err = np.where((got == want), 0.0, err)  # -inf == -inf
        bad = ~(err <= bounds.allowed(np.where(np.isfinite(want), want, 0.0)))
    if skip_rows is not None:
        bad &= ~np.broadcast_to(skip_rows.reshape(skip_rows.shape + (1,) * (bad.ndim - skip_rows.ndim)), bad.shape)
    return bad, err


def _where(p: Problem, output: str, index: tuple) -> str:
    lead, rest = index[:len(p.lead)], index[len(p.lead):]
    at = f"batch/head {lead}, " if lead else ""
    if output in ("o", "lse", "dq"):
        row = rest[0]
        keep = p.keep()[lead + (row,)] if lead else p.keep()[row]
        visible = np.flatnonzero(keep)
        vis = "no visible key (fully masked row)" if visible.size == 0 else (
            f"{visible.size} of {p.nk} keys visible, {visible[0]}..{visible[-1]}")
        col = f", column {rest[1]}" if len(rest) > 1 else ""
        return f"{at}query row {row}{col} ({vis}; mask: {p.mask_description()})"
    row = rest[0]
    return f"{at}key row {row}, column {rest[1]} (mask: {p.mask_description()})"


def _compare(p, output, got, want, bounds, skip_rows=None):
    """None if ``got`` matches ``want``; else a Failure (kind mismatch or shape)."""
    got = np.asarray(got)
    if got.shape != want.shape:
        return Failure(p, "shape", output, f"{output} has shape {got.shape}, expected {want.shape}")
    if not np.issubdtype(got.dtype, np.floating):
        return Failure(p, "shape", output, f"{output} has dtype {got.dtype}, expected a floating-point array")
    got = got.astype(np.float64)
    bad, err = _bad_elements(got, want, bounds, skip_rows)
    if not bad.any():
        return None
    score = np.where(bad, np.nan_to_num(err, nan=np.inf, posinf=np.inf), -1.0)
    idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(score)), bad.shape))
    row_axis = len(p.lead)
    bad_rows = np.unique(np.argwhere(bad)[:, row_axis]) if bad.ndim > row_axis else np.array([])
    rows = ", ".join(map(str, bad_rows[:12])) + (", ..." if bad_rows.size > 12 else "")
    message = (f"{output} differs from the float64 reference at {_where(p, output, idx)}: "
               f"got {float(got[idx]):.7g}, want {float(want[idx]):.7g}, |error| {float(err[idx]):.3g} > allowed "
               f"{bounds.allowed(want[idx] if np.isfinite(want[idx]) else 0.0):.3g}\n"
               f"{int(bad.sum())} of {bad.size} elements of {output} out of tolerance; "
               f"{'rows' if output != 'dk' and output != 'dv' else 'key rows'} {rows}")
    return Failure(p, "mismatch", output, message, index=idx, got=float(got[idx]), want=float(want[idx]),
                   error=float(err[idx]), allowed=float(bounds.atol), rule=bounds.rule)


def _unpack(out, cap: Capabilities):
    if cap.lse:
        if not (isinstance(out, (tuple, list)) and len(out) >= 2):
            raise _Unpack("the function returned one value, but capabilities.lse=True expects (o, lse)")
        return out[0], out[1]
    if isinstance(out, (tuple, list)):
        return out[0], None
    return out, None


class _Unpack(Exception):
    pass


def _matches(got, want, bounds, skip_rows=None):
    got = np.asarray(got, np.float64)
    return got.shape == want.shape and not _bad_elements(got, want, bounds, skip_rows)[0].any()


def _diagnose(p: Problem, cap: Capabilities, failure: Failure, o, lse, bounds_o, bounds_lse) -> Failure:
    """Name a known convention difference behind a mismatch, when there is one."""
    if failure.kind != "mismatch":
        return failure
    empty = p.fully_masked_rows()
    o = np.asarray(o, np.float64)
    o_ref, lse_ref = _reference(p)
    # 1. Only the fully masked rows are wrong.
    if empty.any() and _matches(o, o_ref, bounds_o, skip_rows=empty) and (
            lse is None or _matches(lse, lse_ref, bounds_lse, skip_rows=empty)):
        sel = o[np.broadcast_to(empty[..., None], o.shape)]
        what = "NaN" if np.isnan(sel).any() else ("nonzero values" if np.any(sel != 0) else None)
        if what is None and lse is not None:
            lse_sel = np.asarray(lse, np.float64)[empty]
            what = f"lse {float(lse_sel[0]):.7g} instead of -inf" if lse_sel.size else None
        failure.convention = "fully masked rows"
        failure.message = (f"convention difference, fully masked rows: for rows with no visible key the kernel "
                           f"returns {what or 'something else'}; refattn's convention is o = 0 and lse = -inf "
                           f"(never NaN). Every other row agrees with the reference. If the kernel means this, "
                           f"declare fully_masked_rows='nan' (or 'unsupported') in its capabilities.\n"
                           + failure.message)
        return failure
    # 2. Causal alignment swapped.
    if p.causal and p.nq != p.nk:
        other = "top_left" if p.causal == "bottom_right" else "bottom_right"
        o_other, _ = _reference(p, causal=other)
        if _matches(o, o_other, bounds_o, skip_rows=None if cap.fully_masked_rows != "nan" else empty):
            rule = {"bottom_right": "j <= i + Nk - Nq, FlashAttention >= 2.1",
                    "top_left": "j <= i, PyTorch is_causal"}
            failure.convention = "causal alignment"
            failure.message = (f"convention difference, causal alignment: the kernel aligns the causal mask "
                               f"{other} ({rule[other]}) but {p.causal} ({rule[p.causal]}) was asked, with "
                               f"Nq = {p.nq} != Nk = {p.nk}. If the kernel means this, declare "
                               f"causal=('{other}',) in its capabilities.\n" + failure.message)
            return failure
    # 3. lse in base-2 units.
    if lse is not None and failure.output == "lse" and _matches(o, o_ref, bounds_o):
        lse2 = np.asarray(lse, np.float64) * math.log(2.0)
        if _matches(lse2, lse_ref, bounds_lse):
            failure.convention = "lse units"
            failure.message = ("convention difference, lse units: the kernel's lse is in base-2 logarithms "
                               "(log2-sum-exp2); refattn's lse is in natural-log units. Multiply by ln 2.\n"
                               + failure.message)
            return failure
    # 4. Scale argument ignored; mask ignored or inverted.
    checks = []
    if p.scale is not None:
        checks.append(("scale ignored", dict(scale=None),
                       f"the kernel ignores scale={p.scale:g} and uses 1/sqrt(d); declare scale=False "
                       f"if it cannot take one"))
    if p.mask is not None:
        checks.append(("mask ignored", dict(mask=None), "the kernel ignores the boolean mask"))
        inverted = ~np.asarray(p.mask, bool)
        checks.append(("mask inverted", dict(mask=inverted),
                       "the kernel reads the mask as True = masked out; refattn's mask is True = keep"))
    for name, change, text in checks:
        want, _ = _reference(p, **change)
        if _matches(o, want, bounds_o):
            failure.convention = name
            failure.message = f"{name}: {text}.\n" + failure.message
            return failure
    return failure


def _run_one(fn, backward, p: Problem, cap: Capabilities, tolerance) -> Failure | None:
    kwargs = _call_kwargs(p, cap)
    scale = _effective_scale(p)
    token = current_dtype.set(p.dtype)
    try:
        try:
            out = fn(p.q, p.k, p.v, **kwargs)
            o, lse = _unpack(out, cap)
        except _Unpack as exc:
            return Failure(p, "shape", "o", str(exc))
        except Exception as exc:  # the kernel crashed: report it, do not let it escape
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-3))
            return Failure(p, "crash", "", f"the function raised {type(exc).__name__}: {exc}\n{tb.rstrip()}")
        o_ref, lse_ref = _reference(p)
        skip = p.fully_masked_rows() if cap.fully_masked_rows == "nan" else None
        bounds_o = tolmod.output_bounds(tolerance, p.dtype, p.q, p.k, p.v, scale)
        bounds_lse = tolmod.lse_bounds(tolerance, p.dtype, p.q, p.k, scale)
        failure = _compare(p, "o", o, o_ref, bounds_o, skip)
        if failure is None and lse is not None:
            failure = _compare(p, "lse", lse, lse_ref, bounds_lse, skip)
        if failure is not None:
            return _diagnose(p, cap, failure, o, lse, bounds_o, bounds_lse)
        if cap.backward and backward is not None and (skip is None or not skip.any()):
            # (a kernel with NaN rows has NaN gradients for every key: only problems without such rows)
            return _check_backward(backward, p, kwargs, tolerance, scale, skip)
        return None
    finally:
        current_dtype.reset(token)


def _effective_scale(p: Problem) -> float:
    return 1.0 / math.sqrt(p.q.shape[-1]) if p.scale is None else p.scale


def _check_backward(backward, p: Problem, kwargs, tolerance, scale, skip) -> Failure | None:
    try:
        grads = backward(p.q, p.k, p.v, p.do, **kwargs)
    except Exception as exc:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-3))
        return Failure(p, "crash", "", f"the backward raised {type(exc).__name__}: {exc}\n{tb.rstrip()}")
    if not (isinstance(grads, (tuple, list)) and len(grads) == 3):
        return Failure(p, "shape", "dq", "the backward must return (dq, dk, dv)")
    refs = reference.attention_backward(p.q, p.k, p.v, p.do, scale=p.scale, causal=p.causal or False, mask=p.mask)
    for name, got, want in zip(GRADIENTS, grads, refs):
        bounds = tolmod.gradient_bounds(tolerance, p.dtype, name, p.q, p.k, p.v, p.do, scale)
        failure = _compare(p, name, got, want, bounds, skip if name == "dq" else None)
        if failure is not None:
            return failure
    return None


# ---------------------------------------------------------------- the public check
def check_attention(fn, *, capabilities: Capabilities | dict | None = None, tolerance=None,
                    max_examples: int = DEFAULT_MAX_EXAMPLES, backward=None, seed: int | None = None,
                    name: str | None = None, raise_on_failure: bool = True) -> ConformanceReport:
    """Property-test ``fn(q, k, v, *, causal, scale, mask)`` against :func:`refattn.reference.attention`.

    * ``fn`` returns ``o`` or ``(o, lse)`` (``capabilities.lse``). Arrays come
      in as NumPy arrays of the dtype under test (see the adapters for torch
      and JAX); ``causal`` is ``False``, ``"bottom_right"`` or ``"top_left"``;
      ``mask`` is None, a boolean keep-mask broadcastable to ``(..., Nq, Nk)``,
      or an :class:`~refattn.index_set.IndexSet` (``capabilities.index_set_objects``).
    * ``capabilities``: a :class:`Capabilities` (or its dict/JSON form): what
      ``fn`` claims, so it is never failed for what it never claimed.
    * ``tolerance``: see :mod:`refattn.testing.tolerance` (None: the dtype rule).
    * ``backward``: ``backward(q, k, v, do, *, causal, scale, mask) -> (dq, dk, dv)``
      for ``capabilities.backward``; default ``fn.backward`` if it has one (the
      torch and JAX adapters provide it through autograd).
    * ``seed``: fix hypothesis's random choices (default: fresh every run).

    Returns the :class:`ConformanceReport`; on failure raises
    :class:`ConformanceError` (an ``AssertionError``, so it reads well under
    pytest) unless ``raise_on_failure=False``.
    """
    if isinstance(capabilities, (dict, str)):
        capabilities = Capabilities.from_json(capabilities)
    cap = capabilities or Capabilities()
    if backward is None:
        backward = getattr(fn, "backward", None)
    if cap.backward and backward is None:
        raise ValueError("capabilities.backward=True but no backward function: pass backward=... "
                         "(or use refattn.testing.from_torch / from_jax, which differentiate)")
    if max_examples < 1:
        raise ValueError(f"max_examples must be >= 1, got {max_examples}")
    report = ConformanceReport(name or getattr(fn, "__qualname__", repr(fn)), cap)
    state = {"last": None}

    @settings(max_examples=max_examples, deadline=None, database=None, report_multiple_bugs=False,
              suppress_health_check=list(HealthCheck), phases=(Phase.explicit, Phase.generate, Phase.shrink),
              verbosity=Verbosity.quiet, print_blob=False, derandomize=False)
    @given(problems(cap))
    def conforms(problem):
        report.examples += 1
        report.coverage[problem.mask_kind] += 1
        failure = _run_one(fn, backward, problem, cap, tolerance)
        if failure is not None:
            state["last"] = failure
            raise _Failed(failure.message.splitlines()[0] if failure.message else failure.kind)

    if seed is not None:
        conforms = hypothesis_seed(seed)(conforms)
    try:
        conforms()
    except _Failed:
        report.failure = state["last"]
    except Flaky:
        report.failure = state["last"]
        report.failure.message = ("nondeterministic: this example failed once and passed when replayed.\n"
                                  + report.failure.message)
    if report.failure is not None and raise_on_failure:
        raise ConformanceError(report)
    return report


def assert_conforms(fn, **kwargs) -> ConformanceReport:
    """The pytest-friendly form: ``check_attention`` that raises on failure (an AssertionError)."""
    kwargs["raise_on_failure"] = True
    return check_attention(fn, **kwargs)
