"""torch's CPU scaled_dot_product_attention checked by the kit, and the adapters."""

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from refattn.testing import (
    TORCH_SDPA_CAPABILITIES,
    Capabilities,
    ConformanceError,
    check_attention,
    from_jax,
    from_torch,
    torch_sdpa,
)
from tests.optional import require


def test_torch_sdpa_passes_with_the_capabilities_it_really_has():
    require("torch")
    report = check_attention(torch_sdpa, capabilities=TORCH_SDPA_CAPABILITIES, max_examples=40)
    assert report.passed and TORCH_SDPA_CAPABILITIES.backward  # gradients checked through autograd too
    low = dataclasses.replace(TORCH_SDPA_CAPABILITIES, dtypes=("float16", "bfloat16"), backward=False)
    assert check_attention(torch_sdpa, capabilities=low, max_examples=30).passed


def test_torch_sdpa_claiming_bottom_right_gets_a_named_convention_difference():
    require("torch")
    claims = dataclasses.replace(TORCH_SDPA_CAPABILITIES, causal=("bottom_right",), backward=False)
    with pytest.raises(ConformanceError) as info:
        check_attention(torch_sdpa, capabilities=claims)
    failure = info.value.report.failure
    assert failure.convention == "causal alignment" and failure.problem.nq != failure.problem.nk
    assert ("convention difference, causal alignment: the kernel aligns the causal mask top_left "
            "(j <= i, PyTorch is_causal) but bottom_right (j <= i + Nk - Nq, FlashAttention >= 2.1) was asked"
            ) in str(info.value)
    assert "declare causal=('top_left',)" in str(info.value)


def _naive_torch(q, k, v, *, causal, scale, mask):
    """Textbook torch attention: masked_fill(-inf) then softmax, so fully masked rows become NaN."""
    import torch

    s = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    if causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).tril().logical_not(), float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def test_torch_nan_on_fully_masked_rows_is_named():
    require("torch")
    fn = from_torch(_naive_torch)
    cap = Capabilities(causal=("top_left",), lse=False, masks=("random", "fully_masked_rows"))
    with pytest.raises(ConformanceError, match="convention difference, fully masked rows: .* returns NaN"):
        check_attention(fn, capabilities=cap)
    declared = dataclasses.replace(cap, fully_masked_rows="nan", backward=True)
    assert check_attention(fn, capabilities=declared, max_examples=40).passed  # gradients by autograd, too


def test_torch_adapter_runs_bfloat16_in_bfloat16():
    torch = require("torch")
    seen = []

    def records(q, k, v, *, causal, scale, mask):
        seen.append(q.dtype)
        return _naive_torch(q, k, v, causal=causal, scale=scale, mask=mask)

    cap = Capabilities(dtypes=("bfloat16",), causal=(), masks=(), lse=False)
    assert check_attention(from_torch(records), capabilities=cap, max_examples=10).passed
    assert set(seen) == {torch.bfloat16}


def test_adapters_are_lazy():
    """Importing the kit imports neither torch nor jax (the adapters import them when called)."""
    code = "import sys, refattn.testing; print(sorted({'torch', 'jax'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_jax_adapter_without_jax_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "jax", None)  # import jax now raises ImportError
    monkeypatch.setitem(sys.modules, "jax.numpy", None)
    fn = from_jax(lambda q, k, v, *, causal, scale, mask: v)
    q = np.ones((2, 3), np.float32)
    with pytest.raises(ImportError, match="this adapter needs jax, which is not installed"):
        fn(q, q, q)
