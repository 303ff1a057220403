"""``check_attention``: property-test an attention function against the float64 reference.

The property, for every drawn :class:`~refattn.testing.strategies.Problem`::

    fn(q, k, v, causal=..., scale=..., mask=...)  ==  refattn.reference.attention(...)

within :mod:`refattn.testing.tolerance`'s dtype rule, for ``o`` (and ``lse``
when the kernel returns one), and for ``dq, dk, dv`` when it has a backward.
Each call is also checked the way a careful author would (docs/testing.md):

1. the kernel gets its own copies of ``q, k, v`` (and the mask); after the
   call they must be bitwise unchanged, and the reference is computed from
   the kit's copies, taken before the call;
2. the output's shape and dtype (float32 in, float32 out, unless
   ``capabilities.output_dtype`` says otherwise);
3. no NaN or Inf anywhere in ``o`` (``lse`` may be -inf only on fully masked
   rows), reported with its location;
4. the values, per element, within the dtype rule;
5. a second call on fresh copies gives bitwise-equal outputs
   (``capabilities.deterministic`` waives it).

On failure hypothesis shrinks the problem; :mod:`refattn.testing.diagnose`
then names a convention difference only when the kernel matches that other
convention on the minimal example and on fresh probes. Every judged problem
is also scored by the FlashAttention, FlexAttention and PyTorch SDPA test
rules (:mod:`refattn.testing.protocols`); the report prints the four
verdicts and a semantics sheet of what the run established.
"""

from __future__ import annotations

import math
import time
import traceback

import numpy as np
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.errors import Flaky

from refattn import reference
from refattn.testing import tolerance as tolmod
from refattn.testing.diagnose import diagnose
from refattn.testing.protocols import judge
from refattn.testing.report import ConformanceReport, Failure
from refattn.testing.strategies import Capabilities, Problem, current_dtype, numpy_dtype, problems
from refattn.testing.variants import VARIANT_CONVENTIONS

DEFAULT_MAX_EXAMPLES = 100
GRADIENTS = ("dq", "dk", "dv")


class ConformanceError(AssertionError):
    """Raised by :func:`check_attention` on failure; ``.report`` holds the :class:`ConformanceReport`."""

    def __init__(self, report: ConformanceReport):
        super().__init__(report.text())
        self.report = report


class _Failed(Exception):
    pass


class _Unpack(Exception):
    pass


# ---------------------------------------------------------------- calling the kernel
def call_kwargs(p: Problem, cap: Capabilities):
    """The keyword arguments the kernel receives (the mask as a fresh copy, or the IndexSet object)."""
    if p.index_set is not None and cap.index_set_objects:
        mask = p.index_set
    else:
        mask = None if p.mask is None else p.mask.copy()
    variants = {name: (np.array(x, copy=True) if isinstance(x, np.ndarray) else x) for name, x in p.variants.items()}
    return dict(causal=p.causal or False, scale=p.scale, mask=mask, **variants)


def call(fn, p: Problem, cap: Capabilities):
    """Run ``fn`` on fresh copies of the problem's arrays: ``(output, (q, k, v, mask) as passed)``."""
    qkv = tuple(x.copy() for x in (p.q, p.k, p.v))
    kwargs = call_kwargs(p, cap)
    token = current_dtype.set(p.dtype)
    try:
        out = fn(*qkv, **kwargs)
    finally:
        current_dtype.reset(token)
    return out, qkv + (kwargs["mask"],)


def unpack(out, lse_mode):
    """``(o, lse)`` from what the function returned; ``lse_mode`` True, False or None (detect)."""
    pair = isinstance(out, (tuple, list)) and len(out) >= 2
    if lse_mode is True and not pair:
        raise _Unpack("the function returned one value, but capabilities.lse=True expects (o, lse)")
    if isinstance(out, (tuple, list)):
        if not out:
            raise _Unpack("the function returned an empty tuple")
        return out[0], (out[1] if pair and lse_mode is not False else None)
    return out, None


def _traceback(exc):
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-3)).rstrip()


def _reference(p: Problem):
    return reference.attention(p.q, p.k, p.v, scale=p.scale, causal=p.causal or False, mask=p.mask, **p.variants)


def tolerance_bounds(tolerance, p: Problem, scale):
    """``(bounds of o, bounds of lse)`` for problem ``p`` (GQA's KV heads repeated; ALiBi widens the logits)."""
    k, v = p.kv_per_query_head()
    extra = p.bias_size()
    return (tolmod.output_bounds(tolerance, p.dtype, p.q, k, v, scale, extra),
            tolmod.lse_bounds(tolerance, p.dtype, p.q, k, scale, extra))


def effective_scale(p: Problem) -> float:
    return 1.0 / math.sqrt(p.d) if p.scale is None else p.scale


# ---------------------------------------------------------------- element comparison
def bad_elements(got, want, bounds, skip_rows=None):
    """Boolean array of elements out of tolerance (NaN counts as bad; equal infinities agree)."""
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(got - want)
        err = np.where((got == want), 0.0, err)  # -inf == -inf
        bad = ~(err <= bounds.allowed(np.where(np.isfinite(want), want, 0.0)))
    if skip_rows is not None:
        bad &= ~np.broadcast_to(skip_rows.reshape(skip_rows.shape + (1,) * (bad.ndim - skip_rows.ndim)), bad.shape)
    return bad, err


def matches(got, want, bounds, skip_rows=None) -> bool:
    got = np.asarray(got, np.float64)
    return got.shape == want.shape and not bad_elements(got, want, bounds, skip_rows)[0].any()


def where(p: Problem, output: str, index: tuple) -> str:
    """The location of an element in words: batch/head, row, column, and that row's mask."""
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


def compare(p, output, got, want, bounds, skip_rows=None) -> Failure | None:
    """None if ``got`` matches ``want``; else a Failure (kind ``mismatch``, or ``nonfinite`` for NaN/Inf)."""
    got = np.asarray(got, np.float64)
    bad, err = bad_elements(got, want, bounds, skip_rows)
    if not bad.any():
        return None
    score = np.where(bad, np.nan_to_num(err, nan=np.inf, posinf=np.inf), -1.0)
    idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(score)), bad.shape))
    row_axis = len(p.lead)
    bad_rows = np.unique(np.argwhere(bad)[:, row_axis]) if bad.ndim > row_axis else np.array([])
    rows = ", ".join(map(str, bad_rows[:12])) + (", ..." if bad_rows.size > 12 else "")
    nonfinite = bad & ~np.isfinite(got)
    kind = "nonfinite" if nonfinite.any() else "mismatch"
    if kind == "nonfinite":
        idx = tuple(int(i) for i in np.argwhere(nonfinite)[0])
        head = (f"{output} holds {int(nonfinite.sum())} non-finite values (NaN or Inf) where the reference is "
                f"finite or different; the first at {where(p, output, idx)}: got {float(got[idx])}, "
                f"want {float(want[idx]):.7g}")
    else:
        head = (f"{output} differs from the float64 reference at {where(p, output, idx)}: "
                f"got {float(got[idx]):.7g}, want {float(want[idx]):.7g}, |error| {float(err[idx]):.3g} > allowed "
                f"{bounds.allowed(want[idx] if np.isfinite(want[idx]) else 0.0):.3g}")
    message = (f"{head}\n{int(bad.sum())} of {bad.size} elements of {output} out of tolerance; "
               f"{'key rows' if output in ('dk', 'dv') else 'rows'} {rows}")
    return Failure(p, kind, output, message, index=idx, got=float(got[idx]), want=float(want[idx]),
                   error=float(err[idx]), allowed=float(bounds.atol), rule=bounds.rule)


def _ratio(got, want, bounds, skip_rows) -> float:
    """max over elements of |error| / allowed (the refattn rule's verdict score)."""
    got = np.asarray(got, np.float64)
    _, err = bad_elements(got, want, bounds, skip_rows)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = err / bounds.allowed(np.where(np.isfinite(want), want, 0.0))
    if skip_rows is not None:
        r = np.where(np.broadcast_to(skip_rows[..., None], r.shape), 0.0, r)
    return float(np.nanmax(np.where(np.isnan(r), np.inf, r))) if r.size else 0.0


# ---------------------------------------------------------------- the checks of one problem
def _check_form(p, cap, o, lse) -> Failure | None:
    """Shape and dtype of ``o`` (and ``lse``)."""
    expected = numpy_dtype(p.dtype) if cap.output_dtype == "same" else (
        None if cap.output_dtype == "any" else numpy_dtype(cap.output_dtype))
    for name, x, shape in (("o", o, p.lead + (p.nq, p.dv)), ("lse", lse, p.lead + (p.nq,))):
        if x is None:
            continue
        if not isinstance(x, np.ndarray):
            return Failure(p, "shape", name, f"{name} is a {type(x).__name__}, not a NumPy array "
                                             f"(wrap framework functions with from_torch / from_jax)")
        if x.shape != shape:
            return Failure(p, "shape", name, f"{name} has shape {x.shape}, expected {shape}")
        if not np.issubdtype(x.dtype, np.floating):
            return Failure(p, "dtype", name, f"{name} has dtype {x.dtype}, expected a floating-point array")
        if name == "o" and expected is not None and x.dtype != expected:
            return Failure(p, "dtype", name,
                           f"o has dtype {x.dtype} for {p.dtype} inputs, expected {np.dtype(expected).name} "
                           f"(the input's dtype{'; bfloat16 travels as float32' if p.dtype == 'bfloat16' else ''}). "
                           f"If the kernel means this, declare output_dtype='{x.dtype}' (or 'any').")
        if name == "lse" and x.dtype.itemsize < np.dtype(numpy_dtype(p.dtype)).itemsize:
            return Failure(p, "dtype", name, f"lse has dtype {x.dtype}, narrower than the {p.dtype} inputs")
    return None


def _check_inputs(p, passed) -> Failure | None:
    """The arrays the kernel received must be bitwise what the kit gave it."""
    for name, got, want in zip(("q", "k", "v", "mask"), passed, (p.q, p.k, p.v, p.mask)):
        if want is None or not isinstance(got, np.ndarray):
            continue
        same = got.shape == want.shape and np.array_equal(got, want, equal_nan=got.dtype.kind == "f")
        if not same:
            changed = np.argwhere(got != want) if got.shape == want.shape else np.zeros((0, want.ndim), int)
            at = (f"; {len(changed)} elements changed, the first at {tuple(int(i) for i in changed[0])}: "
                  f"{want[tuple(changed[0])]!r} became {got[tuple(changed[0])]!r}") if len(changed) else ""
            return Failure(p, "mutation", name, f"the kernel modified its input {name} in place{at}. The caller's "
                                                f"arrays must stay unchanged (work on a copy).")
    return None


def _check_repeat(p, cap, fn, o, lse) -> Failure | None:
    out, _ = call(fn, p, cap)
    o2, lse2 = unpack(out, cap.lse if cap.lse is not None else (lse is not None))
    for name, a, b in (("o", o, o2), ("lse", lse, lse2)):
        if a is None:
            continue
        b = np.asarray(b)
        if a.shape != b.shape or not np.array_equal(a, b, equal_nan=True):
            diff = np.argwhere(~((a == b) | (np.isnan(a) & np.isnan(b)))) if a.shape == b.shape else None
            at = f" first at {where(p, name, tuple(int(i) for i in diff[0]))}: {a[tuple(diff[0])]!r} then " \
                 f"{b[tuple(diff[0])]!r}" if diff is not None and len(diff) else ""
            return Failure(p, "nondeterministic", name,
                           f"two calls on the same inputs gave different {name}:{at}. If the kernel is "
                           f"nondeterministic by design, declare deterministic=False.")
    return None


class Run:
    """One :func:`check_attention` run: the kernel, its capabilities and what the run has learned."""

    def __init__(self, fn, backward, cap: Capabilities, tolerance, report: ConformanceReport):
        self.fn, self.backward, self.cap, self.tolerance, self.report = fn, backward, cap, tolerance, report
        self.lse_mode = cap.lse  # None until the first call shows what fn returns

    def check(self, p: Problem) -> Failure | None:
        cap, sem = self.cap, self.report.semantics
        try:
            out, passed = call(self.fn, p, cap)
        except Exception as exc:  # the kernel crashed: report it, do not let it escape
            return Failure(p, "crash", "", f"the function raised {type(exc).__name__}: {exc}\n{_traceback(exc)}")
        failure = _check_inputs(p, passed)
        if failure is not None:
            return failure
        try:
            o, lse = unpack(out, self.lse_mode)
        except _Unpack as exc:
            detected = cap.lse is None and self.lse_mode
            return Failure(p, "shape", "o", "the function returned (o, lse) on earlier calls but a single value "
                                            "on this one" if detected else str(exc))
        returns = "(o, lse)" if lse is not None else "o"
        if self.lse_mode is None:
            self.lse_mode, sem.returns = lse is not None, returns
        elif sem.returns is None:
            sem.returns = returns
        failure = _check_form(p, cap, o, lse)
        if failure is not None:
            return failure
        o_ref, lse_ref = _reference(p)
        skip = p.fully_masked_rows() if cap.fully_masked_rows == "nan" else None
        scale = effective_scale(p)
        bounds_o, bounds_lse = tolerance_bounds(self.tolerance, p, scale)
        self.report.verdicts.add(*judge(p, o, o_ref, _ratio(o, o_ref, bounds_o, skip), skip), p)
        failure = compare(p, "o", o, o_ref, bounds_o, skip)
        if failure is None and lse is not None:
            failure = compare(p, "lse", lse, lse_ref, bounds_lse, skip)
        if failure is not None:
            failure.raw = (o, lse)  # diagnosed once, on the minimal example (diagnose runs probes)
            return failure
        if cap.deterministic:
            try:
                failure = _check_repeat(p, cap, self.fn, o, lse)
            except Exception as exc:
                failure = Failure(p, "crash", "", f"the second call raised {type(exc).__name__}: {exc}\n"
                                                  f"{_traceback(exc)}")
            if failure is not None:
                return failure
        grads = self.backward is not None and cap.backward is not False and (skip is None or not skip.any())
        if grads:  # (a kernel with NaN rows has NaN gradients for every key: only problems without such rows)
            failure = self._check_backward(p, scale)
            if failure is not None:
                return failure
        o_dtype = np.asarray(o).dtype.name
        sem.dtypes.setdefault(p.dtype, (o_dtype, None if lse is None else np.asarray(lse).dtype.name))
        sem.unchanged_inputs += 1 + bool(cap.deterministic)
        sem.record(p, lse is not None, cap.deterministic, grads, p.fully_masked_rows().any())
        return None

    def _check_backward(self, p: Problem, scale) -> Failure | None:
        kwargs = call_kwargs(p, self.cap)
        qkv = tuple(x.copy() for x in (p.q, p.k, p.v))
        token = current_dtype.set(p.dtype)
        try:
            grads = self.backward(*qkv, p.do.copy(), **kwargs)
        except Exception as exc:
            return Failure(p, "crash", "", f"the backward raised {type(exc).__name__}: {exc}\n{_traceback(exc)}")
        finally:
            current_dtype.reset(token)
        failure = _check_inputs(p, qkv + (kwargs["mask"],))
        if failure is not None:
            failure.message = "(in the backward) " + failure.message
            return failure
        if not (isinstance(grads, (tuple, list)) and len(grads) == 3):
            return Failure(p, "shape", "dq", "the backward must return (dq, dk, dv)")
        refs = reference.attention_backward(p.q, p.k, p.v, p.do, scale=p.scale, causal=p.causal or False,
                                            mask=p.mask, **p.variants)
        kq, vq = p.kv_per_query_head()
        group = p.q.shape[-3] // p.k.shape[-3] if "num_kv_heads" in p.variants else 1
        for name, got, want in zip(GRADIENTS, grads, refs):
            got = np.asarray(got)
            if got.shape != want.shape:
                return Failure(p, "shape", name, f"{name} has shape {got.shape}, expected {want.shape}")
            bounds = tolmod.gradient_bounds(self.tolerance, p.dtype, name, p.q, kq, vq, p.do, scale, p.bias_size(),
                                            group)
            failure = compare(p, name, got, want, bounds)
            if failure is not None:
                return failure
        return None


# ---------------------------------------------------------------- the public check
def check_attention(fn, *, capabilities: Capabilities | dict | None = None, tolerance=None,
                    max_examples: int = DEFAULT_MAX_EXAMPLES, backward=None, seed: int | None = None,
                    name: str | None = None, raise_on_failure: bool = True) -> ConformanceReport:
    """Property-test ``fn(q, k, v, *, causal, scale, mask)`` against :func:`refattn.reference.attention`.

    * ``fn`` returns ``o`` or ``(o, lse)`` (found out from the first call;
      ``capabilities.lse`` can require or ignore lse). Arrays come in as
      NumPy arrays of the dtype under test (see the adapters for torch and
      JAX); ``causal`` is ``False``, ``"bottom_right"`` or ``"top_left"``;
      ``scale`` is None (meaning 1/sqrt(d)) or a float; ``mask`` is None, a
      boolean keep-mask (True = attend) broadcastable to ``(..., Nq, Nk)``,
      or an :class:`~refattn.index_set.IndexSet` (``capabilities.index_set_objects``).
    * ``capabilities``: a :class:`Capabilities` (or its dict/JSON form): what
      ``fn`` claims, so it is never failed for what it never claimed.
    * ``tolerance``: see :mod:`refattn.testing.tolerance` (None: the dtype rule).
    * ``backward``: ``backward(q, k, v, do, *, causal, scale, mask) -> (dq, dk, dv)``;
      default ``fn.backward`` if it has one (the torch and JAX adapters
      provide it through autograd). Checked unless ``capabilities.backward=False``.
    * ``seed``: fix hypothesis's random choices (default: fresh every run).

    Returns the :class:`ConformanceReport` (verdicts and semantics sheet in
    its text); on failure raises :class:`ConformanceError` (an
    ``AssertionError``, so it reads well under pytest) unless
    ``raise_on_failure=False``.
    """
    if isinstance(capabilities, (dict, str)):
        capabilities = Capabilities.from_json(capabilities)
    cap = capabilities or Capabilities()
    if backward is None:
        backward = getattr(fn, "backward", None)
    if cap.backward and backward is None:
        raise ValueError("capabilities.backward=True but no backward function: pass backward=... "
                         "(or use refattn.testing.from_torch / from_jax, which differentiate)")
    if not isinstance(max_examples, int) or max_examples < 1:
        raise ValueError(f"max_examples must be an integer >= 1, got {max_examples!r}")
    report = ConformanceReport(name or getattr(fn, "__qualname__", repr(fn)), cap)
    run = Run(fn, backward, cap, tolerance, report)
    state = {"last": None}

    @settings(max_examples=max_examples, deadline=None, database=None, report_multiple_bugs=False,
              suppress_health_check=list(HealthCheck), phases=(Phase.explicit, Phase.generate, Phase.shrink),
              verbosity=Verbosity.quiet, print_blob=False, derandomize=False)
    @given(problems(cap))
    def conforms(problem):
        report.examples += 1
        report.coverage[problem.mask_kind] += 1
        failure = run.check(problem)
        if failure is not None:
            state["last"] = failure
            raise _Failed(failure.message.splitlines()[0] if failure.message else failure.kind)

    if seed is not None:
        conforms = hypothesis_seed(seed)(conforms)
    start = time.perf_counter()
    try:
        conforms()
    except _Failed:
        report.failure = state["last"]
    except Flaky:
        report.failure = state["last"]
        report.failure.message = ("nondeterministic: this example failed once and passed when replayed.\n"
                                  + report.failure.message)
    if report.failure is not None and report.failure.raw is not None:
        report.failure = diagnose(run, report.failure.problem, report.failure, *report.failure.raw)
    if report.failure is not None:
        _establish(report)
    report.seconds = time.perf_counter() - start
    if report.failure is not None and raise_on_failure:
        raise ConformanceError(report)
    return report


_SHEET_ROW = {"causal alignment": "causal alignment", "fully masked rows": "fully masked rows", "lse units": "returns",
              "scale ignored": "scale", "mask ignored": "masks", "mask inverted": "masks", "dtype": "dtypes",
              "mutation": "inputs", "nondeterministic": "determinism",
              **{name: "variants" for name in VARIANT_CONVENTIONS}}


def _establish(report: ConformanceReport):
    """Put what the failure established about the kernel into the semantics sheet."""
    f = report.failure
    key = f.convention or f.kind
    if key in _SHEET_ROW:
        first = f.message.splitlines()[0] if f.message else key
        report.semantics.established[_SHEET_ROW[key]] = f"FAILED: {first}"
    elif f.output in GRADIENTS:
        report.semantics.established["gradients"] = f"FAILED: {f.output} (see above)"


def assert_conforms(fn, **kwargs) -> ConformanceReport:
    """The pytest-friendly form: ``check_attention`` that raises on failure (an AssertionError)."""
    kwargs["raise_on_failure"] = True
    return check_attention(fn, **kwargs)
