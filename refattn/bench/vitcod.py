"""``refattn bench vitcod``: ViTCoD's designs on the same counted accelerator (docs/vitcod.md).

Every cycle and byte below comes from :func:`refattn.vitcod.vitcod_forward`
(count-only), whose loads, stores and buffer -> PE reads are counted by its
own loop; every sentence in the notes is computed from the numbers of its
table. Tables:

1. the hardware: every rate, its value and its source;
2. DeiT-Tiny (bundled 95 % mask): dense, unsplit sparse, ViTCoD's split, split
   + auto-encoder: cycles, bytes, PE utilisation per engine, what bounds them;
3. per layer: G per head and the designs' cycles;
4. buffer -> PE reads per engine (where the split saves reads);
5. the sweep of the buffer read width: where the split beats the unsplit
   sparse engine and where it does not;
6. synthetic ViT masks at 80 / 90 / 95 % sparsity;
7. real MiniLM masks (text; needs the [real] extra, else one printed line);
8. the public ViTCoD simulator's model (reproduced exactly) beside its log;
9. synthetic ViT inputs: recall of a fixed mask on new inputs, auto-encoder error.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from refattn.bench.table import Table
from refattn.data.vit import load_deit_tiny_mask, vit_like_qkv
from refattn.reference import attention, attention_probs
from refattn.vitcod.autoencoder import fit_head_autoencoder
from refattn.vitcod.engines import run_layer
from refattn.vitcod.hardware import SOURCES, Hardware
from refattn.vitcod.kernel import RESOURCES, ST_SDDMM, ST_SPMM, F
from refattn.vitcod.prune import average_maps, cutoff_for_density, density, fixed_mask, mask_recall
from refattn.vitcod.vitcod_model import PUBLISHED_TOTALS, vitcod_public_network

D = 64
#: (label, kernel design, auto-encoder)
DESIGNS = (("dense", "dense", False), ("unsplit sparse", "sparse", False), ("ViTCoD split", "split", False),
           ("split + auto-encoder", "split", True))
READ_WIDTHS = (8, 16, 32, 64, 128, 256, 512)
ENGINE_KINDS = ("dense engine", "sparse engine", "decoder")


@dataclasses.dataclass
class Network:
    """One design over all layers: sums of the kernel's counts."""

    layers: list  # LayerResult per layer

    @property
    def total(self) -> int:
        return sum(x.total for x in self.layers)

    @property
    def hbm(self) -> int:
        return sum(x.preload for x in self.layers)

    @property
    def compute(self) -> int:
        return sum(x.compute for x in self.layers)

    @property
    def bytes(self) -> int:
        return sum(sum(x.bytes.values()) for x in self.layers)

    def utilization(self, engine: str) -> float:
        """Useful MACs / (engine lines x 8 x cycles of the SDDMM and SpMM stages), over all layers."""
        f = F["dense_macs" if engine == "dense" else "sparse_macs"]
        macs = cap = 0
        for x in self.layers:
            c = x.result.counters
            lines = np.array([h[f"{engine}_lines"] for h in x.result.plan.details["heads"]])
            macs += int(c[:, :, f].sum())
            cap += int((lines * x.hw.macs_per_line * c[:, ST_SDDMM:ST_SPMM + 1, F["stage_cycles"]].sum(1)).sum())
        return macs / cap if cap else 0.0

    def bound_share(self) -> dict:
        """Share of the compute cycles each resource set (its stages' cycles), and how many layers were memory-bound."""
        tot = dict.fromkeys(RESOURCES, 0)
        for x in self.layers:
            for k, v in x.result.cycles["bound_cycles"].items():
                tot[k] += v
        return tot

    def bound(self) -> str:
        """"memory" if HBM transfers set most of the total, else the resource kind that set most compute cycles."""
        mem_layers = sum(x.preload > x.compute for x in self.layers)
        share = self.bound_share()
        eng = sum(v for k, v in share.items() if k in ENGINE_KINDS)
        buf = sum(share.values()) - eng
        top = max(share, key=share.get)
        kind = "buffer" if buf > eng else "compute"
        pct = 100 * max(buf, eng) / max(buf + eng, 1)
        lead = f"{mem_layers}/{len(self.layers)} layers memory-bound; " if mem_layers else ""
        return f"{lead}{kind} {pct:.0f}% (most: {top})"

    def reads(self, engine: str) -> dict:
        names = ("Q", "K", "V", "S", "out_writes") + (("idx",) if engine == "sparse" else ())
        out = {n: sum(x.result.counter(f"{engine}_{n}") for x in self.layers) for n in names}
        if engine == "sparse":
            out["partial"] = sum(x.result.counter("partial_reads") for x in self.layers)
        out["macs"] = sum(x.result.counter(f"{engine}_macs") for x in self.layers)
        return out


def network(keep, *, d=D, hw=None, design="split", autoencoder=False, threshold=None) -> Network:
    """One design on masks (layers, heads, N, N)."""
    return Network([run_layer(m, design=design, d=d, hw=hw, autoencoder=autoencoder, threshold=threshold)
                    for m in keep])


def designs(keep, *, d=D, hw=None, threshold=None, with_ae=True) -> dict:
    return {label: network(keep, d=d, hw=hw, design=des, autoencoder=ae, threshold=threshold)
            for label, des, ae in DESIGNS if with_ae or not ae}


def compare(a: int, b: int, name_a: str, name_b: str) -> str:
    """A sentence saying which of two cycle counts is smaller, and by how much (computed)."""
    if a == b:
        return f"{name_a} and {name_b} take the same {a:,} cycles"
    fast, slow = (name_a, name_b) if a < b else (name_b, name_a)
    return f"{fast} is {max(a, b) / min(a, b):.2f}x faster than {slow} ({min(a, b):,} vs {max(a, b):,} cycles)"


def versus(split: int, unsplit: int) -> str:
    """"1.31x faster" / "1.69x slower": the split's cycles against the unsplit sparse engine's."""
    if split <= unsplit:
        return f"{unsplit / split:.2f}x faster"
    return f"{split / unsplit:.2f}x slower"


def hardware_table(hw: Hardware) -> Table:
    t = Table("vitcod: the simulated accelerator (refattn.vitcod.Hardware)", ["field", "value", "source"])
    for f in dataclasses.fields(hw):
        t.add(f.name, getattr(hw, f.name), SOURCES[f.name])
    t.notes.append(f"{hw.macs} MACs; {hw.bytes_per_cycle:.1f} off-chip bytes per cycle; softmax is not charged "
                   "(as in ViTCoD's simulator)")
    return t


def design_table(title: str, nets: dict, hw: Hardware) -> Table:
    t = Table(title, ["design", "cycles", "HBM cyc", "compute cyc", "bytes", "util dense", "util sparse", "bound",
                      "x vs dense"])
    dense = nets["dense"].total
    for label, net in nets.items():
        t.add(label, net.total, net.hbm, net.compute, net.bytes, round(net.utilization("dense"), 3),
              round(net.utilization("sparse"), 3), net.bound(), round(dense / net.total, 2))
    sp, un = nets["ViTCoD split"], nets["unsplit sparse"]
    t.notes.append(f"cycles per layer = max(HBM cycles, compute cycles), summed over layers; read width "
                   f"W = {hw.buffer_read_bytes} bytes/cycle per buffer")
    t.notes.append(compare(sp.total, un.total, "the split", "the unsplit sparse engine"))
    if "split + auto-encoder" in nets:
        ae = nets["split + auto-encoder"]
        t.notes.append(compare(sp.total, ae.total, "the split without the auto-encoder", "with it") +
                       f"; it moves {ae.bytes:,} bytes instead of {sp.bytes:,}, and "
                       + ("HBM is not what bounds it (compute cycles exceed HBM cycles), so the saved bytes do "
                          "not shorten it, while decoding adds cycles" if sp.compute > sp.hbm
                          else "HBM bounds it, so the saved bytes count"))
    return t


def layer_table(keep, nets: dict) -> Table:
    t = Table("vitcod: DeiT-Tiny per layer (3 heads), cycles",
              ["layer", "G per head", "dense", "unsplit", "split", "split +AE", "split bound", "split vs unsplit"])
    wins = g1 = g1_loses = 0
    for i in range(len(keep)):
        r = {k: v.layers[i] for k, v in nets.items()}
        sp, un = r["ViTCoD split"], r["unsplit sparse"]
        wins += sp.total < un.total
        if max(h.g for h in sp.heads) <= 1:
            g1 += 1
            g1_loses += sp.total >= un.total
        t.add(i, "/".join(str(h.g) for h in sp.heads), r["dense"].total, un.total, sp.total,
              r["split + auto-encoder"].total, sp.bound,
              versus(sp.total, un.total))
    t.notes.append(f"the split is faster than the unsplit sparse engine in {wins} of {len(keep)} layers; "
                   f"of the {g1} layers whose heads have at most one global token, it is slower in {g1_loses}: an "
                   "N x 1 product keeps one column of the 8 x Ld array busy (lesson 10), so the denser engine takes "
                   "longer than the entries it removes from the sparser engine")
    return t


def reads_table(nets: dict) -> Table:
    t = Table("vitcod: buffer -> PE reads per engine, DeiT-Tiny, all layers (elements; index in bytes)",
              ["design / engine", "MACs", "Q", "K", "V", "S/P", "index", "partial sums", "out writes",
               "MACs per K read"])
    for label in ("dense", "unsplit sparse", "ViTCoD split"):
        for eng in ("dense", "sparse"):
            r = nets[label].reads(eng)
            if r["macs"] == 0:
                continue
            t.add(f"{label} / {eng}", r["macs"], r["Q"], r["K"], r["V"], r["S"], r.get("idx", "-"),
                  r.get("partial", "-"), r["out_writes"], round(r["macs"] / max(r["K"], 1), 1))
    sp, dn = nets["ViTCoD split"].reads("sparse"), nets["ViTCoD split"].reads("dense")
    t.notes.append(f"in the split, the denser engine does {dn['macs'] / max(dn['K'], 1):.0f} MACs per K element it "
                   f"reads (a global key stays in the array while every query streams past); the sparser engine "
                   f"{sp['macs'] / max(sp['K'], 1):.1f} (a gathered key row serves one score)")
    return t


PORTS = (("1 bank", 1), ("banked", 64))


def sweep_table(keep, hw: Hardware, widths=READ_WIDTHS) -> tuple[Table, list]:
    """Split vs unsplit sparse vs dense over the read width W, for a one-bank port and a banked one."""
    t = Table("vitcod: sweep of the buffer read width W (bytes/cycle per buffer), DeiT-Tiny, all layers",
              ["W", "port", "dense", "unsplit sparse", "split", "split vs unsplit", "layers split wins",
               "unsplit bound", "split bound", "util sparse (unsplit)"])
    rows = []
    for port, banks in PORTS:
        for w in widths:
            hw_w = dataclasses.replace(hw, buffer_read_bytes=w, buffer_banks=banks)
            nets = designs(keep, hw=hw_w, with_ae=False)
            sp, un = nets["ViTCoD split"], nets["unsplit sparse"]
            wins = sum(a.total < b.total for a, b in zip(sp.layers, un.layers))
            rows.append((port, w, sp.total, un.total, wins))
            t.add(w, port, nets["dense"].total, un.total, sp.total,
                  versus(sp.total, un.total),
                  f"{wins}/{len(keep)}", un.bound(), sp.bound(), round(un.utilization("sparse"), 3))
    for port, _ in PORTS:
        better = [w for p_, w, s, u, _ in rows if p_ == port and s < u]
        worse = [w for p_, w, s, u, _ in rows if p_ == port and s >= u]
        t.notes.append(f"{port}: over the whole network the split beats the unsplit sparse engine at "
                       f"W = {better or 'no width'}, and does not at W = {worse or 'no width'}")
    t.notes.append("1 bank: one address per cycle, so a gathered K or V row costs ceil(row bytes / W) cycles and a "
                   "port wider than a row gives the sparser engine nothing, while the denser engine's streams use "
                   "the whole width; banked: up to W // row bytes rows per cycle with no bank conflicts "
                   "(optimistic), so a wide port feeds every sparse line and the irregular fetches stop costing "
                   "more than regular ones")
    return t, rows


def synthetic_masks(quick: bool):
    """Fixed masks (3 heads, 197 tokens) at 80 / 90 / 95 % sparsity from averaged synthetic ViT maps."""
    q, k, _ = vit_like_qkv(6 if quick else 16, seed=1)
    avg = average_maps(q, k)
    return {s: fixed_mask(avg, cutoff_for_density(avg, 1 - s)) for s in (0.80, 0.90, 0.95)}


def synthetic_design_table(masks: dict, hw: Hardware) -> Table:
    t = Table("vitcod: synthetic ViT masks (CLS + 14x14 patches, 3 heads, d = 64), one layer",
              ["sparsity", "density", "G per head", "dense", "unsplit", "split", "split +AE", "split bound",
               "split vs unsplit"])
    for s, m in masks.items():
        nets = designs(m[None], hw=hw)
        sp, un = nets["ViTCoD split"], nets["unsplit sparse"]
        t.add(f"{s:.0%}", round(density(m), 4), "/".join(str(h.g) for h in sp.layers[0].heads), nets["dense"].total,
              un.total, sp.total, nets["split + auto-encoder"].total, sp.bound(),
              versus(sp.total, un.total))
    return t


def real_table(hw: Hardware):
    """Fixed masks from all-MiniLM-L6-v2 on the bundled text (4 chunks averaged, a 5th held out), N = 128."""
    from refattn.vitcod.real_masks import minilm_fixed_masks

    try:
        rm = minilm_fixed_masks(0.1, n_tokens=128, n_fit=4)
    except (ImportError, FileNotFoundError) as exc:  # the [real] extra is missing
        print(f"vitcod: real MiniLM masks skipped: {exc}")  # exc says what to install
        return None
    d = 32  # MiniLM's head dim
    t = Table(f"vitcod: real MiniLM attention, N = {rm.n_tokens} tokens, 12 heads, d = {d}, target density 0.1",
              ["layer", "G min/mean/max", "density", "recall held-out", "recall random", "dense", "unsplit",
               "split", "split bound", "split vs unsplit"])
    wins = 0
    for layer, keep in enumerate(rm.keep):
        nets = designs(keep[None], d=d, hw=hw, with_ae=False)
        sp, un = nets["ViTCoD split"], nets["unsplit sparse"]
        wins += sp.total < un.total
        g = [h.g for h in sp.layers[0].heads]
        t.add(layer, f"{min(g)}/{np.mean(g):.1f}/{max(g)}", round(float(rm.density[layer]), 4),
              round(float(rm.recall_held_out[layer]), 3), round(float(rm.recall_random[layer]), 3),
              nets["dense"].total, un.total, sp.total, sp.bound(),
              versus(sp.total, un.total))
    t.notes += [
        f"input: {rm.label}; text, not images (ViTCoD targets ViTs)",
        f"masks: per-row top-p (CLS row/column kept) on maps averaged over {rm.n_fit} chunks of the bundled text; "
        "recall = attention mass kept on a held-out chunk; random = same nnz per head, CLS kept",
        f"the split is faster than the unsplit sparse engine in {wins} of {len(rm.keep)} layers",
    ]
    return t


def public_table(keep, hw: Hardware, nets: dict) -> Table:
    t = Table("vitcod: network totals (12 layers), cycles", ["model", "preload", "decode+compute", "total", "bound"])
    pub = vitcod_public_network(keep, hw=hw)
    pub15 = vitcod_public_network(keep, hw=hw, sparse_v_factor=1.5)
    pub_noae = vitcod_public_network(keep, hw=hw, autoencoder=False)
    t.add("ViTCoD public model (reproduced, head 0 per layer)", pub["preload"], pub["decode"] + pub["compute"],
          pub["total"], pub["bound"])
    t.add("  same, V reload factor 1.5 (their current code)", pub15["preload"], pub15["decode"] + pub15["compute"],
          pub15["total"], pub15["bound"])
    t.add("  same, without the auto-encoder (our switch)", pub_noae["preload"],
          pub_noae["decode"] + pub_noae["compute"], pub_noae["total"], pub_noae["bound"])
    t.add("ViTCoD published log (vitcod_atten_0.95_wo.txt)", PUBLISHED_TOTALS["preload"],
          PUBLISHED_TOTALS["decode"] + PUBLISHED_TOTALS["compute"], PUBLISHED_TOTALS["total"], "memory")
    for label in ("ViTCoD split", "split + auto-encoder"):
        net = nets[label]
        t.add(f"refattn counted kernel, {label}, all 36 heads", net.hbm, net.compute, net.total, net.bound())
    t.notes += [
        f"the faithful mode equals their log exactly: total {pub['total']} vs {PUBLISHED_TOTALS['total']} "
        "(per-layer G and SDDMM/SpMM cycles equal too; tests/vitcod/test_engines.py)",
        "why refattn's total differs from theirs: they simulate head 0 of each layer with the 3 heads in parallel "
        "on 64/3 lines each, with ideal engines (no fill or drain, no buffer ports) and every token transfer "
        "rounded up to whole cycles; refattn runs all 36 heads one after another through the counted kernel, "
        "the dense part on the PE-array model checked against SCALE-Sim, the sparse part paying its gathers",
    ]
    return t


def synthetic_quality_table(quick):
    t = Table("vitcod: synthetic ViT inputs (CLS + 14x14 patches, 3 heads, d = 64)", ["what", "value"])
    n_fit = 6 if quick else 24
    q, k, v = vit_like_qkv(n_fit, seed=1)
    avg = average_maps(q, k)
    mask = fixed_mask(avg, cutoff_for_density(avg, 0.05))
    qn, kn, vn = vit_like_qkv(4 if quick else 16, seed=2)
    pn = attention_probs(qn, kn)[0]
    rnd = np.random.default_rng(0).random(mask.shape) < density(mask)
    t.add("mask density (fixed from averaged maps)", round(density(mask), 4))
    seen = mask_recall(mask, attention_probs(q, k)[0])
    t.add("recall (kept attention mass), inputs it was built from", round(seen, 4))
    t.add("recall, new inputs of the same kind", round(mask_recall(mask, pn), 4))
    t.add("recall, random mask of the same density, new inputs", round(mask_recall(rnd, pn), 4))
    ae_q, ae_k = fit_head_autoencoder(q), fit_head_autoencoder(k)
    o, _ = attention(qn, kn, vn)
    o2, _ = attention(ae_q.reconstruct(qn), ae_k.reconstruct(kn), vn)
    t.add("auto-encoder 3 -> 2 heads: rel. error Q (new inputs)", round(ae_q.relative_error(qn), 4))
    t.add("auto-encoder 3 -> 2 heads: rel. error K (new inputs)", round(ae_k.relative_error(kn), 4))
    rel = float(np.linalg.norm(o2 - o) / np.linalg.norm(o))
    t.add("auto-encoder: rel. error of the attention output", round(rel, 4))
    t.add("auto-encoder: Q/K bytes kept", f"{ae_q.bottleneck}/{ae_q.heads}")
    t.notes.append("closed-form (SVD) fit on the same inputs the mask came from, no fine-tuning; ViTCoD fine-tunes "
                   "the network with the auto-encoder in place, which this does not model")
    return t


def run(quick: bool = False) -> list[Table]:
    keep, _ = load_deit_tiny_mask()
    hw = Hardware()
    nets = designs(keep, hw=hw, threshold=50)
    tables = [
        hardware_table(hw),
        design_table("vitcod: DeiT-Tiny, bundled 95 % mask, 12 layers x 3 heads, N = 197, d = 64", nets, hw),
        layer_table(keep, nets),
        reads_table(nets),
        sweep_table(keep, hw, READ_WIDTHS[1::2] if quick else READ_WIDTHS)[0],
        synthetic_design_table(synthetic_masks(quick), hw),
    ]
    real_t = real_table(hw)
    if real_t is not None:
        tables.append(real_t)
    tables += [public_table(keep, hw, nets), synthetic_quality_table(quick)]
    for t in tables:
        t.print()
        print()
    return tables
