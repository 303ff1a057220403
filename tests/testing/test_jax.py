"""JAX attention checked by the kit through ``from_jax``: a hand-written jnp kernel and jax.nn.dot_product_attention.

Every test needs jax (skipped locally without it, required in CI: the ``[dev]``
extra installs it). JAX compiles each new shape, so the example budgets are small.
"""

import dataclasses
import functools
import re
from pathlib import Path

import pytest

import refattn.testing
from refattn.testing import (
    JAX_DPA_CAPABILITIES,
    Capabilities,
    ConformanceError,
    check_attention,
    from_jax,
    jax_dpa,
    make_problem,
)
from refattn.testing.check import Run
from refattn.testing.report import ConformanceReport
from tests.optional import needs

pytestmark = needs("jax")

#: Small draws for the planted bugs: hypothesis shrinks through a few dozen shapes, each compiled anew.
SMALL = dict(dtypes=("float32",), causal=(), masks=(), backward=False, max_n=40, max_d=16, max_lead=1,
             values=("normal",))

#: What the hand-written kernel below claims: everything, float64 included (the adapter turns on 64-bit types).
JNP_CAPABILITIES = Capabilities(dtypes=("float32", "float64"), variants=("gqa", "window", "softcap", "alibi"),
                                backward=True, lse=True)


def jnp_attention(q, k, v, *, causal=False, scale=None, mask=None, num_kv_heads=None, window=None, softcap=None,
                  alibi_slopes=None, left_open=False, scale_ignored=False):
    """Attention in jax.numpy with every variant, as docs/variants.md orders them; returns ``(o, lse)``.

    ``left_open`` and ``scale_ignored`` plant a bug: the window's left bound
    exclusive, and an explicit ``scale`` dropped for the default.
    """
    import jax.numpy as jnp

    nq, nk = q.shape[-2], k.shape[-2]
    if num_kv_heads is not None:  # query head h reads KV head h // (Hq / Hkv)
        k, v = (jnp.repeat(x, q.shape[-3] // num_kv_heads, axis=-3) for x in (k, v))
    work = jnp.promote_types(q.dtype, jnp.float32)  # bfloat16 / float16 computed in float32
    scale = q.shape[-1] ** -0.5 if scale is None or scale_ignored else scale
    s = jnp.einsum("...id,...jd->...ij", q.astype(work), k.astype(work)) * scale
    if softcap:  # None and 0 mean off
        s = softcap * jnp.tanh(s / softcap)
    pos = jnp.arange(nq)[:, None] + (nk - nq)  # the query's place on the key axis (bottom-right)
    j = jnp.arange(nk)[None, :]
    if alibi_slopes is not None:
        slopes = jnp.asarray(alibi_slopes, work)
        s = s - slopes[..., None, None] * jnp.abs(pos - j)
    keep = jnp.ones((nq, nk), bool)
    if causal:
        keep &= j <= (pos if causal != "top_left" else pos - (nk - nq))
    if window is not None:
        left, right = (-1 if w is None else w for w in window)
        if left >= 0:
            keep &= (j > pos - left) if left_open else (j >= pos - left)
        if right >= 0:
            keep &= j <= pos + right
    if mask is not None:
        keep = keep & mask
    s = jnp.where(keep, s, -jnp.inf)
    m = jnp.max(s, axis=-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)  # fully masked rows: no shift
    p = jnp.exp(s - m)
    denom = p.sum(-1, keepdims=True)
    safe = jnp.where(denom > 0, denom, 1.0)
    o = (p @ v.astype(work)) / safe
    lse = jnp.where(denom[..., 0] > 0, jnp.log(safe[..., 0]) + m[..., 0], -jnp.inf)
    return o.astype(q.dtype), lse.astype(jnp.promote_types(q.dtype, jnp.float32))


def test_a_correct_jnp_kernel_passes_every_variant_and_float64():
    report = check_attention(from_jax(jnp_attention), capabilities=JNP_CAPABILITIES, max_examples=12, seed=1)
    assert report.passed
    assert "float64 -> o float64" in report.text()  # 64-bit types were on for the float64 draws
    for name in ("num_kv_heads", "window", "softcap", "alibi_slopes"):
        assert name in report.text()


def test_the_adapter_runs_float64_in_float64_and_restores_the_setting():
    import jax

    before = jax.config.jax_enable_x64
    seen = []

    def records(q, k, v, **kw):
        seen.append(q.dtype.name)
        return jnp_attention(q, k, v, **kw)

    p = make_problem(dtype="float64", nq=19, nk=40, d=8)
    run = Run(from_jax(records), None, JNP_CAPABILITIES, None, ConformanceReport("records", JNP_CAPABILITIES))
    assert run.check(p) is None  # without 64-bit types JAX returns float32 and the kit fails its dtype
    assert seen[0] == "float64" and jax.config.jax_enable_x64 == before


def test_bfloat16_runs_in_bfloat16():
    seen = []

    def records(q, k, v, **kw):
        seen.append(q.dtype.name)
        return jnp_attention(q, k, v, **kw)

    cap = Capabilities(dtypes=("bfloat16",), lse=True, variants=("window",))
    assert check_attention(from_jax(records), capabilities=cap, max_examples=6, seed=2).passed
    assert set(seen) == {"bfloat16"}


def test_an_exclusive_left_window_bound_is_named():
    planted = from_jax(lambda q, k, v, **kw: jnp_attention(q, k, v, left_open=True, **kw))
    with pytest.raises(ConformanceError, match="convention difference, window exclusive left bound"):
        check_attention(planted, capabilities=Capabilities(variants=("window",), **SMALL), max_examples=40, seed=3)


def test_an_ignored_scale_is_caught():
    planted = from_jax(lambda q, k, v, **kw: jnp_attention(q, k, v, scale_ignored=True, **kw))
    with pytest.raises(ConformanceError, match=r"mismatch \(scale ignored\)"):
        check_attention(planted, capabilities=Capabilities(**SMALL), max_examples=30, seed=4)


# ---------------------------------------------------------------- jax.nn.dot_product_attention
def test_jax_dot_product_attention_passes_with_the_capabilities_it_really_has():
    report = check_attention(jax_dpa, capabilities=JAX_DPA_CAPABILITIES, max_examples=12, seed=5)
    assert report.passed and JAX_DPA_CAPABILITIES.backward
    assert "bfloat16 -> o float32, lse float32" in report.text()  # bfloat16 draws ran (and came back as float32)
    for name in ("num_kv_heads", "window", "alibi_slopes"):
        assert name in report.text()


def test_jax_window_passed_unshifted_is_named_top_left():
    """JAX's local_window_size is top-left aligned: given refattn's bounds as they are, the kit says so."""
    from refattn.testing import jax_kernels

    raw = from_jax(lambda q, k, v, **kw: jax_kernels.dot_product_attention(q, k, v, shift_window=False, **kw))
    # (the minimal example has Nk = Nq + 1, where top-left equals an exclusive right bound: the probe decides)
    cap = dataclasses.replace(JAX_DPA_CAPABILITIES, variants=("window",), fully_masked_rows="zero", **SMALL)
    with pytest.raises(ConformanceError, match="convention difference, window alignment"):
        check_attention(raw, capabilities=cap, max_examples=40, seed=6)


def test_a_top_left_window_is_named_even_where_it_looks_like_an_exclusive_bound():
    """Nk = Nq + 1, window (unbounded, 0): JAX's top-left window keeps j <= i, exactly what an exclusive right
    bound keeps. The diagnosis used to stop at that first match, whose probe fails ("neither convention");
    it now tries every match on the probe and names the window alignment."""
    from refattn.testing import jax_kernels
    from refattn.testing.diagnose import diagnose

    raw = from_jax(lambda q, k, v, **kw: jax_kernels.dot_product_attention(q, k, v, shift_window=False, **kw))
    cap = dataclasses.replace(JAX_DPA_CAPABILITIES, variants=("window",), fully_masked_rows="zero", **SMALL)
    p = dataclasses.replace(make_problem(dtype="float32", nq=15, nk=16, d=15), variants={"window": (-1, 0)})
    run = Run(raw, None, cap, None, ConformanceReport("raw", cap))
    failure = run.check(p)
    assert failure is not None and failure.kind == "mismatch"
    named = diagnose(run, p, failure, *failure.raw)
    assert named.convention == "window alignment", named.message


def test_jax_dot_product_attention_claiming_bottom_right_gets_a_named_convention_difference():
    cap = dataclasses.replace(JAX_DPA_CAPABILITIES, variants=(), **dict(SMALL, causal=("bottom_right",)))
    with pytest.raises(ConformanceError, match="convention difference, causal alignment"):
        check_attention(jax_dpa, capabilities=cap, max_examples=40, seed=7)


def test_jax_dot_product_attention_claiming_float64_is_caught():
    """Its softmax runs in float32 whatever the inputs: float64 draws miss the float64 rule."""
    cap = dataclasses.replace(JAX_DPA_CAPABILITIES, variants=(), **dict(SMALL, dtypes=("float64",)))
    with pytest.raises(ConformanceError, match="differs from the float64 reference"):
        check_attention(jax_dpa, capabilities=cap, max_examples=10, seed=8)


def test_the_docs_example_conforms(monkeypatch, capsys):
    text = (Path(__file__).resolve().parents[2] / "docs" / "testing.md").read_text()
    section = text[text.index("## JAX functions"):]
    (block,) = re.findall(r"```python\n(.*?)```", section[:section.index("\n## ", 5)], re.S)
    monkeypatch.setattr(refattn.testing, "check_attention",
                        functools.partial(refattn.testing.check_attention, max_examples=10, seed=9))
    exec(compile(block, "docs/testing.md JAX example", "exec"), {})
    out = capsys.readouterr().out
    assert out.startswith("PASS jax(attention): 10 examples") and "float64 -> o float64" in out
