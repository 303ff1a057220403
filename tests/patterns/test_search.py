"""Structured data, the kernel-aware search, JSON configs, minference_forward and metrics."""

import numpy as np
import pytest

from refattn import minference_forward, reference
from refattn.data.synthetic import structured_qkv
from refattn.patterns import metrics
from refattn.patterns.search import PatternConfig, search_patterns

N = 2048
#: stated bound: the chosen configuration's output error against dense attention on planted data
ERROR_BOUND = 0.2


@pytest.fixture(scope="module")
def planted():
    return structured_qkv(N, 64, 3, seed=11)


@pytest.fixture(scope="module")
def config(planted):
    q, k, v, _ = planted
    return search_patterns(q, k, v, progress=False)


def test_structured_data_is_seeded_and_documented():
    q1, k1, v1, d1 = structured_qkv(512, 32, 4, seed=1)
    q2, _, _, d2 = structured_qkv(512, 32, 4, seed=1)
    _, _, _, d3 = structured_qkv(512, 32, 4, seed=2)
    assert q1.shape == k1.shape == v1.shape == (4, 512, 32) and q1.dtype == np.float32
    assert np.array_equal(q1, q2) and d1 == d2
    assert [d["kind"] for d in d1] == ["vertical_slash", "a_shape", "block_sparse", "vertical_slash"]
    assert d1[0]["retrieval"] != d3[0]["retrieval"]  # retrieval columns move with the seed
    # the planted columns really are vertical lines: they take much more mass than an average key
    p, _ = reference.attention_probs(q1[0], k1[0], causal=True)
    col_mass = p[256:].sum(axis=0)
    ret = [c for c in d1[0]["retrieval"] if c < 256]
    assert col_mass[d1[0]["sinks"]].min() > 10 * np.median(col_mass)
    if ret:
        assert col_mass[ret].min() > 10 * np.median(col_mass)
    with pytest.raises(ValueError, match="unknown kinds"):
        structured_qkv(128, 32, 1, kinds=("nope",))


def test_search_recovers_the_planted_pattern_of_each_head(planted, config):
    _, _, _, desc = planted
    kinds = [d["kind"] for d in desc]
    for kind, head in zip(kinds, config.heads):
        assert head.error < ERROR_BOUND and head.recall > 0.9, (kind, head)
        assert len(head.candidates) == 6
        errors = {}
        for c in head.candidates:
            errors.setdefault(c["pattern"], []).append(c["error"])
            # candidates were cost-matched to the A-shape budget
            assert c["cost_blocks"] + c["cost_strips"] / 64 <= 1.01 * config.budget
        best = {name: min(e) for name, e in errors.items()}
        if kind == "a_shape":
            # Known limit: at matched cost a VS set with many columns (forced nearest diagonals +
            # the sink columns) can express an A-shape, so the search may pick either; the
            # pattern must still be recovered against block-sparse, which the alternating local
            # band defeats, and the A-shape itself must be within the bound.
            assert head.pattern in ("a_shape", "vertical_slash")
            assert best["a_shape"] < ERROR_BOUND and best["a_shape"] < 0.5 * best["block_sparse"]
        else:
            assert head.pattern == kind, (kind, best)
            others = [e for name, e in best.items() if name != kind]
            assert head.error < 0.5 * min(others), (kind, best)


def test_config_json_round_trip(config, tmp_path):
    again = PatternConfig.from_json(config.to_json())
    assert again.to_json() == config.to_json() and again.patterns == config.patterns
    path = config.save(tmp_path / "cfg.json")
    assert PatternConfig.load(path).to_json() == config.to_json()
    with pytest.raises(ValueError, match="PatternConfig"):
        PatternConfig.from_json('{"n": 3}')


def test_minference_forward_applies_the_config(planted, config):
    q, k, v, _ = planted
    res, sets = minference_forward(q, k, v, config, return_index_sets=True)
    for h in range(3):
        o, lse = reference.attention(q[h], k[h], v[h], causal=True, mask=sets[h].to_mask())
        np.testing.assert_allclose(res.o[h], o, atol=3e-5)
        dense, _ = reference.attention(q[h], k[h], v[h], causal=True)
        err = np.linalg.norm(res.o[h] - dense) / np.linalg.norm(dense)
        assert abs(err - config[h].error) < 1e-3 and err < ERROR_BOUND
    assert res.plan.details["build_s"] > 0
    with pytest.raises(ValueError, match="config has 3 heads"):
        minference_forward(q[:2], k[:2], v[:2], config)


def test_metrics_of_an_index_set(planted, config):
    from refattn.patterns import build_index

    q, k, v, _ = planted
    n = 1024
    qh, kh, vh = q[0, :n], k[0, :n], v[0, :n]
    iset = build_index("vertical_slash", qh, kh, {"vertical_size": 64, "slash_size": 100}).index_set
    rep = metrics.evaluate(qh, kh, vh, iset, build_s=0.01)
    p, _ = reference.attention_probs(qh, kh, causal=True)
    assert rep.recall == pytest.approx((p * iset.to_mask()).sum() / n)
    assert 0 < rep.density < 1 and 0.9 < rep.recall <= 1 and 0 <= rep.error < 0.2
    assert rep.flops_ratio < 1 and rep.traffic_ratio < 1 and 0 < rep.build_share < 1
    assert rep.flops_sparse == iset.flops(64)
    assert set(rep.as_dict()) >= {"density", "recall", "error", "flops_ratio", "traffic_ratio", "build_share"}
