"""refattn.testing: a conformance kit that property-tests any attention kernel.

A few lines test your own kernel against the float64 naive softmax::

    from refattn.testing import Capabilities, check_attention

    def my_attention(q, k, v, *, causal, scale, mask):   # NumPy in; o or (o, lse) out
        ...
    check_attention(my_attention, capabilities=Capabilities(dtypes=("float32",)))

* :func:`check_attention` (and :func:`assert_conforms`, its pytest form)
  draws problems with :func:`problems` (hypothesis strategies whose sizes
  reach every tile path: ``Nq, Nk`` up to 300 around each multiple of 16,
  head dims up to 256, mixed with small shapes that shrink well), runs
  ``fn`` on copies of the inputs and :mod:`refattn.reference` on the
  originals, and checks shape, dtype, untouched inputs, NaN/Inf, values
  and determinism. On failure it raises :class:`ConformanceError` whose
  text is the shrunk minimal example, the error and where it lies; a
  convention difference (causal alignment, fully masked rows, lse units,
  scale or mask ignored/inverted) is named only when probes confirm it
  (:mod:`~refattn.testing.diagnose`).
* The report prints four verdicts on the same draws (refattn's rule and the
  FlashAttention, FlexAttention and PyTorch SDPA test rules,
  :mod:`~refattn.testing.protocols`) and a semantics sheet of what the run
  established (:mod:`~refattn.testing.report`). docs/testing.md explains all.
* :class:`Capabilities` says what the kernel claims (JSON-able, for
  ``refattn conform package.module:function --capabilities '{...}'``).
* :mod:`~refattn.testing.tolerance`: dtype-derived tolerances (the rule is in
  its docstring), overridable with :class:`Tolerance`.
* :func:`from_torch`, :func:`from_jax`: adapters (lazy imports); ``torch_sdpa``
  with ``TORCH_SDPA_CAPABILITIES`` and ``torch_flex`` (FlexAttention) with
  ``TORCH_FLEX_CAPABILITIES``; ``jax_dpa`` (``jax.nn.dot_product_attention``)
  with ``JAX_DPA_CAPABILITIES``.
* Variants (GQA, sliding window, softcap, ALiBi): declared with
  ``Capabilities(variants=...)`` (:data:`VARIANT_KINDS`), drawn and checked
  against the reference, nearby conventions named (:mod:`refattn.testing.variants`).
* A pytest fixture: add ``pytest_plugins = ["refattn.testing.pytest_plugin"]``
  to your ``conftest.py`` and take ``attention_conformance`` as an argument.

This package imports **hypothesis** at import time (it is in refattn's
``[dev]`` extra: ``pip install 'refattn[dev]'`` or ``pip install hypothesis``).
"""

from refattn.testing.adapters import (
    JAX_DPA_CAPABILITIES,
    TORCH_FLEX_CAPABILITIES,
    TORCH_SDPA_CAPABILITIES,
    from_jax,
    from_torch,
    jax_dpa,
    torch_flex,
    torch_sdpa,
)
from refattn.testing.check import DEFAULT_MAX_EXAMPLES, ConformanceError, assert_conforms, check_attention
from refattn.testing.protocols import PROTOCOLS, plain_attention
from refattn.testing.report import ConformanceReport, Failure, Semantics
from refattn.testing.strategies import (
    DTYPES,
    MASK_KINDS,
    VALUE_KINDS,
    Capabilities,
    Problem,
    boundary_sizes,
    head_dims,
    leading_dims,
    make_problem,
    problems,
    sizes,
)
from refattn.testing.tolerance import Tolerance
from refattn.testing.variants import VARIANT_KINDS

__all__ = [
    "Capabilities", "ConformanceError", "ConformanceReport", "DEFAULT_MAX_EXAMPLES", "DTYPES", "Failure",
    "MASK_KINDS", "PROTOCOLS", "Problem", "Semantics", "TORCH_SDPA_CAPABILITIES", "Tolerance", "VALUE_KINDS",
    "assert_conforms", "boundary_sizes", "check_attention", "from_jax", "from_torch", "head_dims", "leading_dims",
    "make_problem", "plain_attention", "problems", "sizes", "torch_sdpa", "TORCH_FLEX_CAPABILITIES", "torch_flex",
    "VARIANT_KINDS", "JAX_DPA_CAPABILITIES", "jax_dpa",
]
