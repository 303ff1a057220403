"""The planted-bug suite, lean: each tiled kernel's bug is caught in one default run, the correct ones pass.

The 20-runs-per-kernel detection table is ``tools/kit_detection.py`` (a report, too slow for the suite).
Every kernel below is checked with ``check_attention(fn)`` and nothing else: the kit's defaults.
"""

import numpy as np
import pytest

from refattn.testing import check_attention
from tests.testing.planted import BUG_TILE, KERNELS, TILES


@pytest.mark.parametrize("tile", TILES)
def test_correct_tiled_kernel_passes_at_the_defaults(tile):
    report = check_attention(KERNELS[f"good[{tile}]"])
    assert report.passed and report.examples == 100
    nk = np.array(report.semantics.sizes["nk"])
    assert (nk > tile).any() and (nk % tile != 0).any()  # the multi-tile and partial-tile paths ran
    assert report.semantics.gradients > 0  # .backward found and checked without being asked


EXPECTED = {  # bug: (failure kind, output, convention named or None)
    "inter_tile_rescale": ("mismatch", "o", None),
    "last_partial_tile": ("mismatch", "o", None),
    "causal_off_by_one": ("mismatch", "o", None),
    "head_dim_tail": ("mismatch", None, None),
    "scale_past_d128": ("mismatch", None, None),
    "finite_mask_fill": ("mismatch", None, None),
    "output_dtype": ("dtype", "o", None),
    "in_place": ("mutation", "q", None),
    "lse_log2": ("mismatch", "lse", "lse units"),
    "nan_rows": ("nonfinite", "o", "fully masked rows"),
    "dk_missing_scale": ("mismatch", "dk", None),
}


@pytest.mark.parametrize("bug", sorted(BUG_TILE))
def test_planted_bug_is_caught_at_the_defaults(bug):
    name = f"{bug}[{BUG_TILE[bug]}]"
    report = check_attention(KERNELS[name], raise_on_failure=False)
    assert not report.passed, f"{name} passed the kit"
    f, p = report.failure, report.failure.problem
    kind, output, convention = EXPECTED[bug]
    assert f.kind == kind and f.convention == convention, report.text()
    if output:
        assert f.output == output
    text = report.text()
    assert text.startswith(f"FAIL {name}") and "minimal example:" in text
    tile = BUG_TILE[bug]
    if bug == "inter_tile_rescale":
        assert tile < p.nk <= 2 * tile and p.nq <= 17 and p.lead == ()  # a second key tile; few query rows
    elif bug == "last_partial_tile":
        assert p.nk % tile != 0
    elif bug == "causal_off_by_one":
        assert p.causal and p.nq != p.nk  # (and, per EXPECTED, not called a causal-alignment convention)
        if abs(p.nk - p.nq) == 1:  # where the bug equals the other alignment, the probes say it is none
            assert "not a convention difference" in text
    elif bug == "head_dim_tail":
        assert p.d > 8 and p.d % 8 != 0
    elif bug == "scale_past_d128":
        assert p.d > 128 and p.scale is None
    elif bug == "finite_mask_fill":
        assert p.fully_masked_rows().any() and "finite mask fill" in text
    elif bug == "in_place":
        assert "modified its input q in place" in text
    elif bug == "nan_rows":
        assert "returns NaN" in text
    elif bug == "output_dtype":
        assert "o has dtype float64 for float32 inputs" in text
