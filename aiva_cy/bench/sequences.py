"""Sequences side by side: forward_sequence against stepping, episode training against the
one-step form on the same rows and against PyTorch autograd stepping through time.

Rows (default net, float32, same weights everywhere):
  forward_sequence T=64, B=1   vs 64 forward calls, and predict_proba on the 64 rows
  train_sequence  T=32, B=8    vs train_step on the 256 rows, and PyTorch stepping the 32
                               steps with autograd and torch.optim.Adam (the snnTorch way)

Targets: forward_sequence <= 0.4x the 64 calls and <= 1.3x predict_proba on the rows;
train_sequence <= 1.3x train_step on 256 rows and <= 0.2x PyTorch's step loop.
Run: ``python -m aiva_cy.bench.sequences [--quick]`` (``benchmarks/sequences.py`` too).
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from aiva_cy.bench import peers
from aiva_cy.bench.report import fmt_seconds
from aiva_cy.bench.timing import LoadMonitor, RetryBudget, Settings, cpu_busy, limit_threads, \
    measure_interleaved


def _torch_episode_step(model: Any, opt: Any, xs: Any, ys: Any) -> float:
    """One episode through time in PyTorch: T steps carrying the refractory countdown,
    the mean cross-entropy over all steps, backward through the whole episode, Adam."""
    import torch

    opt.zero_grad(set_to_none=True)
    left = None
    losses = []
    for t in range(xs.shape[0]):
        logits, _, left = model(xs[t], left)
        losses.append(torch.nn.functional.cross_entropy(logits, ys[t], reduction="sum"))
    loss = torch.stack(losses).sum() / (xs.shape[0] * xs.shape[1])
    loss.backward()
    opt.step()
    return float(loss.detach())


def cases(net: Any, have_torch: bool, seed: int = 0) -> Dict[str, Tuple[str, Dict[str, Callable[[], Any]]]]:
    """Row id -> (label, {case name: call})."""
    rng = np.random.default_rng(seed)
    xs64 = rng.standard_normal((64, 1, 512)).astype(np.float32)
    rows64 = np.ascontiguousarray(xs64[:, 0, :])
    xs32 = rng.standard_normal((32, 8, 512)).astype(np.float32)
    ys32 = rng.integers(0, net.num_tools, (32, 8))
    rows256 = np.ascontiguousarray(xs32.reshape(256, 512))
    labels256 = ys32.reshape(256)

    def sequence64() -> Any:
        net.reset_state()
        return net.forward_sequence(xs64)

    def steps64() -> Any:
        net.reset_state()
        for t in range(64):
            net.forward(rows64[t])

    out: Dict[str, Tuple[str, Dict[str, Callable[[], Any]]]] = {
        "forward_sequence": ("forward_sequence T=64, B=1", {
            "forward_sequence": sequence64,
            "64 forward calls": steps64,
            "predict_proba 64 rows": lambda: net.predict_proba(rows64),
        }),
    }
    train: Dict[str, Callable[[], Any]] = {
        "train_sequence": lambda: net.train_sequence(xs32, ys32),
        "train_step 256 rows": lambda: (net.reset_state(), net.train_step(rows256, labels256)),
    }
    if have_torch:
        import torch

        model, opt = peers.make_torch(net.state_dict(), net.threshold, net.surrogate_slope,
                                      net.refractory_period)
        xt, yt = torch.from_numpy(xs32), torch.from_numpy(ys32.astype(np.int64))
        train["PyTorch step loop"] = lambda: _torch_episode_step(model, opt, xt, yt)
    out["train_sequence"] = ("train_sequence T=32, B=8", train)
    return out


TARGETS: Dict[str, List[Tuple[str, float]]] = {
    # case: [(peer, at most this times the peer's time)]
    "forward_sequence": [("64 forward calls", 0.4), ("predict_proba 64 rows", 1.3)],
    "train_sequence": [("train_step 256 rows", 1.3), ("PyTorch step loop", 0.2)],
}


def run(quick: bool = False, threads: Optional[int] = None, verbose: bool = True) -> Dict[str, Any]:
    import os

    import aiva_cy
    from aiva_cy import AIVANet
    from aiva_cy import _kernel

    n = threads or os.cpu_count() or 1
    have_torch = peers.available_peers()["torch"]
    limit_threads(n, have_torch)
    s = Settings.quick() if quick else Settings.full()
    busy = cpu_busy()
    net = AIVANet(seed=0)
    info = aiva_cy.blas_info()
    lines = [f"sequences: {n} threads, BLAS {info['provider']} kernel {_kernel.summary(info)}; "
             f"{'QUICK run: numbers only, no verdicts' if quick else 'full run'}; "
             f"CPU busy before: {busy if busy is None else f'{busy:.0%}'}"]
    warn = _kernel.warning(info)
    if warn:
        lines.append(warn)
    mon, budget = LoadMonitor(), RetryBudget(s.retry_budget_s)
    result: Dict[str, Any] = {}
    for row, (label, row_cases) in cases(net, have_torch).items():
        cells = measure_interleaved(row_cases, s, mon, budget)
        result[row] = {name: c.value for name, c in cells.items()}
        noisy = any(c.note for c in cells.values())
        base = cells[row].value
        parts = [f"{name} {fmt_seconds(c.value)}{c.note}"
                 for name, c in cells.items()]
        lines.append(f"{label}: " + ", ".join(parts))
        for peer, k in TARGETS[row]:
            if peer not in cells:
                continue
            ratio = base / cells[peer].value
            verdict = "" if (quick or noisy) else ("  met" if ratio <= k else "  MISSED")
            lines.append(f"    {row} / {peer} = {ratio:.2f}x (target <= {k}x){verdict}")
    if verbose:
        print("\n".join(lines))
    result["text"] = "\n".join(lines)
    return result


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: numbers, no verdicts")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    run(args.quick, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
