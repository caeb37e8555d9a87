"""Do oneDNN's OpenMP threads and OpenBLAS's fight?  A float32 net (OpenBLAS) and an int8 or
bfloat16 net (oneDNN's GNU OpenMP pool) in one process, each timed alone and then with the
calls alternating, so that each library starts while the other's workers may still be
spinning.  oneDNN's pool takes the float32 BLAS's thread count (one budget); this also runs
it with a fixed count of 1 and of 2x the cores for comparison.

    python benchmarks/thread_sharing.py [--batch 1 256] [--rounds 15]

Prints median seconds per call (of `rounds` blocks); the machine's other load disturbs it, so
compare the columns of one run only.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable, Dict, List

import numpy as np

from aiva_cy import AIVANet, _lowp


def block(fn: Callable[[], object], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def measure(cases: Dict[str, Callable[[], object]], rounds: int, n: int) -> Dict[str, float]:
    times: Dict[str, List[float]] = {k: [] for k in cases}
    for _ in range(rounds):
        for k, fn in cases.items():       # interleaved round by round
            times[k].append(block(fn, n))
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: object = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 256])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--precision", default="int8", choices=["int8", "bfloat16"])
    args = ap.parse_args(argv)
    f32 = AIVANet(seed=0)
    low = AIVANet(seed=0, precision=args.precision)
    low.load_state_dict(f32.state_dict())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{cores} cores; oneDNN {_lowp.info()['isa']}; pool follows the float32 BLAS: "
          f"{_lowp.info()['threads_follow_blas']} ({_lowp.info()['threads']} threads)")
    for batch in args.batch:
        x = np.random.default_rng(batch).standard_normal((batch, 512)).astype(np.float32)
        n = max(1, int(0.005 / (5e-5 * batch ** 0.8)))    # ~5 ms blocks on a quiet machine

        def alternate() -> None:
            f32.predict_proba(x)
            low.predict_proba(x)

        for label, threads in (("same budget", 0), ("oneDNN 1 thread", 1),
                               (f"oneDNN {2 * (cores or 1)} threads", 2 * (cores or 1))):
            _lowp.set_threads(threads)
            for net in (f32, low):
                net.predict_proba(x)      # warm: primitives, packs
            r = measure({"f32 alone": lambda: f32.predict_proba(x),
                         f"{args.precision} alone": lambda: low.predict_proba(x),
                         "alternating pair": alternate}, args.rounds, n)
            pair = r["alternating pair"]
            alone = r["f32 alone"] + r[f"{args.precision} alone"]
            print(f"batch {batch:4d}, {label:18s}: f32 {r['f32 alone'] * 1e3:8.3f} ms, "
                  f"{args.precision} {r[f'{args.precision} alone'] * 1e3:8.3f} ms, alternating "
                  f"pair {pair * 1e3:8.3f} ms = {pair / alone:.2f}x the two alone")
        _lowp.set_threads(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
