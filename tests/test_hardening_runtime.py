"""Threads, memory and undefined behaviour: consistent snapshots, fit owning the net,
bounded workspaces, misaligned input, and error messages that say what is wrong."""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import aiva_cy._core as core
import bounds as bd
from aiva_cy import AIVANet
from conftest import DEFAULT, SMALL, firing_weights

ROOT = Path(__file__).resolve().parents[1]
UNDER_ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")
MEDIUM = dict(input_size=256, num_tools=10, hidden_size=1024, spiking_size=512)


def _digest(weights) -> str:
    h = hashlib.sha1()
    for k in sorted(weights):
        h.update(np.ascontiguousarray(weights[k]).tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------
# 5. consistent snapshots; fit owns the net
# ---------------------------------------------------------------------------------------
def test_snapshots_during_training_match_a_training_step(tmp_path):
    # Before: 25 of 155 state_dict snapshots and 3 of 19 saved files taken during training
    # matched no training step (Adam updates the weights in place while they were copied).
    net = AIVANet(**MEDIUM, seed=0)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((16, 256)), rng.integers(0, 10, 16)
    seen = {_digest(net.state_dict()): 0}
    moments = {}
    stop = threading.Event()

    def train():
        try:
            for _ in range(40):
                net.train_step(x, y)
                with net._lock:     # the trainer's own record of every step
                    seen[_digest(net.state_dict())] = net.optimizer.step
                    opt = net.optimizer.state_dict()
                    moments[opt["step"]] = _digest({**opt["exp_avg"], **{
                        "sq." + k: v for k, v in opt["exp_avg_sq"].items()}})
        finally:
            stop.set()

    snapshots, saved = [], []
    trainer = threading.Thread(target=train)
    trainer.start()
    i = 0
    deadline = time.monotonic() + 60
    while not stop.is_set() and time.monotonic() < deadline:
        snapshots.append(_digest(net.state_dict()))
        if i % 5 == 0 and len(saved) < 25:     # bounded: a few MB each
            buf = tmp_path / f"snap{i}.npz"
            net.save(buf)
            saved.append(buf)
        i += 1
    trainer.join()
    assert net.optimizer.step == 40
    torn = [s for s in snapshots if s not in seen]
    assert not torn, f"{len(torn)} of {len(snapshots)} snapshots match no training step"
    for path in saved:
        back = AIVANet.load(path)
        step = seen.get(_digest(back.state_dict()))
        assert step is not None, f"{path.name}: weights of no training step"
        assert back.optimizer.step == step, f"{path.name}: weights of step {step}, " \
            f"optimizer at step {back.optimizer.step}"
        if step:
            opt = back.optimizer.state_dict()
            assert moments[step] == _digest({**opt["exp_avg"], **{
                "sq." + k: v for k, v in opt["exp_avg_sq"].items()}}), path.name
        pickled = pickle.loads(pickle.dumps(back))
        assert _digest(pickled.state_dict()) == _digest(back.state_dict())


def test_fit_owns_the_net_while_it_runs():
    # Before: a forward from another thread ran in the middle of fit.
    net = AIVANet(**MEDIUM, seed=0)
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((512, 256)), rng.integers(0, 10, 512)
    epochs, batch = 3, 16
    total = epochs * (512 // batch)
    fitter = threading.Thread(target=net.fit, args=(X, y),
                              kwargs=dict(epochs=epochs, batch_size=batch, verbose=0))
    fitter.start()
    deadline = time.monotonic() + 30
    while net.optimizer.step == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert net.optimizer.step > 0
    net.forward(X[:3])                    # waits for fit to return
    step_seen = net.optimizer.step
    fitter.join()
    assert step_seen == total, f"forward ran at step {step_seen} of fit's {total}"
    net.reset_state()


def test_predict_proba_does_not_wait_for_fit():
    net = AIVANet(**MEDIUM, seed=0)
    rng = np.random.default_rng(2)
    X, y = rng.standard_normal((512, 256)), rng.integers(0, 10, 512)
    fitter = threading.Thread(target=net.fit, args=(X, y),
                              kwargs=dict(epochs=4, batch_size=16, verbose=0))
    fitter.start()
    deadline = time.monotonic() + 30
    while net.optimizer.step == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    net.predict_proba(X[:4])
    assert fitter.is_alive() or net.optimizer.step == 4 * 32
    fitter.join()


# ---------------------------------------------------------------------------------------
# 6. memory that comes back
# ---------------------------------------------------------------------------------------
WIDE = dict(input_size=8, num_tools=4, hidden_size=2048, spiking_size=1024)


def _rss_child(body: str) -> dict:
    code = textwrap.dedent("""
        import json, resource, sys
        import numpy as np
        from aiva_cy import AIVANet
        def rss_mb():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * resource.getpagesize() / 2**20
        def peak_mb():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out = {}
    """) + textwrap.dedent(body) + "\nprint(json.dumps(out))\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, cwd=str(ROOT))
    assert result.returncode == 0, result.stderr
    import json
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/statm").exists() or UNDER_ASAN,
                    reason="needs /proc, and RSS means nothing under AddressSanitizer")
def test_large_predict_runs_in_bounded_memory_and_gives_it_back():
    # Before: predict_proba at batch 200,000 peaked at 3.85 GB and kept 3.4 GB; here a net
    # whose workspace is ~30 KB a row, at 8,000 rows: 238 MB for each of the two workspaces
    # (forward's and predict's) before, 16 MB each now.
    out = _rss_child("""
        net = AIVANet(input_size=8, num_tools=4, hidden_size=2048, spiking_size=1024, seed=0)
        x = np.random.default_rng(0).standard_normal((8000, 8)).astype(np.float32)
        net.predict_proba(x[:2])
        base_peak, base = peak_mb(), rss_mb()
        net.predict_proba(x)
        net.forward(x)
        out["peak_growth"] = peak_mb() - base_peak
        out["kept"] = rss_mb() - base
    """)
    assert out["peak_growth"] < 60, out
    assert out["kept"] < 60, out


@pytest.mark.skipif(not Path("/proc/self/statm").exists() or UNDER_ASAN,
                    reason="needs /proc, and RSS means nothing under AddressSanitizer")
def test_large_train_step_gives_its_workspace_back():
    # Before: train_step at 50,000 rows kept 1.5 GB until the net died.
    out = _rss_child("""
        net = AIVANet(input_size=8, num_tools=4, hidden_size=2048, spiking_size=1024, seed=0)
        rng = np.random.default_rng(0)
        x, y = rng.standard_normal((6000, 8)).astype(np.float32), rng.integers(0, 4, 6000)
        net.train_step(x[:2], y[:2])
        net.reset_state()
        base = rss_mb()
        net.train_step(x, y)
        out["kept"] = rss_mb() - base
    """)
    assert out["kept"] < 60, out


def test_chunked_inference_agrees_within_the_float32_bound(monkeypatch):
    """The batch and chunking promise (README, docs/contract.md): not the same bits — the
    BLAS picks other kernels, summing in other orders, for other row counts (gemv for one
    row) — but for each row, results of calls of different batch sizes or chunkings agree
    within the float32 bound (two computations each within B of the exact value: 2B), and
    its spikes are identical wherever the membrane is farther from the threshold than B."""
    rng = np.random.default_rng(3)
    for sizes, batch, rows in ((SMALL, 1000, 100), (SMALL, 999, 70), (DEFAULT, 400, 150)):
        weights = firing_weights(sizes, 1)
        x = rng.standard_normal((batch, sizes["input_size"])).astype(np.float32)
        y = np.arange(batch) % sizes["num_tools"]
        ref = bd.BoundedNet(weights, refractory_period=2)
        first = ref.forward(x)                              # from an empty state
        second = ref.remask(first, ~first.out)              # the same x, masked by step 1
        clear_neuron = ~first.ambiguous                     # spikes must agree there
        clear = ~first.unresolved_rows                      # every spike of the row must
        # the data exercise both: rows that must agree bit for bit in their spikes, and
        # membranes within the bound (at the default size, in about half the rows)
        assert clear.mean() > 0.3 and (sizes is SMALL or not clear.all())
        results = []
        for limit in (core._row_bytes(sizes["hidden_size"], sizes["spiking_size"],
                                      sizes["num_tools"]) * rows, 1 << 40):
            monkeypatch.setattr(core, "WORKSPACE_LIMIT", limit)
            net = AIVANet(**sizes, seed=0)
            net.load_state_dict(weights)
            r = {"p": net.predict_proba(x), "f1": net.forward(x), "s1": net.get_state(),
                 "f2": net.forward(x), "s2": net.get_state()}
            net.reset_state()
            r["seq"], r["s_seq"] = net.forward_sequence(np.stack([x, x])), net.get_state()
            r["loss"] = net.evaluate(x[clear], y[clear])["loss"]
            r["single"] = np.stack([net.predict_proba(x[i]) for i in np.flatnonzero(clear)[:3]])
            results.append(r)
        chunked, whole = results
        for key in ("s1", "s2", "s_seq"):
            np.testing.assert_array_equal(chunked[key][clear_neuron], whole[key][clear_neuron])
        for key, step in (("p", first), ("f1", first), ("f2", second)):
            bd.assert_pair(chunked[key], whole[key], step.p, rows=clear, what=key)
        bd.assert_pair(chunked["seq"][0], whole["seq"][0], first.p, rows=clear)
        bd.assert_pair(chunked["seq"][1], whole["seq"][1], second.p, rows=clear)
        bd.assert_pair(chunked["loss"], whole["loss"], first.loss(y[clear], clear))
        # one row alone (gemv) against the same row in the large call (gemm)
        three = np.flatnonzero(clear)[:3]
        bd.assert_pair(whole["single"], whole["p"][three], first.p[three])


def test_failed_chunk_leaves_the_state_unchanged(monkeypatch):
    monkeypatch.setattr(core, "WORKSPACE_LIMIT",
                        core._row_bytes(SMALL["hidden_size"], SMALL["spiking_size"],
                                        SMALL["num_tools"]) * 4)
    net = AIVANet(**SMALL, seed=0)
    net.load_state_dict(firing_weights(SMALL, 1))
    x = np.random.default_rng(4).standard_normal((10, SMALL["input_size"]))
    net.forward(x)
    before = net._engine.get_state()
    bad = x.copy()
    bad[9, 0] = np.nan                     # in the last chunk
    with pytest.raises(ValueError, match="NaN"):
        net.forward(bad)
    np.testing.assert_array_equal(net._engine.get_state(), before)


def test_workspace_pool_is_bounded():
    net = AIVANet(**SMALL, seed=0)
    x = np.ones((3, SMALL["input_size"]))
    barrier = threading.Barrier(12)

    def hammer():
        barrier.wait()
        for _ in range(50):
            net.predict_proba(x)

    threads = [threading.Thread(target=hammer) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 1 <= net._engine.pooled_workspaces <= core.POOL_MAX


# ---------------------------------------------------------------------------------------
# 7. undefined behaviour
# ---------------------------------------------------------------------------------------
def test_misaligned_input_is_copied_and_gives_the_aligned_result():
    # Before: np.frombuffer(buf, np.float32, 512, offset=1) reached C (UBSan: misaligned load).
    net = AIVANet(seed=0)
    values = np.random.default_rng(5).standard_normal(512).astype(np.float32)
    buf = b"\0" + values.tobytes()
    x = np.frombuffer(buf, np.float32, 512, offset=1)
    assert not x.flags.aligned
    np.testing.assert_array_equal(net.predict_proba(x), net.predict_proba(values))
    xb = np.frombuffer(b"\0" + np.tile(values, 3).tobytes(), np.float32, 3 * 512,
                       offset=1).reshape(3, 512)
    np.testing.assert_array_equal(net.forward(xb), net.forward(np.tile(values, (3, 1))) if
                                  net.reset_state() is None else None)


def test_engine_refuses_misaligned_memory():
    # The engine is reachable directly (net._engine); it must not hand C a misaligned float*.
    net = AIVANet(**SMALL, seed=0)
    x = np.frombuffer(b"\0" + bytes(4 * SMALL["input_size"]), np.float32,
                      SMALL["input_size"], offset=1).reshape(1, -1)
    for call in (net._engine.predict, net._engine.forward):
        with pytest.raises(ValueError, match="aligned"):
            call(x)


def test_misaligned_labels_are_copied_and_the_engine_refuses_them():
    # Found by the fuzz under UBSan: int64 labels at an odd address reached C.
    net = AIVANet(**SMALL, seed=0)
    x = np.random.default_rng(6).standard_normal((3, SMALL["input_size"]))
    labels = np.array([0, 2, 4], np.int64)
    y = np.frombuffer(b"\0" + labels.tobytes(), np.int64, 3, offset=1)
    assert not y.flags.aligned
    loss, grads = net.loss_and_grad(x, y)
    net.reset_state()
    want, want_grads = net.loss_and_grad(x, labels)
    assert loss == want
    net.reset_state()
    with pytest.raises(ValueError, match="aligned"):
        net._engine.loss_and_grad(np.ascontiguousarray(x, dtype=np.float32), y)


# ---------------------------------------------------------------------------------------
# 8. error messages
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("call", [
    lambda: AIVANet(**SMALL, threshold=10**400),
    lambda: AIVANet(**SMALL, surrogate_slope=10**400),
    lambda: AIVANet(**SMALL, lr=10**400),
    lambda: AIVANet(**SMALL, seed=0).decide(np.ones(SMALL["input_size"]), confidence=10**400),
    lambda: setattr(AIVANet(**SMALL).optimizer, "lr", 10**400),
])
def test_huge_integers_are_value_errors_not_overflow(call):
    # Before: OverflowError: int too large to convert to float.
    with pytest.raises(ValueError, match="too large"):
        call()


def test_huge_step_in_optimizer_state_is_a_value_error():
    net = AIVANet(**SMALL, seed=0)
    state = net.optimizer.state_dict()
    state["step"] = 10**400
    with pytest.raises(ValueError, match="step"):
        net.optimizer.load_state_dict(state)


def test_forward_sequence_names_xs():
    net = AIVANet(**SMALL, seed=0)
    xs = np.ones((2, 3, SMALL["input_size"]))
    xs[1, 2, 0] = np.inf
    with pytest.raises(ValueError, match=r"^xs "):
        net.forward_sequence(xs)
    with pytest.raises(ValueError, match=r"^xs must have shape"):
        net.forward_sequence(np.ones((2, 3, 4)))


def test_batch_limit_message_names_the_maximum():
    # Before: "x must have shape (batch >= 1, 512)" for 524,289 rows hid the maximum.
    net = AIVANet(input_size=1, num_tools=2, hidden_size=2**20, spiking_size=1, seed=0)
    x = np.zeros((1025, 1), np.float32)
    with pytest.raises(ValueError, match=r"at most 1024"):
        net.train_step(x, np.zeros(1025, int))


def test_masked_arrays_are_refused():
    net = AIVANet(**SMALL, seed=0)
    x = np.ma.masked_array(np.ones(SMALL["input_size"]), mask=False)
    x.mask[0] = True
    with pytest.raises(TypeError, match="masked"):
        net.predict_proba(x)
    with pytest.raises(TypeError, match="masked"):
        net.train_step(np.ones((1, SMALL["input_size"])), np.ma.masked_array([1], mask=[True]))
    with pytest.raises(TypeError, match="masked"):
        net.load_state_dict({k: np.ma.masked_array(v) for k, v in net.state_dict().items()})
