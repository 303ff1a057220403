"""Inputs for the app: generated Q/K/V, and user uploads (.npy / .npz) checked with clear messages.

No streamlit here: pages call these and show :class:`InputError` messages with
``st.error``. Every check names the problem (file type, missing array, shape,
dtype, NaN/Inf) instead of letting a kernel fail deep inside.

Accepted uploads
----------------
* ``.npz`` with arrays named ``q``, ``k``, ``v`` (any case): Q/K/V of shape
  ``(N, d)``, ``(Nk, d)``, ``(Nk, dv)``; leading head dims are allowed, and the
  app shows head 0.
* ``.npz`` or ``.npy`` holding one 2-D non-negative array: an attention map
  (rows are queries), used by the map views.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np

from refattn.validation import check_attention_inputs, check_kernel_range

#: Largest upload the app accepts, in bytes (the app is for small, visual sizes).
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
#: Which all-MiniLM-L6-v2 head the "real" source shows.
REAL_LAYER, REAL_HEAD = 2, 0
#: Largest N the stepping views accept from an upload.
MAX_N = 2048


class InputError(ValueError):
    """An input the app cannot use; the message says why, in words meant for the page."""


def read_upload(name: str, data: bytes) -> dict[str, np.ndarray]:
    """Parse an uploaded ``.npy``/``.npz`` into {name: array}. Raises :class:`InputError`."""
    lower = name.lower()
    if not (lower.endswith(".npy") or lower.endswith(".npz")):
        raise InputError(f"{name}: expected a .npy or .npz file (NumPy's own formats)")
    if len(data) == 0:
        raise InputError(f"{name}: the file is empty")
    if len(data) > MAX_UPLOAD_BYTES:
        raise InputError(f"{name}: {len(data) / 2**20:.0f} MiB is larger than the app's limit of "
                         f"{MAX_UPLOAD_BYTES // 2**20} MiB")
    if not (data.startswith(b"\x93NUMPY") or data.startswith(b"PK")):  # neither a .npy header nor a zip archive
        raise InputError(f"{name}: not a NumPy file (a .npy starts with \\x93NUMPY, a .npz is a zip archive)")
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower() and data.startswith(b"\x93NUMPY"):
            raise InputError(f"{name}: holds Python objects (pickled); only plain numeric arrays are accepted") \
                from None
        raise InputError(f"{name}: not a valid NumPy file ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{name}: not a valid NumPy file ({exc})") from None
    if isinstance(loaded, np.ndarray):
        if lower.endswith(".npz"):
            raise InputError(f"{name}: named .npz but holds a single .npy array")
        return {"array": loaded}
    try:
        with loaded:
            arrays = {key: loaded[key] for key in loaded.files}
    except ValueError as exc:  # an object array inside the archive
        raise InputError(f"{name}: an array in the archive holds Python objects ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - a corrupt member: report, never crash the page
        raise InputError(f"{name}: could not read the archive ({type(exc).__name__}: {exc})") from None
    if not arrays:
        raise InputError(f"{name}: the .npz archive holds no arrays")
    return arrays


def _as_float(name: str, x: np.ndarray, notes: list | None = None) -> np.ndarray:
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise InputError(f"{name} has dtype {x.dtype}; a real numeric array is needed")
    if x.dtype not in (np.float32, np.float64) and notes is not None:
        notes.append(f"{name} converted from {x.dtype} to float32")
    x = np.asarray(x, np.float64 if x.dtype == np.float64 else np.float32)
    if not np.all(np.isfinite(x)):
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(x))[0])
        raise InputError(f"{name} contains NaN or Inf (first at index {bad})")
    return x


def qkv_from_arrays(arrays: dict[str, np.ndarray], *, notes: bool = False):
    """Pick Q, K, V out of an upload; 2-D (head 0 if there are leading dims), one float dtype.

    Returns (q, k, v), or ((q, k, v), notes) with ``notes=True``: what was converted (e.g. int32 to float32),
    so the page can say so instead of converting silently.
    """
    by_lower = {key.lower(): key for key in arrays}
    missing = [n for n in ("q", "k", "v") if n not in by_lower]
    if missing:
        found = ", ".join(sorted(arrays)) or "nothing"
        hint = (f" If {found} are Q, K and V, save them as np.savez(file, q=..., k=..., v=...)."
                if len(arrays) == 3 else "")
        raise InputError(f"Q/K/V upload needs arrays named q, k and v in one .npz; missing {', '.join(missing)} "
                         f"(found {found}).{hint}")
    out, converted = [], []
    for n in ("q", "k", "v"):
        x = np.asarray(arrays[by_lower[n]])
        if x.ndim < 2:
            raise InputError(f"{n} must have shape (N, d) (or (heads, N, d)), got {x.shape}")
        while x.ndim > 2:
            x = x[0]
        out.append(_as_float(n, x, converted))
    dtype = np.float64 if all(x.dtype == np.float64 for x in out) else np.float32
    q, k, v = (np.ascontiguousarray(x, dtype) for x in out)
    if max(q.shape[0], k.shape[0]) > MAX_N:
        raise InputError(f"N = {max(q.shape[0], k.shape[0])} is larger than the app's limit of {MAX_N} "
                         f"(the views step through every tile)")
    try:
        check_attention_inputs(q, k, v, where="upload")
        check_kernel_range(q, k, v, 1.0 / np.sqrt(q.shape[-1]), where="upload")  # the kernels' own refusal
    except (TypeError, ValueError) as exc:
        raise InputError(str(exc)) from None
    return ((q, k, v), converted) if notes else (q, k, v)


def attention_map_from_arrays(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """One 2-D non-negative finite array from an upload: an attention map (queries x keys)."""
    if len(arrays) != 1:
        raise InputError(f"an attention-map upload holds exactly one array, found {len(arrays)}: "
                         f"{', '.join(sorted(arrays))}")
    (key, x), = arrays.items()
    x = np.asarray(x)
    if x.ndim != 2:
        raise InputError(f"an attention map must be 2-D (queries x keys), got shape {x.shape}")
    x = _as_float("the attention map", x).astype(np.float64)
    if np.any(x < 0):
        raise InputError("an attention map must be non-negative (probabilities), found negative entries")
    return x


def make_inputs(source: str, n: int, d: int, *, seed: int = 0, uploaded=None):
    """(q, k, v) float32 of shape (n, d) from a named source: 'random', 'structured', 'real' or 'uploaded'.

    'real' is one head of all-MiniLM-L6-v2 on the bundled text (``refattn.data.real``): its d is the
    model's head dim (32), whatever ``d`` says."""
    if source == "random":
        from refattn.data import random_qkv

        return random_qkv(n, d, seed=seed)
    if source == "structured":
        from refattn.data.synthetic import structured_qkv

        try:
            q, k, v, _ = structured_qkv(n, d, 1, seed=seed)
        except ValueError as exc:  # sizes the generator does not support (n < 64, d < 32): say so in the page
            raise InputError(f"structured inputs: {exc}") from None
        return tuple(np.ascontiguousarray(x[0], np.float32) for x in (q, k, v))
    if source == "real":
        from refattn.data import real

        try:
            att = real.minilm_attention(max_tokens=n)
        except Exception as exc:  # noqa: BLE001 - the [real] extra missing: say so in the page
            raise InputError(f"real MiniLM attention could not run ({type(exc).__name__}: {exc}); "
                             "install the [real] extra") from None
        q, k, v = att.head(REAL_LAYER, REAL_HEAD)  # d is the model's head dim (32)
        return tuple(np.ascontiguousarray(x, np.float32) for x in (q, k, v))
    if source == "uploaded":
        if uploaded is None:
            raise InputError("no Q/K/V uploaded yet: use the Inputs page")
        return uploaded
    raise InputError(f"unknown input source {source!r}")
