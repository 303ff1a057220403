"""Adapters: check a torch or JAX attention function as easily as a NumPy one.

``from_torch(fn)`` and ``from_jax(fn)`` wrap ``fn(q, k, v, *, causal, scale,
mask)`` written for framework tensors into the NumPy signature the kit calls:
inputs are converted on the way in (NumPy -> tensor, in the dtype under test:
bfloat16 problems, which NumPy carries as float32, become real bfloat16
tensors), outputs on the way out (tensor -> NumPy of the same dtype, ``lse``
too; bfloat16 comes back as float32, exactly), so the kit's output-dtype check
sees what the framework function returned. The
wrapper has a ``.backward(q, k, v, do, ...)`` that differentiates ``fn`` with
the framework's autograd, so gradient checks need nothing more.

torch and JAX are imported only when an adapter is *called*: refattn does not
depend on them.

``torch_sdpa`` is PyTorch's ``scaled_dot_product_attention`` in the kit's
signature, with :data:`TORCH_SDPA_CAPABILITIES`, what it really supports.
"""

from __future__ import annotations

import importlib

import numpy as np

from refattn.index_set import IndexSet
from refattn.testing import torch_kernels
from refattn.testing.strategies import Capabilities, current_dtype


def _need(module):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"this adapter needs {module.split('.')[0]}, which is not installed") from None


def _mask_array(mask):
    if isinstance(mask, IndexSet):
        return mask.to_mask(causal=False)
    return mask


class _Adapter:
    def __init__(self, fn, dtype=None):
        self.fn = fn
        self.dtype = dtype
        self.__qualname__ = f"{type(self).__name__[1:].lower()}({getattr(fn, '__qualname__', repr(fn))})"
        self.__doc__ = getattr(fn, "__doc__", None)

    def __repr__(self):
        return self.__qualname__

    def _dtype_name(self, x):
        if self.dtype is not None:
            return self.dtype
        return current_dtype.get() or np.asarray(x).dtype.name


class _Torch(_Adapter):
    def _to(self, x, name, grad=False):
        torch = _need("torch")
        t = torch.from_numpy(np.ascontiguousarray(x))
        t = t.to(getattr(torch, name))
        return t.requires_grad_(grad) if grad else t

    @staticmethod
    def _back(t):
        if t is None:
            return None
        torch = _need("torch")
        t = t.detach().cpu()
        return (t.to(torch.float32) if t.dtype == torch.bfloat16 else t).numpy()

    def _call(self, q, k, v, causal, scale, mask, grad, variants):
        torch = _need("torch")
        name = self._dtype_name(q)
        tq, tk, tv = (self._to(x, name, grad) for x in (q, k, v))
        m = _mask_array(mask)
        tm = None if m is None else torch.from_numpy(np.ascontiguousarray(m, dtype=bool))
        out = self.fn(tq, tk, tv, causal=causal, scale=scale, mask=tm, **variants)  # variants: as given
        return (tq, tk, tv), out

    def __call__(self, q, k, v, *, causal=False, scale=None, mask=None, **variants):
        torch = _need("torch")
        with torch.no_grad():
            _, out = self._call(q, k, v, causal, scale, mask, False, variants)
        if isinstance(out, (tuple, list)):
            return tuple(self._back(t) for t in out)
        return self._back(out)

    def backward(self, q, k, v, do, *, causal=False, scale=None, mask=None, **variants):
        """Gradients of ``sum(o * do)`` by torch autograd, as NumPy ``(dq, dk, dv)``."""
        (tq, tk, tv), out = self._call(q, k, v, causal, scale, mask, True, variants)
        o = out[0] if isinstance(out, (tuple, list)) else out
        tdo = self._to(do, self._dtype_name(q)).to(o.dtype)
        grads = _need("torch").autograd.grad(o, (tq, tk, tv), grad_outputs=tdo, allow_unused=True)
        return tuple(np.zeros(x.shape) if g is None else self._back(g) for g, x in zip(grads, (q, k, v)))


class _Jax(_Adapter):
    def _prep(self, q, k, v, mask):
        jnp = _need("jax.numpy")
        name = self._dtype_name(q)
        conv = lambda x: jnp.asarray(np.asarray(x, np.float32 if name == "bfloat16" else x.dtype), dtype=name)
        m = _mask_array(mask)
        return conv(q), conv(k), conv(v), (None if m is None else jnp.asarray(m, dtype=bool)), name

    @staticmethod
    def _back(x):
        if x is None:
            return None
        x = np.asarray(x.astype("float32") if str(x.dtype) == "bfloat16" else x)
        return x

    def __call__(self, q, k, v, *, causal=False, scale=None, mask=None, **variants):
        jq, jk, jv, jm, _ = self._prep(q, k, v, mask)
        out = self.fn(jq, jk, jv, causal=causal, scale=scale, mask=jm, **variants)
        if isinstance(out, (tuple, list)):
            return tuple(self._back(x) for x in out)
        return self._back(out)

    def backward(self, q, k, v, do, *, causal=False, scale=None, mask=None, **variants):
        """Gradients of ``sum(o * do)`` by ``jax.vjp``, as NumPy ``(dq, dk, dv)``."""
        jax = _need("jax")
        jq, jk, jv, jm, name = self._prep(q, k, v, mask)

        def forward(a, b, c):
            out = self.fn(a, b, c, causal=causal, scale=scale, mask=jm, **variants)
            return out[0] if isinstance(out, (tuple, list)) else out

        o, vjp = jax.vjp(forward, jq, jk, jv)
        jdo = jax.numpy.asarray(np.asarray(do, np.float32 if name == "bfloat16" else do.dtype), dtype=o.dtype)
        return tuple(self._back(g) for g in vjp(jdo))


def from_torch(fn, *, dtype: str | None = None):
    """Wrap a torch attention function for the kit (inputs NumPy -> torch, outputs back to NumPy).

    ``dtype`` forces the tensor dtype (a name such as ``"bfloat16"``); by
    default it is the problem's dtype.
    """
    return _Torch(fn, dtype)


def from_jax(fn, *, dtype: str | None = None):
    """Wrap a JAX attention function for the kit (NumPy -> ``jax.Array`` -> NumPy); gradients by ``jax.vjp``."""
    return _Jax(fn, dtype)


# ---------------------------------------------------------------- PyTorch SDPA and FlexAttention, as they really are
#: torch's CPU SDPA: no lse, top-left causal only (``is_causal``), boolean masks, autograd backward; GQA
#: (``enable_gqa``), a sliding window and ALiBi written as SDPA masks (refattn.testing.torch_kernels).
TORCH_SDPA_CAPABILITIES = Capabilities(
    dtypes=("float32", "float64"),
    causal=("top_left",),
    masks=("window", "random", "index_set", "fully_masked_rows"),
    lse=False,
    backward=True,
    fully_masked_rows="zero",
    variants=("gqa", "window", "alibi"),
)

torch_sdpa = from_torch(torch_kernels.sdpa)
torch_sdpa.__qualname__ = "torch.nn.functional.scaled_dot_product_attention"
torch_sdpa.capabilities = TORCH_SDPA_CAPABILITIES  # read by `refattn conform refattn.testing:torch_sdpa`

#: FlexAttention run eagerly on CPU: both causal alignments and every variant through score_mod / mask_mod;
#: forward only (its eager backward is not supported), no lse.
TORCH_FLEX_CAPABILITIES = Capabilities(
    dtypes=("float32", "float64"),
    causal=("bottom_right", "top_left"),
    masks=("window", "random", "fully_masked_rows"),
    lse=False,
    backward=False,
    fully_masked_rows="zero",
    variants=("gqa", "window", "softcap", "alibi"),
)

torch_flex = from_torch(torch_kernels.flex)
torch_flex.__qualname__ = "torch.nn.attention.flex_attention.flex_attention"
torch_flex.capabilities = TORCH_FLEX_CAPABILITIES
