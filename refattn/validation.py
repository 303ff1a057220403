"""Input checks shared by the reference and every kernel.

Bad input is refused here, before any kernel runs, with a message that names
the argument and the problem. Policy for non-finite values: NaN or Inf in
q, k, v (or do) is refused with ``ValueError``; attention of non-finite
inputs has no single right answer, and a silent NaN output hides bugs.
Arrays in non-native byte order (e.g. ``x.astype(">f4")``) are converted to
native order here. The simulated kernels also refuse inputs whose scores or
unnormalised sums could overflow their dtype (:func:`check_kernel_range`).
"""

from __future__ import annotations

import numbers

import numpy as np

CAUSAL_MODES = ("bottom_right", "top_left")

#: dtypes the simulated kernels compute in.
KERNEL_DTYPES = (np.float32, np.float64)


def normalize_causal(causal):
    """Map ``False/None/True/"bottom_right"/"top_left"`` to None or a mode name."""
    if causal is None or causal is False:
        return None
    if causal is True:
        return "bottom_right"
    if isinstance(causal, str) and causal in CAUSAL_MODES:
        return causal
    raise ValueError(f"causal must be False, True, 'bottom_right' or 'top_left', got {causal!r}")


def _check_array(name, x, where, float_dtypes):
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except Exception as exc:  # pragma: no cover - exotic objects
            raise TypeError(f"{where}: {name} must be an array, got {type(x).__name__}") from exc
    if x.ndim < 2:
        raise ValueError(f"{where}: {name} must have at least 2 dims (..., N, d), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{where}: {name} must be a floating-point array, got dtype {x.dtype}")
    if not x.dtype.isnative:  # e.g. big-endian data: the kernels compute in native order
        x = x.astype(x.dtype.newbyteorder("="))
    if float_dtypes is not None and x.dtype.type not in float_dtypes:
        allowed = ", ".join(np.dtype(t).name for t in float_dtypes)
        raise TypeError(f"{where}: {name} has dtype {x.dtype}; this kernel computes in {allowed}")
    if x.shape[-1] == 0 or x.shape[-2] == 0:
        raise ValueError(f"{where}: {name} has an empty dimension, shape {x.shape} (N and d must be >= 1)")
    if not np.all(np.isfinite(x)):
        bad = np.argwhere(~np.isfinite(x))[0]
        raise ValueError(f"{where}: {name} contains NaN or Inf (first at index {tuple(int(i) for i in bad)})")
    return x


def check_attention_inputs(q, k, v, *, mask=None, causal=False, where="attention", float_dtypes=None):
    """Validate shapes, dtypes and values; return ``(q, k, v)`` as arrays.

    ``float_dtypes``: if given, the only accepted dtypes (kernels pass
    ``KERNEL_DTYPES``); q, k and v must then share one dtype.
    """
    q = _check_array("q", q, where, float_dtypes)
    k = _check_array("k", k, where, float_dtypes)
    v = _check_array("v", v, where, float_dtypes)
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"{where}: q and k must share the head dim d, got q {q.shape} and k {k.shape}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"{where}: k and v must share Nk, got k {k.shape} and v {v.shape}")
    try:
        np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except ValueError:
        raise ValueError(
            f"{where}: leading (batch/head) dims do not broadcast: q {q.shape}, k {k.shape}, v {v.shape}"
        ) from None
    if float_dtypes is not None and not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"{where}: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    normalize_causal(causal)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype != np.bool_:
            raise TypeError(f"{where}: mask must be boolean (True = keep), got dtype {mask.dtype}")
        target = np.broadcast_shapes(q.shape[:-2], k.shape[:-2]) + (q.shape[-2], k.shape[-2])
        if not broadcasts_to(mask.shape, target):
            raise ValueError(f"{where}: mask shape {mask.shape} does not broadcast to {target}")
    return q, k, v


def broadcasts_to(shape, target) -> bool:
    """True if an array of ``shape`` broadcasts to exactly ``target`` (masks, biases, per-head slopes)."""
    target = tuple(target)
    try:
        return np.broadcast_shapes(tuple(shape), target) == target
    except ValueError:
        return False


def unbroadcast(g, shape):
    """Sum a gradient over the leading dims that were broadcast from ``shape``."""
    while g.ndim > len(shape):
        g = g.sum(axis=0)
    for ax, n in enumerate(shape):
        if n == 1 and g.shape[ax] != 1:
            g = g.sum(axis=ax, keepdims=True)
    return g


def check_scale(scale, d, where="attention"):
    """Return the softmax scale as a float (default 1/sqrt(d)); refuse non-numbers and non-finite values."""
    if scale is None:
        return 1.0 / float(np.sqrt(d))
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, numbers.Real):
        raise TypeError(f"{where}: scale must be a real number, got {scale!r} ({type(scale).__name__})")
    scale = float(scale)
    if not np.isfinite(scale):
        raise ValueError(f"{where}: scale must be finite, got {scale}")
    return scale


#: Rows per chunk in the range checks below: their temporaries stay small for long inputs
#: (a count-only run of a 64k-token problem allocates no (N, d) array, docs/contract.md).
_CHUNK_ROWS = 1024


def _row_chunks(x):
    rows = np.reshape(x, (-1, x.shape[-1]))
    for i in range(0, rows.shape[0], _CHUNK_ROWS):
        yield rows[i:i + _CHUNK_ROWS]


def max_abs(x, finite_only=False) -> float:
    """max |x| (over the finite entries only with ``finite_only``), a chunk of rows at a time; 0 if none."""
    top = 0.0
    for c in _row_chunks(x):
        a = np.abs(c)
        if finite_only:
            a = a[np.isfinite(a)]
        if a.size:
            top = max(top, float(np.max(a)))
    return top


def _max_row_norm(x) -> float:
    """max_i ||x_i|| over the last axis, computed in float64 (scaled, so squares cannot overflow)."""
    top = max_abs(x)
    if top == 0 or not np.isfinite(top):
        return top
    best = 0.0
    for c in _row_chunks(x):
        y = np.asarray(c, np.float64) / top
        best = max(best, float(np.max(np.einsum("ij,ij->i", y, y))))
    return top * float(np.sqrt(best))


def check_kernel_range(q, k, v, scale, where="kernel"):
    """Refuse inputs whose intermediate values could overflow the kernels' dtype.

    A simulated kernel computes in the inputs' dtype. Its scores are bounded
    by ``|scale| * max_i ||q_i|| * max_j ||k_j||`` (Cauchy-Schwarz), and the
    unnormalised output sum of the flash kernels, ``sum_j exp(s_j - m) v_j``,
    by ``Nk * max |v|``. If either bound exceeds the dtype's largest finite
    value the input is refused with a ``ValueError`` that names it, rather
    than risk an inf or NaN output. (float64 inputs have room to spare.)
    """
    dt = np.dtype(q.dtype)
    big = float(np.finfo(dt).max)
    if abs(scale) > big:
        raise ValueError(f"{where}: scale = {scale:g} is beyond the range of {dt.name} (max {big:.3g})")
    check_product_range(where, "the scores scale * q.k", "q", q, "k", k, abs(scale), dt)
    nk = k.shape[-2]
    vmax = max_abs(v)
    if not nk * vmax <= big:
        raise ValueError(f"{where}: v is too large for {dt.name}: the unnormalised sum over Nk = {nk} keys may "
                         f"reach Nk * max|v| = {nk * vmax:.3g} > {big:.3g}; rescale v or use float64")


def check_product_range(where, what, a_name, a, b_name, b, factor, dt):
    """Refuse when ``factor * max_i ||a_i|| * max_j ||b_j||`` (a bound on ``factor * a_i . b_j``)
    exceeds the largest finite value of dtype ``dt``."""
    dt = np.dtype(dt)
    big = float(np.finfo(dt).max)
    bound = factor * _max_row_norm(a) * _max_row_norm(b)
    if not bound <= big:
        raise ValueError(f"{where}: {what} could overflow {dt.name}: factor {factor:g} * max ||{a_name}_i|| * "
                         f"max ||{b_name}_j|| = {bound:.3g} > {big:.3g}; rescale {a_name} or {b_name}, "
                         f"or use float64")
