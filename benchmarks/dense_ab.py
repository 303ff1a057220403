"""A/B of the dense Triton kernels' Hopper optimisations on a GPU (``python benchmarks/dense_ab.py``).

Each candidate is a setting of gpu_optional/flash.py's switches (``TMA``, ``TMA_BWD``, ``FUSED_BWD``) plus one
fixed config per kernel (block sizes, warps, pipeline stages; no autotuning), or ``auto``: the shipped defaults,
autotuned over the shipped config lists as ``python -m gpu_optional.bench`` does. For every (d, causal) case
the script

1. compiles all candidates first, in parallel worker processes (the Triton disk cache then serves the timing
   process), so compile time does not eat the device lease;
2. checks each candidate on fresh random bf16 inputs (B = 1, H = 2, N = 1024) against a float64 torch
   reference: rel err = ||x - ref|| / ||ref|| of O (forward) and of dQ, dK, dV (backward);
3. times it with ``triton.testing.do_bench`` (median) at N = 8192, B = 2, H = 2048 / d (the bench's shape),
   beside torch SDPA's cuDNN and flash backends measured in the same run.

``--persistent`` times the forward only: the shipped path (``TMA``, one program per tile) against the persistent
grid (``PERSISTENT``: 1 program per SM; at d = 64 also 2, as two 128 x 64 programs fit an SM) with each forward
config, every candidate twice (``(again)``, interleaved) to show the spread, and prints a table of the change.
h200_dense_persistent.log is that run.

``--old FILE`` adds the kernels of another flash.py (e.g. the previous commit's) as the ``old`` candidate,
with the configs the old autotuner picked, so before/after come from one run; ``old`` and ``ptr`` are timed
again at the end of each case (``(again)``) to show the run-to-run spread. The table printed last holds the
best candidate per case.

h200_dense_ab_sweep1.log is the first sweep, made with commit 5c80267, which also had two switches since
removed because they lost: ``CAUSAL_LPT`` (causal forward on one flat grid, heaviest query blocks of all heads
first: 0.876x cuDNN against 0.943x without at d = 128, 0.924x against 0.936x at d = 64) and ``WARP_SPECIALIZE``
(``tl.range(..., warp_specialize=True)`` on the forward's key loop: Triton 3.6 compiles it on Hopper, but it ran
at 0.779x against 0.875x without at d = 128, 0.949x against 0.955x at d = 64; Triton documents automatic warp
specialisation as a Blackwell feature). Its backward rows for d = 128 with TMA are missing: a bug of that
version's script (the forward config of the last candidate leaked into the backward runs of a worker).
"""

# ruff: noqa: B023  (every lambda is timed at once, inside its loop iteration)
import argparse
import importlib.util
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

import gpu_optional.flash as fl

#: --smoke (under TRITON_INTERPRET=1, on the CPU): tiny sizes, float16, wall-clock timing; checks the script only
SMOKE = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
DEV = "cpu" if SMOKE else "cuda"
DT = torch.float16 if SMOKE else torch.bfloat16
N, N_CHECK = (128, 64) if SMOKE else (8192, 1024)
CASES = [(128, False), (128, True), (64, False), (64, True)]
SWITCHES = ("TMA", "TMA_BWD", "FUSED_BWD", "PERSISTENT")
DEFAULTS = {name: getattr(fl, name) for name in SWITCHES}
SHIPPED = {name: kern.configs for name, kern in
           (("fwd", fl._fwd_kernel), ("dkdv", fl._bwd_dkdv_kernel), ("dq", fl._bwd_dq_kernel))}

# configs (BLOCK_M, BLOCK_N, num_warps, num_stages) the previous autotuner picked (h200_dense_ab.log)
OLD_FWD = {128: (128, 128, 8, 3), 64: (128, 64, 8, 3)}
OLD_DKDV = {(128, False): (64, 128, 8, 3), (128, True): (128, 128, 8, 2), (64, False): (32, 128, 4, 3),
            (64, True): (64, 128, 4, 3)}
OLD_DQ = {(128, False): (128, 128, 8, 2), (128, True): (128, 64, 8, 3), (64, False): (128, 64, 8, 3),
          (64, True): (128, 64, 8, 3)}
FWD_CFGS = {128: [(128, 128, 8, 3), (128, 64, 8, 3)], 64: [(128, 64, 8, 3), (128, 64, 8, 4)]}
DKDV_CFGS = [(64, 128, 8, 3), (64, 128, 8, 2), (64, 128, 4, 3), (128, 128, 8, 2)]
DQ_CFGS = [(128, 64, 8, 3), (128, 64, 4, 3), (128, 128, 8, 2)]
FUSED_CFGS = [(64, 128, 8, 3), (64, 128, 4, 3), (32, 128, 4, 3)]


def candidates(d, causal):
    """(name, pass, switches, {kernel: config}) for one case."""
    key = (d, causal)
    fwd = {"fwd": OLD_FWD[d]}  # the backward candidates' forward (its time is not counted)
    out = [("old", "fwd", {}, {"fwd": OLD_FWD[d]}),
           ("ptr", "fwd", {"TMA": False}, {"fwd": OLD_FWD[d]})]
    out += [(f"tma {c}", "fwd", {"TMA": True}, {"fwd": c}) for c in FWD_CFGS[d]]
    out += [("auto", "fwd", DEFAULTS, "auto")]
    base = {**fwd, "dkdv": OLD_DKDV[key], "dq": OLD_DQ[key]}
    out += [("old", "bwd", {}, base), ("ptr", "bwd", {}, base),
            (f"ptr dq {DQ_CFGS[1]}", "bwd", {}, {**base, "dq": DQ_CFGS[1]})]
    out += [(f"tma dkdv {c}", "bwd", {"TMA_BWD": True}, {**fwd, "dkdv": c, "dq": OLD_DQ[key]}) for c in DKDV_CFGS]
    # dq configs are timed with the best dkdv config found above (filled in at run time: "dkdv": None)
    out += [(f"tma dq {c}", "bwd", {"TMA_BWD": True}, {**fwd, "dkdv": None, "dq": c}) for c in DQ_CFGS]
    out += [(f"fused tma {c}", "bwd", {"TMA_BWD": True, "FUSED_BWD": True}, {**fwd, "dkdv": c}) for c in FUSED_CFGS]
    out += [("auto", "bwd", DEFAULTS, "auto")]
    out += [("old (again)", "fwd", {}, fwd), ("ptr (again)", "fwd", {"TMA": False}, fwd),
            ("old (again)", "bwd", {}, base), ("ptr (again)", "bwd", {}, base)]
    return out


def persistent_candidates(d, causal):
    """--persistent: forward candidates, the shipped path beside the persistent grid, then all again."""
    out = []
    for c in FWD_CFGS[d]:
        out += [(f"tma {c}", "fwd", {"TMA": True}, {"fwd": c}),
                (f"persistent {c}", "fwd", {"TMA": True, "PERSISTENT": 1}, {"fwd": c})]
        if d == 64:
            out += [(f"persistent x2 {c}", "fwd", {"TMA": True, "PERSISTENT": 2}, {"fwd": c})]
    return out + [(f"{name} (again)", *rest) for name, *rest in out]


def persistent_table(rows):
    """Mean of the two repeats per candidate, and the change of the persistent grid against the shipped path."""
    ms = {}
    for d, causal, _pas, name, t, *_ in rows:
        ms.setdefault((d, causal, name.replace(" (again)", "")), []).append(t)
    print("\npersistent forward vs the shipped path (same config; ms of the two repeats; spread = the largest "
          "difference between a candidate's two repeats):")
    print(f"{'d':>4} {'causal':>6} {'config':<18} {'shipped ms':>15} {'persistent':<8} {'ms':>15} {'change':>7} "
          f"{'spread':>6}")
    for (d, causal, name), times in ms.items():
        if not name.startswith("persistent"):
            continue
        cfg = name[name.index("("):]
        base = ms.get((d, causal, f"tma {cfg}"))
        if not base:
            continue
        spread = max((max(t) - min(t)) / min(t) for t in (times, base))
        change = (sum(times) / len(times)) / (sum(base) / len(base)) - 1
        per_sm = name.split(" (")[0].replace("persistent", "").strip() or "x1"
        print(f"{d:4d} {causal!s:>6} {cfg:<18} {'/'.join(f'{t:.3f}' for t in base):>15} "
              f"{per_sm:<8} {'/'.join(f'{t:.3f}' for t in times):>15} "
              f"{change:+7.1%} {spread:6.1%}")


def load_old(path):
    spec = importlib.util.spec_from_file_location("flash_old", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def apply(mod, switches, cfgs):
    """Set the module's switches and pin one config per kernel (``cfgs == "auto"``: the shipped lists)."""
    for name in SWITCHES:
        if hasattr(mod, name):
            setattr(mod, name, switches.get(name, False))
    kernels = {"fwd": mod._fwd_kernel, "dkdv": mod._bwd_dkdv_kernel, "dq": mod._bwd_dq_kernel}
    if cfgs == "auto":
        for name, kern in kernels.items():
            kern.configs = SHIPPED[name]
            kern.cache.clear()
        return
    for name, c in cfgs.items():
        if c is None:
            continue
        kern = kernels[name]
        hook = kern.configs[0].pre_hook
        bm, bn, w, s = c
        kern.configs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s, pre_hook=hook)]
        kern.cache.clear()


def inputs(b, h, n, d, seed):
    gen = torch.Generator(device=DEV).manual_seed(seed)
    return [torch.randn((b, h, n, d), generator=gen, device=DEV, dtype=DT) for _ in range(4)]


def run_pass(mod, pas, q, k, v, do, causal):
    o, lse = mod.flash_forward(q, k, v, causal=causal, check_finite=False)
    if pas == "fwd":
        return (o,)
    return mod.flash_backward(q, k, v, o, lse, do, causal=causal)


def reference(q, k, v, do, causal):
    q, k, v, do = (x.double().requires_grad_() for x in (q, k, v, do))
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        n = q.shape[-2]
        s = s.masked_fill(torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    o = torch.softmax(s, -1) @ v
    dq, dk, dv = torch.autograd.grad(o, (q, k, v), do)
    return o.detach(), dq, dk, dv


def rel(x, r):
    return float((x.double() - r).norm() / r.norm())


def _compile_one(job):
    """Worker: run a candidate once at the timing shape (B = 1) so Triton compiles and caches it."""
    old_path, d, causal, cand = job
    name, pas, switches, cfgs = cand
    mod = load_old(old_path) if name.startswith("old") else fl
    if cfgs != "auto" and cfgs.get("dkdv", 0) is None:  # dq sweep: any dkdv config compiles the dq kernel
        cfgs = {**cfgs, "dkdv": OLD_DKDV[(d, causal)]}
    apply(mod, switches, cfgs)
    q, k, v, do = inputs(1, 1, N, d, 0)
    t = time.time()
    try:
        run_pass(mod, pas, q, k, v, do, causal)
        if not SMOKE:
            torch.cuda.synchronize()
        return None, time.time() - t
    except Exception as exc:  # noqa: BLE001  (a candidate that does not compile is reported, not fatal)
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}", time.time() - t


def bench(fn):
    if SMOKE:
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--old", default=None, help="another flash.py to time as the 'old' candidate")
    p.add_argument("--workers", type=int, default=12)
    p.add_argument("--cases", default="all", help="e.g. 128n,128c,64n,64c")
    p.add_argument("--persistent", action="store_true", help="forward only: the persistent grid vs the shipped path")
    args = p.parse_args()
    pick = persistent_candidates if args.persistent else candidates
    cases = CASES if args.cases == "all" else [(int(c[:-1]), c[-1] == "c") for c in args.cases.split(",")]
    jobs = [(args.old, d, causal, c) for d, causal in cases for c in pick(d, causal)
            if (args.old or not c[0].startswith("old")) and "again" not in c[0]]
    t0 = time.time()
    import multiprocessing as mp
    with ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn")) as ex:
        failed = {(j[1], j[2], j[3][0], j[3][1]): r[0] for j, r in zip(jobs, ex.map(_compile_one, jobs)) if r[0]}
    print(f"compiled {len(jobs)} candidates in {time.time() - t0:.0f} s; failed: {len(failed)}", flush=True)
    for key, err in failed.items():
        print(f"  did not run: {key}: {err}", flush=True)
    old = load_old(args.old) if args.old else None

    best, rows = {}, []
    print(f"{'d':>4} {'causal':>6} {'pass':>4} {'candidate':<34} {'ms':>7} {'TFLOP/s':>7} {'x cuDNN':>7} "
          f"{'x flash':>7}  rel err", flush=True)
    for d, causal in cases:
        b, h = 2, 2048 // d
        q, k, v, do = inputs(b, h, N, d, d)
        qs, ks, vs, dos = inputs(1, 2, N_CHECK, d, d + 1)
        ref = reference(qs, ks, vs, dos, causal)
        flops = 4.0 * b * h * N * N * d / (2 if causal else 1)
        sdpa = {}
        for be, tag in ((SDPBackend.CUDNN_ATTENTION, "cudnn"), (SDPBackend.FLASH_ATTENTION, "flash")):
            with sdpa_kernel(SDPBackend.MATH if SMOKE else be):
                sdpa[(tag, "fwd")] = bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))
                sdpa[(tag, "bwd")] = math.nan
                if args.persistent:  # forward only
                    continue
                qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
                og = F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal)
                sdpa[(tag, "bwd")] = bench(lambda: torch.autograd.grad(og, (qg, kg, vg), do, retain_graph=True))
        best_dkdv = (math.inf, OLD_DKDV[(d, causal)])
        for name, pas, switches, cfgs in pick(d, causal):
            if name.startswith("old") and old is None:
                continue
            if (d, causal, name.replace(" (again)", ""), pas) in failed:
                continue
            mod = old if name.startswith("old") else fl
            if cfgs != "auto" and cfgs.get("dkdv", 0) is None:
                cfgs = {**cfgs, "dkdv": best_dkdv[1]}
            apply(mod, switches, cfgs)
            try:
                if cfgs == "auto":  # tune at the timing shape, as the bench does, before the small check
                    run_pass(mod, pas, q, k, v, do, causal)
                    kerns = [mod._fwd_kernel] if pas == "fwd" else [mod._bwd_dkdv_kernel, mod._bwd_dq_kernel]
                    name = "auto " + "; ".join(
                        "{BLOCK_M}x{BLOCK_N}".format(**kn.best_config.kwargs)
                        + f" w{kn.best_config.num_warps} s{kn.best_config.num_stages}" for kn in kerns)
                got = run_pass(mod, pas, qs, ks, vs, dos, causal)
                errs = [rel(x, r) for x, r in zip(got, ref[:1] if pas == "fwd" else ref[1:])]
                ms = bench(lambda: run_pass(mod, pas, q, k, v, do, causal)) if pas == "fwd" else None
                if pas == "bwd":
                    o, lse = mod.flash_forward(q, k, v, causal=causal, check_finite=False)
                    ms = bench(lambda: mod.flash_backward(q, k, v, o, lse, do, causal=causal))
            except Exception as exc:  # noqa: BLE001
                print(f"  {name} {pas}: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
                continue
            if name.startswith("tma dkdv") and ms < best_dkdv[0]:
                best_dkdv = (ms, cfgs["dkdv"])
            work = flops * (2.5 if pas == "bwd" else 1.0)
            shown = f"{name} dkdv {cfgs['dkdv']}" if name.startswith("tma dq") else name
            row = (d, causal, pas, shown, ms, work / ms / 1e9, sdpa[("cudnn", pas)] / ms,
                   sdpa[("flash", pas)] / ms, max(errs))
            rows.append(row)
            ok = "" if max(errs) < 2e-2 else "  WRONG"
            print(f"{d:4d} {causal!s:>6} {pas:>4} {shown:<34} {ms:7.3f} {row[5]:7.1f} {row[6]:7.3f} {row[7]:7.3f}  "
                  f"{' '.join(f'{e:.1e}' for e in errs)}{ok}", flush=True)
            if max(errs) < 2e-2 and not name.startswith("old") and ms < best.get((d, causal, pas), (math.inf,))[0]:
                best[(d, causal, pas)] = (ms, shown, row)
        for pas in ("fwd",) if args.persistent else ("fwd", "bwd"):
            print(f"{d:4d} {causal!s:>6} {pas:>4} {'sdpa cudnn / flash':<34} {sdpa[('cudnn', pas)]:7.3f} "
                  f"{sdpa[('flash', pas)]:7.3f}", flush=True)
        if not SMOKE:
            torch.cuda.empty_cache()

    print(f"\nbest per case ({DT}, N = {N}, B = 2, H = 2048/d; x = SDPA time / ours, same run):")
    olds = {(r[0], r[1], r[2]): r for r in rows if r[3] == "old"}
    print(f"{'d':>4} {'causal':>6} {'pass':>4} {'ms':>7} {'x cuDNN':>7} {'old x cuDNN':>11}  candidate")
    for (d, causal, pas), (ms, shown, row) in best.items():
        o = olds.get((d, causal, pas))
        print(f"{d:4d} {causal!s:>6} {pas:>4} {ms:7.3f} {row[6]:7.3f} {o[6] if o else float('nan'):11.3f}  {shown}")
    if args.persistent:
        persistent_table(rows)
    print(f"total {time.time() - t0:.0f} s; torch {torch.__version__}, triton {triton.__version__}, "
          f"{'cpu' if SMOKE else torch.cuda.get_device_name()}, TMA default {os.environ.get('GPU_OPTIONAL_TMA', '1')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
