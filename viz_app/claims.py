"""Sentences that compare, generated from the numbers they sit beside (never fixed text).

Pure functions: numbers in, a sentence out. A page shows the numbers and the
sentence built from them, so the words cannot contradict the figures.
"""

from __future__ import annotations


def ratio_words(a: float, b: float, *, more="more", fewer="fewer") -> str:
    """'3.4x fewer' / '1.4x more' / 'the same number of', for a compared with b."""
    if a == b:
        return "the same number of"
    if a < b:
        return f"{b / a:.1f}x {fewer}" if a > 0 else f"none of the {b:,}"
    return f"{a / b:.1f}x {more}" if b > 0 else f"{a:,} {more}"


def traffic_sentence(a_label: str, a: int, b_label: str, b: int, *, what="HBM accesses", where="") -> str:
    """'{where}: flash moves 7,232 HBM accesses, standard 24,640: flash moves 3.4x fewer than standard.'"""
    head = f"{where}: " if where else ""
    return (f"{head}{a_label} moves {a:,} {what}, {b_label} {b:,}: {a_label} moves "
            f"{ratio_words(a, b)} {what} than {b_label}.")


def recompute_sentence(flash_traffic: int, std_traffic: int, flash_flops: int, std_flops: int) -> str:
    """The backward trade-off in the numbers of this setting: FLOPs spent, traffic saved or not."""
    flops = ratio_words(flash_flops, std_flops)
    if flash_traffic < std_traffic:
        verdict = f"here recomputation saves traffic: {ratio_words(flash_traffic, std_traffic)} HBM accesses"
    elif flash_traffic > std_traffic:
        verdict = (f"here it does not save traffic: flash moves {ratio_words(flash_traffic, std_traffic)} "
                   "HBM accesses than standard (its tiles are small for this SRAM, so Q, dO and dQ are re-read "
                   "once per key block)")
    else:
        verdict = "here both move the same traffic"
    return (f"Whole backward: flash {flash_traffic:,} vs standard {std_traffic:,} HBM accesses; "
            f"FLOPs {flash_flops:,} vs {std_flops:,} (flash computes {flops} FLOPs, rebuilding P on chip); "
            f"{verdict}.")


def slope_sentence(name: str, slope: float, var="N") -> str:
    """How a counted series grows, in words that follow its measured log-log slope."""
    if slope < 1.15:
        shape = "close to linear"
    elif slope < 1.85:
        shape = "between linear and quadratic"
    else:
        shape = "close to quadratic"
    return f"{name} grows like {var}^{slope:.2f} ({shape})"


def sweep_sentence(points: list[dict], var: str = "N") -> str:
    """Slopes over the last two points and the comparison at the largest point of a sweep of both kernels.

    ``points``: refattn.bench.sweeps rows {var: x, "standard": {"total": ...}, "flash": {"total": ...}}.
    """
    from refattn.bench.sweeps import loglog_slope

    xs = [p[var] for p in points[-2:]]
    parts = [slope_sentence(k, loglog_slope(xs, [p[k]["total"] for p in points[-2:]]), var)
             for k in ("standard", "flash")] if len(points) >= 2 else []
    last = points[-1]
    cmp = traffic_sentence("flash", last["flash"]["total"], "standard", last["standard"]["total"],
                           where=f"At {var} = {last[var]:,}")
    return (("Over the last two points " + "; ".join(parts) + ". ") if parts else "") + cmp


def engines_sentence(vitcod: int, dense: int, unsplit: int, bound: str, utilization: dict) -> str:
    """ViTCoD's split against the dense baseline and one unsplit sparse engine, in this layer's cycles."""
    util = ", ".join(f"{name} {val:.0%}" for name, val in utilization.items())
    if unsplit < vitcod:
        why = (f"here the split does not pay: one sparse engine over the whole mask is {vitcod / unsplit:.1f}x "
               f"faster than ViTCoD's two engines ({unsplit:,} vs {vitcod:,} cycles); the split layer is "
               f"{bound}-bound with PE utilisation {util}, so its lines wait instead of working")
    elif unsplit > vitcod:
        why = f"the split is {unsplit / vitcod:.1f}x faster than one sparse engine ({vitcod:,} vs {unsplit:,} cycles)"
    else:
        why = f"the split and one sparse engine take the same {vitcod:,} cycles"
    return (f"ViTCoD takes {vitcod:,} cycles, the dense baseline {dense:,} "
            f"({ratio_words(dense, vitcod, more='more', fewer='fewer')} cycles than ViTCoD); {why}.")


def percent(a: float, b: float) -> str:
    """a as a share of b: '23 %' (one decimal below 10 %)."""
    if b <= 0:
        return "n/a"
    x = 100.0 * a / b
    return f"{x:.1f} %" if x < 10 else f"{x:.0f} %"


def window_sentence(window, tiles: dict, kv_reads: int, kv_reads_dense: int, total: int, total_dense: int) -> str:
    """The sliding window's saving, from the run's tiles and counters and the same kernel's run without it.

    ``tiles``: viz_app.playback.tile_counts of the run (visited, causal_skipped, window_skipped, total);
    ``kv_reads``/``kv_reads_dense``: K plus V elements read with and without the window; ``total``/
    ``total_dense``: all HBM accesses with and without it.
    """
    left, right = (-1 if x is None else x for x in window)
    show = lambda x: "unbounded" if x < 0 else str(x)
    causal = f", {tiles['causal_skipped']} by the causal mask" if tiles["causal_skipped"] else ""
    than = lambda a, b: "the same" if a == b else ratio_words(a, b)
    return (f"window ({show(left)}, {show(right)}): {tiles['visited']} of {tiles['total']} tiles visited "
            f"({tiles['window_skipped']} skipped outside the window{causal}); against the same kernel without the "
            f"window, K/V reads {percent(kv_reads, kv_reads_dense)} of dense ({kv_reads:,} vs {kv_reads_dense:,} "
            f"elements: {than(kv_reads, kv_reads_dense)}) and all HBM accesses {total:,} vs {total_dense:,} "
            f"({than(total, total_dense)}).")


def gqa_mapping(heads: int, num_kv_heads: int) -> str:
    """'query heads 0, 1 → KV head 0; 2, 3 → KV head 1' (query head h reads KV head h // (Hq / Hkv))."""
    group = heads // num_kv_heads
    parts = [", ".join(str(h) for h in range(g * group, (g + 1) * group)) + f" → KV head {g}"
             for g in range(num_kv_heads)]
    return "query heads " + "; ".join(parts)


def gqa_sentence(heads: int, num_kv_heads: int, variant: str, kv_reads: int, kv_reads_mha: int,
                 kv_stored: int, kv_stored_mha: int) -> str:
    """GQA in this setting's counted numbers: K/V read from HBM and K/V held in HBM, against MHA."""
    if kv_reads < kv_reads_mha:
        why = f"{variant.upper()} reads each KV head once for its group of {heads // num_kv_heads} query heads"
    elif kv_reads == kv_reads_mha:
        why = (f"{variant.upper()} reads K and V once per query head, so grouping saves no reads here "
               "(only HBM space)")
    else:
        why = f"{variant.upper()} reads more with GQA here"
    kv_words = f"{num_kv_heads} KV head{'s' if num_kv_heads > 1 else ''}"
    return (f"GQA, {heads} query heads on {kv_words} ({gqa_mapping(heads, num_kv_heads)}): "
            f"K/V reads {kv_reads:,} vs {kv_reads_mha:,} with {heads} KV heads (MHA), "
            f"{ratio_words(kv_reads, kv_reads_mha)}: {why}; K/V held in HBM {kv_stored:,} vs {kv_stored_mha:,} "
            f"elements ({ratio_words(kv_stored, kv_stored_mha)}).")
