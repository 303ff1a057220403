"""Uploads: every bad file gets a message that names the problem (the defects of issue 15)."""

import io

import numpy as np
import pytest

from tests.optional import require
from viz_app.inputs import MAX_UPLOAD_BYTES, InputError, qkv_from_arrays, read_upload


def npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_random_bytes_are_not_called_pickled():
    with pytest.raises(InputError) as e:
        read_upload("x.npy", np.random.default_rng(0).bytes(300))
    assert "not a NumPy file" in str(e.value) and "pickle" not in str(e.value)


def test_a_pickled_npy_is_called_pickled():
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="pickled"):
        read_upload("x.npy", buf.getvalue())


def test_three_arrays_with_other_names_are_told_to_name_them_q_k_v():
    x = np.ones((8, 4), np.float32)
    arrays = read_upload("abc.npz", npz(a=x, b=x, c=x))
    with pytest.raises(InputError, match=r"np.savez\(file, q=..., k=..., v=...\)"):
        qkv_from_arrays(arrays)


def test_conversions_are_reported_not_silent():
    q = np.arange(32, dtype=np.int32).reshape(8, 4)
    (out, notes) = qkv_from_arrays({"q": q, "k": q.astype(np.float16), "v": q.astype(np.float32)}, notes=True)
    assert out[0].dtype == np.float32
    assert notes == ["q converted from int32 to float32", "k converted from float16 to float32"]


def test_scores_that_overflow_float32_are_refused():
    q = np.full((8, 4), 1e20, np.float32)
    with pytest.raises(InputError, match="overflow"):
        qkv_from_arrays({"q": q, "k": q, "v": q})


def test_the_uploader_states_the_limit_the_checks_enforce():
    require("streamlit")
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(Path(__file__).resolve().parents[2] / "viz_app" / "app_pages" / "upload.py"),
                           default_timeout=60).run()
    (uploader,) = at.get("file_uploader")
    assert uploader.proto.max_upload_size_mb == MAX_UPLOAD_BYTES // 2**20
