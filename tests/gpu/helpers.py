"""Shared helpers for the Triton tests: device choice, float64 comparisons, tolerances.

Under ``TRITON_INTERPRET=1`` (tests/conftest.py sets it unless told otherwise)
the kernels run on CPU tensors; with ``TRITON_INTERPRET=0`` on a CUDA machine
the same tests run on the GPU.
"""

import os

import numpy as np

from tests.optional import needs

#: every Triton test carries this mark (``pytestmark = NEEDS``): without torch or triton each skips on its own.
NEEDS = needs("torch", "triton")
try:
    import torch
except ImportError:  # the tests skip through NEEDS before they touch torch
    torch = None

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
DEVICE = "cpu" if INTERPRET else "cuda"
if torch is not None:
    #: 16-bit dtypes testable here: the interpreter's bfloat16 dot gives garbage, a GPU's does not.
    DTYPES = [torch.float32, torch.float16] + ([] if INTERPRET else [torch.bfloat16])
    #: relative-norm tolerance per input dtype (inputs are rounded first, so this is the kernel's own error:
    #: float32 exact dots; 16-bit P and dS are rounded to the input dtype before their matmuls).
    RTOL = {torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}
else:
    DTYPES, RTOL = [], {}


def skip_without_device():
    import pytest

    if not INTERPRET and not torch.cuda.is_available():
        pytest.skip("TRITON_INTERPRET=0 but no CUDA device")


def randn(shape, dtype, gen, scale=1.0):
    x = torch.randn(shape, generator=gen, dtype=torch.float32) * scale
    return x.to(dtype).to(DEVICE)


def np64(x):
    return x.detach().float().cpu().numpy().astype(np.float64)


def rel_err(got, ref):
    got = np64(got) if isinstance(got, torch.Tensor) else got
    return float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-300))


def check_lse(lse, ref_lse, atol):
    lse = np64(lse)
    assert not np.isnan(lse).any(), "lse has NaN"
    assert np.array_equal(np.isneginf(lse), np.isneginf(ref_lse)), "rows with lse=-inf differ from the reference"
    fin = np.isfinite(ref_lse)
    if fin.any():
        assert np.abs(lse[fin] - ref_lse[fin]).max() <= atol
