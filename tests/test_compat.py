"""Tests for the AIVA drop-in (aiva_cy.compat), on copies of the call shapes AIVA's code
makes: its agent (``ScalableBioNet(1024, 2)`` on unit-norm vectors, the 0.7 confidence
check), its trainer (``forward(batch)`` then ``backward(X, y, learning_rate)``) and its weight
loader (attribute assignment, resizes included).  "The NumPy core" is tests/aiva_like.py."""

from __future__ import annotations

import pickle
import re
import threading
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest

from aiva_cy import AIVANet
from aiva_cy.compat import AntiHallucinationModule, ScalableBioNet
from aiva_cy.reference import ReferenceNet

from aiva_cy.bench.bioneuron_numpy import BioNeuron  # noqa: E402
from aiva_like import (AivaCore, aiva_weights, model_updater_load, model_updater_pickle,
                       unit_rows)

REPO = Path(__file__).resolve().parents[1]
from conftest import firing_weights, safe_inputs  # noqa: E402
from test_cuda_engine import cuda  # noqa: E402,F401  (fixture: NumPy stand-in, or a real GPU)

SMALL: Dict[str, Any] = dict(input_size=24, num_tools=5, hidden_size=40, spiking_size=30)


def small(seed: int = 0, **kwargs: Any) -> ScalableBioNet:
    return ScalableBioNet(16, 3, seed=seed, hidden_size=48, spiking_size=40, **kwargs)


def aiva_thresholds(calls: int) -> List[float]:
    """The threshold each of AIVA's first ``calls`` calls tests at."""
    out, t = [], 1.0
    for _ in range(calls):
        t = max(0.3, t * 0.98)
        out.append(t)
    return out


# ---------------------------------------------------------------------------------------
# the agent: a fresh swap decides, and decides as the NumPy core does
# ---------------------------------------------------------------------------------------
def test_initialisation_is_aivas() -> None:
    core = ScalableBioNet(1024, 2, seed=5)
    bio = BioNeuron(1024, 2, seed=5)          # AIVA's draws: the same seed, the same weights
    for mine, theirs in ((core.fc1, bio.fc1), (core.spiking1.weights, bio.spiking1.weights),
                         (core.fc2, bio.fc2)):
        np.testing.assert_array_equal(mine, theirs.astype(np.float32))
    assert abs(core.fc1.std() - 1) < 0.01 and abs(core.fc2.std() - 1) < 0.1
    assert abs(core.spiking1.weights.std() * np.sqrt(2048 / 2) - 1) < 0.01
    x = unit_rows(64, 1024, seed=0)
    assert 0.9 < (x @ core.fc1).std() < 1.1            # AIVANet's LeCun init: ~0.03 here
    assert (x @ AIVANet(1024, 2, seed=5).state_dict()["fc1.weight"]).std() < 0.05
    assert not np.array_equal(small(seed=1).fc1, small(seed=2).fc1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_fresh_agent_decides_like_the_numpy_core(seed: int) -> None:
    """BioNeuronRAGAgent: ScalableBioNet(1024, 2), 20 unit-norm tasks, the 0.7 check."""
    core, check = ScalableBioNet(1024, 2, seed=seed), AntiHallucinationModule(0.7)
    numpy_core = AivaCore(BioNeuron(1024, 2, seed=seed).state_dict())
    tasks = unit_rows(20, 1024, seed=100 + seed)
    ours = [(int(np.argmax(p)), check.check(p)[0]) for p in map(core.forward, tasks)]
    theirs = [(int(np.argmax(p)), check.check(p)[0]) for p in numpy_core.run(tasks)]
    assert sum(passed for _, passed in ours) >= 10        # it decides (uniform: never)
    assert sum(a == b for a, b in zip(ours, theirs)) >= 19


@pytest.mark.parametrize("refractory_period, call_interval", [(0, 1.0), (2, 0.02)])
def test_300_calls_give_the_numpy_cores_choices(refractory_period: int,
                                                call_interval: float) -> None:
    """The same weights, assigned as AIVA's loader does; AIVA's refractory period is 0.05 s:
    never met by calls 1 s apart, two calls long at 20 ms apart."""
    weights = aiva_weights(seed=21)
    numpy_core = AivaCore(weights, call_interval=call_interval)
    core = ScalableBioNet(1024, 2, refractory_period=refractory_period)
    core.fc1, core.spiking1.weights, core.fc2 = (weights["fc1"], weights["spiking1_weights"],
                                                 weights["fc2"])
    X = unit_rows(300, 1024, seed=22)
    theirs = numpy_core.run(X).argmax(axis=1)
    same, thresholds = 0, []
    for x, tool in zip(X, theirs):
        same += int(np.argmax(core.forward(x)) == tool)
        thresholds.append(core.spiking1.threshold)
    assert same >= 297, same                  # >= 99% (300/300 measured)
    assert thresholds == aiva_thresholds(300)
    assert thresholds[0] == 0.98 and thresholds[58] > 0.3 and thresholds[59] == 0.3


def test_model_updater_load_model_gives_the_first_decisions(tmp_path: Path) -> None:
    weights = aiva_weights(seed=31)
    src = model_updater_pickle(tmp_path / "model.pkl", weights)
    core = model_updater_load(ScalableBioNet(1024, 2), src)
    X = unit_rows(300, 1024, seed=32)
    got = core.forward(X).argmax(axis=1)      # one call: each row's first decision
    assert (got == AivaCore(weights).first_decisions(X).argmax(axis=1)).sum() >= 297


# ---------------------------------------------------------------------------------------
# the threshold schedule, against the float64 reference
# ---------------------------------------------------------------------------------------
def test_adaptive_threshold_decays_before_each_spike_test() -> None:
    w = firing_weights(SMALL, seed=1)
    core = ScalableBioNet(24, 5, hidden_size=40, spiking_size=30, refractory_period=2)
    core.fc1, core.spiking1.weights, core.fc2 = (w["fc1.weight"], w["spiking.weight"],
                                                 w["fc2.weight"])
    ref = ReferenceNet(w, refractory_period=2)
    steps = 70
    for t, x in zip(aiva_thresholds(steps), safe_inputs(w, (steps, 24), seed=2, threshold=0.9)):
        ref.threshold = t
        np.testing.assert_allclose(core.forward(x), ref.step(x)[0], atol=1e-6, rtol=1e-5)
    assert core.next_threshold == 0.3
    with pytest.raises(ValueError, match="NaN"):
        core.forward(np.full(24, np.nan))
    assert core.next_threshold == 0.3


def test_the_schedule_options() -> None:
    fixed = small(adaptive_threshold=False)
    x = unit_rows(3, 16, seed=0)
    for row in x:
        fixed.forward(row)
    assert fixed.spiking1.threshold == fixed.next_threshold == 0.3    # AIVA's settled one
    given = small(threshold=0.6, threshold_decay=0.5, threshold_floor=0.2)
    seen = []
    for row in x:
        given.forward(row)
        seen.append(given.spiking1.threshold)
    assert seen == [0.6, 0.3, 0.2]
    given.spiking1.threshold = 0.7            # the next call's; decays from there
    given.forward(x[0])
    assert (given.spiking1.threshold, given.next_threshold) == (0.7, 0.35)
    given.adaptive_threshold = False
    given.forward(x[0])
    assert given.spiking1.threshold == 0.7 and "threshold=0.7" in repr(given)
    for bad, error in (({"threshold_decay": 0.0}, ValueError),
                       ({"threshold_decay": 1.5}, ValueError),
                       ({"adaptive_threshold": "yes"}, TypeError),
                       ({"threshold_floor": float("nan")}, ValueError)):
        with pytest.raises(error, match=next(iter(bad))):
            small(**bad)


# ---------------------------------------------------------------------------------------
# the trainer: any batch size after any other, backward, loss falls
# ---------------------------------------------------------------------------------------
def test_forward_takes_any_batch_size_after_any_other() -> None:
    w = firing_weights(SMALL, seed=3)
    core = ScalableBioNet.from_net(AIVANet(**SMALL, refractory_period=2))
    core.net.load_state_dict(w)
    ref = ReferenceNet(w, refractory_period=2)
    X = safe_inputs(w, (80, 24), seed=4)
    for rows in (1, 1, 32, 32, 7, 1, 32):     # a decision, an epoch's batches, its last one
        x = X[:rows] if rows > 1 else X[0]
        if core.net.state_batch_size not in (None, rows):
            ref.reset()                        # a new batch size restarts the state
        got = core.forward(x)
        assert got.shape == ((rows, 5) if rows > 1 else (5,))
        np.testing.assert_allclose(got, ref.step(x).reshape(got.shape), atol=1e-6)
        X = np.roll(X, 3, axis=0)
    state = core.net.get_state()
    with pytest.raises(ValueError, match="NaN"):   # refused: the state is not restarted
        core.forward(np.full((3, 24), np.nan))
    np.testing.assert_array_equal(core.net.get_state(), state)


def test_backward_is_one_sgd_step_of_the_surrogate_gradient() -> None:
    core = small(seed=1)
    X, y = unit_rows(32, 16, seed=2), np.random.default_rng(3).integers(0, 3, 32)
    core.forward(X[0])                         # a decision first: state and schedule move
    state, next_threshold = core.net.get_state(), core.next_threshold
    twin = AIVANet.from_bioneuron(core.state_dict(), threshold=core.spiking1.threshold)
    want_loss, grads = twin.loss_and_grad(X, y)
    before = core.net.state_dict()
    loss = core.backward(X, np.eye(3)[y], 0.05)
    assert loss == pytest.approx(want_loss, rel=1e-6) and loss > 0
    for key, value in core.net.state_dict().items():
        np.testing.assert_allclose(value, before[key] - np.float32(0.05) * grads[key],
                                   rtol=1e-6, atol=1e-7)
        assert not np.array_equal(value, before[key])
    np.testing.assert_array_equal(core.net.get_state(), state)
    assert core.next_threshold == next_threshold
    again = small(seed=1)
    again.forward(X[0])
    assert again.backward(X, y, 0.05) == pytest.approx(loss, rel=1e-6)   # index labels
    np.testing.assert_array_equal(again.fc2, core.fc2)


def test_aivas_training_loop_lowers_the_loss() -> None:
    core = small(seed=0)
    X = unit_rows(100, 16, seed=1)
    y = (X @ np.random.default_rng(2).standard_normal((16, 3))).argmax(axis=1)
    Y = np.eye(3)[y]
    epochs = []
    for _ in range(20):
        losses = []
        for i in range(0, 100, 32):            # 32, 32, 32 and a last batch of 4
            output = core.forward(X[i:i + 32])
            assert output.shape == (len(X[i:i + 32]), 3)
            losses.append(core.backward(X[i:i + 32], Y[i:i + 32], 0.1))
        epochs.append(float(np.mean(losses)))
    assert epochs[-1] < 0.5 * epochs[0], epochs
    assert (core.forward(X).argmax(axis=1) == y).mean() > 0.7


@pytest.mark.parametrize("y, lr, error, message", [
    (np.full((4, 3), 1 / 3), 0.1, ValueError, r"one-hot rows .* row 0 is \[0.33"),
    (np.eye(4)[:, :4], 0.1, ValueError, "3 columns"),
    (np.array([0, 1, 2, 3]), 0.1, ValueError, r"labels in \[0, 3\)"),
    (np.array([0, 1, 2]), 0.1, ValueError, "one label per row"),
    (np.array([0, 1, 2, 0]), 0.0, ValueError, "learning_rate must be > 0"),
    (np.array([0, 1, 2, 0]), 1e39, ValueError, "at most 3.403e"),
    (np.array([0, 1, 2, 0]), -1.0, ValueError, "learning_rate"),
    (np.array([0, 1, 2, 0]), float("nan"), ValueError, "learning_rate"),
    (np.array([0, 1, 2, 0]), "0.1", TypeError, "learning_rate"),
])
def test_backward_validates(y: Any, lr: Any, error: type, message: str,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    core = small()
    before = core.net.state_dict()
    with pytest.raises(error, match=message):
        core.backward(unit_rows(4, 16, seed=0), y, lr)
    for key, value in core.net.state_dict().items():
        np.testing.assert_array_equal(value, before[key])
    huge = {k: np.full_like(v, 1e38) for k, v in before.items()}     # a gradient that overflows
    monkeypatch.setattr(core.net, "loss_and_grad", lambda x, y: (1.0, huge))
    with pytest.raises(FloatingPointError, match="nothing changed"):
        core.backward(unit_rows(4, 16, seed=0), [0, 1, 2, 0], 10.0)
    np.testing.assert_array_equal(core.fc1, before["fc1.weight"])
    monkeypatch.undo()
    assert core.backward(unit_rows(1, 16, seed=0)[0], [0, 1, 0], 0.1) > 0   # one row, one-hot


# ---------------------------------------------------------------------------------------
# weights: assignment (resizes included), races, files
# ---------------------------------------------------------------------------------------
def test_assigning_new_shapes_rebuilds_the_net() -> None:
    core = small(seed=0, refractory_period=1)
    core.forward(unit_rows(1, 16, seed=0)[0])
    core.fc1 = np.ones((10, 48))              # a new input size chains at once
    assert (core.input_size, core.net.input_size, core.total_params) == (
        10, 10, 10 * 48 + 48 * 40 + 40 * 3)
    rng = np.random.default_rng(1)
    new = {"fc1": rng.standard_normal((10, 20)), "spiking1_weights": rng.standard_normal((20, 40)),
           "fc2": rng.standard_normal((40, 6))}
    core.fc1 = new["fc1"]                     # hidden 48 -> 20: waits for spiking1.weights
    assert core.fc1.shape == (10, 20) and core.net.hidden_size == 48
    with pytest.raises(ValueError, match=r"do not chain yet .*fc1 \(10, 20\), "
                                         r"spiking1.weights \(48, 40\)"):
        core.forward(np.zeros(10))
    core.spiking1.weights = new["spiking1_weights"]
    assert (core.hidden_size, core.spiking_size, core.num_tools) == (20, 40, 3) == (
        core.net.hidden_size, core.net.spiking_size, core.net.num_tools)
    assert core.net.refractory_period == 1 and core.spiking1.params == 800
    core.fc2 = new["fc2"]
    assert core.num_tools == 6 and core.hidden_size_2 == 40
    x = unit_rows(5, 10, seed=2)
    twin = ScalableBioNet.from_bioneuron(new, refractory_period=1)
    twin.set_threshold(core.next_threshold)
    np.testing.assert_array_equal(core.forward(x), twin.forward(x))
    core.fc2 = np.ones((3, 5))                # a wrong shape is held, and named, too
    with pytest.raises(ValueError, match=r"fc2 \(3, 5\)"):
        core.save_weights("never-written.npz")
    core.fc2 = new["fc2"]
    core.forward(x)
    with pytest.raises(ValueError, match=r"ScalableBioNet.fc2 contains NaN"):
        core.fc2 = np.full((40, 6), np.nan)
    with pytest.raises(ValueError, match=r"ScalableBioNet.fc1 must be a non-empty 2-D"):
        core.fc1 = np.ones(10)
    np.testing.assert_array_equal(core.fc2, new["fc2"].astype(np.float32))


@pytest.mark.parametrize("threads_per_weight", [1, 4])
def test_racing_setters_lose_no_update(threads_per_weight: int) -> None:
    """Each round, threads assign fc1, spiking1.weights and fc2 at once; afterwards each
    weight holds one of the arrays assigned to it that round, never the round before's."""
    # Large enough that copying the weights releases the GIL mid-assignment: without the
    # lock, most rounds at this size lose an update.
    core = ScalableBioNet(64, 3, seed=0, hidden_size=256, spiking_size=128)
    names = ["fc1", "spiking1.weights", "fc2"] * threads_per_weight
    shapes = {"fc1": (64, 256), "spiking1.weights": (256, 128), "fc2": (128, 3)}

    def assign(name: str, value: np.ndarray) -> None:
        barrier.wait()
        if name == "spiking1.weights":
            core.spiking1.weights = value
        else:
            setattr(core, name, value)

    for round_ in range(100 if threads_per_weight == 1 else 40):
        values = [np.full(shapes[n], round_ * 100 + i, np.float32) for i, n in enumerate(names)]
        barrier = threading.Barrier(len(names))
        threads = [threading.Thread(target=assign, args=a) for a in zip(names, values)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for name in shapes:
            now = (core.spiking1.weights if name == "spiking1.weights" else getattr(core, name))
            assigned = {float(v[0, 0]) for n, v in zip(names, values) if n == name}
            assert float(now[0, 0]) in assigned, (round_, name)


def test_save_weights_and_load_weights(tmp_path: Path) -> None:
    core = small(seed=2)
    x = unit_rows(4, 16, seed=0)
    for name in ("w.npz", "w.safetensors", "w.weights"):   # any other name: npz inside
        if name.endswith("safetensors"):
            pytest.importorskip("safetensors")
        core.save_weights(tmp_path / name)
        other = ScalableBioNet(8, 2, seed=9, hidden_size=12, spiking_size=10)
        other.load_weights(tmp_path / name)               # other sizes: resized
        np.testing.assert_array_equal(other.forward(x), small(seed=2).forward(x))
    assert ScalableBioNet.load(tmp_path / "w.npz").net.optimizer.step == 0
    weights = BioNeuron(16, 3, hidden_size=48, spiking_size=40, seed=3).state_dict()
    src = model_updater_pickle(tmp_path / "aiva.pkl", weights)
    with pytest.raises(ValueError, match="arbitrary code.*trust_pickle=True"):
        core.load_weights(src)
    core.load_weights(src, trust_pickle=True)
    np.testing.assert_array_equal(core.fc2, weights["fc2"].astype(np.float32))
    with pytest.raises(FileNotFoundError):
        core.load_weights(tmp_path / "missing.npz")


# ---------------------------------------------------------------------------------------
# call shapes, validation, the net underneath
# ---------------------------------------------------------------------------------------
def test_scalable_bionet_call_shapes() -> None:
    core = ScalableBioNet(512, 20)
    assert core.total_params == 3_166_208
    assert (core.params_fc1, core.params_spiking1, core.params_fc2) == (
        512 * 2048, 2048 * 1024, 1024 * 20)
    assert (core.hidden_size_1, core.hidden_size_2) == (2048, 1024)
    assert (core.input_size, core.num_tools, core.hidden_size, core.spiking_size) == (
        512, 20, 2048, 1024)
    assert core.spiking1.params == core.params_spiking1 and core.spiking_layer is core.spiking1
    x = np.random.default_rng(0).standard_normal(512)
    probs = core.forward(x)
    assert type(probs) is np.ndarray and probs.dtype == np.float32 and probs.shape == (20,)
    assert abs(float(probs.sum()) - 1.0) < 1e-5 and (probs >= 0).all()
    assert core(x).shape == (20,)
    assert isinstance(core.net, AIVANet)


@pytest.mark.parametrize("args, kwargs, error, message", [
    ((0, 20), {}, ValueError, "input_size"),
    ((512, 0), {}, ValueError, "num_tools"),
    (("512", 20), {}, TypeError, "input_size must be an int"),
    ((512, 2.5), {}, TypeError, "num_tools must be an int"),
    ((512, 20, -1), {}, ValueError, "seed"),
    ((512, 20), {"threshold": float("nan")}, ValueError, "threshold"),
    ((512, 20), {"refractory_period": -1}, ValueError, "refractory_period"),
    ((512, 20), {"device": "tpu"}, ValueError, "device"),
])
def test_constructor_validates(args: Any, kwargs: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        ScalableBioNet(*args, **kwargs)


def test_forward_validates_input() -> None:
    core = ScalableBioNet(8, 3, seed=0)
    with pytest.raises(ValueError, match=r"x must have shape \(8,\)"):
        core.forward(np.zeros(7))
    with pytest.raises(ValueError, match="NaN"):
        core.forward(np.full(8, np.nan))
    with pytest.raises(TypeError, match="real numbers"):
        core.forward(["a"] * 8)


def test_weights_in_aiva_names() -> None:
    core = ScalableBioNet(8, 3, seed=0, hidden_size=6, spiking_size=5)
    sd = core.net.state_dict()
    for mine, key in ((core.fc1, "fc1"), (core.spiking1.weights, "spiking"), (core.fc2, "fc2")):
        np.testing.assert_array_equal(mine, sd[f"{key}.weight"])
    with pytest.raises(ValueError, match="read-only"):
        core.fc1[0, 0] = 1.0                    # would silently change nothing: refused
    core.fc1 = np.ones((8, 6))
    np.testing.assert_array_equal(core.net.state_dict()["fc1.weight"], np.ones((8, 6)))
    core.spiking1.weights = core.spiking1.weights * 2
    np.testing.assert_array_equal(core.net.state_dict()["spiking.weight"], sd["spiking.weight"] * 2)
    assert set(core.state_dict()) == {"fc1", "spiking1_weights", "fc2"}
    back = AIVANet.from_bioneuron(core, threshold=core.spiking1.threshold)
    np.testing.assert_array_equal(back.state_dict()["fc1.weight"], np.ones((8, 6)))
    assert (core.spiking1.input_size, core.spiking1.output_size) == (6, 5)


def test_training_saving_and_pickling_go_through_net(tmp_path: Path) -> None:
    core = ScalableBioNet(8, 3, seed=0, hidden_size=16, spiking_size=12)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((32, 8)), rng.integers(0, 3, 32)
    core.forward(X[0])
    before = core.fc2
    core.net.reset_state()                     # the net's own contract: reset, then batch 32
    core.net.train_step(X, y)
    assert not np.array_equal(core.fc2, before)
    core.save(tmp_path / "core.npz")
    again = ScalableBioNet.load(tmp_path / "core.npz")
    also = ScalableBioNet.from_file(tmp_path / "core.npz")
    copy = pickle.loads(pickle.dumps(core))
    for other in (again, also, copy):
        np.testing.assert_array_equal(other.net.predict_proba(X), core.net.predict_proba(X))
        assert other.net.optimizer.step == 1
    assert copy.next_threshold == core.next_threshold and copy.adaptive_threshold
    assert not again.adaptive_threshold and again.next_threshold == core.net.threshold
    with pytest.raises(TypeError, match="net must be an aiva_cy.AIVANet"):
        ScalableBioNet.from_net(BioNeuron(**SMALL, seed=0))   # type: ignore[arg-type]
    wrapped = ScalableBioNet.from_net(core.net)
    assert wrapped.net is core.net


def test_from_bioneuron_in_memory() -> None:
    bio = BioNeuron(**SMALL, seed=4)
    core = ScalableBioNet.from_bioneuron(bio.state_dict())
    net = AIVANet.from_bioneuron(bio, threshold=0.98, refractory_period=0)
    x = np.random.default_rng(0).standard_normal(SMALL["input_size"])
    np.testing.assert_array_equal(core.forward(x), net.forward(x))
    bio.spiking1.threshold = 0.5               # a live layer's threshold: the next call decays it
    assert ScalableBioNet.from_bioneuron(bio).next_threshold == 0.49


def test_a_cuda_net_answers_in_numpy(cuda: Any) -> None:
    w = firing_weights(SMALL, seed=0)
    cpu = ScalableBioNet(24, 5, hidden_size=40, spiking_size=30)
    gpu = ScalableBioNet(24, 5, hidden_size=40, spiking_size=30, device="cuda")
    cpu.net.load_state_dict(w)
    gpu.net.load_state_dict(w)
    assert gpu.net.device == "cuda"
    xs = safe_inputs(w, (3, 24), seed=1, threshold=0.98)
    for x in xs:                                  # three steps of one stream, 0.98 first
        got = gpu.forward(x)
        assert type(got) is np.ndarray and got.shape == (5,)
        np.testing.assert_allclose(got, cpu.forward(x), atol=1e-5, rtol=0)
    assert gpu.net.threshold == cpu.net.threshold == aiva_thresholds(3)[-1]
    for name in ("fc1", "fc2"):
        assert type(getattr(gpu, name)) is np.ndarray
        np.testing.assert_array_equal(getattr(gpu, name), getattr(cpu, name))
    assert all(type(v) is np.ndarray for v in gpu.state_dict().values())
    gpu.fc2 = cpu.fc2 * 2
    np.testing.assert_array_equal(gpu.fc2, cpu.fc2 * 2)
    cpu.fc2 = cpu.fc2 * 2
    labels = np.array([0, 1, 2])
    assert gpu.backward(xs, labels, 0.1) == pytest.approx(cpu.backward(xs, labels, 0.1),
                                                          rel=1e-5)
    np.testing.assert_allclose(gpu.fc2, cpu.fc2, atol=1e-5)
    # check() takes the net's own (CuPy) output as well.
    passed, confidence = AntiHallucinationModule(0.5).check(gpu.net.predict_proba(xs[0]))
    assert confidence == pytest.approx(float(gpu.net.predict_proba(xs[0]).get().max()))


# ---------------------------------------------------------------------------------------
# README: the integration section's Python blocks run as written
# ---------------------------------------------------------------------------------------
_needs_readme = pytest.mark.skipif(not (REPO / "README.md").exists(),
                                   reason="the README is not next to these tests (installed copy)")


def _integration_blocks() -> List[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("## Integrating with AIVA")
    end = text.find("\n## ", start + 1)
    section = text[start:end if end != -1 else len(text)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@_needs_readme
def test_readme_integration_blocks_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = _integration_blocks()
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "__readme__"})


@_needs_readme
def test_readme_convert_command_is_the_real_one() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Integrating with AIVA"):]
    assert "aiva-cy convert" in section and "--trust-pickle" in section
