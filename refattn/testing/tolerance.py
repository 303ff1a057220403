"""Tolerances derived from the dtype, with one stated rule.

The kit compares a kernel's outputs with :mod:`refattn.reference` evaluated in
float64 on *the very same* (already rounded) inputs, so the error left is the
kernel's own arithmetic and output rounding. A kernel that keeps its running
max, sum and accumulator in a precision no worse than ``eps`` makes errors of

* the score ``s_ij = scale * q_i . k_j``: about ``eps * L`` absolute, where
  ``L = max_ij scale * sum_t |q_it k_jt|`` (the condition number of the dot
  products; large logits and outliers make it big); this error moves each
  probability by a *relative* ``eps * L``;
* the normalisation and the sum ``P V`` over ``Nk`` keys: about
  ``eps * sqrt(Nk)`` relative (random-walk rounding);
* the output rounding: ``eps`` relative to ``|o| <= max|v|``.

**The rule** (``eps`` = unit roundoff spacing of the dtype: float64 2^-52,
float32 2^-23, float16 2^-10, bfloat16 2^-7)::

    atol(o)   = c * eps * (1 + L + sqrt(Nk)) * max|v|
    atol(lse) = c * eps * (1 + L + log(1 + Nk))   (+ rtol c*eps on |lse|)
    atol(dX)  = c * eps * (1 + L + sqrt(N)) * G_X

with ``c = 8`` by default, ``N = max(Nq, Nk)`` and ``G_X`` a bound on the
terms summed into gradient X: ``G_dv = sqrt(Nq) * max|dO|``, ``G_dq = 2 * scale
* |dP| * max|k| * sqrt(d)`` with ``|dP| <= max|dO| * max|v| * dv``, and ``G_dk``
likewise with ``q`` (:func:`gradient_scale`). A value passes when ``|x - ref| <= atol + rtol * |ref|``.

Override it with ``Tolerance(c=...)`` (a looser or tighter multiplier), or fix
``atol``/``rtol`` outright, for all dtypes or per dtype name (a dict).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: spacing of 1.0 in each dtype the kit knows (2^-mantissa_bits).
EPS = {
    "float64": 2.0 ** -52,
    "float32": 2.0 ** -23,
    "float16": 2.0 ** -10,
    "bfloat16": 2.0 ** -7,
}

DEFAULT_C = 8.0


@dataclass(frozen=True)
class Tolerance:
    """The tolerance rule's multiplier ``c``, or fixed ``atol``/``rtol`` that replace the derived ones."""

    c: float = DEFAULT_C
    atol: float | None = None
    rtol: float | None = None

    def to_dict(self):
        return {"c": self.c, "atol": self.atol, "rtol": self.rtol}


@dataclass(frozen=True)
class Bounds:
    """Concrete bounds for one problem: absolute and relative, per output."""

    atol: float
    rtol: float
    rule: str  # the formula with its numbers, for reports

    def allowed(self, ref):
        return self.atol + self.rtol * np.abs(ref)


def eps_of(dtype_name: str) -> float:
    try:
        return EPS[dtype_name]
    except KeyError:
        raise ValueError(f"no tolerance rule for dtype {dtype_name!r}; known: {sorted(EPS)}") from None


def logit_condition(q, k, scale) -> float:
    """``L = max_ij scale * sum_t |q_it k_jt|`` in float64 (0 for empty inputs)."""
    aq = np.abs(np.asarray(q, np.float64))
    ak = np.abs(np.asarray(k, np.float64))
    if aq.size == 0 or ak.size == 0:
        return 0.0
    return float(abs(scale) * np.max(np.einsum("...id,...jd->...ij", aq, ak)))


def resolve(tolerance, dtype_name: str) -> Tolerance:
    """Accept None, a Tolerance, a number (the multiplier c) or a {dtype: Tolerance|c} dict."""
    if isinstance(tolerance, dict):
        tolerance = tolerance.get(dtype_name, tolerance.get("default"))
    if tolerance is None:
        return Tolerance()
    if isinstance(tolerance, Tolerance):
        return tolerance
    if isinstance(tolerance, (int, float)) and not isinstance(tolerance, bool):
        return Tolerance(c=float(tolerance))
    raise TypeError(f"tolerance must be None, a number, a Tolerance or a dict of them, got {tolerance!r}")


def _bounds(tol: Tolerance, eps: float, growth: float, magnitude: float, what: str, rtol_default=0.0) -> Bounds:
    derived = tol.c * eps * growth * magnitude
    atol = derived if tol.atol is None else float(tol.atol)
    rtol = rtol_default if tol.rtol is None else float(tol.rtol)
    if tol.atol is None:
        rule = f"atol({what}) = c*eps*growth*mag = {tol.c:g}*{eps:.3g}*{growth:.3g}*{magnitude:.3g} = {atol:.3g}"
    else:
        rule = f"atol({what}) = {atol:.3g} (fixed)"
    return Bounds(atol, rtol, rule + (f", rtol = {rtol:.3g}" if rtol else ""))


def output_bounds(tolerance, dtype_name, q, k, v, scale, extra=0.0) -> Bounds:
    """``extra``: a score bias's size (ALiBi), added to ``L``."""
    tol, eps = resolve(tolerance, dtype_name), eps_of(dtype_name)
    nk = np.shape(k)[-2]
    L = logit_condition(q, k, scale) + extra
    vmax = float(np.max(np.abs(np.asarray(v, np.float64)))) if np.size(v) else 0.0
    return _bounds(tol, eps, 1.0 + L + math.sqrt(nk), max(vmax, np.finfo(np.float64).tiny), "o")


def lse_bounds(tolerance, dtype_name, q, k, scale, extra=0.0) -> Bounds:
    tol, eps = resolve(tolerance, dtype_name), eps_of(dtype_name)
    nk = np.shape(k)[-2]
    L = logit_condition(q, k, scale) + extra
    return _bounds(tol, eps, 1.0 + L + math.log1p(nk), 1.0, "lse", rtol_default=tol.c * eps)


def gradient_scale(name, q, k, v, do, scale) -> float:
    """Magnitude ``G`` of the sums behind gradient ``name`` ("dq", "dk" or "dv")."""
    m = lambda x: float(np.max(np.abs(np.asarray(x, np.float64)))) if np.size(x) else 0.0
    dv_dim = np.shape(v)[-1]
    dp = m(do) * m(v) * dv_dim  # bound on |dP| = |dO V^T|
    if name == "dv":
        return max(m(do) * max(1.0, np.shape(q)[-2] ** 0.5), 1e-300)
    if name == "dq":
        return max(2.0 * abs(scale) * dp * m(k) * np.shape(k)[-1] ** 0.5, 1e-300)
    if name == "dk":
        return max(2.0 * abs(scale) * dp * m(q) * np.shape(q)[-1] ** 0.5, 1e-300)
    raise ValueError(f"unknown gradient {name!r}")


def gradient_bounds(tolerance, dtype_name, name, q, k, v, do, scale, extra=0.0, group=1) -> Bounds:
    """``extra`` as in :func:`output_bounds`; ``group``: query heads summed into each KV head's dk, dv (GQA)."""
    tol, eps = resolve(tolerance, dtype_name), eps_of(dtype_name)
    n = max(np.shape(q)[-2], np.shape(k)[-2])
    L = logit_condition(q, k, scale) + extra
    size = gradient_scale(name, q, k, v, do, scale) * (group if name in ("dk", "dv") else 1)
    return _bounds(tol, eps, 1.0 + L + math.sqrt(n), size, name)
