"""AIVA's NumPy decision core and weight files, as the drop-in and converter tests need them.

Written from the description of AIVA's code, not from its files: the NumPy BioNeuron in
aiva_cy.bench supplies the weights (fc1, fc2 ~ N(0, 1), spiking ~ N(0, 2 / hidden)); this
module adds what AIVA's layer does that the benchmark's copy does not model exactly:

* the threshold starts at 1.0 and is multiplied by 0.98, down to 0.3, BEFORE the spike test of
  each call (the first call tests at 0.98);
* the refractory period is 0.05 s of ``time.time()``: here a fake clock that advances by
  ``call_interval`` seconds per call, so the wall-clock behaviour is reproducible.

and the two savers: ``ModelUpdater`` pickles the weight dict with plain metadata,
``AIModelManager._save_model`` adds a ``metadata`` dict that holds a ``datetime``.
"""
from __future__ import annotations

import datetime
import pickle
from pathlib import Path
from typing import Any, Dict, Mapping

import numpy as np

from aiva_cy.bench.bioneuron_numpy import BioNeuron, softmax

THRESHOLD_START, DECAY, FLOOR, REFRACTORY_SECONDS = 1.0, 0.98, 0.3, 0.05


def aiva_weights(seed: int, input_size: int = 1024, num_tools: int = 2) -> Dict[str, np.ndarray]:
    """The float64 weight dict AIVA's ScalableBioNet(input_size, num_tools) pickles."""
    return BioNeuron(input_size, num_tools, seed=seed).state_dict()


def unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    """Unit-norm feature vectors, as AIVA's agent feeds its decision core."""
    x = np.random.default_rng(seed).standard_normal((n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class AivaCore:
    """AIVA's NumPy ScalableBioNet forward, one vector per call, float64."""

    def __init__(self, weights: Mapping[str, np.ndarray], call_interval: float = 1.0) -> None:
        self.fc1 = np.asarray(weights["fc1"], dtype=np.float64)
        self.spiking = np.asarray(weights["spiking1_weights"], dtype=np.float64)
        self.fc2 = np.asarray(weights["fc2"], dtype=np.float64)
        self.threshold = THRESHOLD_START
        self.call_interval = call_interval
        self.now = 1000.0                                      # the fake time.time()
        self.last_spike_time = np.zeros(self.spiking.shape[1])   # 0.0: never fired

    def forward(self, x: np.ndarray) -> np.ndarray:
        """One call on one vector (input_size,)."""
        return self._step(np.tanh(np.asarray(x, dtype=np.float64) @ self.fc1) @ self.spiking)

    def run(self, X: np.ndarray) -> np.ndarray:
        """``forward`` on each row of X in turn, (T, num_tools); the membrane potentials do
        not depend on the state, so they are computed in one product."""
        V = np.tanh(np.asarray(X, dtype=np.float64) @ self.fc1) @ self.spiking
        return np.array([self._step(v) for v in V])

    def _step(self, potential: np.ndarray) -> np.ndarray:
        self.threshold = max(FLOOR, self.threshold * DECAY)   # before the spike test
        self.now += self.call_interval
        spikes = (potential > self.threshold) & (
            self.now - self.last_spike_time > REFRACTORY_SECONDS)
        self.last_spike_time[spikes] = self.now
        return softmax(spikes.astype(np.float64) @ self.fc2)

    def first_decisions(self, X: np.ndarray) -> np.ndarray:
        """Each row's probabilities as the first call of a freshly built core (0.98)."""
        v = np.tanh(np.asarray(X, dtype=np.float64) @ self.fc1) @ self.spiking
        return softmax((v > THRESHOLD_START * DECAY).astype(np.float64) @ self.fc2)


def model_updater_pickle(path: Path, weights: Mapping[str, np.ndarray]) -> Path:
    """What ModelUpdater saves: the weight dict and plain metadata."""
    payload: Dict[str, Any] = {**weights, "version": 3, "timestamp": 1714567890.25,
                               "training_samples": 1200, "learning_rate": 0.001}
    path.write_bytes(pickle.dumps(payload))
    return path


def model_manager_pickle(path: Path, weights: Mapping[str, np.ndarray],
                         protocol: int = pickle.HIGHEST_PROTOCOL) -> Path:
    """What AIModelManager._save_model saves: the weights and a metadata dict with dates."""
    payload: Dict[str, Any] = {**weights, "metadata": {
        "saved_at": datetime.datetime(2024, 5, 1, 12, 30, 5, 250),
        "model_version": "2.1", "accuracy": 0.93,
        "history": [{"day": datetime.date(2024, 4, 30),
                     "took": datetime.timedelta(minutes=3, seconds=2)}]}}
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    return path


def model_updater_load(model: Any, path: Path) -> Any:
    """ModelUpdater.load_model: a plain pickle.load, then attribute assignment."""
    with open(path, "rb") as f:
        data = pickle.load(f)
    model.fc1 = data["fc1"]
    model.spiking1.weights = data["spiking1_weights"]
    model.fc2 = data["fc2"]
    return model
