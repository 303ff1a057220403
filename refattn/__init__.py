"""refattn: efficient attention you can trust, count and watch.

The public API is imported lazily, so ``import refattn`` is cheap and the
pure-NumPy parts (``refattn.reference``, ``refattn.index_set``) work even where
Numba is not installed (e.g. on a GPU machine used only for Triton timing).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "attention": "refattn.reference",
    "attention_backward": "refattn.reference",
    "Sram": "refattn.memory",
    "Traffic": "refattn.memory",
    "CHIPS": "refattn.memory",
    "SramTooSmall": "refattn.memory",
    "IndexSet": "refattn.index_set",
    "flash_forward": "refattn.kernels.flash",
    "flash_backward": "refattn.kernels.flash_backward",
    "standard_forward": "refattn.kernels.standard",
    "standard_backward": "refattn.kernels.standard",
    "sparse_forward": "refattn.kernels.sparse",
    "minference_forward": "refattn.patterns.minference",
    "simulate_gemm": "refattn.pe_array",
    "split_attention": "refattn.vitcod.reorder",
    "vitcod_forward": "refattn.vitcod.kernel",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'refattn' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
