"""The GPU check, prepared to run as one short script on a machine with CUDA and CuPy.

    python benchmarks/gpu_check.py            # correctness vs the CPU engine, then timing

1. Correctness: the same net on "cpu" and "cuda" — forward over a sequence with refractory
   state, predict_proba, loss_and_grad, ten train_steps — agree within float32 tolerance;
   to("cuda") / to("cpu") round-trips weights, optimizer and state.
2. Speed (SPEC §6 last row): train_step at batch 4096 against PyTorch CUDA (autograd +
   torch.optim.Adam, the same model from benchmarks/peers.py) when torch is installed.

Exit status 0 when every check passes.  Nothing here runs in the CPU test suite.
"""
from __future__ import annotations

import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def check_correctness() -> bool:
    from aiva_cy import AIVANet
    ok = True
    rng = np.random.default_rng(0)
    cpu = AIVANet(seed=0)
    gpu = AIVANet(seed=0).to("cuda")
    xs = rng.standard_normal((6, 33, 512)).astype(np.float32)
    p_cpu = cpu.forward_sequence(xs)
    p_gpu = gpu.forward_sequence(xs).get()
    err = float(np.abs(p_cpu - p_gpu).max())
    print(f"forward_sequence (6 steps, batch 33): max |cpu - cuda| = {err:.2e}")
    ok &= err < 1e-4
    x = rng.standard_normal((64, 512)).astype(np.float32)
    y = rng.integers(0, 20, 64)
    err = float(np.abs(cpu.predict_proba(x) - gpu.predict_proba(x).get()).max())
    print(f"predict_proba (batch 64): max diff = {err:.2e}")
    ok &= err < 1e-4
    cpu.reset_state(); gpu.reset_state()
    l_cpu, g_cpu = cpu.loss_and_grad(x, y)
    l_gpu, g_gpu = gpu.loss_and_grad(x, y)
    print(f"loss cpu {l_cpu:.6f} cuda {l_gpu:.6f}")
    ok &= abs(l_cpu - l_gpu) < 1e-4 * max(1.0, abs(l_cpu))
    for k in g_cpu:
        g = g_gpu[k].get()
        rel = float(np.abs(g - g_cpu[k]).max() / max(np.abs(g_cpu[k]).max(), 1e-30))
        print(f"grad {k}: max rel diff {rel:.2e}")
        ok &= rel < 1e-3
    for _ in range(10):
        cpu.reset_state(); gpu.reset_state()
        cpu.train_step(x, y); gpu.train_step(x, y)
    for k, v in cpu.state_dict().items():
        err = float(np.abs(v - gpu.state_dict()[k]).max())
        print(f"after 10 Adam steps, {k}: max diff {err:.2e}")
        ok &= err < 1e-3
    back = gpu.to("cpu")
    ok &= back.device == "cpu" and back.optimizer.step == 10
    print("round trip to cpu:", "ok" if ok else "FAILED")
    return bool(ok)


def time_train_step(batch: int = 4096, rounds: int = 15) -> None:
    import cupy as cp
    from aiva_cy import AIVANet
    net = AIVANet(seed=0).to("cuda")
    rng = np.random.default_rng(0)
    x = cp.asarray(rng.standard_normal((batch, 512)).astype(np.float32))
    y = cp.asarray(rng.integers(0, 20, batch))

    def ours():
        net.reset_state()
        net.train_step(x, y)

    peers = {"aiva_cy": ours}
    try:
        import torch
        from peers import make_torch, torch_train_step
        cfg = dict(threshold=net.threshold, slope=net.surrogate_slope,
                   refractory_period=net.refractory_period)
        model, opt = make_torch(AIVANet(seed=0).state_dict(), cfg["threshold"], cfg["slope"],
                                cfg["refractory_period"], device="cuda")
        xt = torch.as_tensor(x.get(), device="cuda")
        yt = torch.as_tensor(y.get(), device="cuda")
        peers["torch"] = lambda: torch_train_step(model, opt, xt, yt)
    except Exception as exc:  # torch missing or without CUDA
        print(f"PyTorch CUDA peer unavailable: {exc!r}")
    times = {k: [] for k in peers}
    for name, f in peers.items():
        for _ in range(3):
            f()
    for _ in range(rounds):
        for name, f in peers.items():
            cp.cuda.Device().synchronize()
            t = time.perf_counter()
            f()
            cp.cuda.Device().synchronize()
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"train_step batch {batch} on CUDA, {k}: {v * 1e3:.2f} ms "
              f"(ratio to aiva_cy {v / med['aiva_cy']:.2f})")


if __name__ == "__main__":
    good = check_correctness()
    time_train_step()
    sys.exit(0 if good else 1)
