"""Honest diagnosis: name a convention difference only when the kernel really follows that other convention.

A failing minimal example can match another convention by accident: with
Nq = 1 and Nk = 2, a bottom-right causal mask that is off by one gives exactly
the top-left answer. So a convention is named only when the kernel's output
matches it (within the dtype rule) on the minimal example **and** on fresh
probe problems built for that convention (other sizes, other values). When a
probe disagrees, the failure stays a plain mismatch and the report says what
was ruled out. The conventions checked, in order:

* **fully masked rows**: every other row agrees, and the empty rows hold NaN
  (the ``nan`` convention) or zeros with a different lse. Rows holding the
  mean of v instead are the mark of a finite mask fill (such as -1e4) used
  in place of -inf: named as a hint, never as a convention.
* **causal alignment** (Nq != Nk): the output is the other alignment's.
* **lse units**: lse is in base-2 logarithms.
* **scale ignored**, **mask ignored**, **mask inverted**;
* for packed batches (``cu_seqlens``) first **varlen padding rows**: every
  row of every sequence agrees (o and lse) and only the padding rows after
  ``cu_seqlens_q[-1]`` differ, here and on a probe (FlashAttention leaves them
  untouched);
* for problems with variants (GQA, window, softcap, ALiBi, varlen), first the nearby
  conventions of :func:`refattn.testing.variants.alternatives` (window bounds
  exclusive or top-left aligned, softcap ignored or 0 read as a cap of zero,
  ALiBi sign or alignment, GQA head mapping, causal alignment per sequence),
  each confirmed on a probe with the same shapes and variants and fresh values.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from refattn import reference
from refattn.testing.strategies import Problem, make_problem, make_values
from refattn.testing.variants import alternatives

RULES = {"bottom_right": "j <= i + Nk - Nq, FlashAttention >= 2.1", "top_left": "j <= i, PyTorch is_causal"}


def _ref(p: Problem, causal="same", scale="same", mask="same"):
    causal = p.causal if causal == "same" else causal
    scale = p.scale if scale == "same" else scale
    mask = p.mask if isinstance(mask, str) and mask == "same" else mask
    return reference.attention(p.q, p.k, p.v, scale=scale, causal=causal or False, mask=mask, **p.variants)


def _bounds(run, p: Problem):
    from refattn.testing.check import tolerance_bounds

    return tolerance_bounds(run.tolerance, p, 1.0 / math.sqrt(p.d) if p.scale is None else p.scale)


def _outputs(run, p: Problem):
    """``(o, lse)`` as float64 from the kernel on ``p``, or None if it fails to run."""
    from refattn.testing.check import call, unpack

    try:
        out, _ = call(run.fn, p, run.cap)
        o, lse = unpack(out, run.lse_mode)
        o = np.asarray(o, np.float64)
        return o, (None if lse is None else np.asarray(lse, np.float64))
    except Exception:
        return None


def _clip(run, n):
    return int(min(max(n, run.cap.min_n), run.cap.max_n))


def _probe(run, p: Problem, *, nq=6, nk=11, causal="same", mask=None, scale="same", seed=1234567):
    """A fresh problem like ``p`` (same dtype and head dims, no leading dims, normal values)."""
    return make_problem(dtype=p.dtype, nq=_clip(run, nq), nk=_clip(run, nk), d=p.d, dv=p.dv,
                        causal=p.causal if causal == "same" else causal, mask=mask,
                        scale=p.scale if scale == "same" else scale, seed=seed)


def _random_mask(nq, nk, seed, empty_rows=()):
    rng = np.random.default_rng(seed)
    mask = rng.random((nq, nk)) < 0.5
    mask[np.arange(nq), rng.integers(0, nk, nq)] = True
    for r in empty_rows:
        mask[r] = False
    return mask


def _boolean_masks_accepted(run) -> bool:
    return bool({"random", "fully_masked_rows"} & set(run.cap.masks)) and not run.cap.index_set_objects


def _confirm(run, probes, expected) -> tuple[bool, str]:
    """Run the kernel on each probe; True if its output matches ``expected(probe)`` on all of them."""
    from refattn.testing.check import matches

    for probe in probes:
        got = _outputs(run, probe)
        if got is None:
            return False, f"the kernel did not run on the probe {probe.describe()}"
        want_o, want_lse, skip = expected(probe)
        bounds_o, bounds_lse = _bounds(run, probe)
        ok = matches(got[0], want_o, bounds_o, skip)
        if ok and want_lse is not None and got[1] is not None:
            ok = matches(got[1], want_lse, bounds_lse, skip)
        if not ok:
            return False, f"on the probe {probe.describe()} it does not"
    return True, ""


def _name(failure, convention, text):
    failure.convention = convention
    failure.message = text + "\n" + failure.message
    return failure


def _not_a_convention(failure, what, why):
    failure.message = (f"not a convention difference: on this minimal example the output equals {what}, but "
                       f"{why}: the kernel follows neither convention.\n" + failure.message)
    return failure


def _variant_probe(run, p: Problem) -> Problem:
    """``p`` with fresh normal values, at least 7 x 11 (no boolean mask then), and a window bounded on
    both sides.

    (With one side unbounded, or a single key, a kernel whose bounds are both off by one looks exactly
    like one with a single bound exclusive; a bounded window on a bigger problem tells them apart.)"""
    seed = (p.seed + 7919) % 2**32
    nq, nk = max(p.nq, _clip(run, 7)), max(p.nk, _clip(run, 11))
    mask = p.mask if (nq, nk) == (p.nq, p.nk) else None
    q, k, v, do = make_values(seed, p.dtype, p.lead, nq, nk, p.d, p.dv, "normal", p.scale)
    hkv = p.variants.get("num_kv_heads")
    if hkv is not None:
        k, v = (np.ascontiguousarray(x[..., :hkv, :, :]) for x in (k, v))
    variants = dict(p.variants)
    if "window" in variants:
        variants["window"] = tuple(2 if side is None or side < 0 else side for side in variants["window"])
    return dataclasses.replace(p, q=q, k=k, v=v, do=do, values="normal", seed=seed, variants=variants, mask=mask,
                               mask_kind=p.mask_kind if mask is not None else ("causal" if p.causal else "none"),
                               index_set=None if mask is None else p.index_set)


def _variant_conventions(run, p: Problem, failure, o):
    """Name a variant convention (window bounds, softcap, ALiBi, GQA mapping) the kernel really follows."""
    from refattn.testing.check import matches

    skip = p.fully_masked_rows() if run.cap.fully_masked_rows == "nan" else None
    base = lambda x: dict(scale=x.scale, causal=x.causal or False, mask=x.mask)
    bounds_o, _ = _bounds(run, p)
    # Every convention the minimal example agrees with is tried on the probe: with Nk = Nq + 1 a window
    # aligned top-left gives exactly what an exclusive right bound gives, and only the probe tells them apart.
    seen = [(name, text) for name, text, (o_alt, _) in alternatives(p.q, p.k, p.v, base(p), p.variants)
            if matches(o, o_alt, bounds_o, skip)]
    if not seen:
        return None
    probe = _variant_probe(run, p)
    got = _outputs(run, probe)
    alt = dict((n, out) for n, _, out in alternatives(probe.q, probe.k, probe.v, base(probe), probe.variants))
    probe_skip = probe.fully_masked_rows() if skip is not None else None
    for name, text in seen:
        if got is not None and name in alt and matches(got[0], alt[name][0], _bounds(run, probe)[0], probe_skip):
            return _name(failure, name, f"convention difference, {name}: {text}. Seen on this example and on a "
                                        f"probe with fresh values; refattn's conventions and their sources are in "
                                        f"docs/variants.md.")
    why = "the kernel did not run on the probe" if got is None else f"on the probe {probe.describe()} it does not"
    return _not_a_convention(failure, "what " + " or ".join(f"'{name}'" for name, _ in seen) + " gives", why)


def _padding_rows(run, p: Problem, failure, o, lse):
    """Name 'varlen padding rows' when only the padding rows of a packed batch differ, here and on a probe."""
    from refattn.testing.check import matches

    pad = p.padding_rows()
    o_ref, lse_ref = _ref(p)
    bounds_o, bounds_lse = _bounds(run, p)
    agree = lambda x, want, bounds, skip: x is None or matches(x, want, bounds, skip)
    if not (agree(o, o_ref, bounds_o, pad) and agree(lse, lse_ref, bounds_lse, pad)):
        return None  # some row of a sequence is wrong too
    probe = _variant_probe(run, p)
    got = _outputs(run, probe)
    want_o, want_lse = _ref(probe)
    probe_bounds = _bounds(run, probe)
    if got is None or not (agree(got[0], want_o, probe_bounds[0], probe.padding_rows())
                           and agree(got[1], want_lse, probe_bounds[1], probe.padding_rows())):
        why = "the kernel did not run on the probe" if got is None else f"on the probe {probe.describe()} it does not"
        return _not_a_convention(failure, "refattn's output on every row of every sequence", why)
    rows = np.flatnonzero(pad.reshape(-1, p.nq)[0])
    held = np.asarray(o)[..., rows, :]
    what = "NaN" if np.isnan(held).all() else f"values such as {float(held.flat[0]):.4g}"
    return _name(failure, "varlen padding rows",
                 f"convention difference, varlen padding rows: the kernel leaves the padding query rows "
                 f"{rows[0]}..{rows[-1]} (after cu_seqlens_q[-1] = {rows[0]}) unwritten or writes them otherwise "
                 f"(they hold {what}), as FlashAttention's varlen kernels leave them untouched; refattn's convention "
                 f"is o = 0 and lse = -inf there. Every row of every sequence agrees with the reference, here and "
                 f"on a probe with fresh values. Compare only the rows before cu_seqlens_q[-1], or write the "
                 f"padding rows.")


def diagnose(run, p: Problem, failure, o, lse):
    """Name a known convention difference behind ``failure`` when the kernel really follows it."""
    from refattn.testing.check import matches

    if failure.kind not in ("mismatch", "nonfinite"):
        return failure
    if p.padding_rows().any():
        named = _padding_rows(run, p, failure, np.asarray(o, np.float64),
                              None if lse is None else np.asarray(lse, np.float64))
        if named is not None:
            return named
    if p.variants:
        named = _variant_conventions(run, p, failure, np.asarray(o, np.float64))
        if named is not None:
            return named
    cap = run.cap
    o = np.asarray(o, np.float64)
    lse = None if lse is None else np.asarray(lse, np.float64)
    o_ref, lse_ref = _ref(p)
    bounds_o, bounds_lse = _bounds(run, p)
    empty = p.fully_masked_rows()
    nan_skip = empty if cap.fully_masked_rows == "nan" else None

    # 1. Only the fully masked rows are wrong.
    if empty.any() and matches(o, o_ref, bounds_o, skip_rows=empty) and (
            lse is None or matches(lse, lse_ref, bounds_lse, skip_rows=empty)):
        rows = o[np.broadcast_to(empty[..., None], o.shape)]
        if np.isnan(rows).all() or (rows == 0).all():
            what = "NaN" if np.isnan(rows).all() else f"o = 0 with lse {float(lse[empty][0]):.7g}"
            probe_empty = (1, 4)
            probes = []
            if _boolean_masks_accepted(run):
                nq, nk = _clip(run, 6), _clip(run, 9)
                rows_e = tuple(r for r in probe_empty if r < nq)
                probes = [_probe(run, p, nq=nq, nk=nk, causal=None, mask=_random_mask(nq, nk, 7, rows_e))]
            nan_rows = np.isnan(rows).all()

            def expected(probe):
                e = probe.fully_masked_rows()
                want, want_lse = _ref(probe)
                return want, want_lse, e

            ok, why = _confirm(run, probes, expected)
            if ok and probes:  # and the probe's empty rows hold the same thing
                got = _outputs(run, probes[0])
                e = probes[0].fully_masked_rows()
                sel = got[0][np.broadcast_to(e[..., None], got[0].shape)]
                ok = bool(np.isnan(sel).all()) if nan_rows else bool((sel == 0).all())
            if ok:
                confirmed = "" if probes else " (seen on this example; no boolean-mask probe within the capabilities)"
                return _name(failure, "fully masked rows",
                             f"convention difference, fully masked rows: for rows with no visible key the kernel "
                             f"returns {what}; refattn's convention is o = 0 and lse = -inf (never NaN). Every "
                             f"other row agrees with the reference{confirmed}. If the kernel means this, declare "
                             f"fully_masked_rows='nan' (or 'unsupported') in its capabilities.")
        v = np.asarray(p.v, np.float64)
        mean_v = np.broadcast_to(v.mean(axis=-2, keepdims=True), o.shape)
        if np.isfinite(rows).all() and np.allclose(o[np.broadcast_to(empty[..., None], o.shape)],
                                                   mean_v[np.broadcast_to(empty[..., None], o.shape)],
                                                   rtol=1e-3, atol=bounds_o.atol * 10):
            failure.message = ("rows with no visible key return the mean of v over all keys, what a finite mask "
                               "fill (such as -1e4) in place of -inf gives: masked keys then weigh equally. Every "
                               "other row agrees with the reference.\n" + failure.message)
        return failure

    # 2. Causal alignment swapped.
    if p.causal and p.nq != p.nk:
        other = "top_left" if p.causal == "bottom_right" else "bottom_right"
        o_other, _ = _ref(p, causal=other)
        if matches(o, o_other, bounds_o, skip_rows=nan_skip if cap.fully_masked_rows != "nan" else empty):
            probes = []
            for a, b in ((6, 11), (11, 6), (3, 9)):
                nq, nk = _clip(run, a), _clip(run, b)
                if nq != nk and (cap.fully_masked_rows != "unsupported" or other == "top_left" or nq <= nk):
                    probes.append(_probe(run, p, nq=nq, nk=nk, seed=a * 100 + b))

            def expected(probe):
                want, _ = _ref(probe, causal=other)
                rows = ~reference.causal_mask(probe.nq, probe.nk, other).any(-1)
                return want, None, rows if cap.fully_masked_rows == "nan" else None

            ok, why = _confirm(run, probes, expected)
            if ok:
                return _name(failure, "causal alignment",
                             f"convention difference, causal alignment: the kernel aligns the causal mask "
                             f"{other} ({RULES[other]}) but {p.causal} ({RULES[p.causal]}) was asked, with "
                             f"Nq = {p.nq} != Nk = {p.nk}, here and on {len(probes)} probes of other sizes. If the "
                             f"kernel means this, declare causal=('{other}',) in its capabilities.")
            return _not_a_convention(failure, f"the {other} causal alignment", why)

    # 3. lse in base-2 units.
    if lse is not None and failure.output == "lse" and matches(o, o_ref, bounds_o, nan_skip):
        if matches(lse * math.log(2.0), lse_ref, bounds_lse, nan_skip):
            probes = [_probe(run, p, nq=7, nk=13, causal=None, scale=p.scale)]

            def expected(probe):
                want, want_lse = _ref(probe)
                return want, want_lse / math.log(2.0), None

            ok, why = _confirm(run, probes, expected)
            if ok:
                return _name(failure, "lse units",
                             "convention difference, lse units: the kernel's lse is in base-2 logarithms "
                             "(log2-sum-exp2), here and on a probe; refattn's lse is in natural-log units. "
                             "Multiply by ln 2.")
            return _not_a_convention(failure, "lse in base 2", why)

    # 4. Scale argument ignored; mask ignored or inverted.
    checks = []
    if p.scale is not None and p.scale != 1.0 / math.sqrt(p.d):
        checks.append(("scale ignored", dict(scale=None),
                       f"the kernel ignores scale={p.scale:g} and uses 1/sqrt(d); declare scale=False "
                       f"if it cannot take one",
                       lambda: [_probe(run, p, nq=5, nk=8, causal=None, scale=0.7 if p.scale != 0.7 else 0.4)],
                       lambda probe: dict(scale=None)))
    if p.mask is not None:
        probe_masks = lambda: ([_probe(run, p, nq=7, nk=9, causal=None, mask=_random_mask(_clip(run, 7),
                                                                                          _clip(run, 9), 11))]
                               if _boolean_masks_accepted(run) else [])
        checks.append(("mask ignored", dict(mask=None), "the kernel ignores the boolean mask",
                       probe_masks, lambda probe: dict(mask=None)))
        checks.append(("mask inverted", dict(mask=~np.asarray(p.mask, bool)),
                       "the kernel reads the mask as True = masked out; refattn's mask is True = keep",
                       probe_masks, lambda probe: dict(mask=~probe.mask)))
    for name, change, text, make_probes, probe_change in checks:
        want, _ = _ref(p, **change)
        if matches(o, want, bounds_o, nan_skip):
            probes = make_probes()

            def expected(probe, probe_change=probe_change):
                w, _ = _ref(probe, **probe_change(probe))
                return w, None, None

            ok, why = _confirm(run, probes, expected)
            if ok:
                seen = "" if probes else " (seen on this example only: no probe within the capabilities)"
                return _name(failure, name, f"{name}: {text}{seen}.")
            return _not_a_convention(failure, f"what '{name}' gives", why)
    return failure
