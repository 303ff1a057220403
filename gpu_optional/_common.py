"""Shared helpers for the Triton kernels: input checks, shapes, configs.

Everything here imports torch and triton; ``gpu_optional/__init__.py`` imports
this module only when a kernel is first used.
"""

from __future__ import annotations

import math
import os

import torch
import triton
from triton.tools.tensor_descriptor import TensorDescriptor

from refattn.validation import check_scale, normalize_causal

#: dtypes the kernels accept (accumulation is always float32).
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
LOG2E = 1.4426950408889634

#: True under ``TRITON_INTERPRET=1`` (the CPU interpreter used by the tests).
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def autotune_on() -> bool:
    """Autotune on a GPU unless ``GPU_OPTIONAL_AUTOTUNE=0`` (tests use one config to save compile time)."""
    return not INTERPRET and os.environ.get("GPU_OPTIONAL_AUTOTUNE", "1") != "0"


def configs(gpu_list, gpu_default, interp, pre_hook=None):
    """Pick the Triton configs: ``interp`` under the interpreter; on a GPU the list (autotuned) or,
    with ``GPU_OPTIONAL_AUTOTUNE=0``, the default plus a small fallback for big head dims.
    ``pre_hook`` (see :func:`descriptor_hook`) runs before each launch with the config's block sizes."""
    def make(c):
        bm, bn, w, s = c
        return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s, pre_hook=pre_hook)

    if INTERPRET:
        return [make(interp)]
    chosen = list(gpu_list) if autotune_on() else [gpu_default]
    return [make(c) for c in chosen + [SMALL_CONFIG]]


def descriptor_hook(spec):
    """A config pre-hook giving each host tensor descriptor its block shape: ``spec`` maps a kernel argument
    to the names of its (rows, columns) block sizes, e.g. ``{"K": ("BLOCK_N", "BLOCK_D")}``. Arguments passed
    as plain tensors (the pointer path) are left alone."""
    def hook(nargs):
        for name, (rows, cols) in spec.items():
            x = nargs[name]
            if isinstance(x, TensorDescriptor):
                x.block_shape = [nargs[rows], nargs[cols]]
    return hook


#: GPU_OPTIONAL_TMA=0 turns the tensor-descriptor (TMA) loads off everywhere; tests flip ``flash.TMA`` too.
TMA_DEFAULT = os.environ.get("GPU_OPTIONAL_TMA", "1") != "0"


def tma_ok(*tensors) -> bool:
    """Can (Z, N, d) tensors be read through 2-D tensor descriptors over (Z*N, d)? Needs a Hopper-class GPU
    (compute capability >= 9; any device under the interpreter), 16-byte aligned bases and rows
    (d * itemsize % 16 == 0), and row coordinates that fit int32."""
    if not INTERPRET and torch.cuda.get_device_capability(tensors[0].device)[0] < 9:
        return False
    return all(x.data_ptr() % 16 == 0 and (x.shape[-1] * x.element_size()) % 16 == 0
               and x.shape[0] * x.shape[1] < 2**31 for x in tensors)


def descriptor(x, block_rows, block_cols):
    """Host tensor descriptor over contiguous (Z, N, d) ``x`` seen as (Z*N, d); blocks re-set by the pre-hook."""
    z, n, d = x.shape
    return TensorDescriptor(x.view(z * n, d), [z * n, d], [d, 1], [block_rows, block_cols])


#: fits shared memory at head dim 256 in float32; always offered as the last resort.
SMALL_CONFIG = (32, 32, 4, 2)
SMEM_BUDGET = 200 * 1024


def prune_for_head_dim(configs_, named_args, **kwargs):
    """Keep the configs whose tiles fit shared memory: Q tile + num_stages * (K and V tiles)."""
    args = {**named_args, **kwargs}
    bd, bdv = args.get("BLOCK_D", 64), args.get("BLOCK_DV", 64)
    elt = 4 if args.get("PREC", "") == "ieee" else 2

    tuning = autotune_on()

    def smem(c):  # autotuning: a lenient estimate (the autotuner skips configs that fail to fit)
        bm, bn = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
        stages = max(c.num_stages - 1, 1) if tuning else max(c.num_stages, 1)
        return elt * (bm * max(bd, bdv) + stages * bn * (bd + bdv))

    budget = 232448 if tuning else SMEM_BUDGET
    kept = [c for c in configs_ if smem(c) <= budget] or [min(configs_, key=smem)]
    return kept if tuning else kept[:1]


def block_dim(d: int) -> int:
    """Padded (power of two, >= 16) tile width for head dim ``d``; extra lanes are masked."""
    return max(16, triton.next_power_of_2(d))


def check_qkv(q, k, v, causal, scale, where, *, check_finite=True):
    """Validate torch inputs; return ``(mode, offset, scale, lead_shape)``.

    ``mode`` is None / 'bottom_right' / 'top_left'; ``offset`` is the causal
    shift: key j is visible to query i iff ``j <= i + offset``.
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 2:
            raise ValueError(f"{where}: {name} must have at least 2 dims (..., N, d), got shape {tuple(x.shape)}")
        if x.dtype not in DTYPES:
            raise TypeError(f"{where}: {name} has dtype {x.dtype}; the Triton kernels take float16, bfloat16, float32")
        if x.shape[-1] == 0 or x.shape[-2] == 0:
            raise ValueError(f"{where}: {name} has an empty dimension, shape {tuple(x.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"{where}: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"{where}: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if q.device.type != "cuda" and not INTERPRET:
        raise ValueError(f"{where}: tensors are on {q.device}; Triton needs a CUDA device (or TRITON_INTERPRET=1)")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"{where}: q and k must share the head dim d, got q {tuple(q.shape)} and k {tuple(k.shape)}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"{where}: k and v must share Nk, got k {tuple(k.shape)} and v {tuple(v.shape)}")
    if not (q.shape[:-2] == k.shape[:-2] == v.shape[:-2]):
        raise ValueError(f"{where}: q, k, v must share the leading (batch, head) dims, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if max(q.shape[-1], v.shape[-1]) > 256:
        raise ValueError(f"{where}: head dims up to 256 are supported, got d={q.shape[-1]}, dv={v.shape[-1]}")
    if check_finite:
        for name, x in (("q", q), ("k", k), ("v", v)):
            if not bool(torch.isfinite(x).all()):
                raise ValueError(f"{where}: {name} contains NaN or Inf")
    mode = normalize_causal(causal)
    nq, nk = q.shape[-2], k.shape[-2]
    offset = (nk - nq if mode == "bottom_right" else 0) if mode else 0
    scale = check_scale(scale, q.shape[-1], where)
    return mode, offset, scale, tuple(q.shape[:-2])


def flatten(x):
    """(..., N, d) -> contiguous (Z, N, d)."""
    return x.reshape(-1, x.shape[-2], x.shape[-1]).contiguous()


def precision(dtype) -> str:
    """float32 inputs get exact (ieee) dots; 16-bit inputs use the tensor cores' native mode."""
    return "ieee" if dtype == torch.float32 else "tf32"


def numel_lead(shape) -> int:
    return int(math.prod(shape)) if shape else 1
