"""ViTCoD fixed masks from real attention: all-MiniLM-L6-v2 averaged over a few texts.

ViTCoD prunes one fixed mask per (layer, head) from attention maps averaged
over inputs (:mod:`refattn.vitcod.prune`), then uses it for every input. Here
the inputs are texts, not images: the text (default: the bundled sample) is
cut into ``n_fit + 1`` consecutive chunks of whitespace words, each run through
all-MiniLM-L6-v2 (:func:`refattn.data.real.minilm_attention`) truncated to
exactly ``n_tokens`` tokens (``[CLS] ... [SEP]``), so all maps have the same N.
The first ``n_fit`` chunks are averaged and pruned; the last one is held out::

    maps    = mean over the n_fit chunks of attn            # (6 layers, 12 heads, N, N)
    keep[l] = fixed_mask(maps[l], cutoff_for_density(maps[l], target))   # per layer, CLS row/col kept
    recall  = mask_recall(keep[l], held_out_attn[l])        # mass kept on a text it never saw

and compares with a random mask of exactly the same number of kept entries per
head, CLS row and column kept too.

What this is: :data:`refattn.data.real.LABEL` (a bidirectional text encoder,
<= 512 tokens), not a ViT on images, which is what ViTCoD targets. Needs the
``[real]`` extra.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refattn.threads import blas_one_thread
from refattn.vitcod.prune import cutoff_for_density, density, fixed_mask, mask_recall

__all__ = ["RealMasks", "minilm_fixed_masks", "text_chunks"]


def text_chunks(text: str, n_chunks: int, n_tokens: int) -> list[str]:
    """``n_chunks`` consecutive pieces of ``text``, each of ``n_tokens - 2`` whitespace words.

    A word is at least one token, so each piece tokenises to at least ``n_tokens``
    tokens with ``[CLS]`` and ``[SEP]`` and is then truncated to exactly ``n_tokens``.
    """
    words = text.split()
    per = n_tokens - 2
    if n_chunks < 1 or per < 1:
        raise ValueError(f"text_chunks: need n_chunks >= 1 and n_tokens >= 3, got {n_chunks}, {n_tokens}")
    if len(words) < n_chunks * per:
        raise ValueError(f"text_chunks: the text has {len(words)} words; {n_chunks} chunks of {n_tokens} tokens "
                         f"need at least {n_chunks * per}")
    return [" ".join(words[i * per:(i + 1) * per]) for i in range(n_chunks)]


def _random_like(keep: np.ndarray, rng) -> np.ndarray:
    """Per head, a random mask with the CLS row and column and exactly as many entries as ``keep`` (..., N, N)."""
    out = np.zeros_like(keep)
    n = keep.shape[-1]
    for idx in np.ndindex(keep.shape[:-2]):
        m = np.zeros((n, n), bool)
        m[0, :] = m[:, 0] = True
        extra = int(keep[idx].sum()) - int(m.sum())                  # kept entries outside the CLS row/col
        inner = np.flatnonzero(~m)
        m.flat[rng.choice(inner, size=max(extra, 0), replace=False)] = True
        out[idx] = m
    return out


@dataclass(frozen=True, eq=False)
class RealMasks:
    """Fixed masks from MiniLM attention; arrays per layer are indexed ``[layer]``.

    ``keep``: bool (layers, heads, N, N), True = kept; ``maps``: the averaged
    maps it was pruned from; ``held_out``: the held-out text's maps;
    ``random_keep``: the random comparison masks (same nnz per head, CLS kept);
    ``cutoff``, ``density``: per layer; ``recall_fit`` / ``recall_held_out`` /
    ``recall_random``: per layer, mean kept attention mass per row.
    """

    keep: np.ndarray
    maps: np.ndarray
    held_out: np.ndarray
    random_keep: np.ndarray
    cutoff: np.ndarray
    density: np.ndarray
    recall_fit: np.ndarray
    recall_held_out: np.ndarray
    recall_random: np.ndarray
    n_fit: int
    label: str

    @property
    def n_tokens(self) -> int:
        return self.keep.shape[-1]


def minilm_fixed_masks(target_density: float = 0.1, *, n_tokens: int = 128, n_fit: int = 4, text: str | None = None,
                       seed: int = 0) -> RealMasks:
    """ViTCoD fixed masks from all-MiniLM-L6-v2 attention averaged over ``n_fit`` text chunks (see module doc).

    ``target_density`` is reached per layer (bisection on the cut-off); ``seed``
    draws the random comparison mask.
    """
    from refattn.data import real  # the [real] extra: ImportError with the install hint if missing

    if not (0.0 < target_density <= 1.0):
        raise ValueError(f"minilm_fixed_masks: target_density must be in (0, 1], got {target_density}")
    if not (isinstance(n_fit, (int, np.integer)) and n_fit >= 1):
        raise ValueError(f"minilm_fixed_masks: n_fit must be an int >= 1, got {n_fit!r}")
    chunks = text_chunks(real.sample_text() if text is None else text, n_fit + 1, n_tokens)
    attn = []
    for c in chunks:
        with blas_one_thread():  # small GEMMs: extra BLAS threads only contend (10x slower here)
            att = real.minilm_attention(c, max_tokens=n_tokens)
        if att.n_tokens != n_tokens:  # cannot happen with >= 1 token per word; guard the invariant
            raise ValueError(f"minilm_fixed_masks: a chunk gave {att.n_tokens} tokens, not {n_tokens}")
        attn.append(att.attn.astype(np.float64))
    maps = np.mean(attn[:n_fit], axis=0)                     # (layers, heads, N, N)
    held = attn[n_fit]
    rng = np.random.default_rng(seed)
    keep, rnd, cut = np.zeros(maps.shape, bool), np.zeros(maps.shape, bool), np.zeros(maps.shape[0])
    for layer in range(maps.shape[0]):
        cut[layer] = cutoff_for_density(maps[layer], target_density, iters=30)
        keep[layer] = fixed_mask(maps[layer], cut[layer])
        rnd[layer] = _random_like(keep[layer], rng)
    per_layer = range(maps.shape[0])
    return RealMasks(
        keep=keep, maps=maps, held_out=held, random_keep=rnd, cutoff=cut,
        density=np.array([density(keep[i]) for i in per_layer]),
        recall_fit=np.array([mask_recall(keep[i], maps[i]) for i in per_layer]),
        recall_held_out=np.array([mask_recall(keep[i], held[i]) for i in per_layer]),
        recall_random=np.array([mask_recall(rnd[i], held[i]) for i in per_layer]),
        n_fit=int(n_fit), label=real.LABEL,
    )
