"""MInference's offline, kernel-aware pattern search (docs/algorithms.md, MInference).

For every head of a ``(heads, N, d)`` input, build each candidate pattern's
index set *on that head's own q, k* (online index building, as at inference),
run the sparse kernel, and score it by the relative Frobenius error of its
output against the dense FA2 kernel's output. The attention mass kept
(recall) is reported too; it comes from the two kernels' log-sum-exps with
no N x N matrix: for row i, ``kept_i = exp(lse_sparse_i - lse_dense_i)``.
The candidate with the smallest error wins (ties: the earlier candidate).

Cost is what the kernel computes: ``blocks + strips / block`` (a strip is a
``block x 1`` slice, so ``block`` strips cost one block), summed over query
blocks.

Default candidates and the scaling rule. The paper's candidates, with the
A-shape (1024 sink + 4096 local) as the budget::

    A-shape (1024, 4096); VS (30, 2048), (100, 1800), (500, 1500), (3000, 200); BS 100 blocks

They are meant for long inputs. For an input of N tokens every token count is
first multiplied by ``s = min(1, N / 32768)`` (the A-shape's parts stay at
least one block). The budget is the cost of that A-shape set (or ``budget=``,
in blocks). Then each other candidate is *matched to the budget*: VS keeps
the ratio of its two sizes and is scaled by one factor found by bisection
(8 halvings of a log range 1/16..16; the clamps 30/50 still apply, so it may
stay above the budget), and BS takes the largest ``top_k`` whose cost does
not exceed the budget (at least 1). Explicit ``candidates`` are used as
given: a list of ``(pattern, params)`` pairs.

Ties: as in the paper's shipped configs, VS wins most heads; on a planted
A-shape head a many-column VS set reaches about the same error at the same
cost, so either may be chosen (see :mod:`refattn.data.synthetic`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from refattn.patterns import build_index
from refattn.patterns.vertical_slash import MIN_SLASH, MIN_VERTICAL

PAPER_CANDIDATES = (
    ("a_shape", {"n_init": 1024, "n_local": 4096}),
    ("vertical_slash", {"vertical_size": 30, "slash_size": 2048}),
    ("vertical_slash", {"vertical_size": 100, "slash_size": 1800}),
    ("vertical_slash", {"vertical_size": 500, "slash_size": 1500}),
    ("vertical_slash", {"vertical_size": 3000, "slash_size": 200}),
    ("block_sparse", {"top_k": 100}),
)
PAPER_N = 32768


def cost(index_set) -> float:
    """In-kernel cost in blocks: blocks + strips / block."""
    return index_set.n_blocks + index_set.n_strips / index_set.block


@dataclass
class HeadConfig:
    pattern: str
    params: dict
    error: float
    recall: float
    cost_blocks: int
    cost_strips: int
    candidates: list = field(default_factory=list)  # every candidate tried: dicts like this one


@dataclass
class PatternConfig:
    """Per-head pattern choice; saves to and loads from JSON."""

    heads: list
    n: int
    block: int = 64
    budget: float | None = None

    def __len__(self):
        return len(self.heads)

    def __getitem__(self, h) -> HeadConfig:
        return self.heads[h]

    @property
    def patterns(self) -> list:
        return [h.pattern for h in self.heads]

    def to_json(self) -> str:
        return json.dumps({"n": self.n, "block": self.block, "budget": self.budget,
                           "heads": [asdict(h) for h in self.heads]}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> PatternConfig:
        data = json.loads(text)
        try:
            heads = [HeadConfig(**h) for h in data["heads"]]
            return cls(heads, int(data["n"]), int(data.get("block", 64)), data.get("budget"))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a PatternConfig JSON: {exc}") from None

    def save(self, path) -> Path:
        path = Path(path)
        path.write_text(self.to_json())
        return path

    @classmethod
    def load(cls, path) -> PatternConfig:
        return cls.from_json(Path(path).read_text())


def _vs_matched(q, k, params, target, block, scale, s):
    v0, s0 = params["vertical_size"] * s, params["slash_size"] * s

    def build(f):
        p = {"vertical_size": max(MIN_VERTICAL, int(round(v0 * f))), "slash_size": max(MIN_SLASH, int(round(s0 * f)))}
        return p, cost(build_index("vertical_slash", q, k, p, block=block, scale=scale).index_set)

    lo, hi = np.log(1 / 16), np.log(16)
    best = None
    for _ in range(8):
        mid = 0.5 * (lo + hi)
        p, c = build(np.exp(mid))
        if c <= target:
            lo, best = mid, p
        else:
            hi = mid
    return best if best is not None else build(np.exp(lo))[0]


def _bs_matched(q, k, target, block, scale):
    nkb = -(-k.shape[0] // block)
    lo, hi = 1, nkb
    while lo < hi:  # largest top_k with cost <= target
        mid = (lo + hi + 1) // 2
        if cost(build_index("block_sparse", q, k, {"top_k": mid}, block=block, scale=scale).index_set) <= target:
            lo = mid
        else:
            hi = mid - 1
    return {"top_k": lo}


def default_candidates(q, k, *, block=64, budget=None, scale=None):
    """The paper's candidates for single-head q, k, scaled and cost-matched (module docstring)."""
    n = k.shape[0]
    s = min(1.0, n / PAPER_N)
    a = {"n_init": max(block, int(round(1024 * s))), "n_local": max(block, int(round(4096 * s)))}
    target = cost(build_index("a_shape", q, k, a, block=block).index_set) if budget is None else float(budget)
    out = [("a_shape", a)]
    for name, params in PAPER_CANDIDATES[1:]:
        if name == "vertical_slash":
            out.append((name, _vs_matched(q, k, params, target, block, scale, s)))
        else:
            out.append((name, _bs_matched(q, k, target, block, scale)))
    return out, target


def search_patterns(q, k, v, *, candidates=None, budget=None, progress=True, block=64, scale=None,
                    sram="a100") -> PatternConfig:
    """Pick a pattern per head of causal ``(heads, N, d)`` inputs (see the module docstring)."""
    from tqdm.auto import tqdm

    from refattn.kernels.flash import flash_forward
    from refattn.kernels.sparse import sparse_forward

    q, k, v = (np.asarray(x) for x in (q, k, v))
    if q.ndim != 3 or k.ndim != 3 or v.ndim != 3:
        raise ValueError(f"search_patterns: q, k, v must be (heads, N, d), got {q.shape}, {k.shape}, {v.shape}")
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise ValueError(f"search_patterns: q, k, v must have the same number of heads, got "
                         f"{q.shape[0]}, {k.shape[0]}, {v.shape[0]}")
    heads = q.shape[0]
    bar = tqdm(total=heads * (len(candidates) if candidates is not None else len(PAPER_CANDIDATES)),
               desc="pattern search", disable=None if progress else True, unit="cand")
    out, target = [], budget
    for h in range(heads):
        dense = flash_forward(q[h], k[h], v[h], sram=sram, variant="fa2", causal=True, scale=scale,
                              block=(min(block, q.shape[1]), min(block, k.shape[1])))
        o_d = dense.o.astype(np.float64)
        lse_d = dense.lse.astype(np.float64)
        if candidates is None:
            cands, target = default_candidates(q[h], k[h], block=block, budget=budget, scale=scale)
        else:
            cands = [(name, dict(params)) for name, params in candidates]
        tried = []
        for name, params in cands:
            iset = build_index(name, q[h], k[h], params, block=block, scale=scale).index_set
            sp = sparse_forward(q[h], k[h], v[h], iset, sram=sram, causal=True, scale=scale)
            err = float(np.linalg.norm(sp.o.astype(np.float64) - o_d) / max(np.linalg.norm(o_d), 1e-300))
            with np.errstate(invalid="ignore"):
                kept = np.where(np.isneginf(lse_d), 1.0, np.exp(sp.lse.astype(np.float64) - lse_d))
            tried.append({"pattern": name, "params": params, "error": err, "recall": float(kept.mean()),
                          "cost_blocks": iset.n_blocks, "cost_strips": iset.n_strips})
            bar.update(1)
        best = min(range(len(tried)), key=lambda i: (tried[i]["error"], i))
        out.append(HeadConfig(**tried[best], candidates=tried))
    bar.close()
    return PatternConfig(out, int(k.shape[1]), block, None if target is None else float(target))
