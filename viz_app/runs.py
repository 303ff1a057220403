"""Cached calls into refattn: the app only draws, every number comes from a run here.

Each function takes plain values and arrays (hashable by ``st.cache_data``) and
returns refattn's own objects (KernelResult, Trace, Traffic). Stepping uses one
traced full run per setting (the figures for step k are replayed from its
trace) plus, for the running m / l / partial O of the current rows, the
kernel's own ``stop_after=k`` state (steps are 1-based; step 0 is before the run).
"""

from __future__ import annotations

import importlib

import numpy as np
import streamlit as st

import refattn
from refattn.memory import Sram


def available(name: str) -> bool:
    """Is ``refattn.<name>`` (a public API name) importable yet?"""
    try:
        getattr(refattn, name)
    except (ImportError, AttributeError):
        return False
    return True


def module_available(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


@st.cache_data(max_entries=32, show_spinner="preparing inputs...")
def generated_inputs(source: str, n: int, d: int, seed: int):
    """(q, k, v) from a generated source ('random', 'structured', 'real'); see viz_app.inputs.make_inputs."""
    from viz_app.inputs import make_inputs

    return make_inputs(source, n, d, seed=seed)


def _forward_fn(kernel: str):
    return refattn.flash_forward if kernel == "flash" else refattn.standard_forward


def _forward_kwargs(kernel, m, variant, causal, block):
    kw = dict(sram=Sram(int(m)), causal=causal)
    if kernel == "flash":
        kw["variant"] = variant
        if block:
            kw["block"] = block
    return kw


@st.cache_data(max_entries=32, show_spinner="running the kernel (traced)...")
def forward_run(kernel: str, q: np.ndarray, k: np.ndarray, v: np.ndarray, m: int,
                variant: str = "fa2", causal: bool = False, block=None):
    """One traced forward run of the flash or standard kernel."""
    return _forward_fn(kernel)(q, k, v, trace=True, **_forward_kwargs(kernel, m, variant, causal, block))


@st.cache_data(max_entries=256, show_spinner=False)
def forward_state(kernel: str, q, k, v, m: int, variant: str, causal: bool, stop_after: int, block=None):
    """The kernel's state after ``stop_after`` steps (None if it finished before)."""
    res = _forward_fn(kernel)(q, k, v, stop_after=int(stop_after), **_forward_kwargs(kernel, m, variant, causal, block))
    return res.state


@st.cache_data(max_entries=64, show_spinner="counting traffic...")
def forward_counts(kernel: str, n: int, d: int, m: int, variant: str = "fa2", causal: bool = False,
                   block=None, seed: int = 0):
    """(traffic, flops, plan) of one untraced forward run on random (n, d) inputs."""
    from refattn.data import random_qkv

    q, k, v = random_qkv(n, d, seed=seed)
    res = _forward_fn(kernel)(q, k, v, **_forward_kwargs(kernel, m, variant, causal, block))
    return res.traffic, res.flops, res.plan


def _backward_inputs(q, k, v, m, causal, seed=1):
    fwd = refattn.flash_forward(q, k, v, sram=Sram(int(m)), causal=causal)
    do = np.random.default_rng(seed).standard_normal(fwd.o.shape).astype(q.dtype)
    return fwd.o, fwd.lse, do


@st.cache_data(max_entries=16, show_spinner="running the backward kernel (traced)...")
def backward_run(kernel: str, q, k, v, m: int, causal: bool = False):
    """One traced backward run (flash with recomputation, or standard)."""
    o, lse, do = _backward_inputs(q, k, v, m, causal)
    if kernel == "flash":
        return refattn.flash_backward(q, k, v, o, lse, do, sram=Sram(int(m)), causal=causal, trace=True)
    return refattn.standard_backward(q, k, v, o, do, sram=Sram(int(m)), causal=causal, trace=True)


@st.cache_data(max_entries=16, show_spinner="counting backward traffic...")
def backward_counts(kernel: str, n: int, d: int, m: int, causal: bool = False, seed: int = 0):
    from refattn.data import random_qkv

    q, k, v = random_qkv(n, d, seed=seed)
    o, lse, do = _backward_inputs(q, k, v, m, causal)
    if kernel == "flash":
        res = refattn.flash_backward(q, k, v, o, lse, do, sram=Sram(int(m)), causal=causal)
    else:
        res = refattn.standard_backward(q, k, v, o, do, sram=Sram(int(m)), causal=causal)
    return res.traffic, res.flops
