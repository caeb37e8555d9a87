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

_allocate_lock = threading.Lock


class _Request:
    """One caller's row and where its answer goes: a lock the blocking caller waits on, or
    an asyncio future (resolved in its own loop's thread)."""

    __slots__ = ("row", "arrived", "lock", "future", "loop", "result", "error")

    def __init__(self, row: np.ndarray) -> None:
        self.row = row
        self.arrived = time.monotonic()
        self.lock: Optional[Any] = None
        self.future: Optional["asyncio.Future[Any]"] = None
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.result: Optional[np.ndarray] = None
        self.error: Optional[BaseException] = None


class _State:
    """What the worker thread shares with the callers.  The worker holds this, never the
    Batcher, so a Batcher dropped without close() is collected, and its finalizer stops
    the thread."""

    def __init__(self, net: Any, max_batch: int, max_delay: float) -> None:
        self.net = net
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.queue: Deque[_Request] = deque()
        self.cond = threading.Condition(threading.Lock())
        self.closed = False
        # Rows in the last batch: the callers it answered are likely to be back soon, so a
        # batch starts as soon as as many rows wait (see _take).
        self.last_batch = 1
        self.thread = threading.Thread(target=_work, args=(self,), name="aiva_cy.Batcher",
                                       daemon=True)

    def submit(self, req: _Request) -> None:
        with self.cond:
            if self.closed:
                raise RuntimeError("this Batcher is closed: it takes no more calls")
            self.queue.append(req)
            n = len(self.queue)
            # The worker waits for the first row, or for enough rows: only those wake it.
            if n == 1 or n >= min(self.last_batch, self.max_batch):
                self.cond.notify()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


def _take(state: _State) -> List[_Request]:
    """The next batch: as soon as max_batch rows wait, or as many as the last batch had,
    or the oldest has waited max_delay, or the Batcher is closing (drain what is left).
    Empty once closed and drained."""
    q = state.queue
    with state.cond:
        while not q and not state.closed:
            state.cond.wait()
        if not q:
            return []
        deadline = q[0].arrived + state.max_delay
        while not state.closed and len(q) < min(state.last_batch, state.max_batch):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            state.cond.wait(left)
        n = min(len(q), state.max_batch)
        batch = [q.popleft() for _ in range(n)]
        state.last_batch = max(n, 1)
    return batch


def _work(state: _State) -> None:
    while True:
        batch = _take(state)
        if not batch:
            return
        try:
            _run(state.net, batch)
        except BaseException as exc:   # a bug here must not leave callers waiting forever
            for req in batch:
                if req.result is None and req.error is None:
                    req.error = RuntimeError(f"the Batcher's worker failed: {exc!r}")
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
    by_loop: Dict[asyncio.AbstractEventLoop, List[_Request]] = {}
    for req in batch:
        if req.loop is None:
            assert req.lock is not None
            req.lock.release()
        else:
            by_loop.setdefault(req.loop, []).append(req)
    # One wake-up per loop and batch, not one per row.
    for loop, reqs in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve, reqs)
        except RuntimeError:   # that loop is closed: nobody is waiting there any more
            pass


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
    """The net's tool_names where ``names`` asks for them (checked like ``net.decide``)."""
    if not isinstance(names, (bool, np.bool_)):
        raise TypeError(f"names must be True or False, got {names!r}")
    if not names:
        return None
    tool_names = getattr(net, "tool_names", None)
    if tool_names is None:
        raise ValueError("decide(names=True) needs the net's tool_names: build it with "
                         "AIVANet(..., tool_names=[...]) or set net.tool_names")
    return tool_names


class Batcher:
    """Merge single-row calls from many threads or asyncio tasks into one
    ``net.predict_proba`` call.

    ``b.predict_proba(x)``, ``b.predict(x)`` and ``b.decide(x)`` block the calling thread;
    ``await b.apredict_proba(x)``, ``await b.apredict(x)`` and ``await b.adecide(x)`` suspend
    the calling task.  Each takes one row, ``x`` of shape ``(net.input_size,)``, and answers
    like the net's method of the same name on that row.  The answer equals the single-row
    call within float32 rounding, not bit for bit: a row in a batch goes through other BLAS
    kernels than a row alone.

    A batch runs as soon as ``max_batch`` rows wait, or as many rows as the last batch had
    (the callers it answered are likely back by then), or the oldest row has waited
    ``max_delay`` seconds.  So a lone caller waits for nobody, and a steady crowd of
    callers fills each batch without waiting out ``max_delay``.

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
        lock.acquire()   # released by the worker once the answer is in
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
