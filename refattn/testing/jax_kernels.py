"""JAX's ``jax.nn.dot_product_attention`` in the kit's signature, with the variants it can express.

:func:`dot_product_attention` takes ``jax.Array`` inputs (the
:func:`~refattn.testing.adapters.from_jax` adapter converts) and the kit's
keywords: ``causal``, ``scale``, ``mask`` (boolean, True = keep) and the
declared variants (docs/variants.md). What JAX's function is, read from its
XLA implementation (jax 0.10.2, ``jax/_src/nn/functions.py``) and checked by
the kit (tests/testing/test_jax.py):

* layout ``(B, T, N, H)``: sequence before heads. refattn's ``(..., H, N, d)``
  is transposed; the last leading dim is the head axis, the others are folded
  into the batch.
* ``is_causal`` is **top-left** aligned (``tril`` of the ``(T, S)`` scores),
  as PyTorch's ``is_causal``: only ``"top_left"`` is claimed.
* ``local_window_size=(left, right)`` keeps ``i - left <= j <= i + right``,
  both bounds inclusive but **top-left** aligned, where refattn's window is
  bottom-right aligned (docs/variants.md). This function shifts the window by
  ``Nk - Nq`` before passing it, which is what a caller has to do;
  ``shift_window=False`` passes refattn's bounds unchanged, and the kit then
  names the "window alignment" difference. An unbounded side (-1 or None)
  becomes ``Nq + Nk``, wider than any row.
* GQA is native: ``key``/``value`` with fewer heads, query head ``h`` reading
  KV head ``h // (Hq / Hkv)``.
* ALiBi has no argument; it is passed as the float ``bias``
  ``-slope * |i + Nk - Nq - j|`` (in float32: the bias is added to float32
  logits). There is no softcap.
* hidden scores are filled with a large finite negative number, not -inf:
  a row with no visible key returns the mean of ``v``, not 0 (the kit draws
  no such row: ``fully_masked_rows="unsupported"``).
* the softmax runs in float32 whatever the input dtype, so float64 inputs
  (with ``jax_enable_x64``) give float32 accuracy: float64 is not claimed.
* ``return_residual=True`` returns the log-sum-exp (natural log) in the
  input's dtype.

jax is imported when the function is called.
"""

from __future__ import annotations

import importlib

import numpy as np


def _jnp():
    try:
        return importlib.import_module("jax.numpy")
    except ImportError:
        raise ImportError("this adapter needs jax, which is not installed") from None


def _to_bthd(x, jnp):
    """``(*lead, N, d)`` -> ``(B, N, H, d)``: the last leading dim is the heads, the others the batch."""
    lead = x.shape[:-2]
    heads = lead[-1] if lead else 1
    x = x.reshape((-1, heads) + x.shape[-2:])
    return jnp.swapaxes(x, 1, 2)


def dot_product_attention(q, k, v, *, causal=False, scale=None, mask=None, num_kv_heads=None, window=None,
                          alibi_slopes=None, shift_window=True):
    """``jax.nn.dot_product_attention`` with GQA, a window and ALiBi (as ``bias``); returns ``(o, lse)``."""
    jnp = _jnp()
    jax_nn = importlib.import_module("jax.nn")
    lead, nq, nk = tuple(q.shape[:-2]), q.shape[-2], k.shape[-2]
    heads = lead[-1] if lead else 1
    batch = int(np.prod(lead[:-1], dtype=int))
    keep = None
    if mask is not None:  # (..., Nq, Nk) -> (B, H, Nq, Nk)
        keep = jnp.broadcast_to(mask, lead + (nq, nk)).reshape(batch, heads, nq, nk)
    local = None
    if window is not None:
        left, right = (nq + nk if s is None or s < 0 else int(s) for s in window)
        if shift_window:
            left, right = left - (nk - nq), right + (nk - nq)  # bottom-right -> JAX's top-left
        local = (left, right)
    bias = None
    if alibi_slopes is not None:
        work = jnp.promote_types(q.dtype, jnp.float32)  # the bias is added to float32 (or float64) logits
        slopes = jnp.broadcast_to(jnp.asarray(alibi_slopes, work), (heads,))
        dist = np.abs(np.arange(nq)[:, None] + (nk - nq) - np.arange(nk)[None, :])
        bias = -slopes[None, :, None, None] * jnp.asarray(dist, work)
    o, lse = jax_nn.dot_product_attention(
        _to_bthd(q, jnp), _to_bthd(k, jnp), _to_bthd(v, jnp), bias=bias, mask=keep, scale=scale,
        is_causal=bool(causal), local_window_size=local, return_residual=True)
    o = jnp.swapaxes(o, 1, 2).reshape(lead + (nq, v.shape[-1]))  # (B, T, N, dv) -> (*lead, Nq, dv)
    lse = lse.reshape(-1, nq, heads)  # (B, T, N)
    return o, jnp.swapaxes(lse, 1, 2).reshape(lead + (nq,))
