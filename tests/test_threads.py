"""predict_proba from many threads at once on one net gives the serial answers, stateful
calls from several threads never crash (they serialise on the engine's lock), and the BLAS
thread budget that overlapping calls share (aiva_cy.set_num_threads)."""
import threading

import numpy as np

import bounds as bd

from aiva_cy import AIVANet


def test_concurrent_predict_proba_equals_serial():
    net = AIVANet(seed=0)
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((b, 512)) for b in (1, 3, 17, 1, 64, 5, 2, 33)]
    serial = [net.predict_proba(x) for x in inputs]
    results = {}
    errors = []
    barrier = threading.Barrier(8)

    def worker(i):
        try:
            barrier.wait()
            for rep in range(5):
                j = (i + rep) % len(inputs)
                results[(i, rep)] = (j, net.predict_proba(inputs[j]))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 40
    # Not bit for bit: a call that overlaps others runs its products on fewer BLAS threads
    # (aiva_cy.num_threads), and OpenBLAS then splits a product of 33 rows or more
    # differently, which moves the last bit of some entries.
    for j, p in results.values():
        np.testing.assert_allclose(p, serial[j], atol=1e-5, rtol=0)


def test_concurrent_stateful_calls_do_not_corrupt_each_other():
    net = AIVANet(input_size=16, num_tools=4, hidden_size=64, spiking_size=32, seed=1)
    x = np.random.default_rng(1).standard_normal((4, 16))
    y = np.arange(4) % 4
    errors = []

    def trainer():
        try:
            for _ in range(20):
                net.reset_state()
                assert np.isfinite(net.train_step(x, y))
        except ValueError:
            pass        # another thread may hold a state of another batch size: a clean error
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    def predictor():
        try:
            for b in (1, 7, 64, 3):
                p = net.predict_proba(np.random.default_rng(b).standard_normal((b, 16)))
                # a float32 softmax sums to 1 within its evaluation's bound
                assert (np.abs(p.sum(1) - 1.0) <= bd.softmax_sum_bound(4)).all()
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=f) for f in (trainer, trainer, predictor, predictor)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_predict_during_load_state_dict_sees_old_or_new_weights_never_a_mix():
    net = AIVANet(input_size=32, num_tools=6, hidden_size=256, spiking_size=128, seed=2)
    weights_a = net.state_dict()
    weights_b = AIVANet(input_size=32, num_tools=6, hidden_size=256, spiking_size=128,
                        seed=3).state_dict()
    x = np.random.default_rng(2).standard_normal((16, 32))
    p_a = net.predict_proba(x)
    net.load_state_dict(weights_b)
    p_b = net.predict_proba(x)
    assert not np.array_equal(p_a, p_b)
    stop = threading.Event()
    seen, errors = [], []

    def swapper():
        while not stop.is_set():
            net.load_state_dict(weights_a)
            net.load_state_dict(weights_b)

    def predictor():
        try:
            for _ in range(200):
                seen.append(net.predict_proba(x))
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    swap = threading.Thread(target=swapper)
    preds = [threading.Thread(target=predictor) for _ in range(2)]
    swap.start()
    for t in preds:
        t.start()
    for t in preds:
        t.join()
    stop.set()
    swap.join()
    assert not errors and len(seen) == 400
    for p in seen:
        assert np.array_equal(p, p_a) or np.array_equal(p, p_b)


# -- the BLAS thread budget (aiva_cy.set_num_threads, aiva_cy._threads) -----------------------
import os  # noqa: E402

import pytest  # noqa: E402

import aiva_cy  # noqa: E402
from aiva_cy import _threads  # noqa: E402

_OPENBLAS = aiva_cy.blas_info()["provider"] in ("numpy", "scipy-openblas32",
                                                  "scipy.linalg.cython_blas")
needs_openblas = pytest.mark.skipif(not _OPENBLAS, reason="the float32 BLAS is not an OpenBLAS")


@pytest.fixture
def budget():
    """Leave the budget as the test found it."""
    before = aiva_cy.num_threads()
    yield before
    while _threads._in_flight():   # a failed test may leave an _enter unpaired
        _threads._leave()
    aiva_cy.set_num_threads(before)


def _threadpoolctl_count(path):
    """The thread count threadpoolctl reads from the library file at path, or None."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    for lib in threadpoolctl.threadpool_info():
        if os.path.realpath(lib["filepath"]) == os.path.realpath(path):
            return lib["num_threads"]
    return None


def test_set_num_threads_checks_its_argument():
    for bad in (0, -1, 1025):
        with pytest.raises(ValueError, match=r"n must be in \[1, 1024\]"):
            aiva_cy.set_num_threads(bad)
        with pytest.raises(ValueError, match=r"n must be in \[1, 1024\]"):
            aiva_cy.threads(bad)
    for bad in (1.5, "2", None, True):
        with pytest.raises(TypeError, match="n must be an int"):
            aiva_cy.set_num_threads(bad)
        with pytest.raises(TypeError, match="n must be an int"):
            aiva_cy.threads(bad)


def test_the_float32_blas_is_controlled():
    # Fails if the engine's BLAS loader moves and this module no longer finds its record.
    provider = aiva_cy.blas_info()["provider"]
    assert ("mkl" if provider == "mkl" else "openblas") in _threads._controlled_libraries()


@pytest.mark.skipif(aiva_cy.blas_info()["provider"] != "mkl", reason="AIVA_CY_BLAS=mkl only")
def test_with_mkl_as_the_float32_blas_each_call_sets_its_threads_count(budget):
    aiva_cy.set_num_threads(2)
    assert _threads._enter() == 2 and _threads._enter() == 1
    assert _threads._blas_threads("mkl") == 1
    _threads._leave()
    _threads._leave()
    assert _threads._blas_threads("mkl") == 2


@needs_openblas
def test_set_num_threads_sets_the_blas_own_count(budget):
    path = aiva_cy.blas_info()["path"]
    for n in (1, 2, 3):
        aiva_cy.set_num_threads(n)
        assert aiva_cy.num_threads() == n
        assert _threads._blas_threads() == n
        if aiva_cy.blas_info()["provider"] != "scipy.linalg.cython_blas":
            assert _threadpoolctl_count(path) in (n, None)


@needs_openblas
def test_threads_context_manager_restores_the_count(budget):
    aiva_cy.set_num_threads(2)
    with aiva_cy.threads(1):
        assert aiva_cy.num_threads() == 1 and _threads._blas_threads() == 1
        p1 = AIVANet(seed=0).predict_proba(np.ones((3, 512)))
    assert aiva_cy.num_threads() == 2 and _threads._blas_threads() == 2
    with pytest.raises(KeyError):
        with aiva_cy.threads(1):
            raise KeyError("inside")
    assert aiva_cy.num_threads() == 2
    p2 = AIVANet(seed=0).predict_proba(np.ones((3, 512)))
    np.testing.assert_allclose(p1, p2, atol=1e-6, rtol=0)


@needs_openblas
def test_calls_in_flight_share_the_budget(budget):
    aiva_cy.set_num_threads(4)
    shares = []
    for _ in range(5):                       # five calls enter...
        shares.append(_threads._enter())
        assert _threads._blas_threads() == shares[-1]
    assert shares == [4, 2, 1, 1, 1]         # max(1, 4 // in_flight)
    assert _threads._in_flight() == 5
    seen = []
    for _ in range(5):                       # ...and leave
        _threads._leave()
        seen.append(_threads._blas_threads())
    assert seen == [1, 1, 2, 4, 4]           # 4 // the calls still in flight (4, 3, 2, 1, 0)
    assert _threads._in_flight() == 0 and aiva_cy.num_threads() == 4


@needs_openblas
def test_a_lone_call_gets_the_whole_budget_and_concurrent_calls_give_it_back(budget):
    net = AIVANet(seed=0)
    x = np.random.default_rng(0).standard_normal((1, 512))
    net.predict_proba(x)
    assert _threads._in_flight() == 0 and _threads._blas_threads() == budget
    errors = []

    def worker():
        try:
            for _ in range(20):
                net.predict_proba(x)
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert _threads._in_flight() == 0
    assert _threads._blas_threads() == budget == aiva_cy.num_threads()


@needs_openblas
def test_a_threadpoolctl_limit_holds_for_aiva_cy_calls_too(budget):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if _threadpoolctl_count(aiva_cy.blas_info()["path"]) is None:
        pytest.skip("threadpoolctl does not see the library aiva_cy uses")
    aiva_cy.set_num_threads(2)
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        assert aiva_cy.num_threads() == 1
        assert _threads._enter() == 1
        _threads._leave()
        assert _threads._blas_threads() == 1       # not raised back by the call's leave
        AIVANet(seed=0).predict_proba(np.ones(512))
        assert _threads._blas_threads() == 1
    assert aiva_cy.num_threads() == 2 and _threads._blas_threads() == 2


def test_reduced_precision_calls_share_the_float32_budget(budget):
    # oneDNN's OpenMP pool reads the float32 BLAS's thread count at every product, so the
    # share a call takes on entry is its oneDNN share too: one budget, not two pools.
    entry = aiva_cy.blas_info()["precisions"]["bfloat16"]
    if not entry["available"]:
        pytest.skip(f"no native bf16 products here: {entry['missing']}")
    if not (_OPENBLAS and entry["threads_follow_blas"]):
        pytest.skip("oneDNN follows an OpenBLAS thread count only")
    from aiva_cy import _lowp
    aiva_cy.set_num_threads(2)
    assert _lowp.info()["threads"] == 2
    a = _threads._enter()
    b = _threads._enter()
    assert (a, b) == (2, 1)
    assert _lowp.info()["threads"] == 1           # what a product started now would use
    _threads._leave()
    _threads._leave()
    assert _lowp.info()["threads"] == 2
    from conftest import safe_inputs
    net = AIVANet(input_size=64, num_tools=10, hidden_size=96, spiking_size=80, seed=0,
                  precision="bfloat16")
    x = safe_inputs(net.state_dict(), (4, 64), seed=0, precision="bfloat16")
    step = bd.BoundedNet(net.state_dict(), precision="bfloat16").forward(x)
    out = [None] * 4

    def worker(i):
        out[i] = net.predict_proba(x)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in out:     # each call within the bf16 bound of the reference, whatever its share
        bd.assert_probs(p, step)
    assert _threads._in_flight() == 0
