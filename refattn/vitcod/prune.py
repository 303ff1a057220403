"""ViTCoD pruning: one fixed mask per (layer, head) from attention maps averaged over inputs.

docs/vitcod.md. For each query row of the averaged map, keep the
highest-probability keys until their cumulative probability reaches
``cutoff`` (a per-row top-p rule, so the number kept varies by row and head);
the CLS row and column (token 0) are never pruned. The mask is then used, fixed,
for every input.
"""

from __future__ import annotations

import numpy as np

from refattn.reference import attention_probs

__all__ = ["average_maps", "cutoff_for_density", "density", "fixed_mask", "mask_recall"]


def average_maps(q, k, *, scale=None) -> np.ndarray:
    """Mean softmax map over the inputs axis: q, k ``(n_inputs, ..., N, d)`` -> ``(..., N, N)``."""
    q, k = np.asarray(q), np.asarray(k)
    if q.ndim < 3:
        raise ValueError(f"average_maps: q needs a leading inputs axis, shape (n_inputs, ..., N, d); got {q.shape}")
    p, _ = attention_probs(q, k, scale=scale)
    return p.mean(axis=0)


def fixed_mask(maps, cutoff: float, *, keep_cls: bool = True) -> np.ndarray:
    """Keep-mask (True = kept) from averaged maps ``(..., N, N)`` by a per-row cumulative cut-off.

    A row keeps its top keys in decreasing probability until the kept mass
    reaches ``cutoff`` (the key that crosses it is kept). ``cutoff`` in (0, 1].
    """
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim < 2 or maps.shape[-1] != maps.shape[-2]:
        raise ValueError(f"fixed_mask: maps must be square (..., N, N) attention maps, got shape {maps.shape}")
    if not np.all(np.isfinite(maps)) or np.any(maps < 0):
        raise ValueError("fixed_mask: maps must be finite and non-negative (softmax probabilities)")
    if not (0.0 < float(cutoff) <= 1.0):
        raise ValueError(f"fixed_mask: cutoff must be in (0, 1], got {cutoff}")
    rows = maps / np.maximum(maps.sum(-1, keepdims=True), np.finfo(np.float64).tiny)
    order = np.argsort(-rows, axis=-1, kind="stable")
    sorted_p = np.take_along_axis(rows, order, axis=-1)
    before = np.cumsum(sorted_p, axis=-1) - sorted_p  # mass of the keys ranked above
    keep_sorted = before < cutoff - 1e-12  # keep while the mass so far is short of the cut-off
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, axis=-1)
    if keep_cls:
        keep[..., 0, :] = True
        keep[..., :, 0] = True
    return keep


def density(mask) -> float:
    """Fraction of kept entries."""
    return float(np.mean(np.asarray(mask, bool)))


def cutoff_for_density(maps, target_density: float, *, keep_cls: bool = True, iters: int = 40) -> float:
    """The cut-off whose :func:`fixed_mask` keeps about ``target_density`` of the entries (bisection)."""
    if not (0.0 < target_density <= 1.0):
        raise ValueError(f"cutoff_for_density: target_density must be in (0, 1], got {target_density}")
    lo, hi = 1e-9, 1.0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if density(fixed_mask(maps, mid, keep_cls=keep_cls)) > target_density:
            hi = mid
        else:
            lo = mid
    return lo


def mask_recall(mask, probs) -> float:
    """Attention mass a fixed mask keeps: mean over rows of sum(P over kept entries)."""
    mask = np.asarray(mask, bool)
    probs = np.asarray(probs, np.float64)
    return float(np.mean(np.sum(np.where(mask, probs, 0.0), axis=-1)))
