"""The report: the targets of each row, the table, the notes under it, and the chart."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

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


def _fmt_cell(row: str, peer: str, cell: Optional[Cell]) -> str:
    if cell is None:
        return "—"
    text = fmt_bytes(cell.value) if row in ("memory", "weights") else fmt_seconds(cell.value)
    if peer != "aiva_cy" and cell.ratio is not None:
        text += f" ({cell.ratio:.2f}×)"
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
    """The speed table of a result from :func:`run`."""
    cols = [p for p in PEER_ORDER if p in result["columns"]]
    header = ["work"] + [PEER_LABELS[p] for p in cols] + ["target (aiva_cy vs peer)"]
    body = []
    for row, data in result["rows"].items():
        cells = {p: Cell(**c) for p, c in data["cells"].items()}
        body.append([data["label"]] + [_fmt_cell(row, p, cells.get(p)) for p in cols]
                    + [_target_text([Target(**t) for t in data["targets"]])])
    return _markdown_table(header, body)


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
    for info in (blas, blas.get("bfloat16") or {}, blas.get("int8") or {}):
        warn = _kernel.warning(info) if info else None
        if warn:
            lines.append(warn)
    return "\n".join(lines)


def _kernel_line(blas: Mapping[str, Any]) -> str:
    """The kernels that ran: what the libraries report, not what they were asked for."""
    line = f"BLAS kernel: float32 {_kernel.summary(blas)} ({blas.get('provider', '?')})"
    for name in ("bfloat16", "int8"):
        low = blas.get(name)
        if low:
            line += f"; {name} {_kernel.summary(low)} ({low.get('provider', '?')})"
    return line + f"; CPU has {blas.get('cpu_level', '?')}"


def render_footer(result: Mapping[str, Any]) -> str:
    """How to read the table, and how much other processes disturbed the run."""
    meta, st = result["meta"], result["settings"]
    lines = ["Cells: median time per call (peer time / aiva_cy time: > 1 means aiva_cy is "
             "faster or smaller); targets: ✓ met, ✗ missed, measured quantity in brackets."]
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
        lines.append(f"oneDNN bf16 rate, from its packed floor at batch 256: "
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
        lines.append(f"oneDNN int8 rate, from its packed floor at batch 256 (with quantizing x "
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
    """sgemm rate from the floor at the largest batch measured, and FLOPs / rate per row."""
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
    # The same for bfloat16: MKL's bf16 rate from its packed floor, and half the bytes.
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


def write_chart(result: Mapping[str, Any], path: Path) -> Optional[Path]:
    """Grouped bars, log time per row, one bar per peer; None where matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in result["rows"] if r not in ("memory", "weights")]
    cols = [p for p in PEER_ORDER if p in result["columns"]]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(max(8.0, 1.6 * len(rows)), 4.8))
    width = 0.8 / len(cols)
    for i, p in enumerate(cols):
        xs, ys = [], []
        for j, r in enumerate(rows):
            c = result["rows"][r]["cells"].get(p)
            if c is not None:
                xs.append(j + (i - (len(cols) - 1) / 2) * width)
                ys.append(c["value"])
        ax.bar(xs, ys, width=width, label=PEER_LABELS[p])
    ax.set_yscale("log")
    ax.set_ylabel("seconds per call (log), lower is better")
    ax.set_xticks(range(len(rows)))
    short = {"startup": "start-up\nin process", "startup_process": "start-up\nwhole process"}
    ax.set_xticklabels([short.get(r, ROW_LABELS[r].replace(", ", "\n")) for r in rows], fontsize=8)
    ax.legend(fontsize=8)
    meta = result["meta"]
    ax.set_title(f"aiva_cy vs peers — {meta['cpu']}, {meta['threads']} threads", fontsize=9)
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
