"""set_precision against a running fit and against itself: the net's lock, like fit's."""
from __future__ import annotations

import threading

import numpy as np

from aiva_cy import AIVANet
from conftest import SMALL


def test_set_precision_waits_for_a_running_fit():
    net = AIVANet(**SMALL, seed=0)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((16, SMALL["input_size"])).astype(np.float32)
    y = rng.integers(0, SMALL["num_tools"], 16)
    switched = threading.Event()
    seen = []

    def switch():
        net.set_precision("float32")
        switched.set()

    def callback(epoch, logs):
        if epoch == 0:
            worker = threading.Thread(target=switch)
            worker.start()
            seen.append(worker)
            # With the lock the switch cannot return before fit does, however long we wait.
            seen.append(switched.wait(1.0))

    net.fit(X, y, epochs=2, batch_size=8, callbacks=[callback], verbose=0)
    worker, returned_during_fit = seen
    worker.join(30)
    assert not returned_during_fit, "set_precision returned in the middle of fit"
    assert switched.is_set() and net.precision == net._engine.precision == "float32"


def test_concurrent_set_precision_leaves_config_and_engine_agreeing():
    # Both precisions where this BLAS has bf16 products; otherwise float32 only, and every
    # switch to bfloat16 fails cleanly and changes nothing.
    net = AIVANet(**SMALL, seed=0)
    errors = []

    def flip(precisions):
        for p in precisions * 20:
            try:
                net.set_precision(p)
            except ImportError:
                pass
            except Exception as exc:     # noqa: BLE001 - reported below
                errors.append(exc)

    threads = [threading.Thread(target=flip, args=(order,))
               for order in (["float32", "bfloat16"], ["bfloat16", "float32"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert net.precision == net._engine.precision == net.config["precision"]
