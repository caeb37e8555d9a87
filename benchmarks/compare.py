"""aiva_cy side by side with its peers: the benchmark of SPEC section 6.

Run it as a script::

    python benchmarks/compare.py               # full run, about 1.5 minutes on 2 cores
    python benchmarks/compare.py --quick       # a smoke run, about 20 s
    python benchmarks/compare.py --threads 1 --json out.json --no-chart

or import it and call :func:`run` (the quick test does) or :func:`main`.

What is measured (rows) and against whom (columns) is described in
``benchmarks/README.md``. In short: forward at batch 1, predict_proba at batch 64
and 256, train_step at batch 64 and 256, start-up in a fresh process, memory, and
the bytes of weights, for the numpy BioNeuron, aiva_cy, PyTorch eager, ONNX
Runtime (each column only where the library is installed) and the raw BLAS
products of one forward step (the floor). Every peer runs the SAME model with the
SAME weights (taken from ``net.state_dict()``), with the same thread count.

Method (SPEC section 6 method notes):

* one thread count for every library: threadpoolctl for the BLAS libraries
  (aiva_cy's OpenBLAS and numpy's included), ``torch.set_num_threads``, and ONNX
  Runtime's ``intra_op_num_threads``;
* warm-up calls per peer, which also set how many calls ``k`` make one timed block
  (about ``block_s`` seconds), so that perf_counter's resolution and the loop cost
  do not matter; a few untimed calls right before each block of a fast peer wake its
  worker threads, whose wake-up is not the per-call cost;
* the peers are interleaved round by round (round robin, the starting peer rotated
  every round), and a 0.12 s sleep comes before every block: on a 2-core machine a
  library's worker threads keep spinning after a call (OpenBLAS for about 0.1 s,
  burning a whole core; PyTorch's OpenMP for a few ms) and would otherwise slow down
  whichever peer is measured next;
* the per-call time of a block is block time / k; a cell reports the median over
  rounds; garbage collection is off inside a block (as in timeit);
* other processes: the share of the CPU they used during each block is recorded
  (/proc/stat); a disturbed block is measured again, and a cell whose median could
  not be taken over clean samples is marked with a dagger;
* the input is a fixed-seed N(0, 1) sample, never zeros (zeros make tanh and the
  spiking layer trivially cheap for some kernels).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar

import numpy as np

T = TypeVar("T")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_OUT_DIR = HERE / "results"

# The benchmark's own helpers live next to this file; make them importable however
# this module is loaded (as a script, by pytest, or with benchmarks/ on sys.path).
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import bioneuron_numpy as bn  # noqa: E402
import peers  # noqa: E402

# --------------------------------------------------------------------------- constants

#: Parameters of the default net (SPEC section 1): 512*2048 + 2048*1024 + 1024*20.
N_PARAMS: int = 512 * 2048 + 2048 * 1024 + 1024 * 20
assert N_PARAMS == 3_166_208
#: Multiply-adds of one train_step per stream (SPEC section 4): the forward products, then
#: for the spiking layer and fc2 both the weight and the input gradient, for fc1 only the
#: weight gradient (x needs none): 3,166,208 + 2*2,097,152 + 1,048,576 + 2*20,480,
#: 2.67x a forward ("about 3x"). The Adam update is memory-bound and not counted.
TRAIN_MACS: int = N_PARAMS + 2 * 2048 * 1024 + 512 * 2048 + 2 * 1024 * 20
assert TRAIN_MACS == 8_450_048

#: Columns, in table order. "floor" is aiva_cy's own three BLAS products of one step
#: (float32, on the BLAS it uses); the MKL floors are the same products on MKL: float32
#: plain and with pre-packed weights, bf16 operands plain and pre-packed (bf16 floors
#: include rounding x and h to bf16, which every bf16 step must do).  The bf16 columns
#: appear where MKL is installed (``pip install "aiva_cy[mkl]"``).
PEER_ORDER: Tuple[str, ...] = ("numpy", "aiva_cy", "aiva_bf16", "torch", "torch_bf16", "onnx",
                               "floor", "floor_mkl", "floor_mkl_packed", "floor_bf16",
                               "floor_bf16_packed")
PEER_LABELS: Dict[str, str] = {
    "numpy": "numpy BioNeuron",
    "aiva_cy": "aiva_cy",
    "aiva_bf16": "aiva_cy bf16",
    "torch": "PyTorch eager",
    "torch_bf16": "PyTorch bf16",
    "onnx": "ONNX Runtime",
    "floor": "raw BLAS (floor)",
    "floor_mkl": "MKL f32 floor",
    "floor_mkl_packed": "MKL f32 packed floor",
    "floor_bf16": "MKL bf16 floor",
    "floor_bf16_packed": "MKL bf16 packed floor",
}
BF16_PEERS: Tuple[str, ...] = ("aiva_bf16", "torch_bf16", "floor_mkl", "floor_mkl_packed",
                               "floor_bf16", "floor_bf16_packed")

#: Rows, in table order: id -> label. Timed rows first, then the start-up and size rows.
ROW_LABELS: Dict[str, str] = {
    "forward_b1": "forward, batch 1",
    "predict_b64": "predict_proba, batch 64",
    "predict_b256": "predict_proba, batch 256",
    "train_b64": "train_step, batch 64",
    "train_b256": "train_step, batch 256",
    "startup": "start-up: import + build + 1st forward",
    "startup_process": "start-up: whole `python -c` process",
    "memory": "memory: peak RSS growth over `import numpy`",
    "weights": "bytes of weights",
}
TIMED_ROWS: Tuple[str, ...] = ("forward_b1", "predict_b64", "predict_b256", "train_b64", "train_b256")
STARTUP_ROWS: Tuple[str, ...] = ("startup", "startup_process", "memory")
ALL_ROWS: Tuple[str, ...] = tuple(ROW_LABELS)

#: Which peers take part in the start-up subprocesses (ONNX Runtime would need a model
#: file built elsewhere, and the floor is not a program of its own).
STARTUP_PEERS: Tuple[str, ...] = ("numpy", "aiva_cy", "torch")


@dataclass
class Settings:
    """How hard to measure. ``quick`` only checks that everything runs."""

    rounds: int = 21                 # interleaved rounds per timed row
    slow_rounds: int = 5             # rounds for a peer whose single call takes > slow_call_s
    slow_call_s: float = 0.25        # e.g. the BioNeuron's Python loop over 256 rows
    block_s: float = 0.04            # target duration of one timed block of k calls
    max_calls: int = 200             # cap on k
    warmup: int = 4                  # untimed calls per peer (they also calibrate k)
    # Untimed calls right before each timed block of a fast peer (one call < rewarm_below_s):
    # after the pause its worker threads are asleep, and waking them (and letting the
    # scheduler spread them over the cores) is not the per-call cost being measured.
    rewarm_calls: int = 3
    rewarm_below_s: float = 0.01
    # Sleep before every block. OpenBLAS's idle workers spin for 2**28 TSC cycles (about
    # 0.1 s here: a full core burnt while the caller sleeps, measured with process_time)
    # before they block; torch's OpenMP pool spins a few ms. 0.12 s lets every block
    # start with all pools asleep, so no peer pays for the previous one's spinning.
    pause_s: float = 0.12
    startup_runs: int = 11           # fresh processes per start-up peer (they vary by ~20%)
    # Other processes on the machine: a block during which they used more than
    # noise_limit of all cores is measured again (up to `retries` times, while the
    # run's retry budget lasts), and the cleanest attempt is kept.
    noise_limit: float = 0.15
    retries: int = 3
    retry_budget_s: float = 60.0

    @classmethod
    def full(cls) -> "Settings":
        return cls()

    @classmethod
    def quick(cls) -> "Settings":
        return cls(rounds=3, slow_rounds=1, block_s=0.01, max_calls=20, warmup=1,
                   startup_runs=1, retries=0, retry_budget_s=0.0)


# --------------------------------------------------------------------------- results


@dataclass
class Cell:
    """One peer's result in one row: a median of samples (seconds or bytes)."""

    value: float
    samples: List[float] = field(default_factory=list)
    calls_per_block: Optional[int] = None
    ratio: Optional[float] = None    # value / aiva_cy's value: > 1 means aiva_cy is faster/smaller
    note: str = ""                   # NOISY_MARK when the median had to include noisy samples
    # Share of all cores used by other processes during each sample (None: unknown).
    other_load: List[Optional[float]] = field(default_factory=list)
    retried: int = 0                 # blocks measured again because of other load


#: Marks a cell whose median includes samples taken while other processes were busy.
NOISY_MARK = "†"


def _cell_from(samples: Sequence[float], others: Sequence[Optional[float]], limit: float,
               **extra: Any) -> Cell:
    """Median of the clean samples if they are at least half, else of all (marked noisy)."""
    clean = [t for t, o in zip(samples, others) if o is None or o <= limit]
    noisy = 2 * len(clean) < len(samples)
    value = statistics.median(samples if noisy else clean)
    return Cell(value=value, samples=list(samples), other_load=list(others),
                note=NOISY_MARK if noisy else "", **extra)


@dataclass
class Target:
    """One SPEC target: the condition in words, the measured quantity, and whether it holds."""

    text: str
    value: Optional[float]           # the quantity the condition is about (None: not measured)
    met: Optional[bool]              # None: a peer is missing, nothing to check


# --------------------------------------------------------------------------- timing


def _timed_block(fn: Callable[[], Any], k: int) -> float:
    """Seconds per call of ``k`` consecutive calls, with the garbage collector off."""
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        t0 = time.perf_counter()
        for _ in range(k):
            fn()
        return (time.perf_counter() - t0) / k
    finally:
        if gc_was_on:
            gc.enable()


class LoadMonitor:
    """How much of the machine other processes used between two marks (Linux /proc/stat).

    others = (busy CPU time of the whole machine, steal included, minus this process's
    and its waited-for children's CPU time) / (wall time x cores). /proc/stat counts in
    10 ms ticks, so a 0.16 s window on 2 cores resolves about 3%.
    """

    def __init__(self) -> None:
        self.ncpu = os.cpu_count() or 1
        try:
            self.hz = float(os.sysconf("SC_CLK_TCK"))
            self._busy()
            self.enabled = True
        except (OSError, ValueError, IndexError, AttributeError):
            self.enabled = False

    def _busy(self) -> float:
        with open("/proc/stat", encoding="ascii") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        # user nice system idle iowait irq softirq steal: all but idle and iowait are busy.
        return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / self.hz

    def mark(self) -> Optional[Tuple[float, float, float]]:
        if not self.enabled:
            return None
        t = os.times()
        own = time.process_time() + t.children_user + t.children_system
        return self._busy(), own, time.perf_counter()

    def others(self, a: Optional[Tuple[float, float, float]],
               b: Optional[Tuple[float, float, float]]) -> Optional[float]:
        if a is None or b is None or b[2] <= a[2]:
            return None
        used = (b[0] - a[0]) - (b[1] - a[1])
        return round(max(0.0, used / ((b[2] - a[2]) * self.ncpu)), 3)


@dataclass
class _RetryBudget:
    """Seconds the whole run may still spend measuring blocks again."""

    left_s: float
    retried: int = 0


def _measure_clean(measure: Callable[[], T], s: Settings, mon: LoadMonitor,
                   budget: _RetryBudget) -> Tuple[T, Optional[float], int]:
    """pause + measure(), again while other processes were busy; the cleanest attempt.

    Returns (what measure() returned, other load during it, retries spent).
    """
    best: Optional[Tuple[T, Optional[float]]] = None
    retries = 0
    for attempt in range(1 + s.retries):
        t0 = time.perf_counter()
        m0 = mon.mark()
        time.sleep(s.pause_s)
        value = measure()
        other = mon.others(m0, mon.mark())
        if best is None or (other is not None and (best[1] is None or other < best[1])):
            best = (value, other)
        if attempt:
            budget.left_s -= time.perf_counter() - t0
        if other is None or other <= s.noise_limit or budget.left_s <= 0 or attempt == s.retries:
            break
        retries += 1
        budget.retried += 1
    assert best is not None
    return best[0], best[1], retries


def measure_interleaved(cases: Mapping[str, Callable[[], Any]], s: Settings,
                        mon: Optional[LoadMonitor] = None, budget: Optional[_RetryBudget] = None,
                        log: Callable[[str], None] = lambda m: None) -> Dict[str, Cell]:
    """Time every case round by round; returns the median per-call seconds of each.

    Calibration: the fastest of ``s.warmup`` single warm-up calls (not counting the
    first) sets k = block_s / t (1..max_calls). Then ``s.rounds`` rounds, each timing
    one block per case in a rotated order, with a pause before every block; a block
    disturbed by other processes is measured again (see :class:`Settings`).
    """
    mon = mon or LoadMonitor()
    budget = budget or _RetryBudget(s.retry_budget_s)
    names = list(cases)
    ks: Dict[str, int] = {}
    rewarm: Dict[str, int] = {}
    rounds_of: Dict[str, int] = {}
    for name in names:
        fn = cases[name]
        # Warm-up calls double as calibration: the fastest of them (the first one pays for
        # first-touch allocations) sets k. A slow peer stops warming up after two calls.
        times: List[float] = []
        for _ in range(max(2, s.warmup)):
            time.sleep(s.pause_s)
            times.append(_timed_block(fn, 1))
            if len(times) >= 2 and times[-1] > s.slow_call_s:
                break
        one = min(times[1:])
        ks[name] = max(1, min(s.max_calls, int(round(s.block_s / max(one, 1e-9)))))
        rewarm[name] = s.rewarm_calls if one < s.rewarm_below_s else 0
        # A peer that takes a quarter of a second per call (the BioNeuron's Python loop
        # over a batch) gets fewer rounds: its medians are stable and time is precious.
        rounds_of[name] = s.rounds if one < s.slow_call_s else max(1, min(s.rounds, s.slow_rounds))
    samples: Dict[str, List[float]] = {n: [] for n in names}
    others: Dict[str, List[Optional[float]]] = {n: [] for n in names}
    retried: Dict[str, int] = {n: 0 for n in names}
    for r in range(s.rounds):
        # Rotate the order so that no peer always follows the same one.
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            if r >= rounds_of[name]:
                continue
            fn, k, pre = cases[name], ks[name], rewarm[name]

            def block() -> float:
                for _ in range(pre):
                    fn()
                return _timed_block(fn, k)

            value, other, n_retry = _measure_clean(block, s, mon, budget)
            samples[name].append(value)
            others[name].append(other)
            retried[name] += n_retry
    log("    " + ", ".join(f"{n}: k={ks[n]} x {len(samples[n])}"
                           + (f" ({retried[n]} retried)" if retried[n] else "") for n in names))
    return {n: _cell_from(samples[n], others[n], s.noise_limit, calls_per_block=ks[n],
                          retried=retried[n])
            for n in names}


# --------------------------------------------------------------------------- thread control


def _limit_threads(n: int, have_torch: bool) -> Tuple[Any, List[Dict[str, Any]]]:
    """Give every library ``n`` threads. Returns (a handle to keep alive, BLAS pool info).

    Must run after every library is loaded: threadpoolctl acts on the loaded ones.
    """
    handle: Any = None
    info: List[Dict[str, Any]] = []
    try:
        from threadpoolctl import threadpool_info, threadpool_limits

        handle = threadpool_limits(limits=n)
        info = [{k: p.get(k) for k in ("user_api", "internal_api", "prefix", "version",
                                       "num_threads", "filepath")}
                for p in threadpool_info()]
    except ImportError:
        # Without threadpoolctl the environment variables set in run() are all we have.
        info = [{"note": "threadpoolctl not installed: OPENBLAS/OMP_NUM_THREADS env vars only"}]
    if have_torch:
        import torch

        torch.set_num_threads(n)
    return handle, info


def _thread_env(n: int) -> Dict[str, str]:
    """Environment variables that cap the usual thread pools (read when a library loads)."""
    return {v: str(n) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


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


def _loadavg() -> Optional[float]:
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):
        return None


def _cpu_busy(seconds: float = 0.5) -> Optional[float]:
    """Fraction of all cores busy over ``seconds`` while this process sleeps (Linux only).

    Other work on the machine ruins the comparison (two-thread BLAS on a 2-core machine
    slows down several-fold when one core is taken), so the header reports it.
    """

    def sample() -> Tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as f:
            # user nice system idle iowait irq softirq steal (guest time is inside user).
            vals = [int(v) for v in f.readline().split()[1:9]]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)   # idle + iowait
        return sum(vals), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    dt = total1 - total0
    return None if dt <= 0 else round(1.0 - (idle1 - idle0) / dt, 3)


def _wait_quiet(timeout_s: float, limit: float, log: Callable[[str], None]) -> None:
    """Wait until the CPU is at most ``limit`` busy over a second, or ``timeout_s`` passed."""
    deadline = time.perf_counter() + timeout_s
    while True:
        busy = _cpu_busy(1.0)
        if busy is None or busy <= limit:
            return
        if time.perf_counter() >= deadline:
            log(f"the CPU is still {busy:.0%} busy after {timeout_s:.0f} s: measuring anyway")
            return
        log(f"waiting for other processes to go quiet ({busy:.0%} busy) …")
        time.sleep(2.0)


def _import_aiva() -> Any:
    """aiva_cy as installed, or else the in-place build of this checkout."""
    try:
        import aiva_cy
    except ImportError:
        sys.path.insert(0, str(ROOT))
        import aiva_cy
    return aiva_cy


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


# --------------------------------------------------------------------------- the timed rows


def _inputs(batch: int, num_tools: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """A fixed-seed N(0, 1) batch (float32, C order) and integer labels."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 512)).astype(np.float32)
    y = rng.integers(0, num_tools, size=batch).astype(np.int64)
    return x, y


class _Peers:
    """The same model, with the same weights, in every library that is here."""

    def __init__(self, net: Any, have: Mapping[str, bool], threads: int) -> None:
        self.net = net
        sd = net.state_dict()
        self.weights = {k: np.ascontiguousarray(sd[k], dtype=np.float32) for k in peers.WEIGHT_KEYS}
        # The BioNeuron keeps the original's float64 weights and its own threshold and
        # wall-clock refractory period (it is measured as AIVA ran it), but with our weights.
        self.bio = bn.BioNeuron(seed=0)
        self.bio.fc1 = self.weights["fc1.weight"].astype(np.float64)
        self.bio.spiking1.weights = self.weights["spiking.weight"].astype(np.float64)
        self.bio.fc2 = self.weights["fc2.weight"].astype(np.float64)
        self.torch_model: Any = None
        self.torch_opt: Any = None
        self.onnx_sess: Any = None
        self.net16: Any = None
        self.torch16: Any = None         # bf16 weights, for inference
        self.torch_amp: Any = None       # (float32 model, Adam) trained under autocast
        if have["bf16"]:
            from aiva_cy import AIVANet

            self.net16 = AIVANet(seed=0, precision="bfloat16")
            self.net16.load_state_dict(sd)
        if have["torch"]:
            self.torch_model, self.torch_opt = peers.make_torch(
                self.weights, net.threshold, net.surrogate_slope, net.refractory_period)
            self.torch16, _ = peers.make_torch(self.weights, net.threshold, net.surrogate_slope,
                                               net.refractory_period, dtype="bfloat16")
            self.torch_amp = peers.make_torch(self.weights, net.threshold, net.surrogate_slope,
                                              net.refractory_period)
        if have["onnx"]:
            self.onnx_sess = peers.make_onnx_session(self.weights, net.threshold,
                                                     intra_op_threads=threads)

    def weight_bytes(self) -> Dict[str, float]:
        out = {
            "numpy": float(self.bio.fc1.nbytes + self.bio.spiking1.weights.nbytes + self.bio.fc2.nbytes),
            "aiva_cy": float(sum(np.asarray(a).nbytes for a in self.net.state_dict().values())),
        }
        if self.torch_model is not None:
            out["torch"] = float(sum(p.numel() * p.element_size() for p in self.torch_model.parameters()))
        if self.onnx_sess is not None:
            # The session holds the same float32 initializers.
            out["onnx"] = float(sum(a.nbytes for a in self.weights.values()))
        return out

    # -- one callable per peer and row; each does exactly the work being measured ----------

    def forward_cases(self, x: np.ndarray) -> Dict[str, Callable[[], Any]]:
        """Batch 1 stateful forward; x has shape (1, 512)."""
        net, x1 = self.net, np.ascontiguousarray(x[0])
        x64 = x1.astype(np.float64)   # the BioNeuron's own dtype: no conversion in its timing
        net.reset_state()
        cases: Dict[str, Callable[[], Any]] = {
            "numpy": lambda: self.bio.forward(x64),
            "aiva_cy": lambda: net.forward(x1),
        }
        if self.torch_model is not None:
            import torch

            model, xt = self.torch_model, torch.from_numpy(x1)
            # Stateful like net.forward: the refractory countdown is carried between calls.
            state: List[Any] = [None]

            def torch_forward() -> Any:
                with torch.inference_mode():
                    _, p, state[0] = model(xt, state[0])
                return p

            cases["torch"] = torch_forward
            model16, xt16 = self.torch16, torch.from_numpy(x1).to(torch.bfloat16)
            state16: List[Any] = [None]

            def torch_bf16_forward() -> Any:
                with torch.inference_mode():
                    _, p, state16[0] = model16(xt16, state16[0])
                return p

            cases["torch_bf16"] = torch_bf16_forward
        if self.onnx_sess is not None:
            sess = self.onnx_sess
            cases["onnx"] = lambda: peers.onnx_predict(sess, x1)
        floor_x = np.ascontiguousarray(x, dtype=np.float32)
        cases["floor"] = lambda: net._engine.blas_products(floor_x)
        if self.net16 is not None:
            net16 = self.net16
            net16.reset_state()
            cases["aiva_bf16"] = lambda: net16.forward(x1)
            cases.update(self._mkl_floors(floor_x))
        return cases

    def _mkl_floors(self, x: np.ndarray) -> Dict[str, Callable[[], Any]]:
        e, e16 = self.net._engine, self.net16._engine
        return {"floor_mkl": lambda: e.blas_products(x, packed=False, provider="mkl"),
                "floor_mkl_packed": lambda: e.blas_products(x, packed=True, provider="mkl"),
                "floor_bf16": lambda: e16.blas_products(x, packed=False),
                "floor_bf16_packed": lambda: e16.blas_products(x, packed=True)}

    def predict_cases(self, x: np.ndarray) -> Dict[str, Callable[[], Any]]:
        """One step from an empty state for a batch; the BioNeuron loops over rows."""
        net = self.net
        x64 = x.astype(np.float64)
        cases: Dict[str, Callable[[], Any]] = {
            "numpy": lambda: bn.forward_batch_loop(self.bio, x64),
            "aiva_cy": lambda: net.predict_proba(x),
        }
        if self.torch_model is not None:
            import torch

            model, xt = self.torch_model, torch.from_numpy(x)
            cases["torch"] = lambda: peers.torch_predict_proba(model, xt)
            model16, xt16 = self.torch16, torch.from_numpy(x).to(torch.bfloat16)
            cases["torch_bf16"] = lambda: peers.torch_predict_proba(model16, xt16)
        if self.onnx_sess is not None:
            sess = self.onnx_sess
            cases["onnx"] = lambda: peers.onnx_predict(sess, x)
        cases["floor"] = lambda: net._engine.blas_products(x)
        if self.net16 is not None:
            net16 = self.net16
            cases["aiva_bf16"] = lambda: net16.predict_proba(x)
            cases.update(self._mkl_floors(x))
        return cases

    def train_cases(self, x: np.ndarray, y: np.ndarray) -> Dict[str, Callable[[], Any]]:
        """One training step from an empty state (loss, backward, Adam)."""
        net = self.net

        def aiva_train() -> float:
            # torch's step starts from an empty state; so does this one.
            net.reset_state()
            return net.train_step(x, y)

        cases: Dict[str, Callable[[], Any]] = {"aiva_cy": aiva_train}
        if self.torch_model is not None:
            import torch

            model, opt = self.torch_model, self.torch_opt
            xt, yt = torch.from_numpy(x), torch.from_numpy(y)
            cases["torch"] = lambda: peers.torch_train_step(model, opt, xt, yt)
            amp_model, amp_opt = self.torch_amp
            cases["torch_bf16"] = lambda: peers.torch_train_step(amp_model, amp_opt, xt, yt,
                                                                 autocast_bf16=True)
        if self.net16 is not None:
            net16 = self.net16

            def aiva_bf16_train() -> float:
                net16.reset_state()
                return net16.train_step(x, y)

            cases["aiva_bf16"] = aiva_bf16_train
        return cases


# --------------------------------------------------------------------------- start-up rows

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
import bioneuron_numpy
net = bioneuron_numpy.BioNeuron()
net.forward(x)
""",
    "torch": """\
import torch
import peers
shapes = {"fc1.weight": (512, 2048), "spiking.weight": (2048, 1024), "fc2.weight": (1024, 20)}
model = peers.TorchAIVANet({k: torch.randn(s) * (2.0 / s[0]) ** 0.5 for k, s in shapes.items()},
                           0.5, 25.0, 2)
with torch.inference_mode():
    model(torch.from_numpy(x.astype(np.float32)))
""",
}
_STARTUP_EPILOGUE = """\
t1 = time.perf_counter()
print(json.dumps({"seconds": t1 - t0, "rss0": rss0, "rss_numpy": rss_np, "rss_peak": _rss()}))
"""


def measure_startup(peer_names: Sequence[str], s: Settings, threads: int, aiva_dir: Path,
                    mon: Optional[LoadMonitor] = None, budget: Optional[_RetryBudget] = None,
                    log: Callable[[str], None] = lambda m: None) -> Dict[str, Dict[str, Cell]]:
    """Start-up time (in process and whole process) and memory growth, per peer.

    The peers alternate run by run, as the timed rows do. Returns
    {"startup": {...}, "startup_process": {...}, "memory": {...}}.
    """
    env = dict(os.environ)
    env.update(_thread_env(threads))
    # The aiva_cy the parent imported (installed or in place) and the benchmark helpers.
    path = [str(aiva_dir), str(HERE)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(path)
    mon = mon or LoadMonitor()
    budget = budget or _RetryBudget(s.retry_budget_s)
    scripts = {p: _STARTUP_PRELUDE + _STARTUP_BODY[p] + _STARTUP_EPILOGUE for p in peer_names}
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

    # Byte-compile both peers' Python first, as a wheel install does: with an in-place build
    # (and PYTHONDONTWRITEBYTECODE set) every start would otherwise compile aiva_cy/net.py
    # from source, a cost no installed user pays.
    import compileall
    for folder in (aiva_dir / "aiva_cy", HERE):
        if folder.is_dir():
            compileall.compile_dir(str(folder), quiet=1, maxlevels=2)

    with tempfile.TemporaryDirectory() as cwd:   # a neutral cwd: nothing importable by accident
        for i in range(s.startup_runs):
            for p in peer_names:
                if p == "torch" and i >= s.slow_rounds:
                    continue   # a second per run, and steady: slow_rounds runs are enough
                rec, other, n_retry = _measure_clean(lambda: start(p, cwd), s, mon, budget)
                runs[p].append(rec)
                others[p].append(other)
                retried[p] += n_retry
    log("    " + ", ".join(f"{p}: {len(runs[p])} runs"
                           + (f" ({retried[p]} retried)" if retried[p] else "") for p in peer_names))

    def cell(p: str, key: Callable[[Dict[str, float]], float]) -> Cell:
        return _cell_from([key(r) for r in runs[p]], others[p], s.noise_limit, retried=retried[p])

    return {
        "startup": {p: cell(p, lambda r: r["seconds"]) for p in peer_names},
        "startup_process": {p: cell(p, lambda r: r["wall"]) for p in peer_names},
        "memory": {p: cell(p, lambda r: r["rss_peak"] - r["rss_numpy"]) for p in peer_names},
    }


# --------------------------------------------------------------------------- targets


def _targets(row: str, cells: Mapping[str, Cell]) -> List[Target]:
    """The SPEC section 6 targets of one row, checked against its cells."""

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

    def bf16_vs(peer: str, k: float, text: str, faster: bool) -> Target:
        # aiva_cy bf16 against a peer: "faster" = at least k times faster (peer / bf16 >= k),
        # else bf16 time <= k * peer time.
        a, c = cells.get("aiva_bf16"), cells.get(peer)
        if a is None or c is None or a.value <= 0 or c.value <= 0:
            return Target(text, None, None)
        q = c.value / a.value if faster else a.value / c.value
        return Target(text, q, q >= k if faster else q <= k)

    if row == "forward_b1":
        return [at_most("floor", 1.15, "≤ 1.15× floor"), at_most("onnx", 1.0, "≤ ONNX"),
                bf16_vs("numpy", 3.5, "bf16 ≥ 3.5× numpy", True),
                bf16_vs("torch", 3.0, "bf16 ≥ 3× torch f32", True)]
    if row == "predict_b256":
        return [at_most("onnx", 1.0, "≤ ONNX"),
                bf16_vs("torch_bf16", 0.75, "bf16 ≤ 0.75× torch bf16", False),
                bf16_vs("onnx", 0.35, "bf16 ≤ 0.35× ONNX f32", False)]
    if row == "train_b64":
        return [at_most("torch", 0.6, "≤ 0.6× torch")]
    if row == "train_b256":
        return [at_most("torch", 0.85, "≤ 0.85× torch"),
                bf16_vs("torch_bf16", 0.7, "bf16 ≤ 0.7× torch autocast", False)]
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


# --------------------------------------------------------------------------- formatting


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
    """The SPEC section 6 table of a result from :func:`run`."""
    cols = [p for p in PEER_ORDER if p in result["columns"]]
    header = ["work"] + [PEER_LABELS[p] for p in cols] + ["SPEC target (aiva_cy vs peer)"]
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
        f"threads: {meta['threads']} for every library; mode: {meta['mode']}; {meta['date']}",
        f"other load: CPU busy {_pct(meta.get('cpu_busy_before'))} before the run, "
        f"{_pct(meta.get('cpu_busy_after'))} after; load average (1 min) "
        f"{_num(meta.get('load_before'))} before, {_num(meta.get('load_after'))} after",
    ]
    return "\n".join(lines)


def render_footer(result: Mapping[str, Any]) -> str:
    """How to read the table, and how much other processes disturbed the run."""
    meta, st = result["meta"], result["settings"]
    lines = ["Cells: median time per call (peer time / aiva_cy time: > 1 means aiva_cy is "
             "faster or smaller); SPEC targets: ✓ met, ✗ missed, measured quantity in brackets."]
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
    est = floor.get("estimates") or {}
    if est:
        body = [[ROW_LABELS[r], f"{e['flops'] / 1e9:.2f} GFLOP", fmt_seconds(e["floor_s"]),
                 fmt_seconds(e["aiva_s"]) if e["aiva_s"] else "—",
                 f"{e['aiva_s'] / e['floor_s']:.2f}×" if e["aiva_s"] else "—"]
                for r, e in est.items()]
        lines.append("")
        lines.append(_markdown_table(
            ["work", "FLOPs (2·B·3,166,208; train 2·B·8,450,048)", "floor = FLOPs / rate", "aiva_cy",
             "aiva_cy / floor"], body))
    if floor.get("bf16_gflops") is not None:
        lines.append("")
        lines.append(f"MKL bf16 rate, from its packed floor at batch 256: "
                     f"{floor['bf16_gflops']:.1f} GFLOP/s")
    if floor.get("b1_bf16_gbytes_s") is not None:
        lines.append(f"batch 1 in bf16 moves {floor['b1_bf16_bytes'] / 1e6:.1f} MB of weights: the "
                     f"bf16 floor ({fmt_seconds(floor['b1_bf16_seconds'])}) reads them at "
                     f"{floor['b1_bf16_gbytes_s']:.1f} GB/s")
    est16 = floor.get("bf16_estimates") or {}
    if est16:
        body = [[ROW_LABELS[r], f"{e['flops'] / 1e9:.2f} GFLOP", fmt_seconds(e["floor_s"]),
                 fmt_seconds(e["aiva_s"]) if e["aiva_s"] else "—",
                 f"{e['aiva_s'] / e['floor_s']:.2f}×" if e["aiva_s"] else "—"]
                for r, e in est16.items()]
        lines.append("")
        lines.append(_markdown_table(
            ["work (bf16)", "FLOPs", "bf16 floor = FLOPs / rate", "aiva_cy bf16",
             "aiva_cy bf16 / floor"], body))
    return "\n".join(lines)


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


# --------------------------------------------------------------------------- run


def _floor_estimates(rows: Mapping[str, Dict[str, Cell]]) -> Dict[str, Any]:
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
    b16 = rows.get("forward_b1", {}).get("floor_bf16")
    if b16 is not None:
        out.update(b1_bf16_bytes=2 * N_PARAMS, b1_bf16_seconds=b16.value,
                   b1_bf16_gbytes_s=2 * N_PARAMS / b16.value / 1e9)
    return out


def run(quick: bool = False, *, threads: Optional[int] = None, rounds: Optional[int] = None,
        rows: Optional[Sequence[str]] = None, startup_runs: Optional[int] = None,
        settings: Optional[Settings] = None, chart: bool = True, write: bool = True,
        out_dir: Optional[Path] = None, json_path: Optional[Path] = None,
        verbose: bool = True, seed: int = 0, wait_quiet_s: float = 0.0) -> Dict[str, Any]:
    """Run the benchmark and return its result (also written as JSON unless ``write=False``).

    Args:
        quick: few rounds, short blocks, one start-up run per peer (checks it works).
        threads: threads for every library (default: os.cpu_count()).
        rounds / startup_runs / settings: override the measuring effort.
        rows: the subset of row ids to run (default: all, see ``ROW_LABELS``).
        chart: write ``latest.png`` where matplotlib is installed.
        write / out_dir / json_path: where results go (default ``benchmarks/results``).
        wait_quiet_s: first wait up to this long for the other processes to go quiet.

    Returns a dict with "meta", "settings", "columns", "rows" (row id -> label,
    cells {peer: {value, samples, calls_per_block, ratio, note}}, targets),
    "floor" and "table" (the rendered text).
    """
    s = settings or (Settings.quick() if quick else Settings.full())
    if rounds is not None:
        s.rounds = max(1, int(rounds))
        s.slow_rounds = min(s.slow_rounds, s.rounds)
    if startup_runs is not None:
        s.startup_runs = max(1, int(startup_runs))
    n_threads = int(threads) if threads else (os.cpu_count() or 1)
    wanted = list(ALL_ROWS if rows is None else rows)
    unknown = [r for r in wanted if r not in ROW_LABELS]
    if unknown:
        raise ValueError(f"rows: unknown row ids {unknown}, expected some of {list(ROW_LABELS)}")
    log: Callable[[str], None] = (lambda m: print(m, file=sys.stderr, flush=True)) if verbose else (lambda m: None)

    # Env vars only help for libraries not loaded yet (threadpoolctl does the rest below).
    for k, v in _thread_env(n_threads).items():
        os.environ.setdefault(k, v)
    aiva_cy = _import_aiva()
    avail = peers.available_peers()
    have = {"torch": avail["torch"], "onnx": avail["onnxruntime"],
            "bf16": aiva_cy.blas_info().get("bfloat16") is not None}
    if wait_quiet_s > 0:
        _wait_quiet(wait_quiet_s, s.noise_limit, log)
    load_before = _loadavg()
    busy_before = _cpu_busy()

    from aiva_cy import AIVANet

    net = AIVANet(seed=seed)
    if net.num_parameters != N_PARAMS:   # the floor notes assume the default sizes
        raise RuntimeError(f"expected the default net ({N_PARAMS} parameters), got {net.num_parameters}")
    pe = _Peers(net, have, n_threads)
    _handle, pools = _limit_threads(n_threads, have["torch"])
    meta = _machine_info(aiva_cy, have, n_threads)
    meta.update(mode="quick" if quick else "full", thread_pools=pools, load_before=load_before,
                cpu_busy_before=busy_before)
    if busy_before is not None and busy_before > 0.1:
        log(f"WARNING: {busy_before:.0%} of the CPU was busy with other work before the run: "
            "the numbers below are not representative")
    log(render_header({**meta, "load_after": None, "cpu_busy_after": None}))

    results: Dict[str, Dict[str, Cell]] = {}
    mon, budget = LoadMonitor(), _RetryBudget(s.retry_budget_s)
    t_start = time.perf_counter()
    for row in wanted:
        if row not in TIMED_ROWS:
            continue
        batch = int(row.split("_b")[1])
        x, y = _inputs(batch, net.num_tools, seed + batch)
        log(f"  {ROW_LABELS[row]} …")
        if row == "forward_b1":
            cases = pe.forward_cases(x)
        elif row.startswith("predict"):
            cases = pe.predict_cases(x)
        else:
            cases = pe.train_cases(x, y)
        results[row] = measure_interleaved(cases, s, mon, budget, log)
        net.reset_state()

    if any(r in wanted for r in STARTUP_ROWS):
        names = [p for p in STARTUP_PEERS if p != "torch" or have["torch"]]
        log("  start-up subprocesses …")
        aiva_dir = Path(aiva_cy.__file__).resolve().parent.parent
        for row, cells in measure_startup(names, s, n_threads, aiva_dir, mon, budget, log).items():
            if row in wanted:
                results[row] = cells
    if "weights" in wanted:
        results["weights"] = {p: Cell(value=b) for p, b in pe.weight_bytes().items()}
    elapsed = time.perf_counter() - t_start

    # Ratios to aiva_cy (peer / aiva_cy) and targets, in table order.
    out_rows: Dict[str, Any] = {}
    for row in ALL_ROWS:
        if row not in results:
            continue
        cells = results[row]
        base = cells.get("aiva_cy")
        for p, c in cells.items():
            if base is not None and base.value > 0:
                c.ratio = c.value / base.value
        out_rows[row] = {
            "label": ROW_LABELS[row],
            "unit": "bytes" if row in ("memory", "weights") else "seconds",
            "cells": {p: asdict(cells[p]) for p in PEER_ORDER if p in cells},
            "targets": [asdict(t) for t in _targets(row, cells)],
        }
    columns = [p for p in PEER_ORDER
               if any(p in cells for cells in results.values())
               or p in ("numpy", "aiva_cy", "floor")
               or (p == "torch" and have["torch"]) or (p == "onnx" and have["onnx"])]
    loads = [o for cells in results.values() for c in cells.values() for o in c.other_load
             if o is not None]
    meta.update(load_after=_loadavg(), cpu_busy_after=_cpu_busy(), elapsed_s=round(elapsed, 1),
                other_load_median=round(statistics.median(loads), 3) if loads else None,
                samples=len(loads),
                noisy_samples=sum(o > s.noise_limit for o in loads),
                retried_blocks=budget.retried)
    result: Dict[str, Any] = {
        "meta": meta,
        "settings": asdict(s),
        "columns": columns,
        "rows": out_rows,
        "floor": _floor_estimates(results),
    }
    result["table"] = render_table(result)
    result["floor_text"] = render_floor_notes(result["floor"])
    if verbose:
        print(render_header(meta))
        print()
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
        text = json.dumps(result, indent=1, ensure_ascii=False, default=str)
        paths = [dest / f"compare-{stamp}.json", dest / "latest.json"]
        if json_path is not None:
            paths.append(Path(json_path))
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        log(f"wrote {', '.join(str(path) for path in paths)}")
        if chart:
            png = write_chart(result, dest / "latest.png")
            log(f"wrote {png}" if png else "matplotlib not installed: no chart")
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="aiva_cy vs numpy BioNeuron, PyTorch, ONNX Runtime "
                                             "and the raw BLAS floor (SPEC section 6).")
    ap.add_argument("--quick", action="store_true", help="a smoke run: few rounds, short blocks")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for every library (default: all cores)")
    ap.add_argument("--json", type=Path, default=None, help="also write the result JSON here")
    ap.add_argument("--no-chart", action="store_true", help="do not write latest.png")
    ap.add_argument("--rounds", type=int, default=None, help="override the rounds per timed row")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                    help="first wait up to SECONDS for other processes to leave the CPU")
    ap.add_argument("--rows", default=None,
                    help=f"comma-separated subset of rows: {','.join(ROW_LABELS)}")
    args = ap.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    # µ, × and ✓ in the table must not crash a terminal that is not UTF-8.
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="replace")
    rows = [r.strip() for r in args.rows.split(",") if r.strip()] if args.rows else None
    try:
        run(args.quick, threads=args.threads, rounds=args.rounds, rows=rows,
            chart=not args.no_chart, json_path=args.json, wait_quiet_s=args.wait_quiet)
    except ValueError as e:
        ap.error(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
