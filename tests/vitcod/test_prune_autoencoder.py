"""Fixed masks from averaged maps (and their recall on new inputs); the head auto-encoder."""

import numpy as np
import pytest

from refattn.data.vit import vit_like_qkv
from refattn.reference import attention, attention_probs
from refattn.vitcod.autoencoder import fit_head_autoencoder
from refattn.vitcod.prune import average_maps, cutoff_for_density, density, fixed_mask, mask_recall


def test_cumulative_cutoff_by_hand():
    maps = np.array([[0.25, 0.25, 0.25, 0.25], [0.05, 0.5, 0.3, 0.15], [0.1, 0.2, 0.3, 0.4], [1, 0, 0, 0]])
    m = fixed_mask(maps, 0.7, keep_cls=False)
    # row 1: keep 0.5 (mass before 0), 0.3 (before 0.5 < 0.7), stop (before 0.8)
    assert m[1].tolist() == [False, True, True, False]
    assert m[2].tolist() == [False, False, True, True]  # 0.4 + 0.3 reaches 0.7
    assert m[3].tolist() == [True, False, False, False]
    mc = fixed_mask(maps, 0.7)
    assert mc[:, 0].all() and mc[0].all()  # CLS row and column kept


def test_fixed_mask_keeps_recall_on_new_inputs():
    q, k, _ = vit_like_qkv(12, seed=1)
    avg = average_maps(q, k)
    mask = fixed_mask(avg, cutoff_for_density(avg, 0.05))
    assert 0.04 < density(mask) < 0.06
    qn, kn, _ = vit_like_qkv(6, seed=2)  # new images, same heads
    new = mask_recall(mask, attention_probs(qn, kn)[0])
    seen = mask_recall(mask, attention_probs(q, k)[0])
    random = np.random.default_rng(0).random(mask.shape) < density(mask)
    assert new > 0.75 and abs(new - seen) < 0.05
    assert new > 5 * mask_recall(random, attention_probs(qn, kn)[0])


def test_prune_bad_inputs():
    with pytest.raises(ValueError, match="cutoff"):
        fixed_mask(np.ones((3, 3)) / 3, 0.0)
    with pytest.raises(ValueError, match="square"):
        fixed_mask(np.ones((3, 4)), 0.5)
    with pytest.raises(ValueError, match="inputs axis"):
        average_maps(np.ones((3, 2)), np.ones((3, 2)))


def test_autoencoder_exact_when_bottleneck_is_H():
    q, k, _ = vit_like_qkv(2, seed=5)
    ae = fit_head_autoencoder(q, bottleneck=3)
    assert ae.relative_error(q) < 1e-12
    np.testing.assert_allclose(ae.reconstruct(q), q, atol=1e-10)


def test_autoencoder_error_falls_with_bottleneck_and_is_zero_on_low_rank_heads():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 7, 4))  # (inputs, H = 6, N, d)
    errs = [fit_head_autoencoder(x, b).relative_error(x) for b in range(1, 7)]
    assert all(a >= b - 1e-12 for a, b in zip(errs, errs[1:])) and errs[-1] < 1e-12 and errs[0] > 0.1
    mix = rng.standard_normal((6, 2))  # 6 heads made of 2 sources: a bottleneck of 2 is exact
    low = np.einsum("hc,cnd->hnd", mix, rng.standard_normal((2, 9, 4)))
    assert fit_head_autoencoder(low, 2).relative_error(low) < 1e-12


def test_autoencoder_shapes_bytes_and_attention_effect():
    q, k, v = vit_like_qkv(4, seed=3)
    ae_q, ae_k = fit_head_autoencoder(q), fit_head_autoencoder(k)
    assert ae_q.bottleneck == 2 and ae_q.encode(q).shape == (4, 2, 197, 64) and ae_q.bytes_ratio() == 2 / 3
    o, _ = attention(q, k, v)
    o2, _ = attention(ae_q.reconstruct(q), ae_k.reconstruct(k), v)
    o3, _ = attention(fit_head_autoencoder(q, 3).reconstruct(q), fit_head_autoencoder(k, 3).reconstruct(k), v)
    assert np.linalg.norm(o3 - o) < 1e-9 * np.linalg.norm(o) < np.linalg.norm(o2 - o)
    with pytest.raises(ValueError, match="bottleneck"):
        fit_head_autoencoder(q, 4)
    with pytest.raises(ValueError, match="expected"):
        ae_q.encode(q[:, :2])
