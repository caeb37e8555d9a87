"""The report: the targets of each row, the table, the notes under it, and the chart."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from aiva_cy import _kernel
from aiva_cy.bench.rows import N_PARAMS, PEER_LABELS, PEER_ORDER, ROW_LABELS, TRAIN_MACS
from aiva_cy.bench.timing import NOISY_MARK, Cell


@dataclass
class Target:
    """One target: the condition in words, the measured quantity, and whether it holds."""

    text: str
    value: Optional[float]           # the quantity the condition is about (None: not measured)
    met: Optional[bool]              # None: a peer is missing, nothing to check


def targets_of(row: str, cells: Mapping[str, Cell]) -> List[Target]:
    """The targets (docs/contract.md, "Speed") of one row, checked against its cells."""

    def ratio(peer: str) -> Optional[float]:        # peer / aiva_cy
        c = cells.get(peer)
        return None if c is None else c.ratio

    def inv(peer: str) -> Optional[float]:          # aiva_cy / peer
        r = ratio(peer)
        return None if r is None or r == 0 else 1.0 / r

    def at_least(peer: str, k: float) -> Target:    # aiva_cy at least k times faster
        r = ratio(peer)
        name = PEER_LABELS[peer].split()[0] if peer != "numpy" else "numpy"
        return Target(f"≥ {k:g}× {name}", r, None if r is None else r >= k)

    def at_most(peer: str, k: float, text: str) -> Target:   # aiva_cy time <= k * peer time
        q = inv(peer)
        return Target(text, q, None if q is None else q <= k)

    def vs(mine: str, peer: str, k: float, text: str, faster: bool = False) -> Target:
        # One of aiva_cy's reduced-precision columns against a peer (aiva_cy's float32
        # included): "faster" = at least k times faster (peer / mine >= k), else
        # mine <= k * peer.
        a, c = cells.get(mine), cells.get(peer)
        if a is None or c is None or a.value <= 0 or c.value <= 0:
            return Target(text, None, None)
        q = c.value / a.value if faster else a.value / c.value
        return Target(text, q, q >= k if faster else q <= k)

    if row == "forward_b1":
        return [at_most("floor", 1.15, "≤ 1.15× floor"), at_most("onnx", 1.0, "≤ ONNX"),
                vs("aiva_int8", "aiva_cy", 0.45, "int8 ≤ 0.45× f32"),
                vs("aiva_int8", "onnx_int8", 1.0, "int8 ≤ ONNX int8"),
                vs("aiva_int8", "numpy", 8.0, "int8 ≥ 8× numpy", faster=True),
                vs("aiva_bf16", "aiva_cy", 0.8, "bf16 ≤ 0.8× f32")]
    if row == "predict_b256":
        return [at_most("onnx", 1.0, "≤ ONNX"),
                vs("aiva_int8", "onnx_int8", 1.0, "int8 ≤ ONNX int8"),
                vs("aiva_bf16", "aiva_cy", 0.6, "bf16 ≤ 0.6× f32"),
                vs("aiva_bf16", "torch_bf16", 0.75, "bf16 ≤ 0.75× torch bf16")]
    if row == "train_b64":
        return [at_most("torch", 0.6, "≤ 0.6× torch")]
    if row == "train_b256":
        return [at_most("torch", 0.85, "≤ 0.85× torch"),
                vs("aiva_bf16", "torch_bf16", 0.7, "bf16 ≤ 0.7× torch autocast")]
    if row == "startup":
        return [at_most("numpy", 1.0, "≤ numpy")]
    return []


def _target_text(targets: Sequence[Target]) -> str:
    if not targets:
        return "—"
    parts = []
    for t in targets:
        if t.met is None:
            parts.append(f"{t.text}: n/a")
        else:
            parts.append(f"{t.text}: {'✓' if t.met else '✗'} ({t.value:.2f})")
    return "; ".join(parts)


def fmt_seconds(t: float) -> str:
    """Three significant figures in µs, ms or s."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if t >= scale or unit == "µs":
            # '#' keeps trailing zeros ("31.0 ms", not "31 ms"); strip the bare point of "100."
            return f"{t / scale:#.3g}".rstrip(".") + f" {unit}"
    raise AssertionError("unreachable")


def fmt_bytes(b: float) -> str:
    return f"{b / 1e6:.1f} MB"


def fmt_ratio(r: float) -> str:
    """A ratio with the digits it has: 24.7×, 1.94×, 0.91×, 0.0014× (never a bare 0.00×)."""
    if r >= 100:
        return f"{r:.0f}×"
    if r >= 10:
        return f"{r:.1f}×"
    if r >= 0.1:
        return f"{r:.2f}×"
    return f"{r:.2g}×"


def _fmt_cell(row: str, peer: str, cell: Optional[Cell]) -> str:
    if cell is None:
        return "—"
    text = fmt_bytes(cell.value) if row in ("memory", "weights") else fmt_seconds(cell.value)
    if peer != "aiva_cy" and cell.ratio is not None:
        text += f" ({fmt_ratio(cell.ratio)})"
    if cell.note:
        text += f" {cell.note}"
    return text


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A pipe table padded to aligned columns: readable as text, valid markdown."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def render_table(result: Mapping[str, Any]) -> str:
    """The speed table of a result from :func:`run`; the target column only for a run that
    was judged (a full run on a quiet machine)."""
    cols = [p for p in PEER_ORDER if p in result["columns"]]
    judged = bool(result["meta"].get("judged"))
    header = ["work"] + [PEER_LABELS[p] for p in cols]
    if judged:
        header.append("target (aiva_cy vs peer)")
    body = []
    for row, data in result["rows"].items():
        cells = {p: Cell(**c) for p, c in data["cells"].items()}
        line = [data["label"]] + [_fmt_cell(row, p, cells.get(p)) for p in cols]
        if judged:
            line.append(_target_text([Target(**t) for t in data["targets"]]))
        body.append(line)
    return _markdown_table(header, body)


def run_kind(meta: Mapping[str, Any]) -> str:
    """What kind of run this was, in a few words (the table's title and the chart's)."""
    mode = meta.get("mode", "full")
    kind = {"quick": "QUICK run (a smoke test: numbers not representative)",
            "short": "SHORT table (a few rounds per row, not the full benchmark)",
            "reduced": "REDUCED run (fewer rounds than the full benchmark)",
            "full": "full run"}.get(mode, f"{mode} run")
    if meta.get("disturbed"):
        kind += "; DISTURBED by other processes: not representative"
    elif mode == "full":
        kind += ", quiet machine"
    return kind


def render_status(result: Mapping[str, Any]) -> str:
    """The line above the table: what kind of run, and whether its targets were judged."""
    meta = result["meta"]
    line = f"Speed — {run_kind(meta)}."
    if meta.get("judged"):
        return line + " Targets judged (docs/contract.md, Speed)."
    why = list(meta.get("disturbed") or [])
    if meta.get("mode", "full") != "full":
        why.insert(0, "only a full run is judged")
    return line + " Numbers only, no targets judged: " + "; ".join(why) + "."


def _pct(v: Optional[float]) -> str:
    return "?" if v is None else f"{v:.0%}"


def _num(v: Optional[float]) -> str:
    return "?" if v is None else f"{v:.2f}"


def render_header(meta: Mapping[str, Any]) -> str:
    blas = meta.get("blas") or {}
    lines = [
        f"machine: {meta['platform']}; CPU: {meta['cpu']}; {meta['cores']} cores",
        f"python {meta['python']}, numpy {meta['numpy']}, aiva_cy {meta['aiva_cy']} "
        f"(BLAS: {blas.get('provider', '?')}), torch {meta['torch'] or 'not installed'}, "
        f"onnxruntime {meta['onnxruntime'] or 'not installed'}",
        _kernel_line(blas),
        f"threads: {meta['threads']} for every library; mode: {meta['mode']}; {meta['date']}",
        f"other load: CPU busy {_pct(meta.get('cpu_busy_before'))} before the run, "
        f"{_pct(meta.get('cpu_busy_after'))} after; load average (1 min) "
        f"{_num(meta.get('load_before'))} before, {_num(meta.get('load_after'))} after",
    ]
    for info in [blas] + [entry for _, entry in _reduced(blas)]:
        warn = _kernel.warning(info) if info else None
        if warn:
            lines.append(warn)
    return "\n".join(lines)


def _reduced(blas: Mapping[str, Any]) -> List[Tuple[str, Mapping[str, Any]]]:
    """(name, blas_info()'s entry) of each reduced precision that runs here."""
    precisions = blas.get("precisions") or {}
    return [(name, precisions[name]) for name in ("bfloat16", "int8")
            if (precisions.get(name) or {}).get("available")]


def _kernel_line(blas: Mapping[str, Any]) -> str:
    """The kernels that ran: what the libraries report, not what they were asked for."""
    line = f"BLAS kernel: float32 {_kernel.summary(dict(blas))} ({blas.get('provider', '?')})"
    for name, entry in _reduced(blas):
        line += (f"; {name} {_kernel.summary(entry)} ({entry.get('library', '?')} "
                 f"{entry.get('version', '?')})")
    return line + f"; CPU has {blas.get('cpu_level', '?')}"


def render_footer(result: Mapping[str, Any]) -> str:
    """How to read the table, and how much other processes disturbed the run."""
    meta, st = result["meta"], result["settings"]
    lines = ["Cells: median time per call (in brackets peer time / aiva_cy time: > 1 means "
             "aiva_cy is faster or smaller; none where a cell is missing or disturbed)"
             + ("; targets: ✓ met, ✗ missed, measured quantity in brackets." if meta.get("judged")
                else ".")]
    if meta.get("samples"):
        lines.append(
            f"Other processes: median {_pct(meta.get('other_load_median'))} of the CPU during a "
            f"sample; {meta['noisy_samples']} of {meta['samples']} samples over "
            f"{st['noise_limit']:.0%} after {meta['retried_blocks']} re-measured blocks.")
    if any(c.get("note") == NOISY_MARK for r in result["rows"].values() for c in r["cells"].values()):
        lines.append(f"{NOISY_MARK} more than half of this cell's samples were taken while other "
                     f"processes used over {st['noise_limit']:.0%} of the CPU: not representative.")
    lines.append(f"Measured in {meta['elapsed_s']:.0f} s.")
    return "\n".join(lines)



def _estimate_table(lines: List[str], estimates: Optional[Dict[str, Any]],
                    header: List[str]) -> None:
    """Append the FLOPs-over-rate table of one precision (nothing when it was not measured)."""
    if not estimates:
        return
    body = [[ROW_LABELS[r], f"{e['flops'] / 1e9:.2f} GFLOP", fmt_seconds(e["floor_s"]),
             fmt_seconds(e["aiva_s"]) if e["aiva_s"] else "—",
             f"{e['aiva_s'] / e['floor_s']:.2f}×" if e["aiva_s"] else "—"]
            for r, e in estimates.items()]
    lines.append("")
    lines.append(_markdown_table(header, body))

def render_floor_notes(floor: Mapping[str, Any]) -> str:
    if not floor:
        return ""
    lines = []
    if floor.get("gflops") is not None:
        lines.append(f"sgemm rate of this machine, from the floor at batch {floor['rate_batch']}: "
                     f"{floor['gflops']:.1f} GFLOP/s")
    if floor.get("b1_gbytes_s") is not None:
        lines.append(f"batch 1 moves {floor['b1_bytes'] / 1e6:.1f} MB of float32 weights: the floor "
                     f"({fmt_seconds(floor['b1_seconds'])}) reads them at {floor['b1_gbytes_s']:.1f} GB/s")
    _estimate_table(lines, floor.get("estimates"),
                    ["work", "FLOPs (2·B·3,166,208; train 2·B·8,450,048)", "floor = FLOPs / rate",
                     "aiva_cy", "aiva_cy / floor"])
    if floor.get("bf16_gflops") is not None:
        lines.append("")
        lines.append(f"oneDNN bf16 rate, from its floor (the products as the engine runs them) at batch 256: "
                     f"{floor['bf16_gflops']:.1f} GFLOP/s")
    if floor.get("b1_bf16_gbytes_s") is not None:
        lines.append(f"batch 1 in bf16 moves {floor['b1_bf16_bytes'] / 1e6:.1f} MB of weights: the "
                     f"bf16 floor ({fmt_seconds(floor['b1_bf16_seconds'])}) reads them at "
                     f"{floor['b1_bf16_gbytes_s']:.1f} GB/s")
    _estimate_table(lines, floor.get("bf16_estimates"),
                    ["work (bf16)", "FLOPs", "bf16 floor = FLOPs / rate", "aiva_cy bf16",
                     "aiva_cy bf16 / floor"])
    if floor.get("int8_gops") is not None:
        lines.append("")
        lines.append(f"oneDNN int8 rate, from its floor at batch 256 (with quantizing x "
                     f"and h): {floor['int8_gops']:.1f} GOP/s")
    if floor.get("b1_int8_gbytes_s") is not None:
        lines.append(f"batch 1 in int8 moves {floor['b1_int8_bytes'] / 1e6:.1f} MB of weights: the "
                     f"int8 floor ({fmt_seconds(floor['b1_int8_seconds'])}) reads them at "
                     f"{floor['b1_int8_gbytes_s']:.1f} GB/s")
    distance = floor.get("provider_distance")
    if distance:
        lines.append("")
        lines.append("Reduced precision against the provider's own products (its floor): "
                     + "; ".join(f"{k} {v:.2f}×" for k, v in distance.items()))
    return "\n".join(lines)


# --------------------------------------------------------------------------- floor


def floor_estimates(rows: Mapping[str, Dict[str, Cell]]) -> Dict[str, Any]:
    """sgemm rate from the floor at the largest batch measured, and FLOPs / rate per row.

    A cell marked disturbed counts as not measured: a rate from it would be the neighbours'.
    """
    rows = {r: {p: c for p, c in cells.items() if not c.note and c.value > 0}
            for r, cells in rows.items()}
    out: Dict[str, Any] = {}
    for row, batch in (("predict_b256", 256), ("predict_b64", 64)):
        c = rows.get(row, {}).get("floor")
        if c is not None:
            rate = 2.0 * batch * N_PARAMS / c.value
            out.update(rate_batch=batch, gflops=rate / 1e9)
            break
    c1 = rows.get("forward_b1", {}).get("floor")
    if c1 is not None:
        out.update(b1_bytes=4 * N_PARAMS, b1_seconds=c1.value, b1_gbytes_s=4 * N_PARAMS / c1.value / 1e9)
    if "gflops" in out:
        rate = out["gflops"] * 1e9
        est: Dict[str, Any] = {}
        for row, batch, macs in (("predict_b64", 64, N_PARAMS), ("predict_b256", 256, N_PARAMS),
                                 ("train_b64", 64, TRAIN_MACS), ("train_b256", 256, TRAIN_MACS)):
            flops = 2.0 * batch * macs
            aiva = rows.get(row, {}).get("aiva_cy")
            est[row] = {"flops": flops, "floor_s": flops / rate,
                        "aiva_s": aiva.value if aiva is not None else None}
        out["estimates"] = est
    # The same for bfloat16: oneDNN's bf16 rate from its floor as the engine runs it (packed
    # where the engine packs), and half the bytes.
    c16 = rows.get("predict_b256", {}).get("floor_bf16_packed")
    if c16 is not None:
        rate16 = 2.0 * 256 * N_PARAMS / c16.value
        est16: Dict[str, Any] = {}
        for row, batch, macs in (("predict_b64", 64, N_PARAMS), ("predict_b256", 256, N_PARAMS),
                                 ("train_b64", 64, TRAIN_MACS), ("train_b256", 256, TRAIN_MACS)):
            a16 = rows.get(row, {}).get("aiva_bf16")
            flops = 2.0 * batch * macs
            est16[row] = {"flops": flops, "floor_s": flops / rate16,
                          "aiva_s": a16.value if a16 is not None else None}
        out.update(bf16_gflops=rate16 / 1e9, bf16_estimates=est16)
    b16 = rows.get("forward_b1", {}).get("floor_bf16_packed") or \
        rows.get("forward_b1", {}).get("floor_bf16")
    if b16 is not None:
        out.update(b1_bf16_bytes=2 * N_PARAMS, b1_bf16_seconds=b16.value,
                   b1_bf16_gbytes_s=2 * N_PARAMS / b16.value / 1e9)
    c8 = rows.get("predict_b256", {}).get("floor_int8")
    if c8 is not None:
        out.update(int8_gops=2.0 * 256 * N_PARAMS / c8.value / 1e9)
    b8 = rows.get("forward_b1", {}).get("floor_int8")
    if b8 is not None:
        out.update(b1_int8_bytes=N_PARAMS, b1_int8_seconds=b8.value,
                   b1_int8_gbytes_s=N_PARAMS / b8.value / 1e9)
    # Where a reduced-precision target is missed, this says how far the step is from the
    # provider's own products (what no code around them could beat).
    distance: Dict[str, float] = {}
    for row in ("forward_b1", "predict_b64", "predict_b256"):
        cells = rows.get(row, {})
        for mine, fl in (("aiva_int8", "floor_int8"), ("aiva_bf16", "floor_bf16_packed")):
            if cells.get(mine) is not None and cells.get(fl) is not None and cells[fl].value > 0:
                distance[f"{PEER_LABELS[mine]} {row}"] = cells[mine].value / cells[fl].value
    if distance:
        out["provider_distance"] = distance
    return out


# --------------------------------------------------------------------------- chart


#: The peers drawn in the chart (the MKL floors are for the floor notes, not for a reader).
CHART_PEERS = ("aiva_cy", "aiva_bf16", "torch", "torch_bf16", "onnx", "floor")


def chart_caption(meta: Mapping[str, Any]) -> str:
    """The chart's small print: the machine, the kernel that ran, and what kind of run."""
    blas = meta.get("blas") or {}
    return "\n".join([
        f"{meta.get('cpu', '?')}, {meta.get('cores', '?')} cores; {meta.get('platform', '?')}; "
        f"{meta.get('threads', '?')} threads for every library; {meta.get('date', '')}",
        _kernel_line(blas),
        *textwrap.wrap(run_kind(meta) + ("" if not meta.get("disturbed") else
                                         ": " + "; ".join(meta["disturbed"])), 150),
    ])


def write_chart(result: Mapping[str, Any], path: Path) -> Optional[Path]:
    """How many times faster than the NumPy BioNeuron each peer is, row by row (the comparison
    a reader makes), and the train_step times the BioNeuron has no counterpart for. The
    caption names the machine, the BLAS kernel, and whether the run was quick or disturbed.
    None where matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    data = result["rows"]
    meta = result["meta"]
    cols = [p for p in CHART_PEERS if p in result["columns"]]
    vs_numpy = [r for r in data if r not in ("memory", "weights") and "numpy" in data[r]["cells"]]
    train = [r for r in data if r.startswith("train_")]
    if not vs_numpy and not train:
        return None
    panels = [p for p in (vs_numpy, train) if p]
    widths = [max(2, len(p)) for p in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(max(8.0, 1.7 * sum(widths) + 2), 5.4),
                             gridspec_kw={"width_ratios": widths}, squeeze=False)
    colors = {p: f"C{i}" for i, p in enumerate(CHART_PEERS)}
    short = {"startup": "start-up\nin process", "startup_process": "start-up\nwhole process"}

    def bars(ax: Any, rows: Sequence[str], value: Any, label: Any) -> None:
        peers = [p for p in cols if any(value(r, p) is not None for r in rows)]
        width = 0.8 / max(1, len(peers))
        for i, p in enumerate(peers):
            for j, r in enumerate(rows):
                v = value(r, p)
                if v is None:
                    continue
                noisy = bool(data[r]["cells"][p].get("note"))
                x = j + (i - (len(peers) - 1) / 2) * width
                ax.bar(x, v, width=width, color=colors[p], hatch="//" if noisy else None,
                       alpha=0.45 if noisy else 1.0,
                       label=PEER_LABELS[p] if j == min(k for k, rr in enumerate(rows)
                                                        if value(rr, p) is not None) else None)
                ax.annotate(label(v) + (NOISY_MARK if noisy else ""), (x, v), ha="center",
                            va="bottom", fontsize=6, rotation=90, xytext=(0, 2),
                            textcoords="offset points")
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([short.get(r, ROW_LABELS[r].replace(", ", "\n")) for r in rows], fontsize=8)
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best")

    def speedup(r: str, p: str) -> Optional[float]:
        a, b = data[r]["cells"].get("numpy"), data[r]["cells"].get(p)
        if a is None or b is None or a["value"] <= 0 or b["value"] <= 0:
            return None
        return float(a["value"] / b["value"])

    def train_ms(r: str, p: str) -> Optional[float]:
        c = data[r]["cells"].get(p)
        return None if c is None or c["value"] <= 0 else float(c["value"] * 1e3)

    k = 0
    if vs_numpy:
        ax = axes[0][k]
        k += 1
        bars(ax, vs_numpy, speedup, fmt_ratio)
        ax.set_yscale("log")
        lo, hi = ax.get_ylim()
        ax.set_ylim(min(lo, 0.5), hi * 4)      # room for the labels above the bars
        ax.axhline(1.0, color="0.3", linewidth=1, linestyle="--")
        ax.set_ylabel("× faster than the NumPy BioNeuron (log; 1 = the BioNeuron)")
        ax.set_title("against the NumPy BioNeuron AIVA runs today", fontsize=9)
    if train:
        ax = axes[0][k]
        bars(ax, train, train_ms, lambda v: f"{v:.3g} ms")
        ax.set_ylim(0, ax.get_ylim()[1] * 1.25)
        ax.set_ylabel("ms per call, lower is better")
        ax.set_title("train_step (the BioNeuron cannot train)", fontsize=9)
    title = "aiva_cy vs its peers"
    mode = meta.get("mode", "full")
    tags = [{"quick": "QUICK run", "short": "SHORT table", "reduced": "REDUCED run"}.get(mode, mode)]
    tags = tags if mode != "full" else []
    if meta.get("disturbed"):
        tags.append("DISTURBED by other processes")
    if mode == "quick" or meta.get("disturbed"):
        tags.append("not representative")
    if tags:
        title += " — " + ", ".join(tags)
    fig.suptitle(title, fontsize=11, color="black" if meta.get("judged") else "firebrick")
    caption = chart_caption(meta)
    if any(c.get("note") for r in data.values() for c in r["cells"].values()):
        caption += f"\nhatched, {NOISY_MARK}: a cell measured mostly while other processes were busy"
    fig.text(0.01, 0.01, caption, fontsize=7, va="bottom", ha="left", family="monospace")
    fig.tight_layout(rect=(0, 0.03 + 0.028 * caption.count("\n"), 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
