"""Long-context Q/K/V with planted, documented attention structure.

Random Gaussian Q/K have no pattern, so sparse attention has nothing to find
in them. Here every head is built from a few *components*, each a pair of
coefficients on its own slice of the head dim, so the logit of query i and
key j is a sum of planted terms plus small noise::

    logit(i, j) = scale * q_i . k_j = sum over components of its term + noise

Components (logit sizes are chosen so the planted keys carry most of the mass).
Dims: 0 sink, 1 retrieval, 4..d-17 local band or topics, the last 16 noise.

* **sink**: keys ``0 .. n_sink-1`` get logit ``L_sink`` from every query
  (attention sinks / the first tokens).
* **retrieval**: ``n_retrieval`` key positions drawn from the seed (they move
  when the seed changes) get logit ``L_retrieval`` from every later query:
  vertical lines.
* **local**: an AR(1) walk over the positions, ``x_i`` with correlation
  ``rho = exp(-1/width)`` per step, used for both q and k, so
  ``logit ~ L_local * rho^|i-j|``: a band of diagonals of the given width.
  In the ``a_shape`` head the walk's sign alternates token to token
  (``logit ~ L (-1)^(i-j) rho^|i-j|``), as a high RoPE frequency does: the
  band is then invisible to block mean-pooling (the block-sparse estimate),
  and only a contiguous window keeps it.
* **topic**: the sequence is cut into segments of ``topic_len`` tokens (a
  multiple of 64), each with one of ``n_topics`` topics drawn from the seed;
  a query attends to every earlier key of its topic (``L_topic``): scattered
  key blocks.

Heads get one *kind* each, cycling through ``kinds``:

=================  ==========================================================
``vertical_slash``  sink (4 tokens) + retrieval columns + narrow local band (width 8)
``a_shape``         wide sink region (n/32 tokens) + wide alternating local band (width n/24)
``block_sparse``    topic segments (64-token segments, 8 topics) + weak sink
=================  ==========================================================

Known limit: at the search's matched cost a vertical-slash set with many
columns (the sink columns plus the forced nearest diagonals) expresses an
A-shape almost exactly, so on an ``a_shape`` head the search picks A-shape or
such a VS set (their errors differ by under 0.01 at N = 2048); block-sparse
and few-column VS sets fail there clearly. The ``vertical_slash`` and
``block_sparse`` heads are recovered outright (tests/patterns/test_search.py).

The returned description lists, per head, the kind and every planted
position. Generation is O(n d) and vectorised (N = 32768: about 0.2 s per head here).
"""

from __future__ import annotations

import numpy as np

KINDS = ("vertical_slash", "a_shape", "block_sparse")


def _ar1(n, dims, width, rng):
    """(n, dims) AR(1) walk with unit-variance entries and lag-1 correlation exp(-1/width)."""
    rho = np.exp(-1.0 / width)
    eps = rng.standard_normal((n, dims)) * np.sqrt(1 - rho * rho)
    eps[0] = rng.standard_normal(dims)
    # x_t = rho x_{t-1} + eps_t, via scaled cumulative sums in chunks (stable for any n)
    x = np.empty((n, dims))
    chunk = max(1, int(30 * width))
    prev = np.zeros(dims)
    for s in range(0, n, chunk):
        e = eps[s:s + chunk]
        t = np.arange(len(e))
        w = rho ** (-t)
        x[s:s + chunk] = (rho ** t)[:, None] * (np.cumsum(e * w[:, None], axis=0) + rho * prev)
        prev = x[s + len(e) - 1]
    return x


def structured_qkv(n, d=64, heads=3, *, seed=0, kinds=KINDS, dtype=np.float32, noise=0.3):
    """``(q, k, v, description)`` with q, k, v of shape (heads, n, d).

    ``description[h]`` is a dict: ``kind`` and the planted positions
    (``sinks``, ``retrieval``, ``local_width``, ``topics``) of head h. Causal
    attention (bottom-right, Nq = Nk = n) is intended. Needs d >= 32.
    """
    n, d, heads = int(n), int(d), int(heads)
    if n < 64 or d < 32 or heads < 1:
        raise ValueError(f"structured_qkv: need n >= 64, d >= 32, heads >= 1, got n={n}, d={d}, heads={heads}")
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"structured_qkv: unknown kinds {unknown}; choose from {KINDS}")
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(d)
    q = np.zeros((heads, n, d))
    k = np.zeros((heads, n, d))
    desc = []

    def put(h, col, qa, ka, logit):
        """Add a component with q-coefficients qa, k-coefficients ka giving `logit` on dims `col`."""
        a = np.sqrt(logit / scale)
        q[h, :, col] += a * qa
        k[h, :, col] += a * ka

    for h in range(heads):
        kind = kinds[h % len(kinds)]
        info = {"kind": kind, "sinks": [], "retrieval": [], "local_width": 0, "topics": None}
        # noise on the last 16 dims: logit noise with std about `noise`
        nz = np.sqrt(noise / np.sqrt(16) / scale)
        q[h, :, d - 16:] += nz * rng.standard_normal((n, 16))
        k[h, :, d - 16:] += nz * rng.standard_normal((n, 16))
        ones = np.ones(n)
        n_ar = d - 20  # local-band dims: 4..d-17 (more dims, less far-field logit noise)
        if kind == "vertical_slash":
            sink = np.zeros(n)
            sink[:4] = 1
            put(h, 0, ones, sink, 11.0)
            n_ret = max(8, n // 512)
            ret = np.sort(rng.choice(np.arange(64, n), n_ret, replace=False))
            col = np.zeros(n)
            col[ret] = 1
            put(h, 1, ones, col, 9.0)
            x = _ar1(n, n_ar, 8.0, rng) / np.sqrt(n_ar)
            for c in range(n_ar):
                put(h, 4 + c, x[:, c], x[:, c], 6.0)
            info.update(sinks=list(range(4)), retrieval=ret.tolist(), local_width=8)
        elif kind == "a_shape":
            n_sink = max(16, n // 32)
            sink = np.zeros(n)
            sink[:n_sink] = 1
            put(h, 0, ones, sink, 5.0)
            width = max(16.0, n / 24)
            x = _ar1(n, n_ar, width, rng) / np.sqrt(n_ar)
            x[1::2] *= -1  # alternate the sign token to token (like a high RoPE frequency)
            for c in range(n_ar):
                put(h, 4 + c, x[:, c], x[:, c], 5.0)
            info.update(sinks=list(range(n_sink)), local_width=int(width))
        else:  # block_sparse
            seg, n_topics = 64, 8
            topic = rng.integers(0, n_topics, -(-n // seg))
            tok = np.repeat(topic, seg)[:n]
            onehot = np.zeros((n, n_topics))
            onehot[np.arange(n), tok] = 1
            for t in range(n_topics):
                put(h, 4 + t, onehot[:, t], onehot[:, t], 6.0)
            sink = np.zeros(n)
            sink[:1] = 1
            put(h, 0, ones, sink, 3.0)
            info.update(sinks=[0], topics={"segment": seg, "of_segment": topic.tolist()})
        desc.append(info)
    v = rng.standard_normal((heads, n, d))
    return q.astype(dtype), k.astype(dtype), v.astype(dtype), desc
