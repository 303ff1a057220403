"""ViTCoD (HPCA 2023): fixed sparse masks, split sparse/dense attention, two engines, Q/K auto-encoder.

* :mod:`~refattn.vitcod.prune`: fixed masks from averaged attention maps (per-row top-p, CLS kept).
* :mod:`~refattn.vitcod.reorder`: global tokens to the front, dense N x G part + sparse index lists;
  :func:`split_attention` equals the masked reference.
* :mod:`~refattn.vitcod.kernel`: :func:`vitcod_forward`, the split attention as a counted, steppable
  kernel on the simulated accelerator (:mod:`~refattn.vitcod.hardware`), with the dense and the
  unsplit-sparse designs on the same hardware; :mod:`~refattn.vitcod.engines` arranges its counts
  per head and layer.
* :mod:`~refattn.vitcod.vitcod_model`: the public ViTCoD simulator's cycle model, for comparison.
* :mod:`~refattn.vitcod.autoencoder`: the linear head auto-encoder for Q and K.
"""

from refattn.vitcod.autoencoder import HeadAutoencoder, fit_head_autoencoder
from refattn.vitcod.engines import dense_baseline, run_layer, simulate_layer, unsplit_sparse_baseline
from refattn.vitcod.hardware import Hardware
from refattn.vitcod.kernel import vitcod_forward
from refattn.vitcod.prune import average_maps, cutoff_for_density, density, fixed_mask, mask_recall
from refattn.vitcod.reorder import Split, global_tokens, split_attention, split_mask
from refattn.vitcod.vitcod_model import vitcod_public_layer, vitcod_public_network

__all__ = [
    "Hardware", "HeadAutoencoder", "Split", "average_maps", "cutoff_for_density", "dense_baseline", "density",
    "fit_head_autoencoder", "fixed_mask", "global_tokens", "mask_recall", "run_layer", "simulate_layer",
    "split_attention", "split_mask", "unsplit_sparse_baseline", "vitcod_forward", "vitcod_public_layer",
    "vitcod_public_network",
]
