"""The one sparse index-set format, shared by the CPU kernel, the Triton kernel and the app.

For each query block ``qb`` (rows ``[qb*block, min((qb+1)*block, nq))``) the set
lists

* **key blocks**: key-block ids ``kb``, each meaning key columns
  ``[kb*block, min((kb+1)*block, nk))``, and
* **single key columns**: column ids outside those blocks, which a kernel
  gathers ``block`` at a time into dense tiles (MInference's vertical lines).

Storage is CSR-like, so it moves to a device as four int arrays::

    block_offsets  (n_qblocks + 1,)   block_indices  (n_blocks,)   sorted per row
    column_offsets (n_qblocks + 1,)   column_indices (n_columns,)  sorted per row

The mask an index set stands for is (listed blocks  OR  listed columns) AND the
element causal mask when ``causal`` is on (bottom-right aligned by default, the
refattn convention). :meth:`IndexSet.to_mask` builds it, so every sparse kernel
is tested against ``reference.attention(..., mask=index_set.to_mask())``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refattn.validation import normalize_causal


def _csr(rows, n_rows, what):
    if len(rows) != n_rows:
        raise ValueError(f"expected {n_rows} lists of {what} (one per query block), got {len(rows)}")
    offsets = np.zeros(n_rows + 1, np.int64)
    offsets[1:] = np.cumsum([len(r) for r in rows])
    flat = np.concatenate([np.asarray(r, np.int64).ravel() for r in rows]) if n_rows else np.zeros(0, np.int64)
    return offsets, flat.astype(np.int64)


@dataclass(frozen=True, eq=False)
class IndexSet:
    nq: int
    nk: int
    block: int
    block_offsets: np.ndarray
    block_indices: np.ndarray
    column_offsets: np.ndarray
    column_indices: np.ndarray

    # ------------------------------------------------------------------ build
    @classmethod
    def from_lists(cls, nq, nk, blocks, columns=None, *, block=64) -> IndexSet:
        """Build a normalised set from per-query-block lists (any order, repeats allowed).

        Each list is sorted and deduplicated; columns that fall inside a listed
        key block of the same row are dropped (the block already covers them).
        """
        nq, nk, block = int(nq), int(nk), int(block)
        if nq < 1 or nk < 1 or block < 1:
            raise ValueError(f"IndexSet needs nq, nk, block >= 1, got nq={nq}, nk={nk}, block={block}")
        nqb = -(-nq // block)
        if columns is None:
            columns = [[] for _ in range(nqb)]
        blocks = [np.unique(np.asarray(b, np.int64)) for b in blocks]
        cleaned = []
        for b, c in zip(blocks, columns):
            c = np.unique(np.asarray(c, np.int64))
            cleaned.append(c[~np.isin(c // block, b)])
        bo, bi = _csr(blocks, nqb, "key blocks")
        co, ci = _csr(cleaned, nqb, "key columns")
        return cls(nq, nk, block, bo, bi, co, ci)

    @classmethod
    def dense(cls, nq, nk, *, block=64, causal=True) -> IndexSet:
        """Every key block a (causal) query block can see: the dense kernel as an index set."""
        nqb, nkb = -(-nq // block), -(-nk // block)
        mode = normalize_causal(causal)
        rows = []
        for qb in range(nqb):
            last_row = min((qb + 1) * block, nq) - 1
            if mode is None:
                hi = nkb
            else:
                limit = last_row + (nk - nq if mode == "bottom_right" else 0)
                hi = 0 if limit < 0 else min(nkb, limit // block + 1)
            rows.append(np.arange(hi))
        return cls.from_lists(nq, nk, rows, block=block)

    def __post_init__(self):
        """Check the invariants every kernel relies on; convert array-likes to int64 arrays.

        * ``nq, nk, block`` are positive integers;
        * offsets have ``n_query_blocks + 1`` entries, start at 0, never decrease
          and end at the number of indices;
        * indices are integers in range (key blocks < ceil(nk/block), columns < nk);
        * each query block's indices are sorted and free of duplicates;
        * no listed column lies inside a key block listed for the same query
          block (a kernel would count that key twice).

        :meth:`from_lists` builds a normalised set from unsorted lists
        (sorting, dropping duplicates and covered columns); the constructor
        itself refuses a set that breaks an invariant, with a ValueError
        that names it.
        """
        for name in ("nq", "nk", "block"):
            x = getattr(self, name)
            if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)) or x < 1:
                raise ValueError(f"IndexSet: {name} must be a positive integer, got {x!r}")
            object.__setattr__(self, name, int(x))
        for name in ("block_offsets", "block_indices", "column_offsets", "column_indices"):
            x = np.asarray(getattr(self, name))
            if x.ndim != 1:
                raise ValueError(f"IndexSet: {name} must be one-dimensional, got shape {x.shape}")
            if x.size and not np.issubdtype(x.dtype, np.integer):
                if not (np.issubdtype(x.dtype, np.floating) and np.all(x == np.round(x))):
                    raise ValueError(f"IndexSet: {name} must hold integers, got dtype {x.dtype}")
            x = np.ascontiguousarray(x, dtype=np.int64)
            x.flags.writeable = False
            object.__setattr__(self, name, x)
        nqb = self.n_query_blocks
        nkb = -(-self.nk // self.block)
        rows = {}
        for name, off, idx, hi in (
            ("block", self.block_offsets, self.block_indices, nkb),
            ("column", self.column_offsets, self.column_indices, self.nk),
        ):
            if off.shape != (nqb + 1,) or off[0] != 0 or off[-1] != len(idx) or np.any(np.diff(off) < 0):
                raise ValueError(f"IndexSet: malformed {name}_offsets {off!r} for {nqb} query blocks "
                                 f"(want {nqb + 1} non-decreasing entries from 0 to {len(idx)})")
            if len(idx) and (idx.min() < 0 or idx.max() >= hi):
                bad = int(idx[(idx < 0) | (idx >= hi)][0])
                raise ValueError(f"IndexSet: {name} index out of range [0, {hi}): {bad}")
            row = np.repeat(np.arange(nqb), np.diff(off))  # query block of each index
            same_row = row[1:] == row[:-1]
            bad = same_row & (np.diff(idx) <= 0)
            if bad.any():
                qb = int(row[1:][bad][0])
                raise ValueError(f"IndexSet: {name} indices of query block {qb} are not sorted and unique: "
                                 f"{idx[off[qb]:off[qb + 1]].tolist()}")
            rows[name] = row
        covered = np.isin(rows["column"] * nkb + self.column_indices // self.block,
                          rows["block"] * nkb + self.block_indices)
        if covered.any():
            i = int(np.argmax(covered))
            c, qb = int(self.column_indices[i]), int(rows["column"][i])
            raise ValueError(f"IndexSet: column {c} of query block {qb} lies inside key block {c // self.block}, "
                             f"which the same query block lists (it would be counted twice; "
                             f"IndexSet.from_lists drops such columns)")

    # ------------------------------------------------------------------ query
    @property
    def n_query_blocks(self) -> int:
        return -(-self.nq // self.block)

    def blocks_of(self, qb: int) -> np.ndarray:
        return self.block_indices[self.block_offsets[qb]:self.block_offsets[qb + 1]]

    def columns_of(self, qb: int) -> np.ndarray:
        return self.column_indices[self.column_offsets[qb]:self.column_offsets[qb + 1]]

    def to_mask(self, nq=None, nk=None, *, causal=True) -> np.ndarray:
        """Dense boolean (nq, nk) mask (True = computed), after the element causal mask."""
        nq = self.nq if nq is None else int(nq)
        nk = self.nk if nk is None else int(nk)
        if (nq, nk) != (self.nq, self.nk):
            raise ValueError(f"IndexSet was built for ({self.nq}, {self.nk}), asked for a ({nq}, {nk}) mask")
        mask = np.zeros((nq, nk), bool)
        b = self.block
        for qb in range(self.n_query_blocks):
            r0, r1 = qb * b, min((qb + 1) * b, nq)
            for kb in self.blocks_of(qb):
                mask[r0:r1, kb * b:min((kb + 1) * b, nk)] = True
            mask[r0:r1, self.columns_of(qb)] = True
        mode = normalize_causal(causal)
        if mode is not None:
            from refattn.reference import causal_mask

            mask &= causal_mask(nq, nk, mode)
        return mask

    # ------------------------------------------------------------------ costs
    @property
    def n_blocks(self) -> int:
        """Number of (query block x key block) tiles listed."""
        return int(len(self.block_indices))

    @property
    def n_strips(self) -> int:
        """Number of (query block x single column) strips listed (each ``block`` x 1)."""
        return int(len(self.column_indices))

    def density(self, *, causal=True) -> float:
        """Fraction of the (causally) visible entries that the mask computes."""
        from refattn.reference import causal_mask

        mask = self.to_mask(causal=causal)
        mode = normalize_causal(causal)
        visible = self.nq * self.nk if mode is None else int(causal_mask(self.nq, self.nk, mode).sum())
        return float(mask.sum()) / max(visible, 1)

    def computed_entries(self) -> int:
        """Score entries the kernel computes (whole tiles and strips, before masking)."""
        b = self.block
        total = 0
        for qb in range(self.n_query_blocks):
            rows = min((qb + 1) * b, self.nq) - qb * b
            cols = sum(min((kb + 1) * b, self.nk) - kb * b for kb in self.blocks_of(qb))
            total += rows * (cols + len(self.columns_of(qb)))
        return total

    def flops(self, d: int, dv: int | None = None) -> int:
        """Matmul FLOPs of a kernel running this set: 2 * entries * (d + dv)."""
        dv = d if dv is None else dv
        return 2 * self.computed_entries() * (d + dv)

    def __repr__(self) -> str:
        return (f"IndexSet(nq={self.nq}, nk={self.nk}, block={self.block}, "
                f"blocks={self.n_blocks}, strips={self.n_strips})")
