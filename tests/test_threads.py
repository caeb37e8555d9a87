"""predict_proba from many threads at once on one net gives exactly the serial answers, and
stateful calls from several threads never crash (they serialise on the engine's lock)."""
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
    for j, p in results.values():
        assert np.array_equal(p, serial[j])


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
