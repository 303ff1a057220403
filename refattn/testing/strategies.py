"""Hypothesis strategies that draw attention problems that break kernels.

One drawn :class:`Problem` is a complete test case: ``q, k, v`` (already
rounded to the dtype under test), the causal alignment, a boolean keep-mask
(and the :class:`~refattn.index_set.IndexSet` it came from, if any), the
softmax scale, and an upstream gradient ``do`` for backward checks.

What is drawn (each bounded by :class:`Capabilities`, so a kernel is never
asked for what it does not claim):

* **shapes**: ``Nq, Nk`` from 1, small primes and any size in range, ``Nq != Nk``;
  odd ``d`` and ``dv``; leading dims ``()``, ``(B,)`` or ``(B, H)``.
* **dtypes**: float64, float32, float16, bfloat16 (NumPy has no bfloat16:
  the kernel receives float32 arrays holding bfloat16-rounded values, and the
  torch adapter turns them into ``torch.bfloat16``).
* **masks** (``mask_kind``): ``none``; ``causal`` (either alignment); ``window``
  (a causal sliding window as a boolean mask); ``random`` (boolean, shared or
  per head); ``index_set`` (a random :class:`~refattn.index_set.IndexSet`, or
  one built by ``refattn.patterns``' a_shape, vertical_slash or block_sparse
  on the problem's q, k); ``fully_masked_rows``
  (a random mask with whole rows removed). Causal may also be combined with a
  boolean mask; bottom-right causal with ``Nq > Nk`` leaves rows fully masked.
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
"""

from __future__ import annotations

import json
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field, fields

import numpy as np
from hypothesis import strategies as st

from refattn.index_set import IndexSet
from refattn.reference import combined_mask

DTYPES = ("float64", "float32", "float16", "bfloat16")
CAUSAL_ALIGNMENTS = ("bottom_right", "top_left")
MASK_KINDS = ("none", "causal", "window", "random", "index_set", "fully_masked_rows")
VALUE_KINDS = ("normal", "large_logits", "outliers", "ties", "near_constant")
FULLY_MASKED_CONVENTIONS = ("zero", "nan", "unsupported")
PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)

#: The dtype name of the problem being run; adapters read it (bfloat16 travels as float32 in NumPy).
current_dtype: ContextVar[str | None] = ContextVar("refattn_testing_dtype", default=None)


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
    * ``lse``: the function returns ``(o, lse)`` (natural log), not just ``o``.
    * ``backward``: gradients are checked (needs a backward function).
    * ``fully_masked_rows``: ``"zero"`` (refattn's: o = 0, lse = -inf),
      ``"nan"`` (the kernel claims NaN there; such rows are not compared, and
      gradients are checked only on problems without them) or
      ``"unsupported"`` (no problem has a fully masked row).
    * ``scale``: the kernel honours a ``scale`` argument (else always None).
    * ``min_n``, ``max_n``, ``max_d``: size range; ``max_lead``: leading dims
      (0, 1 or 2); ``nq_ne_nk``, ``dv_ne_d``: whether those may differ.
    * ``values``: value stresses that may be drawn (of :data:`VALUE_KINDS`;
      leave out ``normal`` to always have at least one stress).
    """

    dtypes: tuple = ("float32", "float64")
    causal: tuple = ("bottom_right", "top_left")
    masks: tuple = ("window", "random", "index_set", "fully_masked_rows")
    causal_with_mask: bool = True
    index_set_objects: bool = False
    lse: bool = True
    backward: bool = False
    fully_masked_rows: str = "zero"
    scale: bool = True
    min_n: int = 1
    max_n: int = 24
    max_d: int = 9
    max_lead: int = 2
    nq_ne_nk: bool = True
    dv_ne_d: bool = True
    values: tuple = VALUE_KINDS

    def __post_init__(self):
        for name, allowed in (("dtypes", DTYPES), ("causal", CAUSAL_ALIGNMENTS),
                              ("masks", MASK_KINDS[2:]), ("values", VALUE_KINDS)):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            value = tuple(value)
            object.__setattr__(self, name, value)
            bad = [x for x in value if x not in allowed]
            if bad:
                raise ValueError(f"Capabilities.{name}: unknown {bad}; allowed {list(allowed)}")
        if self.fully_masked_rows == "unsupported":  # a kernel that claims none is never given one
            object.__setattr__(self, "masks", tuple(m for m in self.masks if m != "fully_masked_rows"))
        if not self.dtypes:
            raise ValueError("Capabilities.dtypes: name at least one dtype")
        if not self.values:
            raise ValueError("Capabilities.values: name at least one value distribution")
        if self.fully_masked_rows not in FULLY_MASKED_CONVENTIONS:
            raise ValueError(f"Capabilities.fully_masked_rows must be one of {FULLY_MASKED_CONVENTIONS}, "
                             f"got {self.fully_masked_rows!r}")
        if not 1 <= self.min_n <= self.max_n:
            raise ValueError(f"Capabilities: need 1 <= min_n <= max_n, got {self.min_n}, {self.max_n}")
        if self.max_d < 1 or self.max_lead not in (0, 1, 2):
            raise ValueError("Capabilities: max_d must be >= 1 and max_lead 0, 1 or 2")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text_or_dict) -> Capabilities:
        data = json.loads(text_or_dict) if isinstance(text_or_dict, str) else dict(text_or_dict)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown capabilities {unknown}; known: {sorted(known)}")
        return cls(**data)


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

    @property
    def nq(self):
        return self.q.shape[-2]

    @property
    def nk(self):
        return self.k.shape[-2]

    @property
    def lead(self):
        return self.q.shape[:-2]

    def keep(self) -> np.ndarray:
        """The full keep-mask, shape ``(*lead, Nq, Nk)``."""
        m = combined_mask(self.nq, self.nk, self.causal or False, self.mask)
        shape = self.lead + (self.nq, self.nk)
        return np.ones(shape, bool) if m is None else np.broadcast_to(m, shape)

    def fully_masked_rows(self) -> np.ndarray:
        """Boolean ``(*lead, Nq)``: rows with no visible key."""
        return ~self.keep().any(axis=-1)

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

    def describe(self) -> str:
        scale = "default 1/sqrt(d)" if self.scale is None else f"{self.scale:g}"
        return (f"{self.dtype} q{self.q.shape} k{self.k.shape} v{self.v.shape}, mask: {self.mask_description()}, "
                f"values: {self.values} (seed {self.seed}), scale {scale}")


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


# ---------------------------------------------------------------- small strategies
def sizes(min_n=1, max_n=24):
    """Sequence lengths: 1, primes and anything in ``[min_n, max_n]``; shrinks toward small."""
    special = [n for n in (1,) + PRIMES if min_n <= n <= max_n]
    ints = st.integers(min_n, max_n)
    return st.one_of(st.sampled_from(special), ints) if special else ints


def head_dims(max_d=9):
    """Head dims, odd ones included."""
    special = [d for d in (1, 2, 3, 4, 5, 7, 8, 16) if d <= max_d]
    return st.one_of(st.sampled_from(special), st.integers(1, max_d))


def leading_dims(max_lead=2):
    return st.lists(st.integers(1, 3), min_size=0, max_size=max_lead).map(tuple)


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


@st.composite
def problems(draw, capabilities: Capabilities | None = None):
    """Draw one :class:`Problem` within ``capabilities`` (default: everything)."""
    cap = capabilities or Capabilities()
    dtype = draw(st.sampled_from(cap.dtypes))
    lead = draw(leading_dims(cap.max_lead))
    nq = draw(sizes(cap.min_n, cap.max_n))
    nk = draw(sizes(cap.min_n, cap.max_n)) if cap.nq_ne_nk else nq
    d = draw(head_dims(cap.max_d))
    dv = draw(head_dims(cap.max_d)) if cap.dv_ne_d else d
    kinds = ["none"] + (["causal"] if cap.causal else []) + list(cap.masks)
    mask_kind = draw(st.sampled_from(kinds))
    # Each stress is drawn on its own (a boolean each), so they combine and each shows up often.
    stresses = [kind for kind in cap.values if kind != "normal" and draw(st.booleans())]
    if not stresses and "normal" not in cap.values:
        stresses = [draw(st.sampled_from([x for x in cap.values if x != "normal"]))]
    values = "+".join(stresses) or "normal"
    scale = draw(st.sampled_from([None, 0.3, 2.0])) if cap.scale else None
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    no_empty = cap.fully_masked_rows == "unsupported"

    causal = None
    if mask_kind == "causal" or (mask_kind not in ("none", "causal") and cap.causal and cap.causal_with_mask
                                 and mask_kind != "window"):
        options = ([None] if mask_kind != "causal" else []) + list(cap.causal)
        causal = draw(st.sampled_from(options))
    if no_empty and causal == "bottom_right" and nq > nk:
        nq, nk = nk, nq  # bottom-right with Nq > Nk leaves the first rows empty

    mask, index_set = None, None
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
    if no_empty and mask is not None and mask_kind != "index_set":
        mask = _repair_rows(mask, nq, nk, causal)

    q = _values(rng, values, lead + (nq, d), "q")
    k = _values(rng, values, lead + (nk, d), "k")
    if "large_logits" in stresses:  # scale q and k so that max |logit| is exactly the target
        target = float(rng.choice([100.0, 1000.0]))
        s_max = np.max(np.abs(np.einsum("...id,...jd->...ij", q, k))) * (scale or 1.0 / np.sqrt(d))
        if s_max > 1e-2:  # (all-zero logits, e.g. ties of zeros, cannot be scaled up)
            q, k = (x * np.sqrt(target / s_max) for x in (q, k))
    q, k = cast(q, dtype), cast(k, dtype)
    v = cast(_values(rng, values, lead + (nk, dv), "v"), dtype)
    do = cast(_values(rng, values, lead + (nq, dv), "do"), dtype)
    notes = []
    if mask_kind == "index_set":
        block = draw(st.integers(1, 5))
        source = draw(st.sampled_from(INDEX_SOURCES)) if not no_empty else "random"
        if source != "random":
            index_set = _pattern_index_set(source, rng, q, k, block)
            if index_set is None:
                source = "random"
        if source == "random":
            index_set = _random_index_set(rng, nq, nk, block, keep_first=no_empty)
        notes.append(f"index set from {source}")
        mask = index_set.to_mask(causal=causal or False)
    return Problem(q, k, v, do, dtype, causal, mask, mask_kind, values, scale, seed, index_set, notes)
