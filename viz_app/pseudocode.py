"""Pseudo-code beside each kernel, the lines a step executes, and a one-sentence narration of the step.

Pure functions of a trace's events (no Streamlit, no kernel runs). A step is
described by the set of (kind, tensor) pairs its events carry; each line of a
kernel's pseudo-code names the pairs that show it ran (``when``), so the lit
lines follow from what the kernel recorded, not from a copy of its loop.

The sentence (:func:`narrate`) lists what the step loaded (tensor, rows,
elements), computed and wrote, names causal skips, rescales and the final
normalisation when they happen, and gives the step's HBM cost.
"""

from __future__ import annotations

from dataclasses import dataclass

from refattn.memory import Event


@dataclass(frozen=True)
class Line:
    text: str
    #: lit when the step has one of these (kind, tensor) pairs ...
    when: tuple = ()
    #: ... and none of these (e.g. FA1's initialisation writes O but computes no S)
    unless: tuple = ()


def _l(text, *when, unless=()):
    return Line(text, tuple(when), tuple(unless))


LOAD, STORE, COMP, SKIP = "load", "store", "compute", "skip"

CODE = {
    "flash_forward/fa2": [
        _l("for each query block i = 1..Tr:"),
        _l("    load Q_i;  m_i = -inf, l_i = 0, O_i = 0 on chip", (LOAD, "Q")),
        _l("    for each key block j = 1..Tc:"),
        _l("        if the tile is fully masked (causal or outside the window): skip it", (SKIP, None)),
        _l("        load K_j, V_j", (LOAD, "K"), (LOAD, "V")),
        _l("        S_ij = scale * Q_i K_j^T  (mask applied)", (COMP, "S")),
        _l("        m_new = max(m_i, rowmax S_ij);  P_ij = exp(S_ij - m_new)", (COMP, "P")),
        _l("        l_i = e^(m_i - m_new) l_i + rowsum P_ij;  O_i = e^(m_i - m_new) O_i + P_ij V_j", (COMP, "P")),
        _l("    O_i = O_i / l_i;  L_i = m_i + log l_i", (COMP, "L")),
        _l("    store O_i, L_i", (STORE, "O"), (STORE, "L")),
    ],
    "flash_forward/fa1": [
        _l("O = 0, l = 0, m = -inf in HBM", (STORE, "O"), unless=((COMP, "S"),)),
        _l("for each key block j = 1..Tc:"),
        _l("    load K_j, V_j", (LOAD, "K"), (LOAD, "V")),
        _l("    for each query block i = 1..Tr:"),
        _l("        if the tile is fully masked (causal or outside the window): skip it", (SKIP, None)),
        _l("        load Q_i, O_i, l_i, m_i", (LOAD, "Q")),
        _l("        S_ij = scale * Q_i K_j^T;  m~ = rowmax S_ij;  P~ = exp(S_ij - m~);  l~ = rowsum P~", (COMP, "S")),
        _l("        m_new = max(m_i, m~);  l_new = e^(m_i - m_new) l_i + e^(m~ - m_new) l~", (COMP, "P")),
        _l("        O_i = (l_i e^(m_i - m_new) O_i + e^(m~ - m_new) P~ V_j) / l_new", (COMP, "P")),
        _l("        store O_i, l_i = l_new, m_i = m_new", (STORE, "O"), unless=((COMP, "O"),)),
        _l("L = m + log l  (read l, m; write L)", (COMP, "L")),
    ],
    "flash_backward": [
        _l("pre-pass: D_i = rowsum(dO_i * O_i);  dQ_i = 0 in HBM", (STORE, "D")),
        _l("for each key block j = 1..Tc:"),
        _l("    load K_j, V_j;  dK_j = 0, dV_j = 0 on chip", (LOAD, "K"), (LOAD, "V")),
        _l("    for each query block i = 1..Tr:"),
        _l("        if the tile is fully masked (causal): skip it", (SKIP, None)),
        _l("        load Q_i, dO_i, L_i, D_i, dQ_i", (LOAD, "Q")),
        _l("        S_ij = scale * Q_i K_j^T;  P_ij = exp(S_ij - L_i)   (recomputed, not read)", (COMP, "S")),
        _l("        dV_j += P_ij^T dO_i;  dP_ij = dO_i V_j^T", (COMP, "dP")),
        _l("        dS_ij = P_ij * (dP_ij - D_i)", (COMP, "dS")),
        _l("        dQ_i += scale * dS_ij K_j;  store dQ_i", (STORE, "dQ"), unless=((STORE, "D"),)),
        _l("        dK_j += scale * dS_ij^T Q_i", (COMP, "dS")),
        _l("    store dK_j, dV_j", (STORE, "dK"), (STORE, "dV")),
    ],
    "standard_forward": [
        _l("F1: for each tile: load Q rows, K rows", (LOAD, "Q"), (LOAD, "K")),
        _l("        S = scale * Q K^T (mask applied);  store S", (STORE, "S")),
        _l("F2: for each row block: load S rows", (LOAD, "S")),
        _l("        P = softmax(S) (row max, exp, row sum);  store P (and L)", (STORE, "P")),
        _l("F3: for each tile: load P tile, V rows", (LOAD, "P")),
        _l("        O += P V;  store O when its row block is done", (STORE, "O")),
    ],
    "standard_backward": [
        _l("B1: for each tile: load P tile, dO rows;  dV += P^T dO", (LOAD, "P"), unless=((LOAD, "dP"),)),
        _l("        store dV when its key block is done", (STORE, "dV")),
        _l("B2: D = rowsum(dO * O);  store D", (STORE, "D")),
        _l("    for each tile: load V rows;  dP = dO V^T;  store dP", (STORE, "dP")),
        _l("B3: for each row block: load P, dP rows, D;  dS = P * (dP - D);  store dS", (STORE, "dS")),
        _l("B4: for each tile: load dS tile, K rows;  dQ += scale * dS K", (LOAD, "K")),
        _l("        store dQ when its row block is done", (STORE, "dQ")),
        _l("B5: for each tile: load dS tile, Q rows;  dK += scale * dS^T Q", (LOAD, "Q")),
        _l("        store dK when its key block is done", (STORE, "dK")),
    ],
    "sparse_forward": [
        _l("for each query block i:"),
        _l("    load Q_i;  m_i = -inf, l_i = 0, O_i = 0 on chip", (LOAD, "Q")),
        _l("    read the listed key blocks and columns of block i", (LOAD, "idx")),
        _l("    for each listed key block / gathered column tile:"),
        _l("        if fully masked (causal): skip it", (SKIP, None)),
        _l("        load (or gather) K, V rows", (LOAD, "K"), (LOAD, "V")),
        _l("        S = scale * Q_i K^T;  online softmax update of m_i, l_i, O_i", (COMP, "S")),
        _l("    O_i = O_i / l_i;  L_i = m_i + log l_i", (COMP, "L")),
        _l("    store O_i, L_i", (STORE, "O"), (STORE, "L")),
    ],
}


def kernel_key(kernel: str) -> str:
    """The CODE key of a plan's kernel name ('flash_forward/fa2', 'standard_backward', ...)."""
    if kernel in CODE:
        return kernel
    for key in CODE:
        if kernel.startswith(key):
            return key
    raise KeyError(f"no pseudo-code for kernel {kernel!r}")


def _pairs(events: list[Event]) -> set:
    return {(e.kind, e.tensor) for e in events}


def lit_lines(kernel: str, events: list[Event]) -> list[int]:
    """Indices of the pseudo-code lines the step with these events executes."""
    pairs = _pairs(events)
    return [i for i, line in enumerate(CODE[kernel_key(kernel)])
            if any(w in pairs for w in line.when) and not any(u in pairs for u in line.unless)]


def _span(ranges):
    lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
    return f"{lo}" if hi - lo == 1 else f"{lo}-{hi - 1}"


def _moved(events, kind):
    """'Q rows 0-15 (256 el.), K rows 8-15 (128 el.)' for the step's loads or stores, grouped by tensor."""
    by: dict = {}
    for e in events:
        if e.kind == kind and e.tensor:
            by.setdefault(e.tensor, []).append(e)
    parts = []
    for t, es in by.items():
        n = sum(e.elements for e in es)
        parts.append(f"{t} rows {_span([e.rows for e in es])} ({n:,} el.)")
    return ", ".join(parts)


def narrate(kernel: str, step: int, n_steps: int, events: list[Event], *, reads: int, writes: int,
            first_of_block: bool = False, skip_reasons: list[str] | None = None) -> str:
    """One sentence: what step ``step`` loaded, computed and wrote, what it skipped, and what it cost.

    ``reads``/``writes``: the step's HBM reads and writes (elements). ``first_of_block``: no earlier
    tile of the same query rows was computed, so the online softmax has nothing to rescale yet.
    ``skip_reasons``: why each skip event of the step was skipped ("causal", "outside the window");
    default "causal".
    """
    if step <= 0:
        return f"Before the run: nothing loaded, nothing written ({n_steps} steps to go)."
    if step > n_steps:
        return f"Finished after {n_steps} steps."
    pairs = _pairs(events)
    parts = []
    loads, stores = _moved(events, LOAD), _moved(events, STORE)
    if loads:
        parts.append(f"loads {loads}")
    scores = [e for e in events if e.kind == COMP and e.tensor in ("S", "P", "dP", "dS")]
    if scores:
        tensors = ", ".join(dict.fromkeys(e.tensor for e in scores))
        parts.append(f"computes {tensors} for queries {_span([e.rows for e in scores])} x keys "
                     f"{_span([e.cols for e in scores])}")
    key = kernel_key(kernel)
    if (COMP, "P") in pairs and key in ("flash_forward/fa2", "flash_forward/fa1") and not first_of_block:
        parts.append("rescales the running l and O by e^(m_old - m_new)")
    if (COMP, "L") in pairs:
        parts.append("normalises the finished rows (O = O / l, L = m + log l)")
    if stores:
        parts.append(f"writes {stores}")
    skips = [e for e in events if e.kind == SKIP]
    if skips:
        why = skip_reasons or ["causal"] * len(skips)
        for reason in dict.fromkeys(why):
            count = why.count(reason)
            parts.append(f"skips {count} fully masked tile{'s' if count > 1 else ''} ({reason})")
    if not parts:
        parts.append("does no HBM transfer")
    return (f"Step {step} of {n_steps} " + "; ".join(parts)
            + f" — cost {reads + writes:,} HBM accesses ({reads:,} reads, {writes:,} writes).")


#: ViTCoD's split kernel (refattn/vitcod/kernel.py), one line per step of a head; lit by the step's phase.
VITCOD_CODE = [
    ("", "for each head:"),
    ("load", "    load Q, K, V, the sparse part's index lists and the dense part's mask into the buffers"),
    ("SDDMM", "    S_G = Q K_G^T on the denser engine (the array);  q_i . k_j per kept entry on the sparser lines"),
    ("softmax", "    P = softmax(S) per row over both parts (not charged in cycles)"),
    ("SpMM", "    O_G = P_G V_G on the denser engine;  o_i += p_ij v_j per kept entry on the sparser lines"),
    ("store", "    O = acc / l  -> HBM"),
]


def vitcod_lit(phase: str) -> list[int]:
    """The VITCOD_CODE lines a ViTCoD step of this phase executes."""
    return [i for i, (stage, _) in enumerate(VITCOD_CODE) if stage and stage.lower() == str(phase).lower()]
