"""The NumPy BioNeuron as AIVA ran it: a faithful re-creation for benchmarking.

This module reproduces the original pure-NumPy decision core of AIVA so that
``aiva_cy`` can be measured against it side by side (docs/contract.md, "Speed") and so that
``AIVANet.from_bioneuron`` has a realistic source object to import weights from.
It deliberately keeps the original's behaviour, including the parts that the
``aiva_cy`` spec calls wrong:

* float64 weights everywhere;
* ``fc1`` and ``fc2`` drawn from N(0, 1), the spiking layer from
  N(0, 2 / hidden_size) (std ``sqrt(2 / hidden_size)``);
* ``forward`` takes exactly ONE 1-D feature vector (no batch mode);
* the firing threshold starts at 1.0, is compared with ``>`` and is multiplied
  by 0.98 on every call down to a floor of 0.3 (an "adaptive" threshold);
* the refractory period is 0.05 s of wall-clock time measured with
  ``time.time()``, so the output depends on how fast the caller is;
* no training at all.

Two switches exist only so that tests can pin the behaviour down:
``adaptive_threshold=False`` keeps the threshold fixed, and
``refractory_period=0.0`` disables the refractory mask entirely.
"""

from __future__ import annotations

import time
from typing import Dict, Optional

import numpy as np

__all__ = ["BiologicalSpikingLayer", "BioNeuron", "forward_batch_loop", "softmax"]

#: Threshold dynamics of the original layer.
INITIAL_THRESHOLD: float = 1.0
THRESHOLD_DECAY: float = 0.98
THRESHOLD_FLOOR: float = 0.3
#: Refractory period of the original layer, in wall-clock seconds.
REFRACTORY_SECONDS: float = 0.05


def softmax(z: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis."""
    e = np.exp(z - np.max(z, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


class BiologicalSpikingLayer:
    """Threshold-spiking layer with an adaptive threshold and a wall-clock refractory period.

    Attributes:
        weights: float64 array (input_size, output_size), "x @ W" layout.
        threshold: current firing threshold (decays on every call when adaptive).
        refractory_period: seconds a neuron stays silent after it fired; 0.0 disables.
        last_spike_time: ``time.time()`` of each neuron's last spike (0.0 = never).
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        *,
        rng: Optional[np.random.Generator] = None,
        adaptive_threshold: bool = True,
        refractory_period: float = REFRACTORY_SECONDS,
    ) -> None:
        rng = rng if rng is not None else np.random.default_rng()
        # He-style scaling by the fan-in, as in the original.
        self.weights: np.ndarray = rng.standard_normal((input_size, output_size)) * np.sqrt(
            2.0 / input_size
        )
        self.threshold: float = INITIAL_THRESHOLD
        self.adaptive_threshold: bool = bool(adaptive_threshold)
        self.refractory_period: float = float(refractory_period)
        self.last_spike_time: np.ndarray = np.zeros(output_size, dtype=np.float64)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """One call: returns 0/1 spikes (float64, shape (output_size,))."""
        potential = x @ self.weights
        spikes = potential > self.threshold
        if self.refractory_period > 0.0:
            # Vectorised refractory mask: a neuron may fire only if its last spike
            # is more than `refractory_period` seconds in the past.
            now = time.time()
            spikes &= (now - self.last_spike_time) > self.refractory_period
            self.last_spike_time[spikes] = now
        if self.adaptive_threshold:
            # The original lowers the threshold on every call, whatever the input.
            self.threshold = max(THRESHOLD_FLOOR, self.threshold * THRESHOLD_DECAY)
        return spikes.astype(np.float64)


class BioNeuron:
    """AIVA's NumPy decision core: tanh -> spiking layer -> softmax, one vector per call."""

    def __init__(
        self,
        input_size: int = 512,
        num_tools: int = 20,
        hidden_size: int = 2048,
        spiking_size: int = 1024,
        seed: Optional[int] = None,
        *,
        adaptive_threshold: bool = True,
        refractory_period: float = REFRACTORY_SECONDS,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.input_size = int(input_size)
        self.num_tools = int(num_tools)
        self.hidden_size = int(hidden_size)
        self.spiking_size = int(spiking_size)
        self.fc1: np.ndarray = rng.standard_normal((input_size, hidden_size))
        self.spiking1 = BiologicalSpikingLayer(
            hidden_size,
            spiking_size,
            rng=rng,
            adaptive_threshold=adaptive_threshold,
            refractory_period=refractory_period,
        )
        self.fc2: np.ndarray = rng.standard_normal((spiking_size, num_tools))

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Probabilities (num_tools,) for ONE feature vector of shape (input_size,)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 1 or x.shape[0] != self.input_size:
            raise ValueError(
                f"BioNeuron.forward: x must be a 1-D vector of length {self.input_size}, "
                f"got shape {x.shape}"
            )
        h = np.tanh(x @ self.fc1)
        spikes = self.spiking1.forward(h)
        return softmax(spikes @ self.fc2)

    __call__ = forward

    def state_dict(self) -> Dict[str, np.ndarray]:
        """Copies of the weights under the keys ``AIVANet.from_bioneuron`` accepts."""
        return {
            "fc1": self.fc1.copy(),
            "spiking1_weights": self.spiking1.weights.copy(),
            "fc2": self.fc2.copy(),
        }


def forward_batch_loop(net: BioNeuron, X: np.ndarray) -> np.ndarray:
    """What a user of the BioNeuron has to write for a batch: a Python loop over rows.

    Returns an array (len(X), num_tools). Each row advances the net's threshold and
    refractory state, exactly as consecutive ``forward`` calls would.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"forward_batch_loop: X must be 2-D (batch, input_size), got shape {X.shape}")
    out = np.empty((X.shape[0], net.num_tools), dtype=np.float64)
    for i in range(X.shape[0]):
        out[i] = net.forward(X[i])
    return out
