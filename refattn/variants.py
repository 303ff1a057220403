"""The attention variants that shipping kernels take, as masks, biases and head maps.

GQA/MQA, sliding windows, logit softcapping, ALiBi and variable-length
(packed) batches. The float64 reference (:mod:`refattn.reference`) applies
them through the helpers below; the semantics, and the sources each
convention was checked against, are in ``docs/variants.md``. In short, for a
query row i and a key column j of one sequence with ``Nq`` queries and ``Nk``
keys, write ``pos_q(i) = i + Nk - Nq`` (the query's place on the key axis,
bottom-right aligned) and ``pos_k(j) = j``. Then:

* **GQA/MQA** (``num_kv_heads = Hkv``): q has ``Hq`` heads on axis -3, k and
  v have ``Hkv``; ``Hq % Hkv == 0`` and query head h reads KV head
  ``h // (Hq // Hkv)``. MQA is ``Hkv = 1``.
* **window** ``(left, right)``: j is visible iff
  ``pos_q(i) - left <= pos_k(j) <= pos_q(i) + right`` (both bounds inclusive);
  ``-1`` or None leaves that side unbounded. Combined with ``causal`` by
  logical and, so bottom-right causal turns ``right`` into ``min(right, 0)``.
* **softcap** ``c > 0``: scaled scores become ``c * tanh(s / c)`` before the
  mask and the bias; ``softcap`` None or 0 means *off*.
* **ALiBi** slopes (broadcast over the leading dims, one per head): the bias
  ``-slope * |pos_q(i) - pos_k(j)|`` is added to the (capped) scores.
* **varlen** ``cu_seqlens_q``, ``cu_seqlens_k`` (integers, length B + 1,
  starting at 0, non-decreasing): sequence b owns query rows
  ``[cu_q[b], cu_q[b+1])`` and key rows ``[cu_k[b], cu_k[b+1])``; queries see
  only keys of their own sequence, and causal, window and ALiBi are aligned
  per sequence (local indices, that sequence's Nq and Nk). Rows after
  ``cu_q[-1]`` and keys after ``cu_k[-1]`` are padding: a padding query row
  sees no key (output 0, lse -inf, gradient 0) and a padding key is seen by no
  query (its dk and dv are 0).
* **bias**: a finite additive score bias broadcastable to ``(..., Nq, Nk)``
  (what PyTorch SDPA's float ``attn_mask`` and FlashAttention's test reference
  ``attn_bias`` add), added with the ALiBi bias, after the softcap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refattn.validation import broadcasts_to

__all__ = [
    "Variants",
    "alibi_bias",
    "check_variants",
    "expand_kv",
    "group_sum",
    "normalize_softcap",
    "normalize_window",
    "softcap_grad_factor",
    "apply_softcap",
    "token_positions",
    "variant_keep",
]


@dataclass(frozen=True)
class Variants:
    """Checked, normalised variant arguments (see the module docstring).

    ``window`` is None when off, else ``(left, right)`` with -1 for an
    unbounded side; ``softcap`` is None when off; the ``cu_seqlens`` are int64
    arrays or None.
    """

    num_kv_heads: int | None = None
    window: tuple | None = None
    softcap: float | None = None
    alibi_slopes: np.ndarray | None = None
    cu_seqlens_q: np.ndarray | None = None
    cu_seqlens_k: np.ndarray | None = None
    bias: np.ndarray | None = None

    @property
    def varlen(self) -> bool:
        return self.cu_seqlens_q is not None

    @property
    def positional(self) -> bool:
        """True when the keep-mask depends on more than plain causal (a window or varlen)."""
        return self.window is not None or self.varlen


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def normalize_window(window, where="attention"):
    """``None`` or ``(left, right)`` with each side None, -1 (unbounded) or an int >= 0.

    Returns None when both sides are unbounded, else ``(left, right)`` with -1
    for an unbounded side.
    """
    if window is None:
        return None
    try:
        left, right = window
    except (TypeError, ValueError):
        raise ValueError(f"{where}: window must be None or a pair (left, right), got {window!r}") from None
    out = []
    for name, x in (("left", left), ("right", right)):
        if x is None:
            x = -1
        if not _is_int(x) or x < -1:
            raise ValueError(f"{where}: window {name} must be an integer >= 0, or -1/None for unbounded; "
                             f"got {x!r}")
        out.append(int(x))
    return None if out == [-1, -1] else tuple(out)


def normalize_softcap(softcap, where="attention"):
    """None for off (None or 0, as in FlashAttention), else the cap as a positive float."""
    if softcap is None:
        return None
    if isinstance(softcap, (bool, np.bool_)) or not isinstance(softcap, (int, float, np.integer, np.floating)):
        raise ValueError(f"{where}: softcap must be a number (0 or None = off), got {softcap!r}")
    c = float(softcap)
    if not np.isfinite(c) or c < 0:
        raise ValueError(f"{where}: softcap must be finite and >= 0 (0 or None = off), got {softcap!r}")
    return None if c == 0 else c


def _check_cu_seqlens(cu_q, cu_k, nq, nk, where):
    if cu_q is None and cu_k is None:
        return None, None
    if cu_q is None or cu_k is None:
        raise ValueError(f"{where}: cu_seqlens_q and cu_seqlens_k must be given together")
    out = []
    for name, cu, total in (("cu_seqlens_q", cu_q, nq), ("cu_seqlens_k", cu_k, nk)):
        a = np.asarray(cu)
        if a.ndim != 1 or a.size < 2:
            raise ValueError(f"{where}: {name} must be 1-D of length batch + 1 >= 2, got shape {a.shape}")
        if not np.issubdtype(a.dtype, np.integer):
            raise TypeError(f"{where}: {name} must hold integers, got dtype {a.dtype}")
        a = a.astype(np.int64)
        if a[0] != 0:
            raise ValueError(f"{where}: {name} must start at 0, got {a[0]}")
        if np.any(np.diff(a) < 0):
            raise ValueError(f"{where}: {name} must be non-decreasing, got {a.tolist()}")
        if a[-1] > total:
            raise ValueError(f"{where}: {name} ends at {a[-1]} but there are only {total} packed tokens")
        out.append(a)
    if out[0].size != out[1].size:
        raise ValueError(f"{where}: cu_seqlens_q and cu_seqlens_k must have the same length (batch + 1), "
                         f"got {out[0].size} and {out[1].size}")
    return out[0], out[1]


def _check_num_kv_heads(num_kv_heads, q_shape, k_shape, v_shape, where):
    if num_kv_heads is None:
        return None
    if not _is_int(num_kv_heads) or num_kv_heads < 1:
        raise ValueError(f"{where}: num_kv_heads must be a positive integer, got {num_kv_heads!r}")
    if len(q_shape) < 3 or len(k_shape) < 3 or len(v_shape) < 3:
        raise ValueError(f"{where}: with num_kv_heads, q, k, v need a head axis (..., H, N, d); "
                         f"got q {q_shape}, k {k_shape}, v {v_shape}")
    hq, hk, hv = q_shape[-3], k_shape[-3], v_shape[-3]
    if hk != num_kv_heads or hv != num_kv_heads:
        raise ValueError(f"{where}: num_kv_heads = {num_kv_heads} but k has {hk} and v has {hv} heads (axis -3)")
    if hq % num_kv_heads:
        raise ValueError(f"{where}: the {hq} query heads must be a multiple of num_kv_heads = {num_kv_heads}")
    return int(num_kv_heads)


def _check_alibi(slopes, lead, where):
    if slopes is None:
        return None
    a = np.asarray(slopes)
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)) or a.dtype == np.bool_:
        raise TypeError(f"{where}: alibi_slopes must be real numbers, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{where}: alibi_slopes contains NaN or Inf")
    if not broadcasts_to(a.shape, lead):
        raise ValueError(f"{where}: alibi_slopes shape {a.shape} does not broadcast to the leading "
                         f"(batch, heads) dims {tuple(lead)} (one slope per query head, last axis = heads)")
    return a


def _check_bias(bias, target, where):
    if bias is None:
        return None
    a = np.asarray(bias)
    if not np.issubdtype(a.dtype, np.floating):
        raise TypeError(f"{where}: bias must be a floating-point array, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{where}: bias contains NaN or Inf (hide keys with mask, not with -inf in bias)")
    if not broadcasts_to(a.shape, target):
        raise ValueError(f"{where}: bias shape {a.shape} does not broadcast to {tuple(target)}")
    return a


def check_variants(q, k, v, *, num_kv_heads=None, window=None, softcap=None, alibi_slopes=None,
                   cu_seqlens_q=None, cu_seqlens_k=None, bias=None, where="attention") -> Variants:
    """Validate the variant arguments against the shapes of q, k, v; return :class:`Variants`.

    Shapes are those of the inputs before any GQA expansion. Bad arguments get
    a ``ValueError``/``TypeError`` naming the argument.
    """
    qs, ks, vs = np.shape(q), np.shape(k), np.shape(v)
    nkv = _check_num_kv_heads(num_kv_heads, qs, ks, vs, where)
    win = normalize_window(window, where)
    cap = normalize_softcap(softcap, where)
    if len(qs) < 2 or len(ks) < 2:  # check_attention_inputs names this problem
        return Variants(nkv, win, cap, None, None, None)
    cu_q, cu_k = _check_cu_seqlens(cu_seqlens_q, cu_seqlens_k, qs[-2], ks[-2], where)
    lead_k = ks[:-2] if nkv is None else ks[:-3] + (qs[-3],)
    try:
        lead = np.broadcast_shapes(qs[:-2], lead_k)
    except ValueError:  # check_attention_inputs names this problem
        lead = qs[:-2]
    slopes = _check_alibi(alibi_slopes, lead, where)
    extra = _check_bias(bias, tuple(lead) + (qs[-2], ks[-2]), where)
    return Variants(nkv, win, cap, slopes, cu_q, cu_k, extra)


# ---------------------------------------------------------------------------
# GQA/MQA: query head h reads KV head h // (Hq // Hkv)
# ---------------------------------------------------------------------------
def expand_kv(x, hq):
    """(..., Hkv, N, d) -> (..., Hq, N, d): each KV head repeated for its group of Hq // Hkv query heads."""
    return np.repeat(x, hq // x.shape[-3], axis=-3)


def group_sum(g, hkv):
    """(..., Hq, N, d) -> (..., Hkv, N, d): sum the gradients of each group back onto its KV head."""
    group = g.shape[-3] // hkv
    return g.reshape(g.shape[:-3] + (hkv, group) + g.shape[-2:]).sum(axis=-3)


# ---------------------------------------------------------------------------
# Positions: one rule for plain and packed (varlen) batches
# ---------------------------------------------------------------------------
def token_positions(nq, nk, cu_seqlens_q=None, cu_seqlens_k=None):
    """Per-token sequence ids and positions.

    Returns ``(seq_q, loc_q, pos_q, seq_k, pos_k)``, each 1-D int64:
    ``seq_q`` the sequence of each query row (-1 for padding), ``loc_q`` its
    index within its sequence, ``pos_q = loc_q + Nk_b - Nq_b`` its
    bottom-right-aligned place on its sequence's key axis; ``seq_k`` the
    sequence of each key row (-2 for padding) and ``pos_k`` its index within
    its sequence. Without ``cu_seqlens`` the whole input is one sequence.
    """
    if cu_seqlens_q is None:
        loc_q, pos_k = np.arange(nq), np.arange(nk)
        return np.zeros(nq, np.int64), loc_q, loc_q + (nk - nq), np.zeros(nk, np.int64), pos_k
    cu_q, cu_k = np.asarray(cu_seqlens_q, np.int64), np.asarray(cu_seqlens_k, np.int64)
    seq_q, loc_q, pos_q = np.full(nq, -1), np.zeros(nq, np.int64), np.zeros(nq, np.int64)
    seq_k, pos_k = np.full(nk, -2), np.zeros(nk, np.int64)
    for b in range(cu_q.size - 1):
        q0, q1, k0, k1 = cu_q[b], cu_q[b + 1], cu_k[b], cu_k[b + 1]
        seq_q[q0:q1], seq_k[k0:k1] = b, b
        loc_q[q0:q1] = np.arange(q1 - q0)
        pos_q[q0:q1] = loc_q[q0:q1] + (k1 - k0) - (q1 - q0)
        pos_k[k0:k1] = np.arange(k1 - k0)
    return seq_q, loc_q, pos_q, seq_k, pos_k


def variant_keep(nq, nk, causal=None, window=None, cu_seqlens_q=None, cu_seqlens_k=None):
    """Boolean (nq, nk) keep-mask of causal x window x varlen, or None when every entry is kept.

    ``causal``: None, "bottom_right" (``pos_k <= pos_q``) or "top_left"
    (``pos_k <= loc_q``); ``window``: None or a normalised ``(left, right)``.
    """
    if causal is None and window is None and cu_seqlens_q is None:
        return None
    seq_q, loc_q, pos_q, seq_k, pos_k = token_positions(nq, nk, cu_seqlens_q, cu_seqlens_k)
    pq, pk = pos_q[:, None], pos_k[None, :]
    keep = seq_q[:, None] == seq_k[None, :] if cu_seqlens_q is not None else np.ones((nq, nk), bool)
    if causal == "bottom_right":
        keep &= pk <= pq
    elif causal == "top_left":
        keep &= pk <= loc_q[:, None]
    if window is not None:
        left, right = window
        if left >= 0:
            keep &= pk >= pq - left
        if right >= 0:
            keep &= pk <= pq + right
    return keep


def alibi_bias(slopes, nq, nk, cu_seqlens_q=None, cu_seqlens_k=None):
    """ALiBi bias ``-slope * |pos_q(i) - pos_k(j)|``, shape ``slopes.shape + (nq, nk)`` (float64)."""
    _, _, pos_q, _, pos_k = token_positions(nq, nk, cu_seqlens_q, cu_seqlens_k)
    dist = np.abs(pos_q[:, None] - pos_k[None, :]).astype(np.float64)
    return -np.asarray(slopes, np.float64)[..., None, None] * dist


# ---------------------------------------------------------------------------
# Softcap: s -> c * tanh(s / c)
# ---------------------------------------------------------------------------
def apply_softcap(s, softcap):
    """``softcap * tanh(s / softcap)``; ``s`` unchanged when ``softcap`` is None (off)."""
    return s if softcap is None else softcap * np.tanh(s / softcap)


def softcap_grad_factor(capped, softcap):
    """d(capped)/d(s) = 1 - tanh^2(s / c) = 1 - (capped / c)^2, from the capped scores."""
    return 1.0 - (capped / softcap) ** 2
