"""Cached calls into refattn: the app only draws, every number comes from a run here.

Each function takes plain values and arrays (hashable by ``st.cache_data``) and
returns refattn's own objects (KernelResult, StepState) or the numbers of
refattn.bench.sweeps. Stepping uses one traced full run per setting, sent once
to the browser (viz_app.playback), plus, for the running m / l / partial O, the
kernel's own ``stop_after=k`` states of one block's steps (steps are 1-based;
position 0 is before the run).
"""

from __future__ import annotations

import numpy as np
import streamlit as st

import refattn
from refattn.bench import sweeps
from refattn.memory import Sram


@st.cache_data(max_entries=32, show_spinner="preparing inputs...")
def generated_inputs(source: str, n: int, d: int, seed: int):
    """(q, k, v) from a generated source ('random', 'structured', 'real'); see viz_app.inputs.make_inputs."""
    from viz_app.inputs import make_inputs

    return make_inputs(source, n, d, seed=seed)


def _forward_fn(kernel: str):
    return refattn.flash_forward if kernel == "flash" else refattn.standard_forward


def _forward_kwargs(kernel, m, variant, causal, block, window=None):
    kw = dict(sram=Sram(int(m)), causal=causal)
    if kernel == "flash":
        kw["variant"] = variant
        if block:
            kw["block"] = block
        if window is not None:
            kw["window"] = tuple(window)
    elif window is not None:
        raise ValueError("the standard kernel takes no window")
    return kw


@st.cache_data(max_entries=32, show_spinner=False)
def forward_run(kernel: str, q: np.ndarray, k: np.ndarray, v: np.ndarray, m: int,
                variant: str = "fa2", causal: bool = False, block=None, window=None):
    """One traced forward run of the flash or standard kernel (``window=(left, right)``: flash only)."""
    return _forward_fn(kernel)(q, k, v, trace=True, **_forward_kwargs(kernel, m, variant, causal, block, window))


@st.cache_data(max_entries=64, show_spinner=False)
def forward_states(q, k, v, m: int, variant: str, causal: bool, steps: tuple, block=None, window=None):
    """{step: StepState} of the flash kernel stopped after each of ``steps`` (its own stop_after states)."""
    kw = _forward_kwargs("flash", m, variant, causal, block, window)
    return {int(s): refattn.flash_forward(q, k, v, stop_after=int(s), **kw).state for s in steps}


@st.cache_data(max_entries=32, show_spinner=False)
def forward_counts(q, k, v, m: int, variant: str, causal: bool, window=None, heads: int = 1,
                   num_kv_heads=None):
    """The flash kernel's counted traffic (count_only) of this setting with ``heads`` query heads and
    ``num_kv_heads`` KV heads (None: as many as query heads), the page's one head repeated (traffic does not
    depend on the values)."""
    hkv = heads if num_kv_heads is None else num_kv_heads
    qh, kh, vh = (np.ascontiguousarray(np.broadcast_to(x, (h,) + x.shape)) for x, h in ((q, heads), (k, hkv),
                                                                                           (v, hkv)))
    kw = _forward_kwargs("flash", m, variant, causal, None, window)
    return refattn.flash_forward(qh, kh, vh, count_only=True, num_kv_heads=num_kv_heads, **kw).traffic


def _backward_inputs(q, k, v, m, causal, seed=1):
    fwd = refattn.flash_forward(q, k, v, sram=Sram(int(m)), causal=causal)
    do = np.random.default_rng(seed).standard_normal(fwd.o.shape).astype(q.dtype)
    return fwd.o, fwd.lse, do


@st.cache_data(max_entries=16, show_spinner=False)
def backward_run(kernel: str, q, k, v, m: int, causal: bool = False):
    """One traced backward run (flash with recomputation, or standard)."""
    o, lse, do = _backward_inputs(q, k, v, m, causal)
    if kernel == "flash":
        return refattn.flash_backward(q, k, v, o, lse, do, sram=Sram(int(m)), causal=causal, trace=True)
    return refattn.standard_backward(q, k, v, o, do, sram=Sram(int(m)), causal=causal, trace=True)


@st.cache_data(max_entries=16, show_spinner="counting the sweeps (refattn.bench.sweeps)...")
def io_sweeps(d: int, m: int, variant: str, chip: str, ns: tuple, ms: tuple, n_for_m: int):
    """(N sweep, M sweep) of refattn.bench.sweeps: counted forward traffic of both kernels."""
    return (sweeps.n_sweep(ns, d, m, variant=variant, chip=chip),
            sweeps.m_sweep(n_for_m, d, ms, variant=variant, chip=chip))


@st.cache_data(max_entries=4, show_spinner="running Figure 2 (one head, forward + backward)...")
def figure2():
    return sweeps.figure2()


@st.cache_data(max_entries=4, show_spinner="running the block sweep...")
def block_sweep(blocks: tuple):
    return sweeps.block_sweep(blocks=blocks)
