"""ViTCoD's Q/K auto-encoder: a linear code over the *heads* axis (docs/vitcod.md).

At every (token, channel) position the H head values of Q (and, separately,
of K) form a vector x in R^H. The encoder E (Hc x H) sends z = E x, Hc =
ceil(H/2) numbers, off chip instead of H; the decoder D (H x Hc) rebuilds
x_hat = D z on chip before Q K^T. V is not compressed.

Fitting (closed form, NumPy): stack the samples as rows of X (S x H). The
best rank-Hc linear map in the least-squares sense is the projection onto the
top Hc right singular vectors V_c of X (Eckart-Young): E = V_c^T, D = V_c,
so ``X_hat = X V_c V_c^T``. With Hc = H the projection is the identity and the
reconstruction error is 0 (up to rounding). The paper trains E, D with a small
reconstruction loss inside the network; the closed form is the optimum of that
loss alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["HeadAutoencoder", "fit_head_autoencoder"]


@dataclass(frozen=True, eq=False)
class HeadAutoencoder:
    encoder: np.ndarray  # (Hc, H)
    decoder: np.ndarray  # (H, Hc)

    @property
    def heads(self) -> int:
        return self.encoder.shape[1]

    @property
    def bottleneck(self) -> int:
        return self.encoder.shape[0]

    def _check(self, x):
        x = np.asarray(x, np.float64)
        if x.ndim < 3 or x.shape[-3] != self.heads:
            raise ValueError(f"HeadAutoencoder: expected (..., H={self.heads}, N, d), got shape {x.shape}")
        return x

    def encode(self, x) -> np.ndarray:
        """(..., H, N, d) -> (..., Hc, N, d)."""
        return np.einsum("ch,...hnd->...cnd", self.encoder, self._check(x))

    def decode(self, z) -> np.ndarray:
        """(..., Hc, N, d) -> (..., H, N, d)."""
        return np.einsum("hc,...cnd->...hnd", self.decoder, np.asarray(z, np.float64))

    def reconstruct(self, x) -> np.ndarray:
        return self.decode(self.encode(x))

    def relative_error(self, x) -> float:
        """||x - x_hat||_F / ||x||_F."""
        x = self._check(x)
        return float(np.linalg.norm(x - self.reconstruct(x)) / max(np.linalg.norm(x), np.finfo(float).tiny))

    def bytes_ratio(self) -> float:
        """Off-chip bytes for Q (or K) with the code, over without: Hc / H."""
        return self.bottleneck / self.heads


def fit_head_autoencoder(x, bottleneck: int | None = None) -> HeadAutoencoder:
    """Fit the linear head auto-encoder on samples ``x (..., H, N, d)`` (closed form via SVD)."""
    x = np.asarray(x, np.float64)
    if x.ndim < 3:
        raise ValueError(f"fit_head_autoencoder: x must be (..., H, N, d), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("fit_head_autoencoder: x contains NaN or Inf")
    h = x.shape[-3]
    hc = -(-h // 2) if bottleneck is None else int(bottleneck)
    if not (1 <= hc <= h):
        raise ValueError(f"fit_head_autoencoder: bottleneck must be in [1, H={h}], got {bottleneck}")
    samples = np.moveaxis(x, -3, -1).reshape(-1, h)  # (S, H): one row per (input, token, channel)
    _, _, vt = np.linalg.svd(samples, full_matrices=False)
    vc = vt[:hc].T  # (H, Hc)
    return HeadAutoencoder(encoder=vc.T.copy(), decoder=vc.copy())
