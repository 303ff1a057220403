"""Four verdicts on the same draws: refattn's dtype rule and the big projects' own test protocols.

The kit passes or fails a kernel by refattn's rule (:mod:`refattn.testing.tolerance`).
Beside it, every drawn problem is also judged the way three projects judge
their own attention kernels in CI, so an author sees where the kernel would
stand there. Each rule is restated in docs/testing.md with its source; in short,
for the output ``o`` of one problem:

* **FlashAttention** (Dao-AILab/flash-attention, ``tests/test_flash_attn.py``
  and ``hopper/test_flash_attn.py``): ``ref`` is the naive attention computed
  with the inputs upcast to float32 and cast back to the dtype; ``pt`` is a
  plain implementation in the input dtype with the scale applied to q first.
  Pass when ``max|o - ref| <= 2 * max|pt - ref| + atol`` with
  ``atol = 2 * max|(ref + 0.3 - 0.3) - ref|`` evaluated in the dtype (the
  rounding of one add; FlashAttention-3's form, FlashAttention-2 has no atol).
* **FlexAttention** (pytorch, ``test/inductor/test_flex_attention.py``):
  a float64 golden output and an eager reference in the input dtype. Pass when
  ``mean|o - golden| <= fudge * mean|eager - golden| + 1e-7`` with fudge 1.1
  for float16/bfloat16 and 10 for float32 (and float64); NaN fails.
* **PyTorch SDPA** (pytorch, ``test/test_transformers.py``, ``_check_equal``):
  golden float64, reference in the input dtype. Pass when
  ``max|o - golden| <= max(1e-5, 5 * max|ref - golden|)``; NaN in ``o`` fails.

The float64 golden is refattn's reference. The "plain same-dtype
implementation" the three rules measure against is :func:`plain_attention`:
scores, probabilities and output each rounded to the dtype, with float32
arithmetic underneath for float32 and the 16-bit dtypes (a GPU's float32
accumulation), float64 for float64. Adaptations for dtypes the projects do
not test (float32 in FlashAttention, float64 anywhere) are in docs/testing.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from refattn.testing.strategies import Problem, cast
from refattn.variants import alibi_bias

FLEX_FUDGE = {"float16": 1.1, "bfloat16": 1.1, "float32": 10.0, "float64": 10.0}
FLEX_ATOL = 1e-7
SDPA_FUDGE = 5.0
SDPA_ATOL = 1e-5  # torch's default float32 atol, which _check_equal uses for every dtype
FA_RTOL = 2.0


def _scale(p: Problem) -> float:
    return 1.0 / math.sqrt(p.d) if p.scale is None else p.scale


def _naive(q, k, v, keep, scale, work, round_to=None, softcap=None, bias=None):
    """Naive attention in arithmetic ``work``; ``round_to``: round scores, probabilities and output to that dtype.

    ``softcap`` and ``bias`` (ALiBi) as in docs/variants.md: cap, then bias, then the mask."""
    r = (lambda x: cast(x, round_to).astype(work)) if round_to else (lambda x: x)
    q, k, v = (np.asarray(x, work) for x in (q, k, v))
    if round_to:  # the plain implementation: scale q first (FlashAttention's reordered reference)
        s = r(r(q * work(scale)) @ np.swapaxes(k, -1, -2))
    else:
        s = (q @ np.swapaxes(k, -1, -2)) * work(scale)
    if softcap:
        s = r((work(softcap) * np.tanh(s / work(softcap))).astype(work))
    if bias is not None:
        s = r((s + np.asarray(bias, work)).astype(work))
    s = np.where(keep, s, -np.inf)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        m = np.max(s, axis=-1, keepdims=True)
        m = np.where(np.isfinite(m), m, 0.0).astype(work)
        e = np.exp(s - m)
        total = e.sum(axis=-1, keepdims=True)
        prob = r(np.where(total > 0, e / np.where(total > 0, total, 1), 0.0).astype(work))
        o = r(prob @ v)
    return np.asarray(o, np.float64)


def _inputs(p: Problem):
    """``(q, k, v, keep, scale)`` and the variant keywords of :func:`_naive` (GQA's KV heads repeated)."""
    k, v = p.kv_per_query_head()
    slopes = p.variants.get("alibi_slopes")
    bias = None if slopes is None else alibi_bias(slopes, p.nq, p.nk)
    return (p.q, k, v, p.keep(), _scale(p)), dict(softcap=p.variants.get("softcap") or None, bias=bias)


def plain_attention(p: Problem) -> np.ndarray:
    """``o`` as a plain implementation in the problem's dtype computes it (fully masked rows: 0)."""
    work = np.float64 if p.dtype == "float64" else np.float32
    args, kw = _inputs(p)
    return _naive(*args, work, round_to=None if p.dtype == "float64" else p.dtype, **kw)


def upcast_reference(p: Problem, golden: np.ndarray) -> np.ndarray:
    """FlashAttention's ``ref``: computed in float32 (float64 for 32/64-bit inputs), cast to the dtype."""
    if p.dtype in ("float16", "bfloat16"):
        args, kw = _inputs(p)
        ref = _naive(*args, np.float32, **kw)
    else:
        ref = golden
    return cast(ref, p.dtype).astype(np.float64)


def _ratio(error, allowed):
    if np.isnan(error):
        return math.inf
    if allowed <= 0:
        return 0.0 if error == 0 else math.inf
    return float(error / allowed)


def _rows(x, skip):
    """The elements of ``x`` (…, Nq, dv) outside the skipped rows, flattened."""
    x = np.asarray(x, np.float64)
    if skip is None or not skip.any():
        return x.reshape(-1)
    keep = ~np.broadcast_to(skip[..., None], x.shape)
    return x[keep]


def judge(p: Problem, o, golden, refattn_ratio: float, skip=None) -> tuple[dict, bool]:
    """``{protocol: error / allowed}`` for one problem's output (a ratio above 1 fails), and whether ``o``
    holds a NaN outside the skipped rows (an infinite ratio then says so, not "no error allowed")."""
    o, gold = _rows(o, skip), _rows(golden, skip)
    if o.size == 0:
        return {name: 0.0 for name in PROTOCOLS}, False
    plain = _rows(plain_attention(p), skip)
    ref = _rows(upcast_reference(p, golden), skip)
    nan = bool(np.isnan(o).any())
    with np.errstate(invalid="ignore", over="ignore"):
        fa_atol = 2 * float(np.max(np.abs(cast(cast(ref + 0.3, p.dtype) - 0.3, p.dtype) - ref)))
        fa = _ratio(np.nan if nan else np.max(np.abs(o - ref)), FA_RTOL * np.max(np.abs(plain - ref)) + fa_atol)
        flex = _ratio(np.nan if nan else np.mean(np.abs(o - gold)),
                      FLEX_FUDGE[p.dtype] * np.mean(np.abs(plain - gold)) + FLEX_ATOL)
        sdpa = _ratio(np.nan if nan else np.max(np.abs(o - gold)),
                      max(SDPA_ATOL, SDPA_FUDGE * float(np.max(np.abs(plain - gold)))))
    return {"refattn": refattn_ratio, "FlashAttention": fa, "FlexAttention": flex, "PyTorch SDPA": sdpa}, nan


PROTOCOLS = {
    "refattn": "|o - ref64| <= c*eps(dtype)*(1 + L + sqrt(Nk))*max|v| per element (the kit's verdict)",
    "FlashAttention": "max|o - ref32| <= 2*max|plain - ref32| + 2*rounding(ref)",
    "FlexAttention": "mean|o - ref64| <= fudge*mean|plain - ref64| + 1e-7 (fudge 1.1 fp16/bf16, 10 fp32)",
    "PyTorch SDPA": "max|o - ref64| <= max(1e-5, 5*max|plain - ref64|)",
}


@dataclass
class Verdict:
    """One protocol's verdict over every judged problem."""

    name: str
    judged: int = 0
    failed: int = 0
    worst: float = 0.0
    worst_problem: str = ""
    first_failure: str = ""
    worst_is_nan: bool = False  # the worst draw's o held a NaN (else an infinite ratio means: no error allowed)

    def add(self, ratio: float, problem: Problem, nan: bool = False):
        self.judged += 1
        if ratio > 1.0:
            self.failed += 1
            if not self.first_failure:
                self.first_failure = problem.describe()
        if ratio > self.worst or not self.worst_problem:
            self.worst, self.worst_problem, self.worst_is_nan = ratio, problem.describe(), nan

    @property
    def passed(self) -> bool:
        return self.failed == 0

    def text(self) -> str:
        if not self.judged:
            return f"{self.name:<15} -     no draw judged"
        word = "PASS" if self.passed else "FAIL"
        if math.isinf(self.worst):
            worst = "inf (NaN in o)" if self.worst_is_nan else "inf (an error where this rule allows none)"
        else:
            worst = f"{self.worst:.3g}"
        line = (f"{self.name:<15} {word}  passes on {self.judged - self.failed} of {self.judged} draws; "
                f"worst error/allowed {worst}")
        if not self.passed:
            line += f"\n{'':<22}first failing draw: {self.first_failure}"
        return line


class Verdicts:
    """The four :class:`Verdict` objects of one run."""

    def __init__(self):
        self.by_name = {name: Verdict(name) for name in PROTOCOLS}

    def add(self, ratios: dict, nan: bool, problem: Problem):
        for name, ratio in ratios.items():
            self.by_name[name].add(ratio, problem, nan)

    def __getitem__(self, name) -> Verdict:
        return self.by_name[name]

    def text(self) -> str:
        lines = ["verdicts on the same draws (output o; docs/testing.md gives each rule and its source):"]
        for name, verdict in self.by_name.items():
            lines.append("  " + verdict.text())
            lines.append(f"  {'':<15} rule: {PROTOCOLS[name]}")
        return "\n".join(lines)
