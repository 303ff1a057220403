"""gpu_optional: Triton kernels for real GPU timing (torch + triton, imported lazily).

* :func:`flash_attention` ``(q, k, v, *, causal=False, scale=None) -> (o, lse)``: dense
  FlashAttention-2, forward and backward (autograd), any N and head dim <= 256.
* :func:`sparse_attention` ``(q, k, v, index_set, *, causal=True, scale=None) -> (o, lse)``:
  the sparse forward on refattn's :class:`refattn.index_set.IndexSet`.
* :func:`vertical_slash_index` builds MInference's vertical-slash index set on the device (Triton kernels,
  no host sync; :func:`graphed_vertical_slash_index` replays it as one CUDA graph).
* ``python -m gpu_optional.bench`` prints and writes the GPU benchmark.

``refattn`` never imports this package; this package imports only the pure-NumPy
parts of refattn (``reference``, ``index_set``, ``validation``).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "flash_attention": "gpu_optional.flash",
    "flash_forward": "gpu_optional.flash",
    "flash_backward": "gpu_optional.flash",
    "FlashAttentionFunction": "gpu_optional.flash",
    "sparse_attention": "gpu_optional.sparse",
    "DeviceIndexSet": "gpu_optional.sparse",
    "to_device": "gpu_optional.sparse",
    "vertical_slash_index": "gpu_optional.index_build",
    "vertical_slash_estimate": "gpu_optional.index_build",
    "graphed_vertical_slash_index": "gpu_optional.index_build",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'gpu_optional' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
