"""MInference's three dynamic sparse patterns, their offline search and metrics.

* :func:`a_shape`, :func:`vertical_slash`, :func:`block_sparse`: index builders;
  each returns a result whose ``.index_set`` is an :class:`~refattn.index_set.IndexSet`
  and whose other fields hold what was estimated (for the app to draw).
* :mod:`refattn.patterns.search`: the kernel-aware pattern search
  (:func:`search_patterns`, :class:`PatternConfig`).
* :mod:`refattn.patterns.minference`: :func:`minference_forward`, which applies
  a config head by head with online index building.
* :mod:`refattn.patterns.metrics`: density, recall, output error, FLOPs and
  traffic against the dense FA2 kernel, index-building share.
"""

from refattn.patterns.a_shape import AShapeResult, a_shape
from refattn.patterns.block_sparse import BlockSparseResult, block_sparse
from refattn.patterns.vertical_slash import VerticalSlashResult, vertical_slash

__all__ = [
    "AShapeResult", "BlockSparseResult", "VerticalSlashResult",
    "a_shape", "block_sparse", "vertical_slash", "build_index",
    "search_patterns", "PatternConfig", "minference_forward",
]

PATTERNS = ("a_shape", "vertical_slash", "block_sparse")


def build_index(name, q, k, params, *, block=64, scale=None):
    """Build one pattern by name for single-head q (nq, d), k (nk, d); returns its result."""
    if name == "a_shape":
        return a_shape(q.shape[0], k.shape[0], params["n_init"], params["n_local"], block=block)
    if name == "vertical_slash":
        return vertical_slash(q, k, params["vertical_size"], params["slash_size"], block=block, scale=scale)
    if name == "block_sparse":
        return block_sparse(q, k, params["top_k"], block=block, scale=scale)
    raise ValueError(f"unknown pattern {name!r}; choose from {PATTERNS}")


def __getattr__(name):
    if name in ("search_patterns", "PatternConfig"):
        from refattn.patterns import search

        return getattr(search, name)
    if name == "minference_forward":
        from refattn.patterns.minference import minference_forward

        return minference_forward
    raise AttributeError(f"module 'refattn.patterns' has no attribute {name!r}")
