"""Hypothesis strategies that draw attention problems that break kernels.

One drawn :class:`Problem` is a complete test case: ``q, k, v`` (already
rounded to the dtype under test), the causal alignment, a boolean keep-mask
(and the :class:`~refattn.index_set.IndexSet` it came from, if any), the
softmax scale, and an upstream gradient ``do`` for backward checks.

What is drawn (each bounded by :class:`Capabilities`, so a kernel is never
asked for what it does not claim; docs/testing.md explains the choices):

* **shapes**, in two deliberately mixed classes per axis, so that both the
  single-tile path and every multi-tile path of a real kernel run:

  - *small*: ``N`` from 1, the primes up to 23 and anything up to 24; ``d``
    from 1 to 9 (odd ones included). Failures shrink into this class when
    they can, which is what makes a minimal example small.
  - *tile*: ``N`` just below, on and just above every multiple of 16 (so of
    32, 64, 128 and 256 too) up to ``max_n``, or anything up to ``max_n``;
    ``d`` from the usual vector widths and head sizes (15, 16, 17, 31, 32,
    33, 63, 64, 65, 80, 96, 127, 128, 129, 144, 160, 192, 224, 255, 256) or anything
    up to ``max_d``.

  ``Nq``, ``Nk``, ``d`` and ``dv`` pick their class independently (short
  queries against long keys, wide heads on short sequences...). Leading dims
  ``()``, ``(B,)`` or ``(B, H)`` are kept small when the problem is big, so
  that one example costs at most about :data:`WORK_BUDGET` multiply-adds.
* **dtypes**: float64, float32, float16, bfloat16 (NumPy has no bfloat16:
  the kernel receives float32 arrays holding bfloat16-rounded values, and the
  torch adapter turns them into ``torch.bfloat16``).
* **masks** (``mask_kind``): ``none``; ``causal`` (either alignment); ``window``
  (a causal sliding window as a boolean mask); ``random`` (boolean, shared or
  per head); ``index_set`` (a random :class:`~refattn.index_set.IndexSet`, or
  one built by ``refattn.patterns``' a_shape, vertical_slash or block_sparse
  on the problem's q, k); ``fully_masked_rows`` (a random mask with whole rows
  removed). Causal may also be combined with a boolean mask; bottom-right
  causal with ``Nq > Nk`` leaves rows fully masked.
* **values** (``values``, stresses joined by ``+``; each drawn on its own,
  so they combine): ``normal`` N(0, 1) alone; ``large_logits`` (q, k scaled so
  the largest |logit| is 100 or 1000: past exp's overflow at 88 in float32 and
  709 in float64 unless the row max is subtracted); ``outliers``
  (FlashAttention-3's protocol: N(0, 1) plus N(0, 100), i.e. standard
  deviation 10, with probability 0.001, and at least one outlier per tensor
  so small problems see it); ``ties`` (integer q, k: equal scores);
  ``near_constant`` (keys equal up to 1e-3 noise: near-flat softmax rows).

Values come from a NumPy generator seeded by a drawn integer: shrinking then
acts on the structure (sizes, kinds), which is what a minimal example needs.
:func:`make_problem` builds a problem outside hypothesis (the kit's probes).
"""

from __future__ import annotations

import json
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field, fields

import numpy as np
from hypothesis import strategies as st

from refattn.index_set import IndexSet
from refattn.reference import combined_mask
from refattn.testing.variants import VARIANT_KINDS
from refattn.testing.variants import describe as describe_variants
from refattn.variants import alibi_bias, expand_kv

DTYPES = ("float64", "float32", "float16", "bfloat16")
CAUSAL_ALIGNMENTS = ("bottom_right", "top_left")
MASK_KINDS = ("none", "causal", "window", "random", "index_set", "fully_masked_rows")
VALUE_KINDS = ("normal", "large_logits", "outliers", "ties", "near_constant")
FULLY_MASKED_CONVENTIONS = ("zero", "nan", "unsupported")
PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23)
SMALL_N = 24
SMALL_D = 9
#: Tile widths whose boundaries the ``tile`` size class straddles (every multiple of the first).
TILE_WIDTHS = (16, 32, 64, 128, 256)
#: Head dims of the ``tile`` class: vector widths and common head sizes, each with its neighbours.
WIDE_HEAD_DIMS = (15, 16, 17, 31, 32, 33, 63, 64, 65, 80, 96, 127, 128, 129, 144, 160, 192, 224, 255, 256)
#: Multiply-adds one drawn example may cost (``prod(lead) * Nq * Nk * (d + dv)``), bounding leading dims.
WORK_BUDGET = 6_000_000

#: The dtype name of the problem being run; adapters read it (bfloat16 travels as float32 in NumPy).
current_dtype: ContextVar[str | None] = ContextVar("refattn_testing_dtype", default=None)

# Allowed values of the tuple-valued capabilities (a new one: add it here and as a field).
_CHOICES = {"dtypes": DTYPES, "causal": CAUSAL_ALIGNMENTS, "masks": MASK_KINDS[2:], "values": VALUE_KINDS,
            "variants": VARIANT_KINDS}
_OPTIONAL_BOOLS = ("lse", "backward")


@dataclass(frozen=True)
class Capabilities:
    """What a kernel claims to support. JSON-able (:meth:`to_json`, :meth:`from_json`).

    * ``dtypes``: dtype names it accepts (of :data:`DTYPES`).
    * ``causal``: causal alignments it implements (empty: no causal argument).
    * ``masks``: boolean-mask kinds it accepts (of ``window``, ``random``,
      ``index_set``, ``fully_masked_rows``); ``none`` is always drawn.
    * ``causal_with_mask``: whether causal and a mask may come together.
    * ``index_set_objects``: for ``index_set`` problems, pass the
      :class:`~refattn.index_set.IndexSet` itself as ``mask`` (sparse kernels);
      otherwise its dense boolean mask is passed.
    * ``lse``: None (default): found out from what the function returns, ``o``
      or ``(o, lse)``; True: ``(o, lse)`` required; False: only ``o`` is
      checked (a second returned value is ignored).
    * ``backward``: None (default): gradients are checked when a backward
      function is given (or ``fn.backward`` exists); True: required; False: never.
    * ``fully_masked_rows``: ``"zero"`` (refattn's: o = 0, lse = -inf),
      ``"nan"`` (the kernel claims NaN there; such rows are not compared, and
      gradients are checked only on problems without them) or
      ``"unsupported"`` (no problem has a fully masked row).
    * ``scale``: the kernel honours a ``scale`` argument (else always None).
    * ``output_dtype``: ``"same"`` (o has the input's dtype; bfloat16 travels
      as float32), a dtype name (always that one), or ``"any"`` (unchecked).
    * ``deterministic``: a repeated call on the same inputs must give
      bitwise-equal outputs (False waives the check).
    * ``min_n``, ``max_n``: sequence lengths accepted; ``max_d``: largest head
      dim; ``head_dims``: if not empty, the only head dims accepted;
      ``max_lead``: leading dims (0, 1 or 2); ``nq_ne_nk``, ``dv_ne_d``:
      whether those may differ.
    * ``values``: value stresses that may be drawn (of :data:`VALUE_KINDS`;
      leave out ``normal`` to always have at least one stress).
    * ``variants``: attention variants the kernel takes as keyword arguments
      (of ``gqa``, ``window``, ``softcap``, ``alibi``, ``varlen``; docs/variants.md and
      :mod:`refattn.testing.variants`). Default: none, and none is ever passed.

    Adding a capability (issue 17's variants, say) is adding a field with a
    default that keeps today's behaviour; JSON and validation pick it up.
    """

    dtypes: tuple = ("float32", "float64")
    causal: tuple = ("bottom_right", "top_left")
    masks: tuple = ("window", "random", "index_set", "fully_masked_rows")
    causal_with_mask: bool = True
    index_set_objects: bool = False
    lse: bool | None = None
    backward: bool | None = None
    fully_masked_rows: str = "zero"
    scale: bool = True
    output_dtype: str = "same"
    deterministic: bool = True
    min_n: int = 1
    max_n: int = 300
    max_d: int = 256
    head_dims: tuple = ()
    max_lead: int = 2
    nq_ne_nk: bool = True
    dv_ne_d: bool = True
    values: tuple = VALUE_KINDS
    variants: tuple = ()

    def __post_init__(self):
        for name, allowed in _CHOICES.items():
            value = getattr(self, name)
            value = (value,) if isinstance(value, str) else tuple(value)
            object.__setattr__(self, name, value)
            bad = [x for x in value if x not in allowed]
            if bad:
                raise ValueError(f"Capabilities.{name}: unknown {bad}; allowed {list(allowed)}")
        object.__setattr__(self, "head_dims", tuple(int(d) for d in self.head_dims))
        for name in _OPTIONAL_BOOLS:
            if getattr(self, name) not in (None, True, False):
                raise ValueError(f"Capabilities.{name} must be true, false or null, got {getattr(self, name)!r}")
        if self.fully_masked_rows == "unsupported":  # a kernel that claims none is never given one
            object.__setattr__(self, "masks", tuple(m for m in self.masks if m != "fully_masked_rows"))
        if not self.dtypes:
            raise ValueError("Capabilities.dtypes: name at least one dtype")
        if not self.values:
            raise ValueError("Capabilities.values: name at least one value distribution")
        if self.fully_masked_rows not in FULLY_MASKED_CONVENTIONS:
            raise ValueError(f"Capabilities.fully_masked_rows must be one of {FULLY_MASKED_CONVENTIONS}, "
                             f"got {self.fully_masked_rows!r}")
        if self.output_dtype not in ("same", "any") + DTYPES:
            raise ValueError(f"Capabilities.output_dtype must be 'same', 'any' or one of {DTYPES}, "
                             f"got {self.output_dtype!r}")
        if not 1 <= self.min_n <= self.max_n:
            raise ValueError(f"Capabilities: need 1 <= min_n <= max_n, got {self.min_n}, {self.max_n}")
        if self.max_d < 1 or self.max_lead not in (0, 1, 2):
            raise ValueError("Capabilities: max_d must be >= 1 and max_lead 0, 1 or 2")
        if any(d < 1 for d in self.head_dims):
            raise ValueError(f"Capabilities.head_dims must be positive, got {self.head_dims}")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text_or_dict) -> Capabilities:
        data = json.loads(text_or_dict) if isinstance(text_or_dict, str) else dict(text_or_dict)
        if not isinstance(data, dict):
            raise ValueError(f"capabilities must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown capabilities {unknown}; known: {sorted(known)}")
        return cls(**data)

    def head_dim_choices(self, max_d=None):
        """The head dims this kernel accepts up to ``max_d`` (None: no limit), for probes."""
        top = self.max_d if max_d is None else min(max_d, self.max_d)
        return [d for d in self.head_dims if d <= top] if self.head_dims else list(range(1, top + 1))


@dataclass(eq=False)
class Problem:
    """One drawn attention problem (arrays already in the dtype under test)."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    do: np.ndarray
    dtype: str
    causal: str | None
    mask: np.ndarray | None
    mask_kind: str
    values: str
    scale: float | None
    seed: int
    index_set: IndexSet | None = None
    notes: list = field(default_factory=list)
    variants: dict = field(default_factory=dict)  # keyword arguments of the drawn variants

    @property
    def nq(self):
        return self.q.shape[-2]

    @property
    def nk(self):
        return self.k.shape[-2]

    @property
    def d(self):
        return self.q.shape[-1]

    @property
    def dv(self):
        return self.v.shape[-1]

    @property
    def lead(self):
        return self.q.shape[:-2]

    def keep(self) -> np.ndarray:
        """The full keep-mask, shape ``(*lead, Nq, Nk)``."""
        m = combined_mask(self.nq, self.nk, self.causal or False, self.mask, window=self.variants.get("window"),
                          cu_seqlens_q=self.variants.get("cu_seqlens_q"),
                          cu_seqlens_k=self.variants.get("cu_seqlens_k"))
        shape = self.lead + (self.nq, self.nk)
        return np.ones(shape, bool) if m is None else np.broadcast_to(m, shape)

    def fully_masked_rows(self) -> np.ndarray:
        """Boolean ``(*lead, Nq)``: rows with no visible key."""
        return ~self.keep().any(axis=-1)

    def kv_per_query_head(self):
        """``(k, v)`` with the KV heads repeated for their query heads (GQA), for tolerances and probes."""
        hkv = self.variants.get("num_kv_heads")
        if hkv is None:
            return self.k, self.v
        hq = self.q.shape[-3]
        return expand_kv(self.k, hq), expand_kv(self.v, hq)

    def bias_size(self) -> float:
        """The largest |ALiBi bias| of the problem (it widens the logits' range), 0 without ALiBi."""
        slopes = self.variants.get("alibi_slopes")
        if slopes is None:
            return 0.0
        cu_q, cu_k = self.variants.get("cu_seqlens_q"), self.variants.get("cu_seqlens_k")
        bias = alibi_bias(slopes, self.nq, self.nk, cu_q, cu_k)
        return float(np.max(np.abs(bias), initial=0.0))

    def padding_rows(self) -> np.ndarray:
        """Boolean ``(*lead, Nq)``: the query rows after ``cu_seqlens_q[-1]`` (none without varlen)."""
        rows = np.zeros(self.nq, bool)
        cu = self.variants.get("cu_seqlens_q")
        if cu is not None:
            rows[int(np.asarray(cu)[-1]):] = True
        return np.broadcast_to(rows, self.lead + (self.nq,))

    def mask_description(self) -> str:
        parts = []
        if self.causal:
            parts.append(f"causal {self.causal}")
        if self.mask_kind not in ("none", "causal"):
            kind = self.mask_kind
            if self.index_set is not None:
                kind += f" ({self.notes[0] if self.notes else 'given'}: {self.index_set!r})"
            parts.append(kind)
        return " + ".join(parts) or "no mask"

    def __repr__(self):  # (hypothesis prints failing examples; the arrays would be megabytes)
        return f"Problem({self.describe()})"

    def describe(self) -> str:
        scale = "default 1/sqrt(d)" if self.scale is None else f"{self.scale:g}"
        text = (f"{self.dtype} q{self.q.shape} k{self.k.shape} v{self.v.shape}, mask: {self.mask_description()}, "
                f"values: {self.values} (seed {self.seed}), scale {scale}")
        if self.variants:
            text += f", variants: {describe_variants(self.variants)}"
        return text


# ---------------------------------------------------------------- dtype helpers
def round_to_bfloat16(x) -> np.ndarray:
    """float32 array holding ``x`` rounded to bfloat16 (round to nearest even)."""
    f = np.ascontiguousarray(x, dtype=np.float32)
    u = f.view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32).reshape(f.shape)


def numpy_dtype(name: str):
    """The NumPy dtype that carries ``name`` (bfloat16 travels as float32)."""
    return np.float32 if name == "bfloat16" else np.dtype(name).type


def cast(x, name: str) -> np.ndarray:
    """Round ``x`` to dtype ``name``, returned in :func:`numpy_dtype`."""
    if name == "bfloat16":
        return round_to_bfloat16(x)
    return np.asarray(x, dtype=numpy_dtype(name))


# ---------------------------------------------------------------- size strategies
def boundary_sizes(min_n=1, max_n=300, widths=TILE_WIDTHS):
    """Sizes just below, on and just above every multiple of the tile widths, within ``[min_n, max_n]``."""
    step = min(widths)
    found = {m + delta for m in range(step, max_n + 2, step) for delta in (-1, 0, 1)}
    return sorted(n for n in found if min_n <= n <= max_n)


def pick(options):
    """One of ``options``, uniformly and independently on every example; shrinks toward the first.

    (Hypothesis's own ``sampled_from`` and ``one_of`` let one run favour some
    options for most of its examples; the kit needs every hard case in every run.)
    """
    options = list(options)
    return st.integers(0, 2**32 - 1).map(lambda i: options[i % len(options)])


@st.composite
def one_of_evenly(draw, *strategies):
    """``one_of`` whose branch is chosen by :func:`pick` (shrinks toward the first branch)."""
    return draw(draw(pick(strategies)))


def sizes(min_n=1, max_n=300):
    """Sequence lengths: the small class (1, primes, up to 24) or the tile class (boundaries, up to ``max_n``).

    Shrinks toward the small class, then toward small values.
    """
    small_top = min(max_n, max(min_n, SMALL_N))
    special = [n for n in (1,) + PRIMES if min_n <= n <= small_top]
    small = one_of_evenly(st.sampled_from(special), st.integers(min_n, small_top)) if special else \
        st.integers(min_n, small_top)
    if max_n <= SMALL_N:
        return small
    return one_of_evenly(small, pick(boundary_sizes(min_n, max_n)), st.integers(min_n, max_n))


def head_dims(max_d=256, allowed=()):
    """Head dims: small ones (odd included) or the vector widths and head sizes of the tile class."""
    if allowed:
        return pick(sorted(allowed))
    small_top = min(max_d, SMALL_D)
    small = one_of_evenly(st.sampled_from([d for d in (1, 2, 3, 4, 5, 7, 8) if d <= small_top]),
                          st.integers(1, small_top))
    wide = [d for d in WIDE_HEAD_DIMS if d <= max_d]
    if not wide:
        return small
    return one_of_evenly(small, pick(wide), st.integers(1, max_d))


@st.composite
def leading_dims(draw, max_lead=2, max_heads=9):
    """``()``, ``(B,)`` or ``(B, H)``, each dim 1..3, with at most ``max_heads`` problems in all."""
    dims = []
    for _ in range(draw(st.integers(0, max_lead))):
        top = min(3, max_heads // int(np.prod(dims, dtype=int)))
        if top < 1:
            break
        dims.append(draw(st.integers(1, top)))
    return tuple(dims)


# ---------------------------------------------------------------- values and masks
def _values(rng, kinds, shape, role):
    """float64 values of one tensor (``role`` in q, k, v, do) with the stresses in ``kinds``."""
    x = rng.standard_normal(shape)
    if "ties" in kinds and role in ("q", "k"):
        x = rng.integers(-1, 2, shape).astype(np.float64)
    if "near_constant" in kinds and role == "k":
        row = rng.standard_normal(shape[-1:])
        x = np.broadcast_to(row, shape) + 1e-3 * rng.standard_normal(shape)
    if "outliers" in kinds:
        hit = rng.random(shape) < 0.001
        hit.flat[rng.integers(x.size)] = True  # at least one per tensor
        x = x + hit * rng.normal(0.0, 10.0, shape)
    return x


def make_values(seed, dtype, lead, nq, nk, d, dv, values="normal", scale=None, logit_target=None):
    """``q, k, v, do`` rounded to ``dtype``; ``large_logits`` scales q, k so max |logit| is ``logit_target``."""
    rng = np.random.default_rng(seed)
    q = _values(rng, values, lead + (nq, d), "q")
    k = _values(rng, values, lead + (nk, d), "k")
    if "large_logits" in values:
        target = logit_target or float(rng.choice([100.0, 1000.0]))
        s_max = np.max(np.abs(q @ np.swapaxes(k, -1, -2))) * (scale or 1.0 / np.sqrt(d))
        if s_max > 1e-2:  # (all-zero logits, e.g. ties of zeros, cannot be scaled up)
            q, k = (x * np.sqrt(target / s_max) for x in (q, k))
    v = _values(rng, values, lead + (nk, dv), "v")
    do = _values(rng, values, lead + (nq, dv), "do")
    return tuple(cast(x, dtype) for x in (q, k, v, do))


def make_problem(*, dtype="float32", lead=(), nq=5, nk=7, d=4, dv=None, causal=None, mask=None,
                 mask_kind=None, values="normal", scale=None, seed=0) -> Problem:
    """A problem built directly (no hypothesis): the kit's probes and users' own regression cases."""
    dv = d if dv is None else dv
    q, k, v, do = make_values(seed, dtype, tuple(lead), nq, nk, d, dv, values, scale)
    if mask_kind is None:
        mask_kind = "random" if mask is not None else ("causal" if causal else "none")
    return Problem(q, k, v, do, dtype, causal, None if mask is None else np.asarray(mask, bool), mask_kind,
                   values, scale, seed)


def _window_mask(nq, nk, width):
    off = nk - nq
    i = np.arange(nq)[:, None]
    j = np.arange(nk)[None, :]
    return (j <= i + off) & (j > i + off - width)


def _random_index_set(rng, nq, nk, block, keep_first):
    nqb, nkb = -(-nq // block), -(-nk // block)
    blocks, columns = [], []
    for _ in range(nqb):
        b = np.flatnonzero(rng.random(nkb) < 0.4)
        if keep_first:
            b = np.union1d(b, [0])
        blocks.append(b)
        columns.append(np.flatnonzero(rng.random(nk) < 0.15))
    return IndexSet.from_lists(nq, nk, blocks, columns, block=block)


INDEX_SOURCES = ("random", "a_shape", "vertical_slash", "block_sparse")


def _pattern_index_set(source, rng, q, k, block):
    """An index set from ``refattn.patterns`` (built on the first head's q, k), or None if unavailable."""
    try:  # refattn.patterns is optional here; any failure falls back to a random index set
        import refattn.patterns as patterns

        nq, nk = q.shape[-2], k.shape[-2]
        q2, k2 = (np.asarray(x, np.float64).reshape((-1,) + x.shape[-2:])[0] for x in (q, k))
        if source == "a_shape":
            built = patterns.a_shape(nq, nk, int(rng.integers(0, 4)), int(rng.integers(1, 6)), block=block)
        elif source == "vertical_slash":
            built = patterns.vertical_slash(q2, k2, int(rng.integers(1, nk + 1)), int(rng.integers(1, nk + 1)),
                                            block=block)
        else:
            built = patterns.block_sparse(q2, k2, int(rng.integers(1, -(-nk // block) + 1)), block=block)
        index_set = built.index_set
        return index_set if isinstance(index_set, IndexSet) and (index_set.nq, index_set.nk) == (nq, nk) else None
    except Exception:
        return None


def _repair_rows(mask, nq, nk, causal):
    """Make every row see at least one key (for kernels that do not support fully masked rows)."""
    off = nk - nq if causal == "bottom_right" else 0
    cols = np.clip(np.arange(nq) + off, 0, nk - 1)
    mask = mask.copy()
    visible = mask if causal is None else mask & combined_mask(nq, nk, causal)
    empty = ~visible.any(axis=-1)
    rows = np.nonzero(empty)
    mask[rows + (cols[rows[-1]],)] = True
    return mask


# ---------------------------------------------------------------- the problem strategy
@st.composite
def problems(draw, capabilities: Capabilities | None = None):
    """Draw one :class:`Problem` within ``capabilities`` (default: everything)."""
    cap = capabilities or Capabilities()
    dtype = draw(pick(cap.dtypes))
    nq = draw(sizes(cap.min_n, cap.max_n))
    nk = draw(sizes(cap.min_n, cap.max_n)) if cap.nq_ne_nk else nq
    d = draw(head_dims(cap.max_d, cap.head_dims))
    dv = draw(one_of_evenly(st.just(d), head_dims(cap.max_d, cap.head_dims))) if cap.dv_ne_d else d
    heads = max(1, min(9, WORK_BUDGET // (nq * nk * (d + dv))))
    lead = draw(leading_dims(cap.max_lead, heads))
    kinds = ["none"] + (["causal"] if cap.causal else []) + list(cap.masks)
    mask_kind = draw(pick(kinds))
    # Each stress is drawn on its own (a boolean each), so they combine and each shows up often.
    stresses = [kind for kind in cap.values if kind != "normal" and draw(st.booleans())]
    if not stresses and "normal" not in cap.values:
        stresses = [draw(st.sampled_from([x for x in cap.values if x != "normal"]))]
    values = "+".join(stresses) or "normal"
    scale = draw(pick([None, None, 0.3, 2.0])) if cap.scale else None  # the default, half the time
    seed = draw(st.integers(0, 2**32 - 1))
    no_empty = cap.fully_masked_rows == "unsupported"
    chosen = [kind for kind in cap.variants if draw(st.booleans())]  # each declared variant, half the time
    if "gqa" in chosen and cap.max_lead >= 1:  # a head axis with a proper divisor: 2, 3, 4 or 6 query heads
        hq = draw(pick([h for h in (2, 4, 3, 6) if h <= max(2, heads)]))
        lead = (lead[:1] if len(lead) == 2 and cap.max_lead == 2 else ()) + (hq,)

    causal = None
    if mask_kind == "causal" or (mask_kind not in ("none", "causal") and cap.causal and cap.causal_with_mask
                                 and mask_kind != "window"):
        options = ([None] if mask_kind != "causal" else []) + list(cap.causal)
        causal = draw(pick(options))
    if no_empty and causal == "bottom_right" and nq > nk:
        nq, nk = nk, nq  # bottom-right with Nq > Nk leaves the first rows empty
    q, k, v, do = make_values(seed, dtype, lead, nq, nk, d, dv, values, scale)
    rng = np.random.default_rng([seed, 1])

    mask, index_set, notes = None, None, []
    if mask_kind == "window":
        mask = _window_mask(nq, nk, draw(st.integers(1, max(1, nk))))
    elif mask_kind in ("random", "fully_masked_rows"):
        per_head = bool(lead) and draw(st.booleans())
        shape = (lead if per_head else ()) + (nq, nk)
        mask = rng.random(shape) < draw(st.sampled_from([0.7, 0.3, 0.05]))
        if mask_kind == "fully_masked_rows":
            rows = rng.random(shape[:-1]) < 0.3
            rows.flat[rng.integers(rows.size)] = True
            mask &= ~rows[..., None]
    elif mask_kind == "index_set":
        block = draw(st.sampled_from([1, 2, 3, 4, 5, 16, 64]))
        source = draw(st.sampled_from(INDEX_SOURCES)) if not no_empty else "random"
        if source != "random":
            index_set = _pattern_index_set(source, rng, q, k, block)
            if index_set is None:
                source = "random"
        if source == "random":
            index_set = _random_index_set(rng, nq, nk, block, keep_first=no_empty)
        notes.append(f"index set from {source}")
        mask = index_set.to_mask(causal=causal or False)
    if no_empty and mask is not None and mask_kind != "index_set":
        mask = _repair_rows(mask, nq, nk, causal)
    variants = {}
    if chosen:
        variants = draw(variant_arguments(chosen, lead, nq, nk))
        if "num_kv_heads" in variants:
            hkv = variants["num_kv_heads"]
            k, v = (np.ascontiguousarray(x[..., :hkv, :, :]) for x in (k, v))
        for name in ("cu_seqlens_q", "window"):  # a packed batch, then a window, that leaves a row with no key
            if no_empty and name in variants and leaves_a_row_empty(nq, nk, causal, mask, variants):
                if name == "window":
                    del variants["window"]
                else:
                    del variants["cu_seqlens_q"], variants["cu_seqlens_k"]
    return Problem(q, k, v, do, dtype, causal, mask, mask_kind, values, scale, seed, index_set, notes, variants)


def leaves_a_row_empty(nq, nk, causal, mask, variants) -> bool:
    """Whether causal, the mask and the drawn window / packed batch together hide every key of some query row
    (an unbounded window (-1, -1) with nothing else hides nothing: the keep-mask is then None)."""
    keep = combined_mask(nq, nk, causal or False, mask, window=variants.get("window"),
                         cu_seqlens_q=variants.get("cu_seqlens_q"), cu_seqlens_k=variants.get("cu_seqlens_k"))
    return keep is not None and bool((~keep.any(-1)).any())


@st.composite
def variant_arguments(draw, kinds, lead, nq, nk):
    """The keyword arguments of the variants in ``kinds`` (refattn's names; docs/variants.md)."""
    out = {}
    if "gqa" in kinds and lead and lead[-1] > 1:
        hq = lead[-1]
        out["num_kv_heads"] = draw(pick([g for g in range(1, hq) if hq % g == 0]))
    if "window" in kinds:
        side = pick([-1, 0, 1, 2, max(1, nk // 4), max(1, nk // 2), nk])
        out["window"] = (draw(side), draw(side))
    if "softcap" in kinds:
        out["softcap"] = draw(pick([0.0, 0.5, 2.0, 10.0]))  # 0 means off
    if "alibi" in kinds:
        heads = lead[-1] if lead else 1
        slopes = 2.0 ** (-8.0 * (np.arange(heads) + 1) / heads)  # the ALiBi paper's geometric slopes
        out["alibi_slopes"] = slopes * draw(pick([1.0, 0.1, 4.0])) if lead else np.float64(0.5)
    if "varlen" in kinds:
        nseq = draw(st.integers(1, 4))
        out["cu_seqlens_q"], out["cu_seqlens_k"] = draw(cu_seqlens(nq, nseq)), draw(cu_seqlens(nk, nseq))
    return out


@st.composite
def cu_seqlens(draw, n, nseq):
    """Cumulative lengths (int32, as FlashAttention takes them) of ``nseq`` sequences packed into at most ``n``
    tokens: empty and 1-token sequences come up, and padding tokens after the last sequence in half the draws."""
    used = n - draw(pick([0, 0, 1, 2, n]))
    used = max(used, 0)
    cuts = sorted(draw(st.lists(st.integers(0, used), min_size=nseq - 1, max_size=nseq - 1)))
    return np.array([0, *cuts, used], np.int32)
