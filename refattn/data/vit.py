"""ViT-like inputs: the bundled DeiT-Tiny ViTCoD mask and a synthetic generator.

* :func:`load_deit_tiny_mask`: the real fixed mask of a fine-tuned DeiT-Tiny at
  95 % sparsity, from the public ViTCoD repository (Apache-2.0; see
  ``refattn/data/files/README-ViTCoD-mask.md``). Returned as a *keep*-mask
  (True = kept), shape (12 layers, 3 heads, 197, 197), token 0 = CLS.
* :func:`vit_like_qkv`: Q/K/V for a CLS token plus a 14 x 14 patch grid whose
  attention has the structure ViTCoD exploits: 2-D locality (each patch attends
  to its neighbours on the grid), a few *global* tokens every query attends to,
  and per-head variation (locality radius, strength, which tokens are global).

How the synthetic scores are built, per head h (all fixed by ``structure_seed``)::

    q_i = [ a_h * phi(p_i) ,  g_h ,  c_i ]      k_j = [ phi(p_j) ,  b_h * [j global] ,  c'_j ]

phi are random Fourier features of the grid position p (phi(p).phi(p') ~
exp(-|p - p'|^2 / (2 l_h^2)), so q_i.k_j rewards nearby patches), the middle
channel adds ``g_h * b_h`` to every score of a global key, and c, c' are
per-image content (``seed``): Gaussian noise of size ``noise`` that makes
every image's map different while the average keeps the structure. The CLS
token has no position (phi = 0) and is global in every head. Part of each
head's q/k is shared across heads (``head_share``), as in trained ViTs, which
gives the Q/K auto-encoder something to compress.
"""

from __future__ import annotations

from importlib import resources

import numpy as np

__all__ = ["GRID", "N_TOKENS", "load_deit_tiny_mask", "token_positions", "vit_like_qkv"]

GRID = 14
N_TOKENS = 1 + GRID * GRID  # CLS + 196 patches


def load_deit_tiny_mask():
    """Return ``(keep, global_tokens)`` for the bundled DeiT-Tiny 95 % mask.

    ``keep``: bool (12, 3, 197, 197), True = kept (the file stores True =
    pruned; it is inverted here). ``global_tokens``: int (12, 3), the number of
    key columns with more than 50 kept entries, as the ViTCoD authors counted.
    """
    files = resources.files("refattn.data") / "files"
    with resources.as_file(files / "vitcod_deit_tiny_mask_0.95.npy") as p:
        pruned = np.load(p)
    with resources.as_file(files / "vitcod_deit_tiny_global_tokens_0.95.npy") as p:
        g = np.load(p)
    return ~pruned.astype(bool), g.astype(np.int64)


def token_positions(grid: int = GRID) -> np.ndarray:
    """(1 + grid^2, 2) float positions; row 0 (CLS) is NaN (it has no place on the grid)."""
    yy, xx = np.divmod(np.arange(grid * grid), grid)
    pos = np.stack([yy, xx], axis=1).astype(np.float64)
    return np.concatenate([np.full((1, 2), np.nan), pos])


def vit_like_qkv(
    n_images: int = 1,
    *,
    heads: int = 3,
    d: int = 64,
    grid: int = GRID,
    n_global: int | tuple = (0, 4),
    noise: float = 0.6,
    head_share: float = 0.7,
    structure_seed: int = 0,
    seed=None,
    dtype=np.float64,
):
    """Synthetic ViT attention inputs: ``q, k, v`` of shape ``(n_images, heads, 1 + grid^2, d)``.

    ``n_global``: number of global patch tokens per head, an int or a
    ``(low, high)`` range drawn per head (CLS is always global on top).
    ``structure_seed`` fixes the heads (what stays the same across images);
    ``seed`` draws the images (what changes).
    """
    if n_images < 1 or heads < 1 or grid < 1:
        raise ValueError(f"vit_like_qkv: n_images, heads and grid must be >= 1, got {n_images}, {heads}, {grid}")
    if d < 8:
        raise ValueError(f"vit_like_qkv: d must be >= 8 (Fourier features + global + content channels), got {d}")
    srng = np.random.default_rng(structure_seed)
    rng = np.random.default_rng(seed)
    n = 1 + grid * grid
    pos = token_positions(grid)
    n_feat = d // 2  # Fourier features; the rest carries the global channel and content
    n_content = d - n_feat - 1

    # Shared-across-heads part (makes heads correlated), then per-head parts.
    shared_w = srng.standard_normal((2, n_feat))
    shared_b = srng.uniform(0, 2 * np.pi, n_feat)
    q = np.zeros((n_images, heads, n, d))
    k = np.zeros((n_images, heads, n, d))
    content_q_shared = rng.standard_normal((n_images, n, n_content))
    content_k_shared = rng.standard_normal((n_images, n, n_content))
    for h in range(heads):
        length = srng.uniform(0.8, 2.0)  # locality radius in patches
        strength = srng.uniform(5.0, 9.0)
        w = head_share * shared_w + (1 - head_share) * srng.standard_normal((2, n_feat))
        b = head_share * shared_b + (1 - head_share) * srng.uniform(0, 2 * np.pi, n_feat)
        phi = np.zeros((n, n_feat))
        phi[1:] = np.sqrt(2.0 / n_feat) * np.cos(pos[1:] @ (w / length) + b)
        ng = n_global if isinstance(n_global, (int, np.integer)) else int(srng.integers(n_global[0], n_global[1] + 1))
        glob = np.zeros(n)
        glob[0] = 1.0
        if ng > 0:
            glob[1 + srng.choice(grid * grid, size=min(ng, grid * grid), replace=False)] = 1.0
        g_gain = srng.uniform(2.0, 3.5)
        sq = np.sqrt(strength)
        q[:, h, :, :n_feat] = sq * phi
        k[:, h, :, :n_feat] = sq * phi
        q[:, h, :, n_feat] = g_gain
        k[:, h, :, n_feat] = g_gain * glob
        cq = head_share * content_q_shared + (1 - head_share) * rng.standard_normal((n_images, n, n_content))
        ck = head_share * content_k_shared + (1 - head_share) * rng.standard_normal((n_images, n, n_content))
        q[:, h, :, n_feat + 1 :] = noise * cq
        k[:, h, :, n_feat + 1 :] = noise * ck
    # scale so that scale * q.k (scale = 1/sqrt(d)) has the strengths above
    q *= d ** 0.25
    k *= d ** 0.25
    v = rng.standard_normal((n_images, heads, n, d))
    return q.astype(dtype), k.astype(dtype), v.astype(dtype)
