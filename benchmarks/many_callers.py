"""Many callers at once: ``python benchmarks/many_callers.py [--quick] [--rounds N]``.

Rows (interleaved rounds; each row's rate and latency percentiles are its best round's, the
one least disturbed on a shared machine, with the median round's time beside it):

- serial batch-1: one thread, one row per ``predict_proba`` call;
- 8 threads sharing the same work: the same rows, split over 8 threads calling the net;
- 64 threads calling the net directly, and 64 threads through a ``Batcher``;
- 64 asyncio agents, each awaiting its own calls one after another, through a ``Batcher``;
- 1,024 asyncio tasks at once through a ``Batcher``.

Targets (the 2-core development machine): 8 threads do the serial work in at most 1.25x its
time; 64 threads and 64 asyncio agents through the Batcher each reach at least 2x the rows
per second of serial batch-1 calls, with a p99 latency of at most 10 ms.

The header names the BLAS and the kernel it runs (OpenBLAS picks one per CPU unless
OPENBLAS_CORETYPE forces one: run with ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`` to
measure what a user gets), and how busy the machine was.
"""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # the checkout, built in place

import aiva_cy  # noqa: E402
from aiva_cy.bench.timing import LoadMonitor, cpu_busy  # noqa: E402
from aiva_cy.serve import Batcher  # noqa: E402

Result = Tuple[float, List[float]]   # (wall seconds, per-call latencies in seconds)


def blas_kernel() -> str:
    """The BLAS in use and, for OpenBLAS, its build and the kernel it chose."""
    info = aiva_cy.blas_info()
    text = f"{info['provider']} ({info['path']})"
    try:
        lib = ctypes.CDLL(info["path"])
    except OSError:
        return text
    for prefix, suffix in (("scipy_", "64_"), ("scipy_", ""), ("", "64_"), ("", "")):
        core = getattr(lib, f"{prefix}openblas_get_corename{suffix}", None)
        config = getattr(lib, f"{prefix}openblas_get_config{suffix}", None)
        if core is not None and config is not None:
            core.restype = config.restype = ctypes.c_char_p
            return f"{text}: {config().decode()}; kernel {core().decode()}"
    return text


def floors(net: Any, reps: int = 7) -> Dict[str, float]:
    """What bounds the rows: the products alone (the engine's BLAS calls, no softmax or
    Python), best of ``reps`` blocks.  Batch 1 is three matrix-vector products that read
    every weight once a row (memory bound: GB/s of weights); a batch of 64 is matrix
    products that read them once for 64 rows (compute bound: GFLOP/s); and predict_proba
    on 64-row batches is the Batcher's ceiling in rows per second."""
    eng = net._engine
    params = sum(int(np.prod(s)) for s in (net.state_dict()[k].shape for k in
                                              ("fc1.weight", "spiking.weight", "fc2.weight")))
    rng = np.random.default_rng(1)
    x1 = rng.standard_normal((1, net.input_size)).astype(np.float32)
    x64 = rng.standard_normal((64, net.input_size)).astype(np.float32)

    def best(fn: Callable[[], Any], k: int) -> float:
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(k):
                fn()
            ts.append((time.perf_counter() - t0) / k)
        return min(ts)

    t1 = best(lambda: eng.blas_products(x1), 100)
    t64 = best(lambda: eng.blas_products(x64), 10)
    p64 = best(lambda: net.predict_proba(x64), 10)
    return {"weight_mb": params * 4 / 1e6, "gemv_us": t1 * 1e6, "gemv_gbs": params * 4 / t1 / 1e9,
            "gemm64_ms": t64 * 1e3, "gemm64_gflops": 2 * 64 * params / t64 / 1e9,
            "predict64_rows_s": 64 / p64}


def _timed(fn: Callable[[Any], Any], x: Any, lat: List[float]) -> None:
    t0 = time.perf_counter()
    fn(x)
    lat.append(time.perf_counter() - t0)


def serial(net: Any, rows: np.ndarray) -> Result:
    lat: List[float] = []
    t0 = time.perf_counter()
    for r in rows:
        _timed(net.predict_proba, r, lat)
    return time.perf_counter() - t0, lat


def threaded(fn: Callable[[Any], Any], rows: np.ndarray, n_threads: int) -> Result:
    """n_threads threads, each calling fn on its share of the rows, started together."""
    parts = np.array_split(rows, n_threads)
    lats: List[List[float]] = [[] for _ in parts]
    start = threading.Barrier(n_threads + 1)

    def work(part: np.ndarray, lat: List[float]) -> None:
        start.wait()
        for r in part:
            _timed(fn, r, lat)

    ts = [threading.Thread(target=work, args=(p, lat)) for p, lat in zip(parts, lats)]
    for t in ts:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    return time.perf_counter() - t0, [v for lat in lats for v in lat]


def agents(b: Batcher, rows: np.ndarray, n_tasks: int) -> Result:
    """n_tasks asyncio tasks in one loop, each awaiting its own calls one after another."""
    parts = np.array_split(rows, n_tasks)

    async def agent(part: np.ndarray, lat: List[float]) -> None:
        for r in part:
            t0 = time.perf_counter()
            await b.apredict_proba(r)
            lat.append(time.perf_counter() - t0)

    async def main() -> Result:
        lats: List[List[float]] = [[] for _ in parts]
        t0 = time.perf_counter()
        await asyncio.gather(*(agent(p, lat) for p, lat in zip(parts, lats)))
        return time.perf_counter() - t0, [v for lat in lats for v in lat]

    return asyncio.run(main())


def _pct(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def run(rows_serial: int = 800, rows_crowd: int = 3200, rows_tasks: int = 4096,
        rounds: int = 5, pause_s: float = 0.12, seed: int = 0,
        log: Callable[[str], None] = print) -> Dict[str, Dict[str, float]]:
    net = aiva_cy.AIVANet(seed=seed)
    rng = np.random.default_rng(seed)
    x1 = rng.standard_normal((rows_serial, net.input_size)).astype(np.float32)
    xc = rng.standard_normal((rows_crowd, net.input_size)).astype(np.float32)
    xt = rng.standard_normal((rows_tasks, net.input_size)).astype(np.float32)
    batcher = Batcher(net, max_batch=256, max_delay=0.002)
    cases: Dict[str, Tuple[int, Callable[[], Result]]] = {
        "serial batch-1": (rows_serial, lambda: serial(net, x1)),
        "8 threads, same work": (rows_serial, lambda: threaded(net.predict_proba, x1, 8)),
        "64 threads, direct": (rows_crowd, lambda: threaded(net.predict_proba, xc, 64)),
        "64 threads, Batcher": (rows_crowd, lambda: threaded(batcher.predict_proba, xc, 64)),
        "64 asyncio agents, Batcher": (rows_crowd, lambda: agents(batcher, xc, 64)),
        "1,024 asyncio tasks, Batcher": (rows_tasks, lambda: agents(batcher, xt, 1024)),
    }
    rounds_of: Dict[str, List[Result]] = {k: [] for k in cases}
    others: List[float] = []
    mon = LoadMonitor()
    for _, fn in cases.values():   # warm-up: workspaces, the worker thread, the pools
        fn()
    names = list(cases)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            time.sleep(pause_s)   # OpenBLAS's idle workers spin ~0.1 s after a call
            a = mon.mark()
            rounds_of[name].append(cases[name][1]())
            o = mon.others(a, mon.mark())
            if o is not None:
                others.append(o)
    batcher.close()
    # On a shared machine the best round is the one least disturbed by other processes:
    # rates and latencies come from it, the median round's time is shown beside it.
    out: Dict[str, Dict[str, float]] = {}
    for name, (n, _) in cases.items():
        wall, lat = min(rounds_of[name], key=lambda res: res[0])
        out[name] = {"rows": n, "wall_ms": wall * 1e3,
                     "median_ms": statistics.median(w for w, _ in rounds_of[name]) * 1e3,
                     "rows_per_s": n / wall,
                     "p50_ms": _pct(lat, 0.5) * 1e3, "p99_ms": _pct(lat, 0.99) * 1e3}
    base = out["serial batch-1"]
    for row in out.values():
        row["x_serial_rate"] = row["rows_per_s"] / base["rows_per_s"]
    out["_load"] = {"others_median": statistics.median(others) if others else float("nan"),
                    "others_max": max(others) if others else float("nan")}
    return out


def table(out: Dict[str, Dict[str, float]]) -> str:
    lines = ["| case | rows | best ms (median) | rows/s | rate vs serial | p50 ms | p99 ms |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in out.items():
        if name.startswith("_"):
            continue
        lines.append(f"| {name} | {r['rows']:,.0f} | {r['wall_ms']:.1f} ({r['median_ms']:.0f}) "
                     f"| {r['rows_per_s']:,.0f} | {r['x_serial_rate']:.2f}x | {r['p50_ms']:.3f} "
                     f"| {r['p99_ms']:.2f} |")
    return "\n".join(lines)


def targets(out: Dict[str, Dict[str, float]]) -> List[str]:
    s, t8 = out["serial batch-1"], out["8 threads, same work"]
    lines = [f"8 threads / serial time: {t8['wall_ms'] / s['wall_ms']:.2f}x (target <= 1.25x)"]
    for name in ("64 threads, Batcher", "64 asyncio agents, Batcher"):
        r = out[name]
        lines.append(f"{name}: {r['x_serial_rate']:.2f}x serial rows/s (target >= 2x), "
                     f"p99 {r['p99_ms']:.2f} ms (target <= 10 ms)")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/many_callers.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="few rows, one round: it runs, no more")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None,
                   help="aiva_cy.set_num_threads(N) first (default: the BLAS's own count)")
    args = p.parse_args(argv)
    if args.threads is not None:
        aiva_cy.set_num_threads(args.threads)
    print(f"aiva_cy {aiva_cy.__version__}; BLAS: {blas_kernel()}")
    print(f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}, "
          f"OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE', '(unset)')}; "
          f"{os.cpu_count()} CPUs; BLAS thread budget {aiva_cy.num_threads()}")
    busy = cpu_busy(0.5)
    if busy is not None:
        print(f"CPU busy before the run (other processes): {busy:.0%}")
    f = floors(aiva_cy.AIVANet(seed=0), reps=2 if args.quick else 7)
    print(f"floors (best of blocks): batch-1 products {f['gemv_us']:.0f} us, "
          f"{f['weight_mb']:.1f} MB of float32 weights at {f['gemv_gbs']:.0f} GB/s; 64-row "
          f"products {f['gemm64_ms']:.2f} ms, {f['gemm64_gflops']:.0f} GFLOP/s; predict_proba "
          f"on 64-row batches {f['predict64_rows_s']:,.0f} rows/s (the Batcher's ceiling)")
    if args.quick:
        out = run(rows_serial=64, rows_crowd=128, rows_tasks=1024, rounds=1, pause_s=0.0)
    else:
        out = run(rounds=args.rounds)
    load = out["_load"]
    print(f"other processes' share of the CPU during the timed blocks: median "
          f"{load['others_median']:.0%}, max {load['others_max']:.0%}"
          + ("  -- DISTURBED: the numbers are not a quiet machine's"
             if load["others_max"] > 0.15 else ""))
    print(table(out))
    for line in targets(out):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
