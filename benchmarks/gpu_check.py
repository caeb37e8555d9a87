"""The GPU check: one script for a machine with a CUDA GPU, CuPy and (optionally) PyTorch, and
no network.  From the repository root:

    pip install --no-build-isolation --no-deps -e . && python benchmarks/gpu_check.py

(an in-place build works too: ``python setup.py build_ext --inplace`` — the script imports
the package from the repository root).  It takes about a minute and prints:

1. the environment: GPU, driver, CUDA runtime, NVRTC, CuPy, NumPy, PyTorch; TF32 pinned off
   on both sides (CUPY_TF32=0; torch's matmul and cuDNN TF32 flags off, "highest" precision);
2. the CPU-vs-CUDA tests of ``tests/test_cuda_engine.py`` on the real GPU (they must run,
   not skip);
3. direct checks at the default size, on inputs whose membrane potentials stay away from the
   threshold: a 6-step sequence with refractory state, predict_proba, gradients, Adam fed the
   same gradients as the CPU optimizer, the round trip to the CPU and back (bit-exact);
4. timings against PyTorch CUDA with the same model and weights: predict_proba and
   train_step at batch 4096, forward at batch 1, and the floor (the three products alone,
   through each library's cuBLAS call) — medians of interleaved rounds, each call
   synchronised — with kernel launches and host syncs per call counted by the profiler;
5. PASS/FAIL for every check, and exit status 0 only if all pass (the speed targets: not
   slower than PyTorch CUDA at batch 4096).
"""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Tuple

os.environ["CUPY_TF32"] = "0"     # before CuPy is imported: FP32 products stay FP32

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)          # an in-place build imports from the repository root

import numpy as np  # noqa: E402

RESULTS: List[Tuple[str, bool, str]] = []


def check(name: str, ok: bool, detail: str = "") -> bool:
    RESULTS.append((name, bool(ok), detail))
    print(f"  [{'PASS' if ok else 'FAIL'}] {name}{': ' + detail if detail else ''}", flush=True)
    return bool(ok)


def section(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


# ---------------------------------------------------------------------------------------
def environment() -> Any:
    section("environment")
    print(f"  python {platform.python_version()} on {platform.machine()}, numpy {np.__version__}")
    try:
        import cupy as cp
        rt = cp.cuda.runtime
        props = rt.getDeviceProperties(0)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        print(f"  GPU 0: {name}, {props['multiProcessorCount']} SMs, "
              f"{props['totalGlobalMem'] / 2**30:.1f} GiB; {rt.getDeviceCount()} GPU(s)")
        print(f"  driver CUDA {rt.driverGetVersion()}, runtime CUDA {rt.runtimeGetVersion()}, "
              f"NVRTC {cp.cuda.nvrtc.getVersion()}, CuPy {cp.__version__}")
        print(f"  CuPy TF32: CUPY_TF32={os.environ.get('CUPY_TF32')} (off)")
    except Exception as exc:
        check("CuPy with a CUDA GPU", False, repr(exc))
        return None
    try:
        import torch
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        print(f"  torch {torch.__version__} (CUDA {torch.version.cuda}), cuda available: "
              f"{torch.cuda.is_available()}; TF32 matmul {torch.backends.cuda.matmul.allow_tf32}, "
              f"cuDNN TF32 {torch.backends.cudnn.allow_tf32}, float32 matmul precision "
              f"{torch.get_float32_matmul_precision()!r}")
    except Exception as exc:
        print(f"  torch unavailable: {exc!r}")
    import aiva_cy
    print(f"  aiva_cy {getattr(aiva_cy, '__version__', '?')} from {os.path.dirname(aiva_cy.__file__)}, "
          f"CPU BLAS {aiva_cy.blas_info().get('provider')}")
    from aiva_cy import AIVANet
    try:
        AIVANet(input_size=4, num_tools=2, hidden_size=8, spiking_size=8, seed=0).to("cuda")
        check("CuPy compiles kernels and runs cuBLAS on this GPU", True)
    except Exception as exc:
        check("CuPy compiles kernels and runs cuBLAS on this GPU", False, repr(exc))
        return None
    return cp


# ---------------------------------------------------------------------------------------
def run_gpu_tests() -> None:
    section("tests/test_cuda_engine.py on the GPU")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfEs", "--tb=line",
                           "-p", "no:cacheprovider", "tests/test_cuda_engine.py"], cwd=ROOT,
                          env=env, capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    shown = [ln for ln in lines if ln.startswith(("FAILED", "ERROR", "SKIPPED", "E ", "/"))]
    print("\n".join("    " + line for line in shown[:40] + lines[-1:]))
    gpu_skips = [ln for ln in proc.stdout.splitlines() if "SKIPPED" in ln and "GPU" in ln]
    check("CPU-vs-CUDA tests pass on the GPU", proc.returncode == 0 and not gpu_skips,
          f"exit {proc.returncode}, {len(gpu_skips)} GPU test(s) skipped")


# ---------------------------------------------------------------------------------------
def screened_inputs(weights: Dict[str, np.ndarray], shape: Tuple[int, ...], seed: int,
                    margin: float = 1e-5) -> np.ndarray:
    """N(0, 1) inputs whose membrane potentials all stay `margin` from the threshold, so that
    float32 sums taken in another order cannot flip a spike."""
    from aiva_cy.reference import membrane_margin
    rng = np.random.default_rng(seed)
    for _ in range(100):
        x = rng.standard_normal(shape).astype(np.float32)
        if membrane_margin(weights, x.reshape(-1, shape[-1]), 0.5) > margin:
            return x
    raise RuntimeError("could not draw inputs away from the threshold")


def correctness(cp: Any) -> None:
    section("CPU vs CUDA at the default size (512 -> 2048 -> 1024 -> 20)")
    from aiva_cy import AIVANet
    from aiva_cy._adam import Adam
    from aiva_cy._cuda import CupyAdam

    cpu = AIVANet(seed=0)
    w = cpu.state_dict()
    gpu = AIVANet(seed=0).to("cuda")
    xs = screened_inputs(w, (6, 33, 512), seed=1)
    p_cpu = cpu.forward_sequence(xs)
    p_gpu = gpu.forward_sequence(cp.asarray(xs)).get()
    err = float(np.abs(p_cpu - p_gpu).max())
    same_state = np.array_equal(cpu._engine.get_state(), gpu._engine.get_state().get())
    check("forward_sequence, 6 steps x 33 streams", err < 1e-5 and same_state,
          f"max |p_cpu - p_cuda| = {err:.1e} (limit 1e-5), refractory states equal: {same_state}")

    x = screened_inputs(w, (256, 512), seed=2)
    err = float(np.abs(cpu.predict_proba(x) - gpu.predict_proba(cp.asarray(x)).get()).max())
    check("predict_proba, batch 256", err < 1e-5, f"max diff {err:.1e} (limit 1e-5)")

    y = np.arange(256) % 20
    l_cpu, g_cpu = cpu.loss_and_grad(x[:33], y[:33])     # after 6 steps: masks are active
    l_gpu, g_gpu = gpu.loss_and_grad(cp.asarray(x[:33]), cp.asarray(y[:33]))
    rel = abs(l_cpu - l_gpu) / abs(l_cpu)
    worst = 0.0
    for k in g_cpu:
        scale = float(np.abs(g_cpu[k]).max())
        worst = max(worst, float(np.abs(g_gpu[k].get() - g_cpu[k]).max()) / scale)
    check("loss and gradients, batch 33 with refractory state", rel < 1e-5 and worst < 1e-4,
          f"loss rel diff {rel:.1e} (limit 1e-5); worst gradient diff / max |gradient| "
          f"{worst:.1e} (limit 1e-4)")

    # Adam on the same gradients: isolates the optimizer kernel.  lr 1e-2 so that the old
    # 1 - 0.999f error (2e-6 after 10 steps) would stand 5x above the limit.
    rng = np.random.default_rng(3)
    shapes = [w[k].shape for k in w]
    w_cpu = [w[k].copy() for k in w]
    w_gpu = [cp.asarray(a) for a in w_cpu]
    a_cpu = Adam(shapes, names=tuple(w), lr=1e-2)
    a_gpu = CupyAdam(shapes, names=tuple(w), lr=1e-2)
    for _ in range(10):
        grads = [(rng.standard_normal(s) * 1e-3).astype(np.float32) for s in shapes]
        a_cpu.update(w_cpu, grads)
        a_gpu.update(w_gpu, [cp.asarray(g) for g in grads])
    err = max(float(np.abs(a.get() - b).max()) for a, b in zip(w_gpu, w_cpu))
    check("Adam, 10 steps on the same gradients (3.2M weights)", err < 4e-7,
          f"max weight diff {err:.1e} (limit 4e-7)")

    for _ in range(3):
        gpu.reset_state()
        gpu.train_step(cp.asarray(x[:64]), cp.asarray(y[:64]))
    before = (gpu.state_dict(), gpu.optimizer.state_dict())
    gpu(cp.asarray(x[:64]))
    state = gpu._engine.get_state().get()
    back = gpu.to("cpu").to("cuda")
    after = (back.state_dict(), back.optimizer.state_dict())
    exact = all(np.array_equal(before[0][k], after[0][k]) for k in before[0])
    exact &= all(np.array_equal(before[1][m][k], after[1][m][k])
                 for m in ("exp_avg", "exp_avg_sq") for k in before[0])
    exact &= before[1]["step"] == after[1]["step"] == 3
    exact &= np.array_equal(back._engine.get_state().get(), state)
    check("to('cpu').to('cuda') keeps weights, moments, step and state bit for bit", exact)


# ---------------------------------------------------------------------------------------
def profile_step(fn: Callable[[], Any]) -> Tuple[int, int]:
    """(kernel launches, host syncs) of one call, read by the PyTorch profiler (CUPTI sees
    every kernel in the process, CuPy's included)."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kernels = syncs = 0
    for e in prof.events():
        name = e.name
        if e.device_type == torch.autograd.DeviceType.CUDA and not name.startswith("Mem"):
            kernels += 1
        elif name in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize",
                      "cudaMemcpy", "cuStreamSynchronize", "cuCtxSynchronize") \
                or name.startswith("cuMemcpyDtoH"):
            syncs += 1
    return kernels, syncs - 1       # less the torch.cuda.synchronize() above


def timings(cp: Any) -> None:
    section("speed against PyTorch CUDA (same model, same weights, TF32 off)")
    try:
        import torch
        if not torch.cuda.is_available():
            raise RuntimeError("torch has no CUDA")
    except Exception as exc:
        check("PyTorch CUDA peer available", False, repr(exc))
        return
    from aiva_cy.bench.peers import make_torch, torch_predict_proba, torch_train_step
    from aiva_cy import AIVANet
    import aiva_cy._cuda as cuda_engine

    net = AIVANet(seed=0)
    weights = net.state_dict()
    net.to("cuda")
    model, opt = make_torch(weights, net.threshold, net.surrogate_slope, net.refractory_period,
                            device="cuda")
    rng = np.random.default_rng(0)
    B = 4096
    x_host = rng.standard_normal((B, 512)).astype(np.float32)
    y_host = rng.integers(0, 20, B)
    x, y = cp.asarray(x_host), cp.asarray(y_host)
    xt, yt = torch.as_tensor(x_host, device="cuda"), torch.as_tensor(y_host, device="cuda")
    x1, xt1 = cp.asarray(x_host[:1]), xt[:1]
    left_t = None

    w_t = [torch.as_tensor(weights[k], device="cuda") for k in weights]

    def torch_products(xt_: Any) -> None:
        with torch.inference_mode():
            ((xt_ @ w_t[0]) @ w_t[1]) @ w_t[2]

    def ours_train() -> None:
        net.reset_state()
        net.train_step(x, y)

    def torch_forward1() -> None:
        nonlocal left_t
        with torch.inference_mode():
            _, _, left_t = model(xt1, left_t)

    cases: Dict[str, Dict[str, Callable[[], Any]]] = {
        "predict_proba, batch 4096": {"aiva_cy": lambda: net.predict_proba(x),
                                      "torch": lambda: torch_predict_proba(model, xt)},
        "train_step, batch 4096": {"aiva_cy": ours_train,
                                   "torch": lambda: torch_train_step(model, opt, xt, yt)},
        "forward, batch 1 (stateful)": {"aiva_cy": lambda: net(x1), "torch": torch_forward1},
        # the floor: the three float32 products of a step alone, cuBLAS through each library
        "3 products alone, batch 4096": {"aiva_cy": lambda: net._engine.blas_products(x),
                                         "torch": lambda: torch_products(xt)},
    }
    net.reset_state()
    for peers in cases.values():                # warm-up: compile, allocate, autotune
        for f in peers.values():
            for _ in range(3):
                f()
            net.reset_state()
    torch.cuda.synchronize()
    times: Dict[Tuple[str, str], List[float]] = {}
    rounds = {"predict_proba, batch 4096": 30, "train_step, batch 4096": 30,
              "forward, batch 1 (stateful)": 200, "3 products alone, batch 4096": 30}
    for case, peers in cases.items():
        net.reset_state()
        for _ in range(rounds[case]):
            for who, f in peers.items():
                torch.cuda.synchronize()
                t = time.perf_counter()
                f()
                torch.cuda.synchronize()
                times.setdefault((case, who), []).append(time.perf_counter() - t)

    counts = {}
    for case, peers in cases.items():
        for who, f in peers.items():
            net.reset_state()
            fetches = cuda_engine.fetch_count
            k, s = profile_step(f)
            counts[(case, who)] = (k, s, cuda_engine.fetch_count - fetches if who == "aiva_cy" else None)

    print(f"  {'work':30s} {'aiva_cy':>10s} {'PyTorch':>10s} {'ratio':>7s}   launches (ours/torch)  "
          f"syncs (ours/torch)")
    for case in cases:
        ours = statistics.median(times[(case, "aiva_cy")])
        theirs = statistics.median(times[(case, "torch")])
        ko, so, fo = counts[(case, "aiva_cy")]
        kt, st, _ = counts[(case, "torch")]
        print(f"  {case:30s} {ours * 1e3:8.3f}ms {theirs * 1e3:8.3f}ms {theirs / ours:6.2f}x   "
              f"{ko:3d} / {kt:3d}              {so} / {st}  (engine fetches: {fo})")
        if case.startswith(("predict_proba", "train_step")):    # the targets; the floor is a reading
            check(f"{case}: not slower than PyTorch CUDA", ours <= theirs * 1.0,
                  f"aiva_cy {ours * 1e3:.3f} ms, torch {theirs * 1e3:.3f} ms "
                  f"(torch / aiva_cy = {theirs / ours:.2f})")
    check("train_step blocks on the host once", counts[("train_step, batch 4096", "aiva_cy")][2] == 1,
          f"{counts[('train_step, batch 4096', 'aiva_cy')][2]} engine fetch(es) per step")


def main() -> int:
    t0 = time.perf_counter()
    cp = environment()
    if cp is not None:
        run_gpu_tests()
        correctness(cp)
        timings(cp)
    section("summary")
    for name, ok, _ in RESULTS:
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    failed = sum(not ok for _, ok, _ in RESULTS)
    print(f"\n{len(RESULTS) - failed} passed, {failed} failed  ({time.perf_counter() - t0:.0f} s)")
    return 0 if failed == 0 and RESULTS else 1


if __name__ == "__main__":
    sys.exit(main())
