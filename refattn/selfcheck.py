"""``refattn check``: run every kernel on small random inputs against the float64 reference.

Prints one table (kernel, shape, max |err|, relative error, HBM elements,
peak SRAM / M, ok) and returns 1 if any kernel is wrong, refuses to run, or
is missing. Tolerances: 1e-4 relative (max |err| / max |reference|) for
float32 kernels. The sparse kernel is checked only when
``refattn.kernels.sparse`` exists (it is a later piece).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback

import numpy as np

from refattn.bench.table import Table

REL_TOL = 1e-4


def _rel(got, want):
    err = float(np.max(np.abs(np.asarray(got, np.float64) - want))) if np.size(want) else 0.0
    return err, err / max(float(np.max(np.abs(want))) if np.size(want) else 0.0, 1e-30)


def _cases(quick):
    shapes = [(1, 64, 64, 16)] if quick else [(1, 64, 64, 16), (2, 100, 77, 32)]
    causals = [False, True]
    return [(s, c) for s in shapes for c in causals]


def _checks(q, k, v, do, causal, sram):
    """(kernel name, thunk -> (result, [(got, want)])) for one input set."""
    from refattn import reference

    o_ref, lse_ref = reference.attention(q, k, v, causal=causal)
    grads_ref = reference.attention_backward(q, k, v, do, causal=causal)
    fin = np.isfinite(lse_ref)

    def fwd(fn, **kw):
        def run():
            r = fn(q, k, v, sram=sram, causal=causal, **kw)
            return r, [(r.o, o_ref), (np.where(fin, r.lse, 0), np.where(fin, lse_ref, 0))]
        return run

    def flash_bwd():
        from refattn import flash_backward, flash_forward

        f = flash_forward(q, k, v, sram=sram, causal=causal)
        r = flash_backward(q, k, v, f.o, f.lse, do, sram=sram, causal=causal)
        return r, list(zip((r.dq, r.dk, r.dv), grads_ref))

    def standard_bwd():
        from refattn import standard_backward, standard_forward

        f = standard_forward(q, k, v, sram=sram, causal=causal)
        r = standard_backward(q, k, v, f.o, do, sram=sram, causal=causal)
        return r, list(zip((r.dq, r.dk, r.dv), grads_ref))

    def lazy(name):
        return lambda *a, **kw: getattr(importlib.import_module("refattn"), name)(*a, **kw)

    out = [
        ("flash fa1 forward", fwd(lazy("flash_forward"), variant="fa1")),
        ("flash fa2 forward", fwd(lazy("flash_forward"), variant="fa2")),
        ("flash backward", flash_bwd),
        ("standard forward", fwd(lazy("standard_forward"))),
        ("standard backward", standard_bwd),
    ]
    if importlib.util.find_spec("refattn.kernels.sparse") is not None:
        def sparse():
            from refattn import IndexSet, reference, sparse_forward

            nq, nk = q.shape[-2], k.shape[-2]
            rng = np.random.default_rng(7)
            block = 16
            nqb, nkb = -(-nq // block), -(-nk // block)
            blocks = [np.flatnonzero(rng.random(nkb) < 0.5) for _ in range(nqb)]
            columns = [rng.choice(nk, size=min(5, nk), replace=False) for _ in range(nqb)]
            iset = IndexSet.from_lists(nq, nk, blocks, columns, block=block)
            mask = iset.to_mask(causal=causal)
            o_s, lse_s = reference.attention(q, k, v, mask=mask)
            fin_s = np.isfinite(lse_s)
            r = sparse_forward(q, k, v, iset, sram=sram, causal=causal)
            return r, [(r.o, o_s), (np.where(fin_s, r.lse, 0), np.where(fin_s, lse_s, 0))]
        out.append(("sparse forward (random IndexSet)", sparse))
    return out


def main(quick: bool = False) -> int:
    """Run the checks, print the table; 0 if every kernel agrees with the reference, else 1."""
    from refattn.memory import Sram
    from refattn.warmup import announce

    announce()  # a first run compiles the kernels: say so instead of looking hung
    table = Table("refattn check: kernels vs the float64 reference (float32 inputs)",
                  ["kernel", "shape (B,N,Nk,d)", "causal", "max |err|", "rel err", "HBM elements",
                   "peak SRAM/M", "ok"])
    table.notes.append(f"ok = relative error (max |err| / max |ref|) <= {REL_TOL:g}, peak SRAM <= M; "
                       "M = 16384 elements")
    sram = Sram(16384)
    failed = 0
    rng = np.random.default_rng(0)
    for (b, nq, nk, d), causal in _cases(quick):
        q, k, v, do = (rng.standard_normal((b, n, d)).astype(np.float32) for n in (nq, nk, nk, nq))
        for name, run in _checks(q, k, v, do, causal, sram):
            shape = f"({b},{nq},{nk},{d})"
            try:
                r, pairs = run()
            except Exception as exc:  # a missing or broken kernel is a failure, reported in the table
                failed += 1
                msg = f"{type(exc).__name__}: {exc}".splitlines()[0][:60]
                table.add(name, shape, causal, "-", "-", "-", "-", f"FAIL ({msg})")
                if not isinstance(exc, (ImportError, AttributeError)):
                    traceback.print_exc(file=sys.stderr)
                continue
            errs = [_rel(g, w) for g, w in pairs]
            err = max(e for e, _ in errs)
            rel = max(r_ for _, r_ in errs)
            ok = rel <= REL_TOL and r.peak_sram <= sram.capacity
            failed += not ok
            table.add(name, shape, causal, err, rel, r.traffic.total, round(r.peak_sram / sram.capacity, 3),
                      "ok" if ok else "FAIL")
    table.print()
    print("all kernels agree with the reference" if not failed else f"{failed} check(s) failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(quick="--quick" in sys.argv))
