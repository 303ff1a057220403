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

import contextlib
import importlib

import numpy as np

from refattn.index_set import IndexSet
from refattn.testing import jax_kernels, torch_kernels
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
    """NumPy -> ``jax.Array`` -> NumPy; float64 problems run with ``jax_enable_x64`` on for the call only."""

    def __init__(self, fn, dtype=None, jit=True):
        super().__init__(fn, dtype)
        self.jit = jit
        self._compiled = {}

    def _x64(self, name):
        """The context a call in dtype ``name`` runs in: 64-bit types on for float64, the caller's setting else.

        Without it JAX turns float64 inputs into float32 (with a warning) and
        the kit would see a float32 kernel; with it the kernel really runs in
        float64, and the setting is restored after the call.
        """
        jax = _need("jax")
        return jax.enable_x64(True) if name == "float64" else contextlib.nullcontext()

    def _prep(self, q, k, v, mask, name, keywords):
        """``(q, k, v)`` as jax arrays, and the keywords split: arrays (mask, ALiBi slopes) and hashable rest."""
        jnp = _need("jax.numpy")
        conv = lambda x: jnp.asarray(np.asarray(x, np.float32 if name == "bfloat16" else x.dtype), dtype=name)
        m = _mask_array(mask)
        arrays = {"mask": None if m is None else jnp.asarray(m, dtype=bool)}
        statics = []
        for key, val in keywords.items():
            if isinstance(val, np.ndarray) or isinstance(val, np.generic):
                arrays[key] = jnp.asarray(val)
            else:
                statics.append((key, tuple(val) if isinstance(val, list) else val))
        return conv(q), conv(k), conv(v), arrays, tuple(sorted(statics))

    def _compile(self, which, f):
        """``f(*arrays, arrays_dict, statics)`` under one ``jax.jit`` per adapter (unless jit=False).

        jit's cache then holds one compile per shape, dtype and static keyword
        set, which the kit's repeated calls and hypothesis's shrinking reuse.
        """
        if not self.jit:
            return f
        if which not in self._compiled:
            self._compiled[which] = _need("jax").jit(f, static_argnames=("statics",))
        return self._compiled[which]

    def _forward(self, q, k, v, arrays, statics):
        return self.fn(q, k, v, **arrays, **dict(statics))

    def _grads(self, q, k, v, do, arrays, statics):
        jax = _need("jax")

        def forward(a, b, c):
            out = self.fn(a, b, c, **arrays, **dict(statics))
            return out[0] if isinstance(out, (tuple, list)) else out

        o, vjp = jax.vjp(forward, q, k, v)
        return vjp(do.astype(o.dtype))

    @staticmethod
    def _back(x):
        if x is None:
            return None
        x = np.asarray(x.astype("float32") if str(x.dtype) == "bfloat16" else x)
        return x

    def __call__(self, q, k, v, *, causal=False, scale=None, mask=None, **variants):
        name = self._dtype_name(q)
        with self._x64(name):
            jq, jk, jv, arrays, statics = self._prep(q, k, v, mask, name, dict(causal=causal, scale=scale, **variants))
            out = self._compile("forward", self._forward)(jq, jk, jv, arrays, statics=statics)
            if isinstance(out, (tuple, list)):
                return tuple(self._back(x) for x in out)
            return self._back(out)

    def backward(self, q, k, v, do, *, causal=False, scale=None, mask=None, **variants):
        """Gradients of ``sum(o * do)`` by ``jax.vjp``, as NumPy ``(dq, dk, dv)``."""
        jnp = _need("jax.numpy")
        name = self._dtype_name(q)
        with self._x64(name):
            jq, jk, jv, arrays, statics = self._prep(q, k, v, mask, name, dict(causal=causal, scale=scale, **variants))
            jdo = jnp.asarray(np.asarray(do, np.float32 if name == "bfloat16" else do.dtype), dtype=name)
            grads = self._compile("backward", self._grads)(jq, jk, jv, jdo, arrays, statics=statics)
            return tuple(self._back(g) for g in grads)


def from_torch(fn, *, dtype: str | None = None):
    """Wrap a torch attention function for the kit (inputs NumPy -> torch, outputs back to NumPy).

    ``dtype`` forces the tensor dtype (a name such as ``"bfloat16"``); by
    default it is the problem's dtype.
    """
    return _Torch(fn, dtype)


def from_jax(fn, *, dtype: str | None = None, jit: bool = True):
    """Wrap a JAX attention function for the kit (NumPy -> ``jax.Array`` -> NumPy); gradients by ``jax.vjp``.

    * ``dtype`` forces the array dtype (a name such as ``"bfloat16"``); by
      default it is the problem's dtype.
    * float64 problems run with ``jax_enable_x64`` switched on for that call
      only (``jax.enable_x64``), so the kernel really receives float64
      arrays; the caller's setting is restored afterwards. A kernel that
      cannot run in float64 leaves it out of ``Capabilities.dtypes``.
    * ``jit``: the call (and the backward) run under one ``jax.jit`` per
      adapter: ``q, k, v``, ``mask`` and ``alibi_slopes`` arrive as traced
      arrays, the other keywords (``causal``, ``scale``, ``num_kv_heads``,
      ``window``, ``softcap``) as static Python values. The kit draws a new
      shape on almost every example; one compile of the whole function is
      several times faster than JAX's op-by-op dispatch compiling every
      operation anew, and jit's cache serves the repeated calls and the
      shrinking. ``jit=False`` calls ``fn`` eagerly with the arrays as given
      (its backward still traces it through ``jax.vjp``).
    """
    return _Jax(fn, dtype, jit)


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


# ---------------------------------------------------------------- JAX's dot_product_attention, as it really is
#: jax.nn.dot_product_attention (XLA, CPU): top-left causal only (``is_causal``), boolean masks, lse through
#: ``return_residual``, jax.vjp backward; GQA native, the window shifted to JAX's top-left ``local_window_size``,
#: ALiBi as ``bias`` (refattn.testing.jax_kernels). Not claimed: float64 (its softmax runs in float32), fully
#: masked rows (hidden scores get a finite fill, so such a row returns the mean of v), dv != d, softcap.
JAX_DPA_CAPABILITIES = Capabilities(
    dtypes=("float32", "bfloat16"),
    causal=("top_left",),
    masks=("window", "random", "index_set"),
    lse=True,
    backward=True,
    fully_masked_rows="unsupported",
    dv_ne_d=False,
    variants=("gqa", "window", "alibi"),
)

jax_dpa = from_jax(jax_kernels.dot_product_attention)
jax_dpa.__qualname__ = "jax.nn.dot_product_attention"
jax_dpa.capabilities = JAX_DPA_CAPABILITIES
