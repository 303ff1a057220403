"""The one kernel contract: Plan, StepState, KernelResult (specification: docs/contract.md).

Every simulated kernel builds a :class:`Plan` in Python before any work starts,
numbers its steps 1..``plan.n_steps``, refuses a bad ``stop_after`` through
:meth:`Plan.check_stop_after`, and returns a :class:`KernelResult` whose
``state`` is a :class:`StepState` when the run stopped early.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from refattn import memory

SlotContent = memory.SlotContent  # defined with the trace that replays it (memory.Trace.sram_at)

__all__ = ["Plan", "StepState", "KernelResult", "SlotContent"]


@dataclass(frozen=True)
class Plan:
    """Block sizes, tile counts, on-chip footprint per slot and the step definition of one run.

    ``footprint`` maps slot name -> elements at the kernel's peak; their sum must
    fit M (:meth:`require_fits`). ``step`` says in words what one step is.
    """

    kernel: str
    blocks: dict
    tiles: dict
    footprint: dict
    M: int
    n_steps: int
    step: str
    details: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """The plan as one flat dict of numbers and words (for tables and the app)."""
        out = {"kernel": self.kernel, **self.blocks, **self.tiles, "n_steps": self.n_steps, "M": self.M,
               "on_chip": self.on_chip}
        out.update({k: v for k, v in self.details.items() if isinstance(v, (int, float, str, bool))})
        return out

    @property
    def on_chip(self) -> int:
        """Elements on chip at the peak (the sum of the footprint)."""
        return int(sum(self.footprint.values()))

    def require_fits(self, what: str | None = None) -> None:
        """Refuse the plan (:class:`refattn.memory.SramTooSmall`) if its footprint exceeds M."""
        if self.on_chip > self.M:
            parts = ", ".join(f"{k} {v}" for k, v in self.footprint.items() if v)
            raise memory.SramTooSmall(
                f"SRAM too small: {what or self.kernel} needs {self.on_chip} elements on chip ({parts}), "
                f"but M = {self.M} elements"
            )

    def check_stop_after(self, stop_after) -> None:
        """``stop_after`` must be None or an integer in [1, n_steps]: the one check every kernel uses."""
        if stop_after is None:
            return
        ok = (not isinstance(stop_after, bool) and isinstance(stop_after, (int, np.integer))
              and 1 <= stop_after <= self.n_steps)
        if not ok:
            raise ValueError(f"{self.kernel}: stop_after must be an integer between 1 and "
                             f"n_steps = {self.n_steps}, got {stop_after!r}")


@dataclass
class StepState:
    """A stopped run's state after step ``step`` (1-based); see docs/contract.md for the fields."""

    step: int
    phase: str
    head: int
    rows: tuple[int, int]
    cols: tuple[int, int]
    sram: dict  # {slot name: SlotContent}
    traffic: memory.Traffic
    arrays: dict = field(default_factory=dict)


@dataclass
class KernelResult:
    """Outputs of one simulated kernel run with its counters (docs/contract.md).

    ``outputs`` holds the arrays by name (``o``, ``lse``; ``dq``, ``dk``, ``dv``),
    also reachable as attributes (``result.o``). After a full run ``stopped`` is
    False and ``state`` None. ``n_steps`` is the number of steps the run did
    (``plan.n_steps`` for a full run, k for ``stop_after=k``). Engine kernels
    set ``cycles``.
    """

    outputs: dict
    traffic: memory.Traffic
    peak_sram: int
    sram: memory.Sram
    flops: int
    exps: int
    n_steps: int
    plan: Plan
    trace: memory.Trace | None = None
    state: StepState | None = None
    stopped: bool = False
    cycles: dict | None = None

    def __getattr__(self, name):
        outputs = self.__dict__.get("outputs", {})
        if name in outputs:
            return outputs[name]
        raise AttributeError(name)

    def simulated_time(self, chip=None) -> dict:
        """Roofline time (see :func:`refattn.memory.simulated_time`) on ``chip`` (default: the SRAM's chip)."""
        chip = chip or self.sram.chip
        if chip is None:
            raise ValueError("no chip given and the SRAM was not built from a chip preset")
        return memory.simulated_time(self.traffic, self.flops, chip, exps=self.exps)
