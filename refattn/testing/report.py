"""What a conformance run found: the failure (if any), the four verdicts and the semantics sheet."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from refattn.testing.protocols import Verdicts
from refattn.testing.strategies import TILE_WIDTHS, Capabilities, Problem

FAILURE_KINDS = ("crash", "shape", "dtype", "mutation", "nonfinite", "mismatch", "nondeterministic")


@dataclass
class Failure:
    """What went wrong on one problem."""

    problem: Problem
    kind: str  # one of FAILURE_KINDS
    output: str = ""  # "o", "lse", "dq", "dk", "dv"
    message: str = ""
    convention: str | None = None  # the named convention difference, if any
    index: tuple | None = None  # index of the worst element in the output
    got: float | None = None
    want: float | None = None
    error: float | None = None
    allowed: float | None = None
    rule: str = ""
    raw: tuple | None = field(default=None, repr=False)  # the kernel's (o, lse), for the diagnosis


@dataclass
class Semantics:
    """What the run established about the kernel (counted on draws that passed every check)."""

    returns: str | None = None  # "o" or "(o, lse)"
    dtypes: dict = field(default_factory=dict)  # input dtype -> (o dtype, lse dtype or None)
    sizes: dict = field(default_factory=lambda: {"nq": [], "nk": [], "d": [], "dv": []})
    causal: Counter = field(default_factory=Counter)  # alignment -> draws with Nq != Nk
    empty_rows: int = 0
    lse: int = 0
    default_scale: int = 0
    explicit_scale: int = 0
    deterministic: int = 0
    unchanged_inputs: int = 0
    gradients: int = 0
    masks: int = 0
    variants: Counter = field(default_factory=Counter)  # variant keyword -> draws that used it
    established: dict = field(default_factory=dict)  # subject -> a finding from a failure's diagnosis

    def record(self, p: Problem, lse_checked: bool, repeated: bool, gradients: bool, empty_rows: bool):
        for name, value in (("nq", p.nq), ("nk", p.nk), ("d", p.d), ("dv", p.dv)):
            self.sizes[name].append(value)
        if p.causal and p.nq != p.nk:
            self.causal[p.causal] += 1
        self.empty_rows += bool(empty_rows)
        self.lse += bool(lse_checked)
        if p.scale is None and p.d > 1:
            self.default_scale += 1
        elif p.scale is not None:
            self.explicit_scale += 1
        self.deterministic += bool(repeated)
        self.gradients += bool(gradients)
        self.masks += p.mask is not None
        for name in p.variants:
            self.variants[name] += 1

    def _size_text(self):
        if not self.sizes["nq"]:
            return "no draw passed"
        span = ", ".join(f"{name} {min(v)}..{max(v)}" for name, v in self.sizes.items())
        nk = np.array(self.sizes["nk"])
        crossed = [t for t in TILE_WIDTHS if (nk > t).any()]
        tiles = ", ".join(f"{t} ({int((nk > t).sum())})" for t in crossed) or "none"
        return f"{span}; draws with Nk past a tile width: {tiles}"

    def lines(self, cap: Capabilities, fully_masked_policy: str) -> list[str]:
        est = self.established
        rows = []
        ret = self.returns or "not seen"
        if self.returns == "(o, lse)":
            ret += f"; lse in natural-log units ({self.lse} draws)"
        rows.append(("returns", est.get("returns", ret)))
        if not cap.causal:
            causal = "not claimed (causal=False only)"
        else:
            rule = {"bottom_right": "j <= i + Nk - Nq", "top_left": "j <= i"}
            causal = "; ".join(f"{a}: {rule[a]} ({self.causal[a]} draws with Nq != Nk)" for a in cap.causal)
        rows.append(("causal alignment", est.get("causal alignment", causal)))
        zero = "o = 0, lse = -inf" if self.returns == "(o, lse)" else "o = 0"
        policy = {"zero": zero, "nan": "NaN (declared; those rows not compared)",
                  "unsupported": "never given (declared unsupported)"}[fully_masked_policy]
        rows.append(("fully masked rows", est.get("fully masked rows",
                                                  f"{policy} ({self.empty_rows} draws with such rows)")))
        if cap.scale:
            scale = f"default 1/sqrt(d) ({self.default_scale} draws); explicit scale honoured ({self.explicit_scale})"
        else:
            scale = f"default 1/sqrt(d) ({self.default_scale} draws); no scale argument claimed"
        rows.append(("scale", est.get("scale", scale)))
        if cap.masks or "masks" in est:
            rows.append(("masks", est.get("masks", f"boolean keep-mask, True = attend ({self.masks} draws)")))
        if cap.variants or "variants" in est:
            seen = "; ".join(f"{name} ({n} draws)" for name, n in sorted(self.variants.items())) or "none drawn"
            rows.append(("variants", est.get("variants", f"refattn's conventions (docs/variants.md): {seen}")))
        dt = "; ".join(f"{k} -> o {o}" + (f", lse {lse}" if lse else "") for k, (o, lse) in self.dtypes.items())
        rows.append(("dtypes", est.get("dtypes", dt or "not seen")))
        rows.append(("sizes", self._size_text()))
        det = f"bitwise repeatable ({self.deterministic} draws)" if cap.deterministic else "not checked (waived)"
        rows.append(("determinism", est.get("determinism", det)))
        rows.append(("inputs", est.get("inputs", f"never modified ({self.unchanged_inputs} calls)")))
        if self.gradients or "gradients" in est:
            rows.append(("gradients", est.get("gradients", f"dq, dk, dv agree ({self.gradients} draws)")))
        return [f"  {name:<18} {text}" for name, text in rows]


@dataclass
class ConformanceReport:
    """The outcome of :func:`~refattn.testing.check_attention`; ``str(report)`` is the readable text."""

    name: str
    capabilities: Capabilities
    examples: int = 0
    coverage: Counter = field(default_factory=Counter)
    failure: Failure | None = None
    verdicts: Verdicts = field(default_factory=Verdicts)
    semantics: Semantics = field(default_factory=Semantics)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.failure is None

    def headline(self) -> str:
        if self.passed:
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.coverage.items()))
            return (f"PASS {self.name}: {self.examples} examples agree with the float64 reference ({kinds}) "
                    f"in {self.seconds:.1f} s")
        f = self.failure
        return f"FAIL {self.name}: {f.kind}" + (f" ({f.convention})" if f.convention else "")

    def text(self, details: bool = True) -> str:
        lines = [self.headline()]
        if not self.passed:
            f = self.failure
            lines.append(f"  minimal example: {f.problem.describe()}")
            lines += ["  " + line for line in f.message.splitlines()]
            if f.rule:
                lines.append(f"  tolerance: {f.rule}")
            lines += ["  " + line for line in _arrays_text(f.problem).splitlines()]
        if details:
            lines.append(self.verdicts.text())
            lines.append("semantics established (counted on draws that passed every check):")
            lines += self.semantics.lines(self.capabilities, self.capabilities.fully_masked_rows)
        return "\n".join(lines)

    def __str__(self):
        return self.text()


def _arrays_text(p: Problem, limit=48) -> str:
    """The minimal example's arrays, when they are small enough to read."""
    parts = []
    for name in ("q", "k", "v"):
        x = getattr(p, name)
        if x.size > limit:
            text = "(arrays too large to print: report.failure.problem holds them"
            if p.mask is None:
                text += (f"; or rebuild them with refattn.testing.make_problem(dtype={p.dtype!r}, lead={p.lead}, "
                         f"nq={p.nq}, nk={p.nk}, d={p.d}, dv={p.dv}, causal={p.causal!r}, values={p.values!r}, "
                         f"scale={p.scale!r}, seed={p.seed})")
            return text + ")"
        parts.append(f"{name} = {np.array2string(x, precision=4, separator=', ')}")
    if p.mask is not None and p.mask.size <= 4 * limit:
        parts.append(f"mask = {np.array2string(p.mask.astype(int), separator=', ')}")
    return "\n".join(parts)
