"""AIVANet.calibrate_threshold and the live threshold change under it (aiva_cy._threshold)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aiva_cy import AIVANet
from aiva_cy.reference import ReferenceNet

from conftest import SMALL, firing_weights
from test_cuda_engine import cuda  # noqa: F401  (fixture: NumPy stand-in, or a real GPU)


def fired(net: AIVANet, X: np.ndarray, threshold: float) -> np.ndarray:
    """The float64 reference's spikes of each row of X, one step from an empty state."""
    return ReferenceNet(net.state_dict(), threshold=threshold).forward_cache(X)["raw"]


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
@pytest.mark.parametrize("rows", [1, 7, 33])
@pytest.mark.parametrize("rate", [0.05, 0.2, 0.5])
def test_the_threshold_fires_the_asked_fraction(scale: float, rows: int, rate: float) -> None:
    net = AIVANet(**SMALL, seed=rows)
    X = np.random.default_rng(rows).standard_normal((rows, SMALL["input_size"])) * scale
    threshold = net.calibrate_threshold(X, firing_rate=rate)
    assert net.threshold == threshold and isinstance(threshold, float)
    n = rows * SMALL["spiking_size"]
    want = max(1, round(rate * n))
    # The threshold sits halfway between two neighbouring potentials: float64 agrees.
    assert fired(net, X, threshold).sum() == want
    ref = ReferenceNet(net.state_dict(), threshold=threshold)
    np.testing.assert_allclose(net.predict_proba(X), ref.forward_cache(X)["p"], atol=1e-5)


def test_a_default_net_on_unit_norm_inputs_fires_after_calibration() -> None:
    """AIVA's agent feeds unit-norm vectors: with aiva_cy's initialisation the membrane
    potentials stay far below 0.5 and nothing fires; calibrated, a tenth does."""
    net = AIVANet(seed=0)
    X = np.random.default_rng(1).standard_normal((64, 512))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    assert fired(net, X, net.threshold).mean() == 0
    threshold = net.calibrate_threshold(X, firing_rate=0.1)
    assert 0 < threshold < 0.5
    assert fired(net, X, threshold).mean() == pytest.approx(0.1, abs=1e-4)
    held_out = np.random.default_rng(2).standard_normal((64, 512))
    held_out /= np.linalg.norm(held_out, axis=1, keepdims=True)
    assert 0.05 < fired(net, held_out, threshold).mean() < 0.2   # a rate, not a memory


def test_weights_optimizer_and_state_are_kept(tmp_path: Path) -> None:
    net = AIVANet(**SMALL, seed=0, refractory_period=2)
    net.load_state_dict(firing_weights(SMALL, seed=0))
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((8, 24)), rng.integers(0, 5, 8)
    net.train_step(X, y)
    net.forward(X)
    weights, state, optimizer = net.state_dict(), net.get_state(), net.optimizer.state_dict()
    threshold = net.calibrate_threshold(X, 0.3)
    for key, value in net.state_dict().items():
        np.testing.assert_array_equal(value, weights[key])
    np.testing.assert_array_equal(net.get_state(), state)
    after = net.optimizer.state_dict()
    assert after["step"] == optimizer["step"] == 1
    for moment in ("exp_avg", "exp_avg_sq"):
        for key in after[moment]:
            np.testing.assert_array_equal(after[moment][key], optimizer[moment][key])
    net.train_step(X, y)                      # training goes on, with the new threshold
    assert net.optimizer.step == 2
    net.save(tmp_path / "n.npz")
    assert AIVANet.load(tmp_path / "n.npz").threshold == threshold
    # The calibrated net steps as a net built with that threshold does.
    fresh = AIVANet(**SMALL, seed=0, refractory_period=2, threshold=threshold)
    fresh.load_state_dict(net.state_dict())
    np.testing.assert_array_equal(fresh.predict_proba(X), net.predict_proba(X))


@pytest.mark.parametrize("kwargs, error, message", [
    ({"firing_rate": 0.0}, ValueError, r"firing_rate must be in \(0, 1\)"),
    ({"firing_rate": 1.0}, ValueError, "firing_rate must be in"),
    ({"firing_rate": float("nan")}, ValueError, "firing_rate"),
    ({"firing_rate": True}, TypeError, "firing_rate must be a real number"),
    ({"firing_rate": "0.1"}, TypeError, "firing_rate"),
    ({"X": np.zeros((3, 7))}, ValueError, r"X must have shape \(24,\) or \(rows >= 1, 24\)"),
    ({"X": np.zeros((0, 24))}, ValueError, "X must have shape"),
    ({"X": np.full((2, 24), np.inf)}, ValueError, "X contains NaN or Inf"),
    ({"X": [["a"] * 24]}, TypeError, "X must hold real numbers"),
])
def test_arguments_are_validated(kwargs: Any, error: type, message: str) -> None:
    net = AIVANet(**SMALL, seed=0)
    args = {"X": np.ones((2, 24)), "firing_rate": 0.1, **kwargs}
    with pytest.raises(error, match=message):
        net.calibrate_threshold(**args)
    assert net.threshold == 0.5


def test_a_cuda_net_is_calibrated_the_same(cuda: Any) -> None:
    w = firing_weights(SMALL, seed=3)
    cpu = AIVANet(**SMALL, seed=0)
    gpu = AIVANet(**SMALL, seed=0, device="cuda")
    cpu.load_state_dict(w)
    gpu.load_state_dict(w)
    X = np.random.default_rng(4).standard_normal((9, 24))
    t = cpu.calibrate_threshold(X, 0.25)
    assert gpu.calibrate_threshold(X, 0.25) == pytest.approx(t, rel=1e-5)
    assert gpu.device == "cuda"
    got = gpu.predict_proba(X)
    np.testing.assert_allclose(got.get() if hasattr(got, "get") else got, cpu.predict_proba(X),
                               atol=1e-5)
