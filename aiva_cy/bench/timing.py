"""The timing harness: interleaved rounds, medians, and checks for other processes.

On a 2-core machine a library's worker threads keep spinning after a call (OpenBLAS for
about 0.1 s, PyTorch's OpenMP pool a few ms) and other processes come and go; both would
be measured as the next peer's time. So every block starts after a pause, the peers are
interleaved round by round with a rotating order, a block during which other processes
took more than ``Settings.noise_limit`` of the CPU is measured again, and a cell whose
median could not be taken over clean samples is marked with :data:`NOISY_MARK`.
"""

from __future__ import annotations

import gc
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, TypeVar

T = TypeVar("T")


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
    # scheduler spread them over the cores) is not the per-call cost being measured. At
    # least rewarm_calls, and enough of them to last rewarm_s: on the 2-core AMD EPYC VM,
    # after a 0.12 s pause, every peer ran its first call 3.5-7x slower, calls 3-10 1.5x
    # and calls 10-30 1.1x, a slowdown that lasts some 2-5 ms whatever the call (aiva_cy
    # int8 at batch 1: 390, 129, 66, 49 us against 44 in a loop; float32: 677, 363, 163,
    # 102 against 97). Three calls left the short calls measured mostly inside it.
    rewarm_calls: int = 3
    rewarm_s: float = 0.005
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
                   startup_runs=1, retries=0, retry_budget_s=0.0, rewarm_s=0.001)

    @classmethod
    def short(cls) -> "Settings":
        """The main job's short table: a few rounds, each block measured again once if other
        processes disturbed it (at most 5 s of that per run). About 10 s for three rows."""
        return cls(rounds=5, slow_rounds=1, block_s=0.02, max_calls=50, warmup=2,
                   startup_runs=1, retries=1, retry_budget_s=5.0)

    def at_least_full(self) -> bool:
        """Whether this measures at least as hard as :meth:`full`: the runs whose numbers
        may be checked against the targets."""
        full = Settings.full()
        return (self.rounds >= full.rounds and self.slow_rounds >= full.slow_rounds
                and self.block_s >= full.block_s and self.warmup >= full.warmup
                and self.startup_runs >= full.startup_runs and self.retries >= full.retries
                and self.rewarm_calls >= full.rewarm_calls and self.rewarm_s >= full.rewarm_s)


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


def cell_from(samples: Sequence[float], others: Sequence[Optional[float]], limit: float,
               **extra: Any) -> Cell:
    """Median of the clean samples if they are at least half, else of all (marked noisy)."""
    clean = [t for t, o in zip(samples, others) if o is None or o <= limit]
    noisy = 2 * len(clean) < len(samples)
    value = statistics.median(samples if noisy else clean)
    return Cell(value=value, samples=list(samples), other_load=list(others),
                note=NOISY_MARK if noisy else "", **extra)


def timed_block(fn: Callable[[], Any], k: int) -> float:
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
class RetryBudget:
    """Seconds the whole run may still spend measuring blocks again."""

    left_s: float
    retried: int = 0


def measure_clean(measure: Callable[[], T], s: Settings, mon: LoadMonitor,
                   budget: RetryBudget) -> Tuple[T, Optional[float], int]:
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
                        mon: Optional[LoadMonitor] = None, budget: Optional[RetryBudget] = None,
                        log: Callable[[str], None] = lambda m: None) -> Dict[str, Cell]:
    """Time every case round by round; returns the median per-call seconds of each.

    ``log`` gets one line of the harness's own details (calls per block, samples, blocks
    measured again): for ``--verbose``, not for a reader of the table.

    Calibration: the fastest of ``s.warmup`` single warm-up calls (not counting the
    first) sets k = block_s / t (1..max_calls). Then ``s.rounds`` rounds, each timing
    one block per case in a rotated order, with a pause before every block; a block
    disturbed by other processes is measured again (see :class:`Settings`).
    """
    mon = mon or LoadMonitor()
    budget = budget or RetryBudget(s.retry_budget_s)
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
            times.append(timed_block(fn, 1))
            if len(times) >= 2 and times[-1] > s.slow_call_s:
                break
        one = min(times[1:])
        ks[name] = max(1, min(s.max_calls, int(round(s.block_s / max(one, 1e-9)))))
        rewarm[name] = (max(s.rewarm_calls, int(math.ceil(s.rewarm_s / max(one, 1e-9))))
                        if one < s.rewarm_below_s else 0)
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
                return timed_block(fn, k)

            value, other, n_retry = measure_clean(block, s, mon, budget)
            samples[name].append(value)
            others[name].append(other)
            retried[name] += n_retry
    log("    " + ", ".join(f"{n}: k={ks[n]} x {len(samples[n])}"
                           + (f" ({retried[n]} retried)" if retried[n] else "") for n in names))
    return {n: cell_from(samples[n], others[n], s.noise_limit, calls_per_block=ks[n],
                          retried=retried[n])
            for n in names}


# --------------------------------------------------------------------------- other load


def loadavg() -> Optional[float]:
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):
        return None


def cpu_busy(seconds: float = 0.5) -> Optional[float]:
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


def wait_quiet(timeout_s: float, limit: float, log: Callable[[str], None]) -> None:
    """Wait until the CPU is at most ``limit`` busy over a second, or ``timeout_s`` passed."""
    deadline = time.perf_counter() + timeout_s
    while True:
        busy = cpu_busy(1.0)
        if busy is None or busy <= limit:
            return
        if time.perf_counter() >= deadline:
            log(f"the CPU is still {busy:.0%} busy after {timeout_s:.0f} s: measuring anyway")
            return
        log(f"waiting for other processes to go quiet ({busy:.0%} busy) …")
        time.sleep(2.0)


# --------------------------------------------------------------------------- thread control


def limit_threads(n: int, have_torch: bool) -> Tuple[Any, List[Dict[str, Any]]]:
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


def thread_env(n: int) -> Dict[str, str]:
    """Environment variables that cap the usual thread pools (read when a library loads)."""
    return {v: str(n) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


# --------------------------------------------------------------------------- verdicts

#: Above this share of the CPU busy with other work before a run, the run is disturbed.
BUSY_BEFORE_LIMIT = 0.10
#: Above this share of samples taken while other processes were busy, the run is disturbed
#: even where every cell kept a clean median.
NOISY_SAMPLES_LIMIT = 0.25


def disturbances(cells: Iterable[Cell], busy_before: Optional[float], noise_limit: float) -> List[str]:
    """Why a run's numbers are not representative of this machine (empty: they are).

    A disturbed run still prints its numbers, marked, but judges no target and replaces
    no ``latest.*`` result: on 2 cores one busy neighbour slows two-thread BLAS several-fold.
    """
    why: List[str] = []
    if busy_before is not None and busy_before > BUSY_BEFORE_LIMIT:
        why.append(f"the CPU was {busy_before:.0%} busy with other work when the run began")
    cells = list(cells)
    noisy_cells = sum(c.note == NOISY_MARK for c in cells)
    if noisy_cells:
        why.append(f"{noisy_cells} cell{'s' if noisy_cells > 1 else ''} ({NOISY_MARK}) had to take "
                   f"the median over samples disturbed by other processes")
    loads = [o for c in cells for o in c.other_load if o is not None]
    noisy = sum(o > noise_limit for o in loads)
    if loads and noisy > NOISY_SAMPLES_LIMIT * len(loads):
        why.append(f"{noisy} of {len(loads)} samples were taken while other processes used "
                   f"over {noise_limit:.0%} of the CPU")
    return why
