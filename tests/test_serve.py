"""aiva_cy.serve: the Batcher (threads and asyncio, close, bad rows, weight swaps) and the
Ray Serve deployment (skipped without Ray).

A row merged into a batch goes through other BLAS kernels than the same row alone, so
answers are compared with a float64 reference within a float32 error bound, not bit for
bit: gamma_K = K u / (1 - K u), u = 2**-24, times sum |a||b| for each product of length K
(Higham, Accuracy and Stability of Numerical Algorithms, 3.5), carried through tanh (which
is 1-Lipschitz) into the membrane potentials.  Decisions are compared exactly on rows whose
membranes stay farther from the threshold than that bound, and whose top two
probabilities are farther apart than the probability bound.
"""
from __future__ import annotations

import asyncio
import gc
import importlib
import sys
import threading
from typing import Dict, List, Tuple

import numpy as np
import pytest

from aiva_cy import AIVANet
from aiva_cy.reference import KEYS, softmax
from aiva_cy.serve import Batcher
from conftest import firing_weights
from threaded import in_threads

U = 2.0 ** -24
TANH_ULPS = 8 * U    # the C core's rational tanh is a few ulp from the exact value (|h| <= 1)


def gamma(k: int) -> float:
    return k * U / (1 - k * U)


def reference(weights: Dict[str, np.ndarray], x: np.ndarray, threshold: float):
    """float64 probabilities p of the float32 rows x, a bound dp on |p32 - p| per entry,
    and per row whether it is tight (no membrane within its error bound of the threshold,
    so float32 fires the same spikes) and whether its decision is clear (the top tool
    beats the others by more than the bounds)."""
    w1, w2, w3 = (np.asarray(weights[k], np.float64) for k in KEYS)
    x = np.atleast_2d(np.asarray(x, np.float64))
    h = np.tanh(x @ w1)
    dh = gamma(w1.shape[0]) * (np.abs(x) @ np.abs(w1)) + TANH_ULPS
    v = h @ w2
    dv = gamma(w2.shape[0]) * (np.abs(h) @ np.abs(w2)) + dh @ np.abs(w2)
    # A neuron this close to the threshold may fire in one precision and not the other:
    # then its whole fc2 row is in or out of the logits.
    unsure = np.abs(v - threshold) <= dv
    out = (v >= threshold).astype(np.float64)
    z = out @ w3
    dz = gamma(w3.shape[0]) * (out @ np.abs(w3)) + unsure @ np.abs(w3)
    p = softmax(z)
    # softmax(z + d) = p_i e^{d_i} / sum_j p_j e^{d_j}: each p_i moves by a factor within
    # e^{+-2 max|d|}; its own float32 exp, sum and division add a few ulp of 1.
    delta = dz.max(axis=1, keepdims=True)
    dp = p * np.expm1(2 * delta) + 64 * U
    tight = ~unsure.any(axis=1)
    order = np.argsort(p, axis=1)
    r = np.arange(len(p))
    first, second = order[:, -1], order[:, -2]
    lo_first = p[r, first] - dp[r, first]
    # The runner-up at its highest, against every other tool's highest too.
    hi_rest = np.where(np.arange(p.shape[1]) == first[:, None], -np.inf, p + dp).max(axis=1)
    clear = lo_first > hi_rest
    return p, dp, tight, clear


def assert_close_to_reference(net: AIVANet, x: np.ndarray, got: np.ndarray,
                              min_tight: float = 0.8) -> np.ndarray:
    """got (B, tools) within the bound of the float64 reference on every row; returns the
    rows whose decision is clear (for exact comparisons of the argmax)."""
    p, dp, tight, clear = reference(net.state_dict(), x, net.threshold)
    assert tight.mean() >= min_tight, f"only {tight.mean():.0%} of the rows have tight bounds"
    err = np.abs(np.asarray(got, np.float64) - p)
    bad = np.argwhere(err > dp)
    assert bad.size == 0, (f"{len(bad)} entries over the bound, first (row, tool) {bad[0]}: "
                           f"error {err[tuple(bad[0])]:.3g}, bound {dp[tuple(bad[0])]:.3g}")
    return clear


# A net small enough for tight bounds (most rows fire the same spikes in float32 as in
# float64, provably), with weights that make ~40% of its neurons fire.
MID = dict(input_size=64, num_tools=10, hidden_size=256, spiking_size=128)


def mid_net(seed: int) -> AIVANet:
    net = AIVANet(**MID)
    net.load_state_dict(firing_weights(MID, seed))
    return net


@pytest.fixture(scope="module")
def net() -> AIVANet:
    return mid_net(0)


@pytest.fixture(scope="module")
def big() -> AIVANet:
    """AIVA's own sizes: the bounds are loose there (a few neurons per row sit within
    them of the threshold), so these tests check the plumbing at full size."""
    return AIVANet(seed=0)


@pytest.fixture(scope="module")
def rows(net: AIVANet) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((96, net.input_size)).astype(np.float32)


class GatedNet:
    """A net whose predict_proba waits for a gate and records its batch sizes: the first
    row holds the worker, so later rows queue up and go in together."""

    def __init__(self, net: AIVANet) -> None:
        self.net = net
        self.input_size = net.input_size
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.sizes: List[int] = []

    def predict_proba(self, x):
        self.entered.set()
        self.gate.wait()
        x = np.asarray(x)
        self.sizes.append(1 if x.ndim == 1 else x.shape[0])
        return self.net.predict_proba(x)


def _queued(b: Batcher) -> int:
    with b._state.mutex:
        return len(b._state.queue)


def _wait_for(cond, what: str) -> None:
    """Poll until cond() holds (a liveness check, generous: nothing is timed)."""
    for _ in range(6000):
        if cond():
            return
        threading.Event().wait(0.005)
    pytest.fail(f"gave up waiting for {what}")


def _queue_behind_first(b: Batcher, gated: GatedNet, ts: List[threading.Thread]) -> None:
    """Start ts[0] and let it hold the gated worker, then start the rest and wait until all
    their rows are queued behind it."""
    ts[0].start()
    gated.entered.wait()
    for t in ts[1:]:
        t.start()
    _wait_for(lambda: _queued(b) == len(ts) - 1, f"{len(ts) - 1} rows queued")


# -- answers ---------------------------------------------------------------------------------
def test_one_call_answers_like_the_net(net: AIVANet, rows: np.ndarray) -> None:
    with Batcher(net) as b:
        got = np.stack([b.predict_proba(r) for r in rows[:8]])
        assert got.shape == (8, net.num_tools) and got.dtype == np.float32
        clear = assert_close_to_reference(net, rows[:8], got)
        for i in np.flatnonzero(clear):
            assert b.predict(rows[i]) == net.predict(rows[i])
            tool, conf, ok = b.decide(rows[i], confidence=0.05)
            want = net.decide(rows[i], confidence=0.05)
            assert tool == want[0] and ok == want[2]
            assert abs(conf - want[1]) <= 1e-5
        # Other input types take the net's conversions.
        np.testing.assert_allclose(b.predict_proba(rows[0].astype(np.float64)),
                                   net.predict_proba(rows[0]), atol=1e-5, rtol=0)
        np.testing.assert_allclose(b.predict_proba(list(map(float, rows[0]))),
                                   net.predict_proba(rows[0]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("n_threads", [2, 16, 64])
def test_many_threads_each_get_their_own_rows_answer(net: AIVANet, rows: np.ndarray,
                                                     n_threads: int) -> None:
    got = np.full((len(rows), net.num_tools), np.nan, np.float32)
    decisions: Dict[int, Tuple[int, float, bool]] = {}
    barrier = threading.Barrier(n_threads)
    with Batcher(net, max_batch=32) as b:
        def work(k: int) -> None:
            barrier.wait()
            for i in range(k, len(rows), n_threads):
                got[i] = b.predict_proba(rows[i])
                decisions[i] = b.decide(rows[i])

        in_threads(work, n_threads)
    assert not np.isnan(got).any()
    clear = assert_close_to_reference(net, rows, got)
    want = net.decide(rows)
    for i in np.flatnonzero(clear):
        assert decisions[i][0] == want[0][i] and decisions[i][2] == want[2][i]


def test_asyncio_tasks_each_get_their_own_rows_answer(net: AIVANet, rows: np.ndarray) -> None:
    async def main(b: Batcher):
        probs = await asyncio.gather(*(b.apredict_proba(r) for r in rows))
        tools = await asyncio.gather(*(b.apredict(r) for r in rows[:16]))
        decisions = await asyncio.gather(*(b.adecide(r, confidence=0.1) for r in rows[:16]))
        return np.stack(probs), tools, decisions

    with Batcher(net, max_batch=40) as b:
        probs, tools, decisions = asyncio.run(main(b))
    clear = assert_close_to_reference(net, rows, probs)
    want = net.decide(rows[:16], confidence=0.1)
    for i in np.flatnonzero(clear[:16]):
        assert tools[i] == want[0][i]
        assert decisions[i][0] == want[0][i] and decisions[i][2] == want[2][i]


def test_at_full_size_threads_and_tasks_get_their_own_rows_answer(big: AIVANet) -> None:
    x = np.random.default_rng(2).standard_normal((48, big.input_size)).astype(np.float32)
    got = np.full((len(x), big.num_tools), np.nan, np.float32)

    def work(k: int) -> None:
        for i in range(k, 24, 8):
            got[i] = b.predict_proba(x[i])

    async def tasks():
        return await asyncio.gather(*(b.apredict_proba(r) for r in x[24:]))

    with Batcher(big) as b:
        threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        got[24:] = np.stack(asyncio.run(tasks()))
        for t in threads:
            t.join()
    assert_close_to_reference(big, x, got, min_tight=0.0)


def test_two_event_loops_and_threads_share_one_batcher(net: AIVANet, rows: np.ndarray) -> None:
    results: Dict[str, np.ndarray] = {}
    errors: List[BaseException] = []

    def loop_thread(name: str, part: np.ndarray) -> None:
        async def main():
            return await asyncio.gather(*(b.apredict_proba(r) for r in part))
        try:
            results[name] = np.stack(asyncio.run(main()))
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    def plain_thread(part: np.ndarray) -> None:
        try:
            results["plain"] = np.stack([b.predict_proba(r) for r in part])
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    with Batcher(net) as b:
        ts = [threading.Thread(target=loop_thread, args=("a", rows[:32])),
              threading.Thread(target=loop_thread, args=("b", rows[32:64])),
              threading.Thread(target=plain_thread, args=(rows[64:],))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    assert not errors
    assert_close_to_reference(net, rows, np.concatenate([results["a"], results["b"],
                                                          results["plain"]]))


def test_a_cancelled_task_does_not_disturb_the_others(net: AIVANet, rows: np.ndarray) -> None:
    gated = GatedNet(net)

    async def main(b: Batcher):
        first = asyncio.ensure_future(b.apredict_proba(rows[0]))
        await asyncio.get_running_loop().run_in_executor(None, gated.entered.wait)
        doomed = asyncio.ensure_future(b.apredict_proba(rows[1]))
        kept = asyncio.ensure_future(b.apredict_proba(rows[2]))
        await asyncio.sleep(0)
        doomed.cancel()
        gated.gate.set()
        return await first, await kept, doomed

    with Batcher(gated) as b:
        first, kept, doomed = asyncio.run(main(b))
    assert doomed.cancelled()
    assert_close_to_reference(net, rows[[0, 2]], np.stack([first, kept]))


def test_rows_are_merged_up_to_max_batch(net: AIVANet, rows: np.ndarray) -> None:
    gated = GatedNet(net)
    b = Batcher(gated, max_batch=8, max_delay=0.0)
    out: Dict[int, np.ndarray] = {}
    ts = [threading.Thread(target=lambda i=i: out.__setitem__(i, b.predict_proba(rows[i])))
          for i in range(21)]
    _queue_behind_first(b, gated, ts)
    gated.gate.set()
    for t in ts:
        t.join()
    b.close()
    assert gated.sizes[0] == 1 and sum(gated.sizes) == 21
    assert max(gated.sizes) == 8          # the 20 queued rows went in batches of at most 8
    assert len(gated.sizes) == 1 + 3      # 8 + 8 + 4
    assert_close_to_reference(net, rows[:21], np.stack([out[i] for i in range(21)]))


def test_callers_back_from_a_batch_join_the_rows_that_queued_during_it(
        net: AIVANet, rows: np.ndarray) -> None:
    # Row 0 runs alone (nobody else waits) and holds the worker while 10 rows queue.  Its
    # caller comes straight back with another row: the next batch waits for it (the last
    # batch's rows plus those that queued meanwhile), rather than running the 10 at once
    # and the returning row after them, alone.  max_delay bounds the wait if the caller
    # came back before the worker had counted the queue.
    gated = GatedNet(net)
    b = Batcher(gated, max_batch=64, max_delay=0.5)
    out: Dict[int, np.ndarray] = {}

    def first() -> None:
        out[0] = b.predict_proba(rows[0])
        out[11] = b.predict_proba(rows[11])

    ts = [threading.Thread(target=first)]
    ts += [threading.Thread(target=lambda i=i: out.__setitem__(i, b.predict_proba(rows[i])))
           for i in range(1, 11)]
    _queue_behind_first(b, gated, ts)
    gated.gate.set()
    for t in ts:
        t.join()
    b.close()
    assert gated.sizes == [1, 11]
    assert_close_to_reference(net, rows[:12], np.stack([out[i] for i in range(12)]))


def test_an_interrupted_caller_does_not_strand_the_callers_after_it(
        net: AIVANet, rows: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    # Blocking callers are woken down a chain, each waking the next.  One interrupted while
    # it waits (KeyboardInterrupt) still waits out its batch and wakes the next, then
    # raises.
    import aiva_cy.serve._batcher as batcher_module

    class Interrupting:
        """A lock whose wait for the answer is interrupted once."""

        def __init__(self) -> None:
            self.lock = threading.Lock()
            self.calls = 0

        def acquire(self, *args):
            self.calls += 1
            if self.calls == 2:   # the first acquire takes it; the second is the wait
                raise KeyboardInterrupt
            return self.lock.acquire(*args)

        def release(self) -> None:
            self.lock.release()

    interrupted = threading.Event()
    real = batcher_module._allocate_lock
    monkeypatch.setattr(batcher_module, "_allocate_lock",
                        lambda: Interrupting() if threading.current_thread().name == "victim"
                        else real())
    gated = GatedNet(net)
    b = Batcher(gated, max_batch=64, max_delay=0.0)
    out: Dict[int, np.ndarray] = {}

    def call(i: int) -> None:
        try:
            out[i] = b.predict_proba(rows[i])
        except KeyboardInterrupt:
            interrupted.set()

    ts = [threading.Thread(target=call, args=(i,), name="victim" if i == 2 else f"caller{i}",
                           daemon=True) for i in range(6)]
    ts[0].start()
    gated.entered.wait()
    for k, t in enumerate(ts[1:], 1):   # queued in order: the victim second in its batch
        t.start()
        _wait_for(lambda k=k: _queued(b) == k, f"{k} rows queued")
    gated.gate.set()
    for t in ts:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in ts), "a caller after the interrupted one was stranded"
    b.close()
    assert interrupted.is_set() and sorted(out) == [0, 1, 3, 4, 5]
    assert gated.sizes == [1, 5]


# -- bad input ---------------------------------------------------------------------------------
def test_a_bad_row_fails_only_its_own_caller(net: AIVANet, rows: np.ndarray) -> None:
    gated = GatedNet(net)
    bad = rows[5].copy()
    bad[7] = np.nan
    outcome: Dict[int, object] = {}

    def call(i: int, x: np.ndarray) -> None:
        try:
            outcome[i] = b.predict_proba(x)
        except Exception as exc:
            outcome[i] = exc

    b = Batcher(gated)
    ts = [threading.Thread(target=call, args=(i, bad if i == 5 else rows[i])) for i in range(10)]
    _queue_behind_first(b, gated, ts)
    gated.gate.set()
    for t in ts:
        t.join()
    b.close()
    assert isinstance(outcome[5], ValueError) and "NaN or Inf" in str(outcome[5])
    good = [i for i in range(10) if i != 5]
    assert_close_to_reference(net, rows[good], np.stack([outcome[i] for i in good]))
    # The bad row never joined the others' product: it ran alone, and failed there.
    assert sorted(gated.sizes) == [1, 1, 8]


def test_bad_input_is_refused_in_the_callers_thread(net: AIVANet) -> None:
    n = net.input_size
    with Batcher(net) as b:
        with pytest.raises(ValueError, match=rf"one row of shape \({n},\), got \(2, {n}\)"):
            b.predict_proba(np.zeros((2, n)))
        with pytest.raises(ValueError, match=r"shape"):
            b.predict_proba(np.zeros(n + 1))
        with pytest.raises(TypeError, match="real numbers"):
            b.predict_proba(np.array(["a"] * n))
        with pytest.raises(ValueError, match="NaN or Inf"):
            b.predict_proba(np.full(n, np.inf))
        with pytest.raises(ValueError, match="confidence"):
            b.decide(np.zeros(n), confidence=1.5)
        with pytest.raises(TypeError, match="confidence"):
            b.decide(np.zeros(n), confidence="high")
        with pytest.raises(ValueError, match="shape"):
            asyncio.run(b.apredict_proba(np.zeros(3)))
        with pytest.raises(ValueError, match="confidence"):
            asyncio.run(b.adecide(np.zeros(n), confidence=-0.1))
        # ...and the Batcher still works.
        np.testing.assert_allclose(b.predict_proba(np.zeros(n)), net.predict_proba(np.zeros(n)),
                                   atol=1e-5, rtol=0)


def test_constructor_checks_its_arguments(net: AIVANet) -> None:
    with pytest.raises(TypeError, match="net must be an AIVANet"):
        Batcher(object())
    with pytest.raises(ValueError, match="max_batch"):
        Batcher(net, max_batch=0)
    with pytest.raises(TypeError, match="max_batch"):
        Batcher(net, max_batch=2.5)
    with pytest.raises(ValueError, match="max_delay"):
        Batcher(net, max_delay=-1.0)
    with pytest.raises(ValueError, match="max_delay"):
        Batcher(net, max_delay=3600)


# -- life cycle ---------------------------------------------------------------------------------
def test_close_drains_the_queue_then_refuses_calls(net: AIVANet, rows: np.ndarray) -> None:
    gated = GatedNet(net)
    b = Batcher(gated, max_delay=30.0)   # close must not wait out max_delay
    out: Dict[int, np.ndarray] = {}
    ts = [threading.Thread(target=lambda i=i: out.__setitem__(i, b.predict_proba(rows[i])))
          for i in range(6)]
    _queue_behind_first(b, gated, ts)
    closer = threading.Thread(target=b.close)
    closer.start()
    _wait_for(lambda: b.closed, "the Batcher to close")
    with pytest.raises(RuntimeError, match="closed"):
        b.predict_proba(rows[0])
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(b.apredict_proba(rows[0]))
    gated.gate.set()
    closer.join()
    for t in ts:
        t.join()
    assert not b._state.thread.is_alive()
    assert sorted(out) == list(range(6))   # every row handed in before close was answered
    assert_close_to_reference(net, rows[:6], np.stack([out[i] for i in range(6)]))
    b.close()   # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        b.decide(rows[0])


def test_with_block_closes(net: AIVANet, rows: np.ndarray) -> None:
    with Batcher(net) as b:
        b.predict_proba(rows[0])
    assert b.closed and not b._state.thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        b.predict(rows[0])


def test_a_dropped_batcher_stops_its_thread(net: AIVANet, rows: np.ndarray) -> None:
    b = Batcher(net)
    b.predict_proba(rows[0])
    thread = b._state.thread
    del b
    gc.collect()
    thread.join(timeout=60)
    assert not thread.is_alive()


# -- weights ---------------------------------------------------------------------------------------
def test_weights_loaded_into_the_net_are_used_from_the_next_batch(rows: np.ndarray) -> None:
    net = mid_net(10)
    old = net.state_dict()
    new = firing_weights(MID, 11)
    x = rows[:16]
    with Batcher(net) as b:
        before = np.stack([b.predict_proba(r) for r in x])
        net.load_state_dict(new)
        after = np.stack([b.predict_proba(r) for r in x])
    p_old, dp_old, _, _ = reference(old, x, net.threshold)
    p_new, dp_new, _, _ = reference(new, x, net.threshold)
    assert (np.abs(before - p_old) <= dp_old).all()
    assert (np.abs(after - p_new) <= dp_new).all()
    # ...and the two sets of weights give answers the bounds tell apart.
    assert (np.abs(p_old - p_new) > dp_old + dp_new).any(axis=1).mean() > 0.9


def test_a_batch_never_mixes_two_sets_of_weights(rows: np.ndarray) -> None:
    net = mid_net(20)
    wa = net.state_dict()
    wb = firing_weights(MID, 21)
    x = np.random.default_rng(3).standard_normal((48, MID["input_size"])).astype(np.float32)
    pa, da, _, _ = reference(wa, x, net.threshold)
    pb, db, _, _ = reference(wb, x, net.threshold)
    stop = threading.Event()
    got = np.full((4, len(x), MID["num_tools"]), np.nan, np.float32)
    errors: List[BaseException] = []

    def swapper() -> None:
        while not stop.is_set():
            net.load_state_dict(wa)
            net.load_state_dict(wb)

    def caller(k: int) -> None:
        try:
            for rep in range(4):
                for i in range(k, len(x), 8):
                    got[rep, i] = b.predict_proba(x[i])
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    with Batcher(net, max_batch=16) as b:
        sw = threading.Thread(target=swapper)
        sw.start()
        ts = [threading.Thread(target=caller, args=(k,)) for k in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        stop.set()
        sw.join()
    assert not errors
    near_a = (np.abs(got - pa) <= da).all(axis=2)
    near_b = (np.abs(got - pb) <= db).all(axis=2)
    assert (near_a | near_b).all()
    assert (np.abs(pa - pb) > da + db).any(axis=1).mean() > 0.9


# -- Ray Serve ---------------------------------------------------------------------------------------
def test_ray_module_says_what_to_install_without_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)   # as if Ray were not installed
    monkeypatch.delitem(sys.modules, "aiva_cy.serve.ray", raising=False)
    with pytest.raises(ImportError, match=r'pip install "aiva_cy\[serve\]"'):
        importlib.import_module("aiva_cy.serve.ray")


def test_ray_serve_deployment_answers_like_predict_proba(tmp_path, rows: np.ndarray) -> None:
    ray = pytest.importorskip("ray")
    serve = pytest.importorskip("ray.serve")
    from aiva_cy.serve.ray import application

    net = mid_net(0)
    path = tmp_path / "net.npz"
    net.save(path)
    x = rows[:24]
    # Local and loopback only: no dashboard, no HTTP proxy, a small object store.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=200 * 2**20, _node_ip_address="127.0.0.1")
    try:
        serve.start(proxy_location="Disabled")
        handle = serve.run(application(str(path), max_batch=8, num_cpus=1), name="aiva_test",
                           route_prefix=None)
        responses = [handle.predict_proba.remote(r) for r in x]
        got = np.stack([np.asarray(resp.result(timeout_s=120)) for resp in responses])
        decisions = [handle.decide.remote(r, 0.1).result(timeout_s=120) for r in x[:8]]
        # What the HTTP route answers, given the JSON body as a dict.
        bodies = [handle.remote({"x": r.tolist(), "confidence": 0.1}).result(timeout_s=120)
                  for r in x[:8]]
        with pytest.raises(Exception, match="shape"):
            handle.predict_proba.remote(np.zeros(3)).result(timeout_s=120)
    finally:
        serve.shutdown()
        ray.shutdown()
    clear = assert_close_to_reference(net, x, got)
    want = net.decide(x[:8], confidence=0.1)
    for i in np.flatnonzero(clear[:8]):
        assert decisions[i][0] == want[0][i] and decisions[i][2] == want[2][i]
        assert bodies[i]["tool"] == want[0][i] and bodies[i]["is_confident"] == want[2][i]
    assert_close_to_reference(net, x[:8], np.array([b["probabilities"] for b in bodies]))


# -- the benchmark ---------------------------------------------------------------------------------
def test_many_callers_benchmark_runs() -> None:
    """Smoke test of benchmarks/many_callers.py: every row is there and positive (the numbers
    themselves are the benchmark's business, not a test's)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "many_callers.py"
    if not path.exists():
        pytest.skip("the benchmarks are not next to these tests")
    spec = importlib.util.spec_from_file_location("many_callers", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.run(rows_serial=16, rows_crowd=128, rows_tasks=1024, rounds=1, pause_s=0.0)
    rows = [k for k in out if not k.startswith("_")]
    assert len(rows) == 6 and rows[0] == "serial batch-1"
    for name in rows:
        r = out[name]
        assert r["rows_per_s"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"], name
    assert "| 1,024 asyncio tasks, Batcher |" in bench.table(out)
    assert len(bench.targets(out)) == 3
    assert "OpenBLAS" in bench.blas_kernel() or aiva_cy_provider() != "numpy"


def aiva_cy_provider() -> str:
    import aiva_cy

    return aiva_cy.blas_info()["provider"]
