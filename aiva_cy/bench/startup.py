"""The start-up rows: a fresh interpreter per run that imports a library, builds the
default net and runs one forward step; also its peak memory.

The numpy BioNeuron and the PyTorch peer are loaded from their files, not through the
``aiva_cy`` package, so that their start-up never includes importing aiva_cy.
"""

from __future__ import annotations

import compileall
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from aiva_cy.bench.timing import Cell, LoadMonitor, RetryBudget, Settings, cell_from, measure_clean, thread_env

HERE = Path(__file__).resolve().parent
#: The folder that holds the aiva_cy package the parent imported (installed or in place).
PACKAGE_ROOT = HERE.parent.parent

# Each script runs in a fresh interpreter and prints one JSON line. The clock starts
# before the first import; the process's peak RSS is read at three points.
_STARTUP_PRELUDE = """\
import json, resource, sys, time
t0 = time.perf_counter()
def _rss():
    # Peak RSS. Linux: VmHWM of this address space; ru_maxrss would still hold the peak of
    # the (large) benchmark process this one was forked from.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
rss0 = _rss()
import numpy as np
rss_np = _rss()
x = np.random.default_rng(0).standard_normal(512)
"""
_STARTUP_BODY: Dict[str, str] = {
    "aiva_cy": """\
from aiva_cy import AIVANet
net = AIVANet()
net.forward(x.astype(np.float32))
""",
    "numpy": """\
bioneuron_numpy = _load("bioneuron_numpy")
net = bioneuron_numpy.BioNeuron()
net.forward(x)
""",
    "torch": """\
import torch
peers = _load("peers")
shapes = {"fc1.weight": (512, 2048), "spiking.weight": (2048, 1024), "fc2.weight": (1024, 20)}
model = peers.TorchAIVANet({k: torch.randn(s) * (2.0 / s[0]) ** 0.5 for k, s in shapes.items()},
                           0.5, 25.0, 2)
with torch.inference_mode():
    model(torch.from_numpy(x.astype(np.float32)))
""",
}
# The peers other than aiva_cy come from their files, so their start-up does not import the
# aiva_cy package they sit in.
_LOAD_BY_PATH = """\
def _load(name):
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, {folder!r} + "/" + name + ".py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
"""
_STARTUP_EPILOGUE = """\
t1 = time.perf_counter()
print(json.dumps({"seconds": t1 - t0, "rss0": rss0, "rss_numpy": rss_np, "rss_peak": _rss()}))
"""


def measure_startup(peer_names: Sequence[str], s: Settings, threads: int,
                    mon: Optional[LoadMonitor] = None, budget: Optional[RetryBudget] = None,
                    log: Callable[[str], None] = lambda m: None) -> Dict[str, Dict[str, Cell]]:
    """Start-up time (in process and whole process) and memory growth, per peer.

    The peers alternate run by run, as the timed rows do. Returns
    {"startup": {...}, "startup_process": {...}, "memory": {...}}.
    """
    env = dict(os.environ)
    env.update(thread_env(threads))
    # The aiva_cy the parent imported, installed or built in place.
    path = [str(PACKAGE_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(path)
    mon = mon or LoadMonitor()
    budget = budget or RetryBudget(s.retry_budget_s)
    load = _LOAD_BY_PATH.format(folder=HERE.as_posix())
    scripts = {p: _STARTUP_PRELUDE + ("" if p == "aiva_cy" else load) + _STARTUP_BODY[p]
               + _STARTUP_EPILOGUE for p in peer_names}
    runs: Dict[str, List[Dict[str, float]]] = {p: [] for p in peer_names}
    others: Dict[str, List[Optional[float]]] = {p: [] for p in peer_names}
    retried: Dict[str, int] = {p: 0 for p in peer_names}

    def start(p: str, cwd: str) -> Dict[str, float]:
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", scripts[p]], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=300)
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            raise RuntimeError(f"start-up script for {p} failed:\n{done.stderr.strip()}")
        rec: Dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
        rec["wall"] = wall
        return rec

    # Byte-compile the peers' Python first, as a wheel install does: with an in-place build
    # (and PYTHONDONTWRITEBYTECODE set) every start would otherwise compile aiva_cy/net.py
    # from source, a cost no installed user pays. A read-only install is compiled already.
    compileall.compile_dir(str(HERE.parent), quiet=2, maxlevels=2)

    with tempfile.TemporaryDirectory() as cwd:   # a neutral cwd: nothing importable by accident
        for i in range(s.startup_runs):
            for p in peer_names:
                if p == "torch" and i >= s.slow_rounds:
                    continue   # a second per run, and steady: slow_rounds runs are enough
                rec, other, n_retry = measure_clean(lambda: start(p, cwd), s, mon, budget)
                runs[p].append(rec)
                others[p].append(other)
                retried[p] += n_retry
    log("    " + ", ".join(f"{p}: {len(runs[p])} runs"
                           + (f" ({retried[p]} retried)" if retried[p] else "") for p in peer_names))

    def cell(p: str, key: Callable[[Dict[str, float]], float]) -> Cell:
        return cell_from([key(r) for r in runs[p]], others[p], s.noise_limit, retried=retried[p])

    return {
        "startup": {p: cell(p, lambda r: r["seconds"]) for p in peer_names},
        "startup_process": {p: cell(p, lambda r: r["wall"]) for p in peer_names},
        "memory": {p: cell(p, lambda r: r["rss_peak"] - r["rss_numpy"]) for p in peer_names},
    }
