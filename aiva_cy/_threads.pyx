# cython: language_level=3
"""How many threads the BLAS products use: :func:`set_num_threads`, :func:`num_threads`,
:func:`threads`, and the budget concurrent engine calls share (src_c/aiva_threads.c).

The engine calls :func:`threads_enter` and :func:`threads_leave` around each call's
products.  While calls overlap, each runs on at least ``m = min(min_per_call, budget)``
threads (``min_per_call`` 2 unless set), so at most ``budget // m`` calls are in flight;
later callers sleep (without the GIL) in arrival order until a place frees.  While ``n``
calls are in flight or waiting, OpenBLAS runs ``budget // min(n, budget // m)`` threads,
``n`` held at its peak until the calls have been apart for 50 ms: the OpenBLAS builds in NumPy's and SciPy's wheels and in scipy-openblas32
are pthreads builds with one process-wide count (their ``openblas_set_num_threads_local``
sets that same count), so the budget is shared out rather than set per thread.  MKL gets
the share as the calling thread's own count (``mkl_set_num_threads_local``).

The libraries are found from the BLAS loader's record (``_blas_info``, ``_mkl_info``) on
first use, not at import: this module is imported by the engine module before its loader
has run.
"""
import os
import sys

from aiva_cy._checks import int_arg

cdef extern from "aiva_threads.h" nogil:
    int AIVA_THREADS_OPENBLAS
    int AIVA_THREADS_MKL
    int aiva_threads_attach(const char *path, int kind)
    int aiva_threads_set(int n)
    int aiva_threads_get()
    int aiva_threads_blas(int kind)
    int aiva_threads_in_flight()
    int aiva_threads_waiting()
    double aiva_threads_hold(double seconds)
    int aiva_threads_min_per_call(int n)
    int aiva_threads_enter(int mkl)
    void aiva_threads_leave(int mkl)

#: The most threads set_num_threads takes (OpenBLAS caps its count lower, at its build's
#: MAX_THREADS, 64 in NumPy's wheels; num_threads then reports the cap).
MAX_THREADS = 1024

cdef bint _main_tried = False    # the float32 BLAS has been looked at
cdef bint _mkl_tried = False     # MKL (opened beside the float32 BLAS) has been looked at
_controlled = set()              # "openblas" and/or "mkl": whose counts are set here
_fallback = [os.cpu_count() or 1]   # the budget kept where no library could be controlled


def _loader_records():
    """The BLAS loader's (float32 record, MKL record): dicts with "provider" and "path"."""
    for name in ("aiva_cy._blas", "aiva_cy._core"):
        module = sys.modules.get(name)
        if module is None:
            try:
                __import__(name)
            except ImportError:
                continue
            module = sys.modules[name]
        if hasattr(module, "_blas_info"):
            return dict(module._blas_info), dict(getattr(module, "_mkl_info", {}))
    return {}, {}


cdef int _attach(bint mkl) except -1:
    global _main_tried, _mkl_tried
    main, mkl_record = _loader_records()
    if not _main_tried and main.get("path"):
        _main_tried = True
        kind = AIVA_THREADS_MKL if main.get("provider") == "mkl" else AIVA_THREADS_OPENBLAS
        if aiva_threads_attach(os.fsencode(main["path"]), kind) == 0:
            _controlled.add("mkl" if kind == AIVA_THREADS_MKL else "openblas")
    if mkl and not _mkl_tried and mkl_record.get("path"):
        _mkl_tried = True
        if aiva_threads_attach(os.fsencode(mkl_record["path"]), AIVA_THREADS_MKL) == 0:
            _controlled.add("mkl")
    return 0


cdef int threads_enter(bint mkl) noexcept nogil:
    """Wait for a place among the calls in flight; returns the call's share of the budget.
    Call it without the GIL: it may sleep until another call leaves."""
    if not _main_tried or (mkl and not _mkl_tried):
        with gil:
            try:
                _attach(mkl)
            except Exception:   # no control is no reason to fail the call
                pass
    return aiva_threads_enter(mkl)


cdef void threads_leave(bint mkl) noexcept nogil:
    aiva_threads_leave(mkl)


def _ensure_attached():
    if not _main_tried:
        _attach(False)


def set_num_threads(n, min_per_call=None):
    """Set how many threads aiva_cy's BLAS products may use in all, shared by the calls in
    flight (see :func:`num_threads`).  ``n`` is an int in [1, 1024].

    ``min_per_call`` (an int in [1, 1024], or None to keep it; 2 unless set): the fewest
    threads a call runs on while calls overlap.  At most ``n // min(min_per_call, n)``
    calls run their products at once; later callers wait, asleep and without the GIL, in
    arrival order.  1 lets ``n`` overlapping calls run side by side on one thread each
    (worth it where products are too small to gain from a second thread).

    It sets the BLAS library's own count now: on Linux that is the OpenBLAS inside NumPy's
    wheel, so NumPy's matrix products follow it too, as they do ``threadpoolctl``'s
    limits.  Process-wide, not per thread."""
    n = int_arg("n", n, 1, MAX_THREADS)
    if min_per_call is not None:
        aiva_threads_min_per_call(int_arg("min_per_call", min_per_call, 1, MAX_THREADS))
    _ensure_attached()
    if not _controlled:
        _fallback[0] = n
        return
    aiva_threads_set(n)


def num_threads():
    """How many threads aiva_cy's BLAS products may use in all: the last
    :func:`set_num_threads`, or a count set in the library since (``threadpoolctl``, or
    NumPy's user), or the library's own default (``OPENBLAS_NUM_THREADS``, else the cores).

    A call that runs alone gets all of them; while calls overlap, they share them out (see
    :func:`set_num_threads`)."""
    _ensure_attached()
    if not _controlled:
        return _fallback[0]
    return aiva_threads_get()


class threads:
    """``with aiva_cy.threads(n): ...``: :func:`set_num_threads` for the block (with its
    ``min_per_call`` where given), and back to the settings before on the way out.
    Process-wide, like ``threadpoolctl``'s ``threadpool_limits``: other threads' calls
    during the block get ``n`` too."""

    def __init__(self, n, min_per_call=None):
        self.n = int_arg("n", n, 1, MAX_THREADS)
        self.min_per_call = (None if min_per_call is None else
                             int_arg("min_per_call", min_per_call, 1, MAX_THREADS))
        self._before = None

    def __enter__(self):
        self._before = (num_threads(), _min_per_call())
        set_num_threads(self.n, self.min_per_call)
        return self

    def __exit__(self, *exc_info):
        set_num_threads(*self._before)
        return False


# -- for the tests: the budget's bookkeeping, without timing anything ----------------------
def _controlled_libraries():
    """Which libraries' counts are set here: a frozenset of "openblas" and "mkl" (MKL once
    it is open: blas_info() or a bfloat16 net opens it)."""
    _attach(True)
    return frozenset(_controlled)


def _enter(bint mkl=False):
    """What an engine call does on entry; returns its share.  Pair with _leave, on the same
    thread.  Waits, without the GIL, while the budget's places are taken."""
    cdef int share
    if mkl:
        _attach(True)
    else:
        _ensure_attached()
    with nogil:
        share = threads_enter(mkl)
    return share


def _leave(bint mkl=False):
    threads_leave(mkl)


def _in_flight():
    """Calls admitted (running their products)."""
    return aiva_threads_in_flight()


def _min_per_call():
    """The fewest threads an overlapping call runs on (set_num_threads's min_per_call)."""
    return aiva_threads_min_per_call(0)


def _waiting():
    """Calls waiting for a place."""
    return aiva_threads_waiting()


def _hold(seconds=None):
    """How long a burst of overlapping calls keeps its shares after it ends (seconds);
    with ``seconds``, set it and return the value before (0: the share follows the calls
    in flight at each entry, which makes shares predictable in tests)."""
    return aiva_threads_hold(-1.0 if seconds is None else float(seconds))


def _blas_threads(str kind="openblas"):
    """The library's own count now (MKL: the calling thread's), or None where it has no
    count attached here."""
    if kind not in ("openblas", "mkl"):
        raise ValueError(f"kind must be 'openblas' or 'mkl', got {kind!r}")
    n = aiva_threads_blas(AIVA_THREADS_MKL if kind == "mkl" else AIVA_THREADS_OPENBLAS)
    return None if n < 0 else n
