"""The tolerance rule and the strategies: the problem space reaches the awkward cases."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings

from refattn.testing import Capabilities, problems
from refattn.testing import tolerance as tol
from refattn.testing.strategies import WORK_BUDGET, boundary_sizes, round_to_bfloat16


def test_rule_numbers():
    q = np.ones((2, 4))
    k = np.ones((3, 4))
    v = np.full((3, 5), 2.0)
    L = tol.logit_condition(q, k, 0.5)
    assert L == 2.0  # 0.5 * sum of 4 products of 1
    b = tol.output_bounds(None, "float32", q, k, v, 0.5)
    assert math.isclose(b.atol, 8 * 2.0**-23 * (1 + 2 + math.sqrt(3)) * 2.0)
    assert tol.output_bounds(None, "bfloat16", q, k, v, 0.5).atol / b.atol == 2.0**16
    assert tol.output_bounds(tol.Tolerance(c=1), "float64", q, k, v, 0.5).atol == 2.0**-52 * (3 + math.sqrt(3)) * 2
    assert tol.output_bounds({"default": tol.Tolerance(atol=0.1, rtol=0.2)}, "float16", q, k, v, 1).allowed(1.0) == \
        pytest.approx(0.3)
    with pytest.raises(ValueError, match="no tolerance rule for dtype 'int8'"):
        tol.output_bounds(None, "int8", q, k, v, 1.0)
    with pytest.raises(TypeError, match="tolerance must be"):
        tol.resolve("tight", "float32")


def test_bfloat16_rounding():
    x = np.array([1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, 3.14159, -2.5e-3], np.float32)
    r = round_to_bfloat16(x)
    assert r.dtype == np.float32
    assert r[0] == 1.0 and r[1] == 1.0 and r[2] == 1.0 + 2**-6  # ties to even
    assert np.all(np.abs(r - x) <= np.abs(x) * 2.0**-8)
    assert np.all(round_to_bfloat16(r) == r)


def test_capabilities_json_round_trip_and_errors():
    cap = Capabilities(dtypes=("float16",), causal=("top_left",), lse=False, max_n=5)
    again = Capabilities.from_json(cap.to_json())
    assert again == cap and json.loads(cap.to_json())["dtypes"] == ["float16"]
    with pytest.raises(ValueError, match="unknown capabilities"):
        Capabilities.from_json('{"lse": false, "flash": 3}')
    with pytest.raises(ValueError, match="Capabilities.dtypes: unknown"):
        Capabilities(dtypes=("int8",))
    with pytest.raises(ValueError, match="fully_masked_rows"):
        Capabilities(fully_masked_rows="ignore")


@settings(max_examples=150)
@given(problems(Capabilities(max_n=9, max_d=5, max_lead=1, dtypes=("float16", "bfloat16"))))
def test_problems_stay_within_capabilities(p):
    assert 1 <= p.nq <= 9 and 1 <= p.nk <= 9 and p.q.shape[-1] <= 5 and len(p.lead) <= 1
    assert p.q.dtype == (np.float16 if p.dtype == "float16" else np.float32)
    assert np.all(np.isfinite(p.q)) and np.all(np.isfinite(p.v))
    if p.dtype == "bfloat16":
        assert np.all(round_to_bfloat16(p.k) == p.k)
    if p.mask is not None:
        assert p.mask.dtype == bool and np.broadcast_shapes(p.mask.shape, p.lead + (p.nq, p.nk))


AWKWARD = {
    "Nq != Nk with odd d and dv != d":
        lambda p: p.nq != p.nk and p.q.shape[-1] % 2 == 1 and p.v.shape[-1] != p.q.shape[-1],
    "two leading dims": lambda p: len(p.lead) == 2,
    "prime N above 10": lambda p: p.nk in (11, 13, 17, 19, 23),
    "N = 1": lambda p: p.nq == 1 and p.nk == 1,
    "top-left causal, Nq != Nk": lambda p: p.causal == "top_left" and p.nq != p.nk,
    "bottom-right causal leaves rows empty": lambda p: p.causal == "bottom_right" and p.fully_masked_rows().any(),
    "fully masked rows from the mask": lambda p: p.mask_kind == "fully_masked_rows",
    "sliding window": lambda p: p.mask_kind == "window",
    "per-head random mask": lambda p: p.mask_kind in ("random", "fully_masked_rows") and p.mask.ndim > 2,
    "index set from a pattern": lambda p: p.index_set is not None and "random" not in p.notes[0],
    "causal and a mask together": lambda p: p.causal is not None and p.mask is not None,
    "logits above 88 (float32 exp overflow)":
        lambda p: tol.logit_condition(p.q, p.k, p.scale or 1 / math.sqrt(p.q.shape[-1])) > 88,
    "an outlier": lambda p: "outliers" in p.values and np.abs(p.q).max() > 6,
    "exact ties": lambda p: "ties" in p.values and p.nk > 2,
    "near-constant rows": lambda p: "near_constant" in p.values and p.nk > 2,
    # the tile class: sizes past every tile boundary a real kernel uses
    "Nk just past 128 (a short second 128-wide tile)": lambda p: 129 <= p.nk <= 160,
    "Nk one below a multiple of 32": lambda p: p.nk % 32 == 31,
    "Nq past 64": lambda p: p.nq > 64,
    "a few queries against Nk past 64": lambda p: p.nq <= 4 and p.nk > 64,
    "d past a vector width, odd": lambda p: p.d > 8 and p.d % 2 == 1,
    "common head sizes 64, 128, 256": lambda p: p.d in (64, 128, 256),
    "d just past a head size (65, 129)": lambda p: p.d in (65, 129),
    "d > 128 with the default scale": lambda p: p.d > 128 and p.scale is None,
}


def test_boundary_sizes_and_work_budget():
    assert boundary_sizes(1, 70) == [15, 16, 17, 31, 32, 33, 47, 48, 49, 63, 64, 65]
    assert boundary_sizes(20, 33, widths=(32,)) == [31, 32, 33]

    @settings(max_examples=100, database=None)
    @given(problems())
    def bounded(p):
        work = p.nq * p.nk * (p.d + p.v.shape[-1])
        assert int(np.prod(p.lead, dtype=int)) * work <= max(WORK_BUDGET, work)
        assert 1 <= p.nq <= 300 and 1 <= p.nk <= 300 and p.d <= 256

    bounded()


def test_strategies_reach_the_awkward_cases():
    """Within the kit's default example budget (100), each awkward case shows up; 800 draws make a miss unlikely."""
    seen = set()

    @settings(max_examples=800, database=None)
    @given(problems())
    def draw(p):
        seen.update(name for name, predicate in AWKWARD.items() if predicate(p))

    draw()
    assert seen == set(AWKWARD), f"never drawn: {sorted(set(AWKWARD) - seen)}"


def test_an_unbounded_window_alone_hides_no_row():
    """window=(-1, -1) with no causal mask and no mask: the keep-mask is None; the draw crashed on it (~None)
    when the kernel declared fully_masked_rows="unsupported" (shrinking heads towards -1, so it was common)."""
    from refattn.testing.strategies import leaves_a_row_empty

    assert leaves_a_row_empty(8, 8, None, None, {"window": (-1, -1)}) is False
    assert leaves_a_row_empty(4, 2, None, None, {"window": (0, 0)}) is True  # rows 0, 1 sit left of key 0
    assert leaves_a_row_empty(4, 4, "bottom_right", None, {"window": (0, -1)}) is False
