"""Dynamic batching in one process: many callers' single rows, one product.

One ``predict_proba`` call of 256 rows costs about what 64 single-row calls do (18 against
70 us a row on the 2-core development machine): the weights are read once for the whole
batch instead of once a row.  A :class:`Batcher` collects the rows that callers (threads,
or asyncio tasks) hand it, and one background thread runs them as one call.
"""
from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Tuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from aiva_cy._checks import as_float32, float_arg, int_arg, numeric_array
from aiva_cy._model import decision_names

_allocate_lock = threading.Lock


class _Request:
    """One caller's row and where its answer goes: a lock the blocking caller waits on, or
    an asyncio future (resolved in its own loop's thread).  ``next``: the lock of the
    blocking caller this one wakes once it is awake itself (see _deliver)."""

    __slots__ = ("row", "arrived", "lock", "future", "loop", "result", "error", "next")

    def __init__(self, row: np.ndarray) -> None:
        self.row = row
        self.arrived = time.monotonic()
        self.lock: Optional[Any] = None
        self.future: Optional["asyncio.Future[Any]"] = None
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.result: Optional[np.ndarray] = None
        self.error: Optional[BaseException] = None
        self.next: Optional[Any] = None


class _State:
    """What the worker thread shares with the callers.  The worker holds this, never the
    Batcher, so a Batcher dropped without close() is collected, and its finalizer stops
    the thread.

    Plain locks, not a threading.Condition: a caller's hand-in is on every request's path,
    and Condition.notify is Python code (about 2 us a call against a fraction of that for
    a lock's release)."""

    def __init__(self, net: Any, max_batch: int, max_delay: float) -> None:
        self.net = net
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.queue: Deque[_Request] = deque()
        self.mutex = threading.Lock()        # guards everything below
        self.closed = False
        # The worker sleeps on `wake` (held, so that acquiring it blocks); a caller releases
        # it once `want` rows wait.  It is held whenever `sleeping` is True.
        self.wake = threading.Lock()
        self.wake.acquire()
        self.sleeping = False
        self.want = 1
        self.thread = threading.Thread(target=_work, args=(self,), name="aiva_cy.Batcher",
                                       daemon=True)

    def _wake_worker(self) -> None:
        # Under self.mutex.
        if self.sleeping:
            self.sleeping = False
            self.wake.release()

    def submit(self, req: _Request) -> None:
        with self.mutex:
            if self.closed:
                raise RuntimeError("this Batcher is closed: it takes no more calls")
            self.queue.append(req)
            if len(self.queue) >= self.want:
                self._wake_worker()

    def close(self) -> None:
        with self.mutex:
            self.closed = True
            self._wake_worker()

    def sleep(self, timeout: Optional[float]) -> None:
        """The worker: wait (without self.mutex) until a caller wakes it or timeout."""
        if self.wake.acquire(True, -1 if timeout is None else timeout):
            return
        with self.mutex:
            if self.sleeping:
                self.sleeping = False
            else:   # a caller released it as the wait timed out: hold it again
                self.wake.acquire(False)


def _take(state: _State, expected: int, free_since: float) -> List[_Request]:
    """The next batch.  Empty once closed and drained.

    A batch starts as soon as max_batch rows wait, or as many as are expected: the rows of
    the last batch (their callers are likely back soon) plus those that arrived while it
    ran; or once the oldest row has waited max_delay, counted from the end of the last
    batch where that is later (a row that arrived during a batch could not have run
    sooner, and counting its wait from its arrival would start the next batch with only
    the rows that came during the last one, the crowd then running as two half batches,
    each a product of half the rows, forever).  A lone caller waits for nobody.
    ``expected`` is counted by _work before the last batch's callers are answered: once
    answered, some may be back already, and counting them twice would wait out max_delay
    for rows that never come."""
    q = state.queue
    while True:
        with state.mutex:
            n = len(q)
            if n >= expected or (state.closed and n) or n >= state.max_batch:
                break
            if state.closed:
                return []
            if n == 0:
                state.want, timeout = 1, None
            else:
                left = max(q[0].arrived, free_since) + state.max_delay - time.monotonic()
                if left <= 0:
                    break
                state.want, timeout = expected, left
            state.sleeping = True
        state.sleep(timeout)
    with state.mutex:
        n = min(len(q), state.max_batch)
        batch = [q.popleft() for _ in range(n)]
        state.want = 1
    return batch


def _work(state: _State) -> None:
    expected, free_since = 1, time.monotonic()
    while True:
        batch = _take(state, expected, free_since)
        if not batch:
            return
        try:
            _run(state.net, batch)
        except BaseException as exc:   # a bug here must not leave callers waiting forever
            for req in batch:
                if req.result is None and req.error is None:
                    req.error = RuntimeError(f"the Batcher's worker failed: {exc!r}")
        with state.mutex:   # before the answers go out (see _take)
            expected = min(len(batch) + len(state.queue), state.max_batch)
        free_since = time.monotonic()
        _deliver(batch)


def _run(net: Any, batch: List[_Request]) -> None:
    """Fill each request's result or error.  Rows that are not finite fail alone, with the
    error the net gives them; the others run as one call."""
    x = np.stack([req.row for req in batch])
    good = np.isfinite(x).all(axis=1)
    if not good.all():
        for req in (r for r, ok in zip(batch, good) if not ok):
            _run_alone(net, req)
        batch = [r for r, ok in zip(batch, good) if ok]
        if not batch:
            return
        x = x[good]
    try:
        probs = net.predict_proba(x)
    except Exception:
        # Whatever failed the batch, each caller gets its own answer or its own error.
        for req in batch:
            _run_alone(net, req)
        return
    for req, p in zip(batch, probs):
        req.result = p


def _run_alone(net: Any, req: _Request) -> None:
    try:
        req.result = net.predict_proba(req.row)
    except Exception as exc:
        req.error = exc


def _deliver(batch: List[_Request]) -> None:
    """Answer a batch.  Blocking callers are woken one by one down a chain: the worker wakes
    the first, and each caller wakes the next as soon as it is awake itself.  Waking them
    all at once made every one of them queue for the GIL, and each hand-off of the GIL to
    a sleeping thread costs a wake-up: on the 2-core machine 64 threads came back 15-20%
    sooner down the chain (a fake net, no products)."""
    by_loop: Dict[asyncio.AbstractEventLoop, List[_Request]] = {}
    first: Optional[_Request] = None
    last: Optional[_Request] = None
    for req in batch:
        if req.loop is None:
            if last is None:
                first = req
            else:
                last.next = req.lock
            last = req
        else:
            by_loop.setdefault(req.loop, []).append(req)
    if first is not None:
        assert first.lock is not None
        first.lock.release()
    # One wake-up per loop and batch, not one per row.
    for loop, reqs in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve, reqs)
        except RuntimeError:   # that loop is closed: nobody is waiting there any more
            pass


def _acquire_uninterrupted(lock: Any) -> None:
    while True:
        try:
            lock.acquire()
            return
        except BaseException:   # another interrupt: keep waiting, the first is re-raised
            continue


def _resolve(reqs: List[_Request]) -> None:
    for req in reqs:
        fut = req.future
        if fut is None or fut.done():   # cancelled by its caller
            continue
        if req.error is not None:
            fut.set_exception(req.error)
        else:
            fut.set_result(req.result)


def _confidence_level(confidence: Any) -> float:
    level = float_arg("confidence", confidence, 0.0)
    if level > 1.0:
        raise ValueError(f"confidence must be in [0, 1], got {confidence!r}")
    return level


def _decision(probs: np.ndarray, level: float, names: Any = None) -> Tuple[Any, float, bool]:
    """(tool, top probability, whether it reaches level); tool is the name from ``names``
    (the net's tool_names) where given, else the index."""
    tool = int(probs.argmax())
    top = float(probs[tool])
    return (tool if names is None else names[tool]), top, top >= level


def _names_for(net: Any, names: Any) -> Any:
    """The net's tool_names where ``names`` asks for them, checked as ``net.decide`` does."""
    return decision_names(getattr(net, "tool_names", None), names)


class Batcher:
    """Merge single-row calls from many threads or asyncio tasks into one
    ``net.predict_proba`` call.

    ``b.predict_proba(x)``, ``b.predict(x)`` and ``b.decide(x)`` block the calling thread;
    ``await b.apredict_proba(x)``, ``await b.apredict(x)`` and ``await b.adecide(x)`` suspend
    the calling task.  Each takes one row, ``x`` of shape ``(net.input_size,)``, and answers
    like the net's method of the same name on that row.  The answer equals the single-row
    call within float32 rounding, not bit for bit: a row in a batch goes through other BLAS
    kernels than a row alone.

    A batch runs as soon as ``max_batch`` rows wait, or as many as are expected (the rows
    of the last batch, whose callers are likely back soon, plus those that arrived while it
    ran), or the oldest row has waited ``max_delay`` seconds, counted from the end of the
    last batch where that is later.  So a lone caller waits for nobody, and a steady crowd
    of callers fills each batch without waiting out ``max_delay``.

    Stateless calls only: each row is one step from an empty state, like
    ``net.predict_proba``.  Stateful streams (``net.forward``) keep their own refractory
    state and batch size, and stay on the net.

    Each batch is one ``net.predict_proba`` call, so weights loaded with
    ``net.load_state_dict`` are used from the next batch on, and a batch never mixes two
    sets of weights.  A row is checked (shape, numbers) when it is handed in, and a row
    that is not finite fails only its own caller, with the ValueError the net gives it.
    A row is read when its batch runs: do not change it before the call returns.

    ``close()`` (or leaving a ``with`` block) runs every row already handed in, then stops
    the worker thread; calls after it raise RuntimeError.
    """

    def __init__(self, net: Any, max_batch: int = 256, max_delay: float = 0.002) -> None:
        if not callable(getattr(net, "predict_proba", None)) or not hasattr(net, "input_size"):
            raise TypeError(f"net must be an AIVANet (something with predict_proba and "
                            f"input_size), got {type(net).__name__}")
        max_batch = int_arg("max_batch", max_batch, 1)
        max_delay = float_arg("max_delay", max_delay, 0.0)
        if max_delay > 60.0:
            raise ValueError(f"max_delay is in seconds and must be at most 60, got {max_delay!r}")
        self._net = net
        self._input_size = int(net.input_size)
        self._state = _State(net, max_batch, max_delay)
        self._state.thread.start()
        self._finalizer = weakref.finalize(self, _State.close, self._state)

    # -- properties -------------------------------------------------------------------------
    @property
    def net(self) -> Any:
        """The net every batch runs on."""
        return self._net

    @property
    def max_batch(self) -> int:
        return self._state.max_batch

    @property
    def max_delay(self) -> float:
        return self._state.max_delay

    @property
    def closed(self) -> bool:
        return self._state.closed

    def __repr__(self) -> str:
        return (f"Batcher(max_batch={self.max_batch}, max_delay={self.max_delay}, "
                f"closed={self.closed})")

    # -- input --------------------------------------------------------------------------------
    def _row(self, x: Any) -> np.ndarray:
        n = self._input_size
        if (type(x) is np.ndarray and x.dtype == np.float32 and x.shape == (n,)
                and x.flags.c_contiguous and x.flags.aligned):
            return x   # the common case, without the general checks' calls
        arr = numeric_array("x", x)
        if arr.shape != (n,):
            raise ValueError(f"x must be one row of shape ({n},), got {arr.shape}; a Batcher "
                             f"takes one row per call (a batch goes to net.predict_proba)")
        return as_float32("x", arr)

    # -- blocking calls -----------------------------------------------------------------------
    def predict_proba(self, x: ArrayLike) -> NDArray[np.float32]:
        """Probabilities (num_tools,) of one row, from a batch shared with other callers."""
        req = _Request(self._row(x))
        lock = req.lock = _allocate_lock()
        lock.acquire()
        self._state.submit(req)
        try:
            lock.acquire()   # released once the answer is in (see _deliver)
        except BaseException:
            # Interrupted (KeyboardInterrupt): the callers after this one in the wake-up
            # chain would wait for ever.  The batch is one product away: wait it out.
            _acquire_uninterrupted(lock)
            raise
        finally:
            if req.next is not None:
                req.next.release()
        if req.error is not None:
            raise req.error
        assert req.result is not None
        return req.result

    def predict(self, x: ArrayLike) -> int:
        """Index of the most probable tool for one row."""
        return int(self.predict_proba(x).argmax())

    def decide(self, x: ArrayLike, confidence: float = 0.7, *, names: bool = False
               ) -> Tuple[Any, float, bool]:
        """``(tool, confidence, is_confident)`` for one row, like ``net.decide`` (with
        ``names=True``, the tool's name from ``net.tool_names``)."""
        level = _confidence_level(confidence)
        tool_names = _names_for(self._net, names)
        return _decision(self.predict_proba(x), level, tool_names)

    # -- asyncio --------------------------------------------------------------------------------
    async def apredict_proba(self, x: ArrayLike) -> NDArray[np.float32]:
        """:meth:`predict_proba` for asyncio: the task waits, the event loop runs on."""
        req = _Request(self._row(x))
        loop = req.loop = asyncio.get_running_loop()
        fut = req.future = loop.create_future()
        self._state.submit(req)
        result: NDArray[np.float32] = await fut
        return result

    async def apredict(self, x: ArrayLike) -> int:
        """:meth:`predict` for asyncio."""
        return int((await self.apredict_proba(x)).argmax())

    async def adecide(self, x: ArrayLike, confidence: float = 0.7, *, names: bool = False
                      ) -> Tuple[Any, float, bool]:
        """:meth:`decide` for asyncio."""
        level = _confidence_level(confidence)
        tool_names = _names_for(self._net, names)
        return _decision(await self.apredict_proba(x), level, tool_names)

    # -- life cycle -----------------------------------------------------------------------------
    def close(self) -> None:
        """Run every row already handed in, then stop the worker thread.  Idempotent."""
        self._state.close()
        if threading.current_thread() is not self._state.thread:
            self._state.thread.join()

    def __enter__(self) -> "Batcher":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
