"""aiva_cy side by side with its peers: the speed table of ``docs/contract.md``.

Run it from an installed aiva_cy (``aiva-cy bench``, ``python -m aiva_cy bench``) or from a
checkout (``python benchmarks/compare.py``)::

    aiva-cy bench                  # full run, 4-7 minutes on 2 shared cores
    aiva-cy bench --quick          # a smoke run, about a minute: numbers only, never judged
    aiva-cy bench --threads 1 --json out.json --no-chart

or import it and call :func:`run` (the quick test does) or :func:`main`.

What is measured (rows, :mod:`aiva_cy.bench.rows`) and against whom (columns): forward
at batch 1, predict_proba at batch 64 and 256, train_step at batch 64 and 256, start-up
in a fresh process (:mod:`aiva_cy.bench.startup`), memory, and the bytes of weights, for
the numpy BioNeuron, aiva_cy, PyTorch eager, ONNX Runtime (each column only where the
library is installed) and the raw BLAS products of one forward step (the floor). The
method (one thread count for every library, warm-up and calibration, interleaved rounds,
pauses against spinning worker threads, re-measuring disturbed blocks) is in
:mod:`aiva_cy.bench.timing`; the table, targets and chart in :mod:`aiva_cy.bench.report`.
``benchmarks/README.md`` in the source tree holds the results and how to read them.

Only a run that measured as hard as :meth:`Settings.full` on a quiet machine is judged
against the targets (``meta["judged"]``); a quick, short, reduced or disturbed run
(``meta["disturbed"]`` says why) prints its numbers marked as such, with no verdict. Only a
judged run of every row replaces ``latest.json`` and ``latest.png``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from aiva_cy.bench import peers
from aiva_cy.bench.report import (floor_estimates, render_floor_notes, render_footer,
                                  render_header, render_status, render_table, targets_of,
                                  write_chart)
from aiva_cy.bench.rows import (ALL_ROWS, BF16_PEERS, INT8_PEERS, MKL_PEERS, N_PARAMS,
                                PEER_ORDER, ROW_LABELS, STARTUP_PEERS, STARTUP_ROWS,
                                TIMED_ROWS, SideBySide, inputs)
from aiva_cy.bench.startup import measure_startup
from aiva_cy.bench.timing import (BUSY_BEFORE_LIMIT, Cell, LoadMonitor, RetryBudget, Settings,
                                  cpu_busy, disturbances, limit_threads, loadavg,
                                  measure_interleaved, thread_env, wait_quiet)

#: Where results go unless told otherwise: relative to the current folder, like ./weights.
DEFAULT_OUT_DIR = Path("benchmarks") / "results"

# --------------------------------------------------------------------------- machine info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _machine_info(aiva_cy: Any, have: Mapping[str, bool], threads: int) -> Dict[str, Any]:
    info: Dict[str, Any] = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "aiva_cy": getattr(aiva_cy, "__version__", "?"),
        "blas": aiva_cy.blas_info(),
        "threads": threads,
        "torch": None,
        "onnxruntime": None,
    }
    if have["torch"]:
        import torch

        info["torch"] = torch.__version__
    if have["onnx"]:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    return info


# --------------------------------------------------------------------------- run

#: The main job's short table: the rows a reader compares first, against the peers that
#: replace or rival the BioNeuron (no floors, no bfloat16 columns, no start-up processes).
SHORT_ROWS: Tuple[str, ...] = ("forward_b1", "predict_b256", "train_b64")
SHORT_COLUMNS: Tuple[str, ...] = ("numpy", "aiva_cy", "torch", "onnx")


def run(quick: bool = False, *, short: bool = False, threads: Optional[int] = None,
        rounds: Optional[int] = None, rows: Optional[Sequence[str]] = None,
        columns: Optional[Sequence[str]] = None, startup_runs: Optional[int] = None,
        settings: Optional[Settings] = None, chart: bool = True, write: bool = True,
        out_dir: Optional[Path] = None, json_path: Optional[Path] = None,
        verbose: int = 1, seed: int = 0, wait_quiet_s: float = 0.0) -> Dict[str, Any]:
    """Run the benchmark and return its result (also written as JSON unless ``write=False``).

    Args:
        quick: few rounds, short blocks, one start-up run per peer (checks it works).
        short: the main job's short table (:data:`SHORT_ROWS`, :data:`SHORT_COLUMNS`,
            :meth:`Settings.short`).
        threads: threads for every library (default: os.cpu_count()).
        rounds / startup_runs / settings: override the measuring effort.
        rows: the subset of row ids to run (default: all, see ``ROW_LABELS``).
        columns: the subset of peers to run (default: every one installed).
        chart: draw the chart where matplotlib is installed.
        write / out_dir / json_path: where results go (default ``benchmarks/results``).
            Only a full run of every row on a quiet machine writes ``latest.json`` and
            ``latest.png``; any other run writes ``compare-<time>-<mode>.json`` (and .png).
        verbose: 0 silent, 1 progress lines and the table, 2 also the harness's details.
        wait_quiet_s: first wait up to this long for the other processes to go quiet.

    Returns a dict with "meta" (machine, mode, "disturbed" reasons, "judged"), "settings",
    "columns", "rows" (row id -> label, cells {peer: {value, samples, calls_per_block,
    ratio, note}}, targets: empty unless judged), "floor" and "table" (the rendered text).
    """
    if quick and short:
        raise ValueError("give quick or short, not both")
    s = settings or (Settings.quick() if quick else Settings.short() if short else Settings.full())
    if rounds is not None:
        s.rounds = max(1, int(rounds))
        s.slow_rounds = min(s.slow_rounds, s.rounds)
    if startup_runs is not None:
        s.startup_runs = max(1, int(startup_runs))
    mode = "quick" if quick else "short" if short else "full" if s.at_least_full() else "reduced"
    n_threads = int(threads) if threads else (os.cpu_count() or 1)
    wanted = list((SHORT_ROWS if short else ALL_ROWS) if rows is None else rows)
    unknown = [r for r in wanted if r not in ROW_LABELS]
    if unknown:
        raise ValueError(f"rows: unknown row ids {unknown}, expected some of {list(ROW_LABELS)}")
    peers_wanted = set(PEER_ORDER if columns is None and not short else
                       SHORT_COLUMNS if columns is None else columns)
    bad = sorted(peers_wanted - set(PEER_ORDER))
    if bad or "aiva_cy" not in peers_wanted:
        raise ValueError(f"columns: expected some of {list(PEER_ORDER)} including 'aiva_cy', "
                         f"got {sorted(peers_wanted)}")
    verbose = int(verbose)
    log: Callable[[str], None] = ((lambda m: print(m, file=sys.stderr, flush=True))
                                  if verbose >= 1 else (lambda m: None))
    detail: Callable[[str], None] = log if verbose >= 2 else (lambda m: None)

    # Env vars only help for libraries not loaded yet (threadpoolctl does the rest below).
    for k, v in thread_env(n_threads).items():
        os.environ.setdefault(k, v)
    import aiva_cy
    avail = peers.available_peers()
    from aiva_cy import _blas
    precisions = aiva_cy.blas_info()["precisions"]
    have = {"torch": avail["torch"] and bool(peers_wanted & {"torch", "torch_bf16", "torch_int8"}),
            "onnx": avail["onnxruntime"] and bool(peers_wanted & {"onnx", "onnx_int8"}),
            "bf16": precisions["bfloat16"]["available"] and bool(peers_wanted & set(BF16_PEERS)),
            "int8": precisions["int8"]["available"] and bool(peers_wanted & set(INT8_PEERS)),
            "mkl": _blas._mkl_path() is not None and bool(peers_wanted & set(MKL_PEERS))}
    if wait_quiet_s > 0:
        wait_quiet(wait_quiet_s, s.noise_limit, log)
    load_before = loadavg()
    busy_before = cpu_busy()

    from aiva_cy import AIVANet

    net = AIVANet(seed=seed)
    if net.num_parameters != N_PARAMS:   # the floor notes assume the default sizes
        raise RuntimeError(f"expected the default net ({N_PARAMS} parameters), got {net.num_parameters}")
    pe = SideBySide(net, have, n_threads)
    _handle, pools = limit_threads(n_threads, have["torch"])
    meta = _machine_info(aiva_cy, have, n_threads)
    meta.update(mode=mode, thread_pools=pools, load_before=load_before,
                cpu_busy_before=busy_before)
    if busy_before is not None and busy_before > BUSY_BEFORE_LIMIT:
        log(f"WARNING: {busy_before:.0%} of the CPU was busy with other work before the run: "
            "the numbers below are not representative")
    if not short:
        log(render_header({**meta, "load_after": None, "cpu_busy_after": None}))

    def keep(cases: Dict[str, Callable[[], Any]]) -> Dict[str, Callable[[], Any]]:
        return {p: fn for p, fn in cases.items() if p in peers_wanted}

    results: Dict[str, Dict[str, Cell]] = {}
    mon, budget = LoadMonitor(), RetryBudget(s.retry_budget_s)
    t_start = time.perf_counter()
    timed = [r for r in wanted if r in TIMED_ROWS]
    for i, row in enumerate(timed, 1):
        batch = int(row.split("_b")[1])
        x, y = inputs(batch, net.num_tools, seed + batch)
        log(f"  [{i}/{len(timed)}] {ROW_LABELS[row]} …")
        if row == "forward_b1":
            cases = pe.forward_cases(x)
        elif row.startswith("predict"):
            cases = pe.predict_cases(x)
        else:
            cases = pe.train_cases(x, y)
        results[row] = measure_interleaved(keep(cases), s, mon, budget, detail)
        net.reset_state()

    if any(r in wanted for r in STARTUP_ROWS):
        names = [p for p in STARTUP_PEERS if p in peers_wanted and (p != "torch" or have["torch"])]
        log("  start-up: fresh processes …")
        for row, cells in measure_startup(names, s, n_threads, mon, budget, detail).items():
            if row in wanted:
                results[row] = cells
    if "weights" in wanted:
        results["weights"] = {p: Cell(value=b) for p, b in pe.weight_bytes().items()
                              if p in peers_wanted}
    elapsed = time.perf_counter() - t_start

    loads = [o for cells in results.values() for c in cells.values() for o in c.other_load
             if o is not None]
    measured = [c for cells in results.values() for c in cells.values()]
    disturbed = disturbances(measured, busy_before, s.noise_limit)
    judged = mode == "full" and not disturbed
    meta.update(load_after=loadavg(), cpu_busy_after=cpu_busy(), elapsed_s=round(elapsed, 1),
                other_load_median=round(statistics.median(loads), 3) if loads else None,
                samples=len(loads),
                noisy_samples=sum(o > s.noise_limit for o in loads),
                retried_blocks=budget.retried,
                disturbed=disturbed, judged=judged,
                complete=set(wanted) == set(ALL_ROWS) and columns is None)

    # Ratios to aiva_cy (peer / aiva_cy), and targets where the run may be judged.
    out_rows: Dict[str, Any] = {}
    for row in ALL_ROWS:
        if row not in results:
            continue
        cells = results[row]
        base = cells.get("aiva_cy")
        for c in cells.values():
            c.ratio = ratio_of(c, base)
        out_rows[row] = {
            "label": ROW_LABELS[row],
            "unit": "bytes" if row in ("memory", "weights") else "seconds",
            "cells": {p: asdict(cells[p]) for p in PEER_ORDER if p in cells},
            "targets": [asdict(t) for t in targets_of(row, cells)] if judged else [],
        }
    columns_out = [p for p in PEER_ORDER if p in peers_wanted and (
        any(p in cells for cells in results.values())
        or p in ("numpy", "aiva_cy") or (p == "floor" and not short)
        or (p == "torch" and have["torch"]) or (p == "onnx" and have["onnx"]))]
    result: Dict[str, Any] = {
        "meta": meta,
        "settings": asdict(s),
        "columns": columns_out,
        "rows": out_rows,
        "floor": floor_estimates(results),
    }
    result["table"] = render_table(result)
    result["floor_text"] = render_floor_notes(result["floor"])
    if verbose >= 1:
        if not short:
            print(render_header(meta))
            print()
        print(render_status(result))
        print(result["table"])
        if result["floor_text"]:
            print()
            print(result["floor_text"])
        print()
        print(render_footer(result))

    if write:
        dest = Path(out_dir) if out_dir is not None else DEFAULT_OUT_DIR
        dest.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        latest = judged and meta["complete"]
        # Not a run to compare against: its name says what it was, and latest.* stays.
        tag = "" if latest else "-" + (mode if mode != "full" else
                                       "disturbed" if disturbed else "partial")
        text = json.dumps(result, indent=1, ensure_ascii=False, default=str)
        paths = [dest / f"compare-{stamp}{tag}.json"] + ([dest / "latest.json"] if latest else [])
        if json_path is not None:
            paths.append(Path(json_path))
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        log(f"wrote {', '.join(str(path) for path in paths)}")
        if chart:
            png = write_chart(result, dest / ("latest.png" if latest else f"compare-{stamp}{tag}.png"))
            log(f"wrote {png}" if png else "matplotlib not installed: no chart")
        if not latest:
            log(f"left {dest / 'latest.json'} and latest.png as they were: only a full run of "
                "every row on a quiet machine replaces them")
    return result


def run_short(threads: Optional[int] = None, verbose: int = 1) -> Dict[str, Any]:
    """The main job's short speed table (about 15 s on 2 cores): :data:`SHORT_ROWS` against
    :data:`SHORT_COLUMNS`, a few rounds each, never judged; writes no file."""
    return run(short=True, threads=threads, chart=False, write=False, verbose=verbose)


def ratio_of(cell: Cell, base: Optional[Cell]) -> Optional[float]:
    """cell / base (peer time / aiva_cy time), or None where either is missing, not a
    positive finite number, or marked disturbed: a ratio of a broken cell means nothing."""
    if base is None or cell.note or base.note:
        return None
    a, b = cell.value, base.value
    if not (math.isfinite(a) and math.isfinite(b) and a > 0 and b > 0):
        return None
    return a / b


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def _row_list(text: str) -> List[str]:
    wanted = [r.strip() for r in text.split(",") if r.strip()]
    unknown = [r for r in wanted if r not in ROW_LABELS]
    if not wanted or unknown:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated subset of {','.join(ROW_LABELS)}, got {text!r}")
    return wanted


def add_arguments(ap: argparse.ArgumentParser, *, quick: bool = True) -> None:
    """The benchmark's options, shared by ``aiva-cy bench`` and ``benchmarks/compare.py``.

    ``quick=False`` leaves out ``--quick`` for a parser that defines it itself.
    """
    if quick:
        ap.add_argument("--quick", action="store_true",
                        help="a smoke run: few rounds, short blocks (checks it runs)")
    ap.add_argument("--threads", type=positive_int, default=None,
                    help="threads for every library (default: all cores)")
    ap.add_argument("--rounds", type=positive_int, default=None,
                    help="override the rounds per timed row")
    ap.add_argument("--rows", type=_row_list, default=None,
                    help=f"comma-separated subset of rows: {','.join(ROW_LABELS)}")
    ap.add_argument("--wait-quiet", type=_seconds, default=0.0, metavar="SECONDS",
                    help="first wait up to SECONDS for other processes to leave the CPU")
    ap.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR,
                    help=f"where the result JSON and chart go (default: ./{DEFAULT_OUT_DIR.as_posix()})")
    ap.add_argument("--json", type=Path, default=None, help="also write the result JSON here")
    ap.add_argument("--no-chart", action="store_true", help="do not draw the chart")
    add_verbose_argument(ap)


def add_verbose_argument(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("-v", "--verbose", action="count", default=0,
                    help="also print the timing harness's details (calls per block, "
                         "samples, blocks measured again)")


def optional_parts(chart: bool = True) -> List[str]:
    """What the benchmark will leave out here, one line each (empty: nothing).

    Called before any long work (the main job trains first), so that a missing optional
    library is said up front rather than after minutes of training.
    """
    avail = peers.available_peers()
    missing = []
    if not avail["torch"]:
        missing.append("no PyTorch column: torch is not installed (pip install torch)")
    if not avail["onnxruntime"]:
        missing.append("no ONNX Runtime column: onnx and onnxruntime are not both installed "
                       "(pip install 'aiva_cy[bench]')")
    if importlib.util.find_spec("threadpoolctl") is None:
        missing.append("threadpoolctl is not installed: thread counts are set through "
                       "environment variables only (pip install 'aiva_cy[bench]')")
    if chart and importlib.util.find_spec("matplotlib") is None:
        missing.append("no chart: matplotlib is not installed (pip install 'aiva_cy[bench]')")
    return missing


def run_from_args(args: argparse.Namespace) -> int:
    """Run the benchmark with options parsed by a parser that :func:`add_arguments` set up."""
    # µ, × and ✓ in the table must not crash a terminal that is not UTF-8.
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="replace")
    run(args.quick, threads=args.threads, rounds=args.rounds, rows=args.rows,
        chart=not args.no_chart, out_dir=args.out_dir, json_path=args.json,
        wait_quiet_s=args.wait_quiet, verbose=1 + args.verbose)
    return 0


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    ap = argparse.ArgumentParser(prog=prog, description=(
        "aiva_cy side by side with the numpy BioNeuron, PyTorch, ONNX Runtime and the raw "
        "BLAS floor; prints the table and writes the result JSON (and a chart)."))
    add_arguments(ap)
    args = ap.parse_args(argv)
    for line in optional_parts(chart=not args.no_chart):
        print(f"benchmark: {line}", file=sys.stderr)
    return run_from_args(args)


if __name__ == "__main__":
    sys.exit(main())
