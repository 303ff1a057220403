"""A vectorisable float32 exponential for the kernels' softmax tiles (docs/speed.md).

Why: the FlashAttention tiles spend most of their non-matmul time in ``exp``
(one per score). Numba calls libm's scalar ``expf`` for ``np.exp`` (about 2 ns
each here), so a loop over a tile cannot be vectorised. Numba would vectorise
it with Intel's SVML, but only with an llvmlite built with the SVML patch
(conda's); the PyPI llvmlite reports ``has_svml() == False`` even with the
``intel-cmplr-lib-rt`` runtime (whose licence is Intel's proprietary EULA)
installed, so that route is closed for a pip install. :func:`fast_exp` is a
branch-free polynomial that LLVM vectorises inside the tile loops (about 0.5 ns
per element on the developers' machine, 4x faster than libm).

Algorithm (Cody-Waite range reduction with Cephes' ``expf`` polynomial)::

    n = round(x / ln 2)                      (with the 1.5 * 2^23 rounding trick)
    r = x - n * C1 - n * C2                  (C1 + C2 = ln 2, C1 exact in 9 bits)
    p = 1 + r + r^2 * P(r)                   (degree-5 P, |r| <= ln2 / 2)
    exp(x) = p * 2^n1 * 2^n2,  n1 = floor(n / 2), n2 = n - n1

Scaling by two powers of two (each built from its exponent bits) is exact and
covers every float32 result: overflow to +inf above 88.72, gradual underflow
to subnormals, and exactly 0 for x < -103.97 (so ``exp(-inf) = 0``, which the
masked scores rely on). Measured against float64 ``exp`` on a dense grid the
error is below 1 ulp for normal results (libm: 0.5 ulp); tests/kernels/
test_fastexp.py checks it. NaN inputs are not supported (the kernels never
pass one).

float64 inputs keep ``np.exp`` (libm): the float64 kernels are the exact
reference path, not the fast one.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

__all__ = ["fast_exp", "expf32"]


@intrinsic
def _f32_from_bits(typingctx, bits):
    """Reinterpret the bits of an int32 as a float32 (an LLVM bitcast; no conversion)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


_LOG2E = np.float32(1.4426950408889634)
_C1 = np.float32(0.693359375)
_C2 = np.float32(-2.12194440e-4)
_P0 = np.float32(1.9875691500e-4)
_P1 = np.float32(1.3981999507e-3)
_P2 = np.float32(8.3334519073e-3)
_P3 = np.float32(4.1665795894e-2)
_P4 = np.float32(1.6666665459e-1)
_P5 = np.float32(5.0000001201e-1)
_ROUND = np.float32(12582912.0)  # 1.5 * 2^23: adding and subtracting it rounds to an integer
_LO = np.float32(-103.972084)  # below: the result rounds to 0
_HI = np.float32(100.0)  # above 88.72 the result is +inf anyway; clamping keeps n in int range
_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
_BIAS = np.int32(127)
_SHIFT = np.int32(23)


@numba.njit(cache=True, inline="always")
def expf32(x):
    """exp(x) for a float32 x (see the module docstring); branch-free so that loops vectorise."""
    xc = x if x > _LO else _LO
    xc = xc if xc < _HI else _HI
    n = (xc * _LOG2E + _ROUND) - _ROUND
    r = xc - n * _C1
    r = r - n * _C2
    p = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
    p = p * (r * r) + r + _ONE
    ni = np.int32(n)
    n1 = ni >> np.int32(1)
    n2 = ni - n1
    y = (p * _f32_from_bits((n1 + _BIAS) << _SHIFT)) * _f32_from_bits((n2 + _BIAS) << _SHIFT)
    return y if x >= _LO else _ZERO


def fast_exp(x):
    """exp(x): :func:`expf32` for float32, ``np.exp`` otherwise (usable from jitted code)."""
    return np.exp(x)


@overload(fast_exp, jit_options={"cache": True})
def _fast_exp_overload(x):
    if x == types.float32:
        return lambda x: expf32(x)
    return lambda x: np.exp(x)
