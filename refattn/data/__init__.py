"""Inputs for kernels, patterns and the app.

* :func:`random_qkv`: Gaussian Q, K, V (no structure).
* ``refattn.data.synthetic``: long-context Q/K/V with planted, documented
  structure (sinks, retrieval columns, local diagonals, topic blocks).
* ``refattn.data.vit``: ViT-like inputs (CLS + 14x14 patches) and the bundled
  DeiT-Tiny ViTCoD mask.
* ``refattn.data.real``: real attention from all-MiniLM-L6-v2 run in NumPy
  (needs the ``[real]`` extra).
"""

from __future__ import annotations

import numpy as np


def random_qkv(n, d, *, nk=None, dv=None, heads=None, dtype=np.float32, seed=None, scale=1.0):
    """Gaussian ``(q, k, v)``: shapes ``([heads,] n, d)``, ``([heads,] nk, d)``, ``([heads,] nk, dv)``."""
    rng = np.random.default_rng(seed)
    nk = n if nk is None else nk
    dv = d if dv is None else dv
    lead = () if heads is None else (heads,)
    q = (scale * rng.standard_normal(lead + (n, d))).astype(dtype)
    k = (scale * rng.standard_normal(lead + (nk, d))).astype(dtype)
    v = rng.standard_normal(lead + (nk, dv)).astype(dtype)
    return q, k, v
