"""Print the conformance kit's report (four verdicts, semantics sheet) for refattn's kernels, torch's SDPA and a bug.

    python tools/kit_verdicts.py            # all of them
    python tools/kit_verdicts.py flash sdpa # some

Everything runs at the kit's defaults (float32 only for refattn's kernels, which
run on a simulated memory hierarchy of ``SRAM`` elements: small enough that
flash and standard tile every problem past d = 16; the sparse kernel gets room
for 64-wide index blocks at d = 256).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SRAM = 16384
SPARSE_SRAM = 1 << 17
KERNEL_CAPS = dict(dtypes=("float32",))
KERNEL_EXAMPLES = None  # the kit's default


def flash_fa2():
    from refattn.kernels.flash import flash_forward

    def fn(q, k, v, *, causal, scale, mask):
        r = flash_forward(q, k, v, sram=SRAM, variant="fa2", causal=causal, scale=scale, mask=mask)
        return r.o, r.lse

    return fn


def standard():
    from refattn.kernels.standard import standard_forward

    def fn(q, k, v, *, causal, scale, mask):
        r = standard_forward(q, k, v, sram=SRAM, causal=causal, scale=scale, mask=mask)
        return r.o, r.lse

    return fn


def sparse():
    from refattn.index_set import IndexSet
    from refattn.kernels.sparse import sparse_forward

    def fn(q, k, v, *, causal, scale, mask):
        if mask is None:  # no mask: every key block, as an index set
            mask = IndexSet.dense(q.shape[-2], k.shape[-2], block=16, causal=False)
        r = sparse_forward(q, k, v, mask, sram=SPARSE_SRAM, causal=causal, scale=scale)
        return r.o, r.lse

    return fn


def runs():
    from refattn.testing import TORCH_SDPA_CAPABILITIES, Capabilities, torch_sdpa
    from tests.testing.planted import KERNELS

    return {
        "flash": ("refattn flash_forward (fa2)", flash_fa2, Capabilities(**KERNEL_CAPS), KERNEL_EXAMPLES),
        "standard": ("refattn standard_forward", standard, Capabilities(**KERNEL_CAPS), KERNEL_EXAMPLES),
        "sparse": ("refattn sparse_forward", sparse,
                   Capabilities(masks=("index_set",), index_set_objects=True, **KERNEL_CAPS), KERNEL_EXAMPLES),
        "sdpa": ("torch.nn.functional.scaled_dot_product_attention (CPU)", lambda: torch_sdpa,
                 TORCH_SDPA_CAPABILITIES, None),
        "bug": ("planted bug inter_tile_rescale[128]", lambda: KERNELS["inter_tile_rescale[128]"], None, None),
    }


def main(argv=None) -> int:
    from refattn.testing import check_attention
    from refattn.testing.check import DEFAULT_MAX_EXAMPLES

    chosen = (argv if argv is not None else sys.argv[1:]) or list(runs())
    for key in chosen:
        title, make, cap, examples = runs()[key]
        start = time.perf_counter()
        report = check_attention(make(), capabilities=cap, max_examples=examples or DEFAULT_MAX_EXAMPLES,
                                 name=title, raise_on_failure=False)
        print(report.text())
        print(f"({time.perf_counter() - start:.1f} s, the kernel's first compile included)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
