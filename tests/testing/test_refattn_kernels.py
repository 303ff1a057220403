"""refattn's own simulated kernels pass the conformance kit (float32: one Numba signature each)."""

import pytest

from refattn.index_set import IndexSet
from refattn.testing import Capabilities, check_attention

SRAM = 4096  # elements: room for several tiles at the kit's small sizes
EXAMPLES = 25
CAP = Capabilities(dtypes=("float32",), max_n=20, max_d=8)
#: The flash kernels take every variant of docs/variants.md, packed batches (cu_seqlens) included.
FLASH_VARIANTS = ("gqa", "window", "softcap", "alibi", "varlen")


@pytest.mark.parametrize("variant", ["fa2", "fa1"])
def test_flash_forward_conforms(variant):
    from refattn.kernels import flash

    def fn(q, k, v, *, causal, scale, mask, **variants):
        r = flash.flash_forward(q, k, v, sram=SRAM, variant=variant, causal=causal, scale=scale, mask=mask,
                                **variants)
        return r.o, r.lse

    cap = Capabilities(dtypes=("float32",), max_n=20, max_d=8, variants=FLASH_VARIANTS)
    report = check_attention(fn, capabilities=cap, max_examples=EXAMPLES, name=f"flash_forward[{variant}]")
    assert report.passed and report.semantics.variants["cu_seqlens_q"] > 0


def test_flash_forward_with_tiny_blocks_conforms():
    """Blocks of 3 x 2: every problem has partial last blocks and several tiles per row."""
    from refattn.kernels import flash

    def fn(q, k, v, *, causal, scale, mask):
        r = flash.flash_forward(q, k, v, sram=SRAM, variant="fa2", causal=causal, scale=scale, mask=mask,
                                block=(3, 2))
        return r.o, r.lse

    assert check_attention(fn, capabilities=CAP, max_examples=EXAMPLES).passed


def test_standard_forward_conforms():
    from refattn.kernels import standard

    def fn(q, k, v, *, causal, scale, mask):
        r = standard.standard_forward(q, k, v, sram=SRAM, causal=causal, scale=scale, mask=mask)
        return r.o, r.lse

    assert check_attention(fn, capabilities=CAP, max_examples=EXAMPLES, name="standard_forward").passed


def test_sparse_forward_conforms():
    """The sparse kernel takes IndexSet objects (random ones and refattn.patterns' builders) and the variants
    (GQA, window, softcap, ALiBi), and-ed with the index set."""
    from refattn.kernels import sparse

    def fn(q, k, v, *, causal, scale, mask, **variants):
        if mask is None:  # no mask: every key block, as an index set
            mask = IndexSet.dense(q.shape[-2], k.shape[-2], block=3, causal=False)
        r = sparse.sparse_forward(q, k, v, mask, sram=4 * SRAM, causal=causal, scale=scale,  # room for 64-blocks
                                  **variants)
        return r.o, r.lse

    cap = Capabilities(dtypes=("float32",), max_n=20, max_d=8, masks=("index_set",), index_set_objects=True,
                       variants=("gqa", "window", "softcap", "alibi"))
    report = check_attention(fn, capabilities=cap, max_examples=EXAMPLES, name="sparse_forward")
    assert report.passed and report.coverage["index_set"] > 0
    assert set(report.semantics.variants) == {"num_kv_heads", "window", "softcap", "alibi_slopes"}


def test_flash_backward_gradients_conform():
    from refattn.kernels import flash
    from refattn.kernels import flash_backward as fb

    def forward(q, k, v, *, causal, scale, mask, **variants):
        r = flash.flash_forward(q, k, v, sram=SRAM, variant="fa2", causal=causal, scale=scale, mask=mask,
                                **variants)
        return r.o, r.lse

    def backward(q, k, v, do, *, causal, scale, mask, **variants):
        o, lse = forward(q, k, v, causal=causal, scale=scale, mask=mask, **variants)
        r = fb.flash_backward(q, k, v, o, lse, do, sram=SRAM, causal=causal, scale=scale, mask=mask, **variants)
        return r.dq, r.dk, r.dv

    cap = Capabilities(dtypes=("float32",), max_n=16, max_d=6, backward=True, variants=FLASH_VARIANTS)
    report = check_attention(forward, backward=backward, capabilities=cap, max_examples=15, name="flash_backward")
    assert report.passed and report.semantics.variants["cu_seqlens_q"] > 0


def test_standard_backward_gradients_conform():
    from refattn.kernels import standard

    def forward(q, k, v, *, causal, scale, mask):
        r = standard.standard_forward(q, k, v, sram=SRAM, causal=causal, scale=scale, mask=mask)
        return r.o, r.lse

    def backward(q, k, v, do, *, causal, scale, mask):
        o, _ = forward(q, k, v, causal=causal, scale=scale, mask=mask)
        r = standard.standard_backward(q, k, v, o, do, sram=SRAM, causal=causal, scale=scale, mask=mask)
        return r.dq, r.dk, r.dv

    cap = Capabilities(dtypes=("float32",), max_n=16, max_d=6, backward=True)
    assert check_attention(forward, backward=backward, capabilities=cap, max_examples=15,
                           name="standard_backward").passed
