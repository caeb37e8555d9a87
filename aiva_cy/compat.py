"""Drop-in replacements for AIVA's NumPy decision core, backed by :class:`aiva_cy.AIVANet`.

AIVA builds its decision core as ``ScalableBioNet(input_size, num_tools)``, calls
``forward(x)`` on one feature vector and passes the probabilities to
``AntiHallucinationModule(confidence_threshold=0.7).check(probs)``.  The classes here keep
those call shapes and attribute names, so switching is one import::

    from aiva_cy.compat import ScalableBioNet, AntiHallucinationModule

``ScalableBioNet.net`` is the :class:`AIVANet` underneath: train, save and move it there.
What behaves differently from the NumPy version (step-counted refractory period, a fixed
threshold, float32, batches) is tabulated in the README, "Integrating with AIVA".
"""
from __future__ import annotations

import logging
import math
import numbers
import os
import time
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from aiva_cy.net import AIVANet

__all__ = ["AntiHallucinationModule", "ScalableBioNet", "SpikingLayerView"]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]


def _host(a: Any) -> np.ndarray:
    """A NumPy array from a NumPy or CuPy one (a CUDA net answers with CuPy arrays)."""
    return a.get() if type(a).__module__.startswith("cupy") else np.asarray(a)


def _read_only(a: Any) -> np.ndarray:
    # A copy that refuses item assignment: writing into it would change nothing in the net.
    out = np.array(_host(a), dtype=np.float32, copy=True)
    out.flags.writeable = False
    return out


_WEIGHT_KEYS = {"fc1": "fc1.weight", "spiking1.weights": "spiking.weight", "fc2": "fc2.weight"}


class SpikingLayerView:
    """``net.spiking1`` as AIVA's ``BiologicalSpikingLayer`` exposes it: ``weights``,
    ``threshold``, ``refractory_period`` (in steps here), ``params``."""

    def __init__(self, owner: "ScalableBioNet") -> None:
        self._owner = owner

    @property
    def weights(self) -> np.ndarray:
        """(hidden, spiking) float32, read-only copy; assign a new array to change it."""
        return self._owner._get("spiking1.weights")

    @weights.setter
    def weights(self, value: Any) -> None:
        self._owner._set("spiking1.weights", value)

    @property
    def threshold(self) -> float:
        """Fixed spike threshold (a spike fires at potential >= threshold)."""
        return self._owner.net.threshold

    @property
    def refractory_period(self) -> int:
        """Steps a neuron stays silent after it fired (AIVA's is in seconds)."""
        return self._owner.net.refractory_period

    @property
    def input_size(self) -> int:
        return self._owner.net.hidden_size

    @property
    def output_size(self) -> int:
        return self._owner.net.spiking_size

    @property
    def params(self) -> int:
        return self._owner.net.hidden_size * self._owner.net.spiking_size

    def __repr__(self) -> str:
        return (f"SpikingLayerView({self.input_size} -> {self.output_size}, threshold="
                f"{self.threshold}, refractory_period={self.refractory_period} steps)")


class ScalableBioNet:
    """AIVA's ``ScalableBioNet`` (input → 2048 tanh → 1024 spiking → tools, softmax) on aiva_cy.

    Parameters
    ----------
    input_size, num_tools : int
        Features in, tools out.
    seed : int or None
        Seed for the initial weights; the same seed gives the same weights.
    hidden_size, spiking_size, threshold, refractory_period, device :
        Keyword-only, passed to :class:`AIVANet` (defaults 2048, 1024, 0.5, 2 steps, "cpu").

    ``forward(x)`` takes one vector (input_size,) and returns the probabilities (num_tools,)
    as a float32 NumPy array; a batch (B, input_size) returns (B, num_tools).  Each call is
    one time step of the refractory state, as in AIVA; :meth:`reset_state` empties it.
    """

    def __init__(self, input_size: int, num_tools: int, seed: Optional[int] = None, *,
                 hidden_size: int = 2048, spiking_size: int = 1024, threshold: float = 0.5,
                 refractory_period: int = 2, device: str = "cpu") -> None:
        self._net = AIVANet(input_size, num_tools, hidden_size=hidden_size,
                            spiking_size=spiking_size, threshold=threshold,
                            refractory_period=refractory_period, seed=seed, device=device)
        self._spiking1 = SpikingLayerView(self)

    # -- other constructors ----------------------------------------------------------------
    @classmethod
    def from_net(cls, net: AIVANet) -> "ScalableBioNet":
        """Wrap an existing :class:`AIVANet` (not copied: both names see the same net)."""
        if not isinstance(net, AIVANet):
            raise TypeError(f"net must be an aiva_cy.AIVANet, got {type(net).__name__}")
        self = cls.__new__(cls)
        self._net = net
        self._spiking1 = SpikingLayerView(self)
        return self

    @classmethod
    def load(cls, path: PathLike, *, device: str = "cpu") -> "ScalableBioNet":
        """Read a checkpoint: one written by ``aiva-cy convert``, ``AIVANet.save`` or
        :meth:`save` (``.npz`` or ``.safetensors``)."""
        return cls.from_net(AIVANet.load(path, device=device))

    from_file = load

    @classmethod
    def from_bioneuron(cls, obj: Any, *, threshold: Optional[float] = None,
                       **kwargs: Any) -> "ScalableBioNet":
        """Weights from a NumPy BioNeuron object or its weight dict (already in memory);
        see :meth:`AIVANet.from_bioneuron`.  For a pickle file, use ``aiva-cy convert``."""
        return cls.from_net(AIVANet.from_bioneuron(obj, threshold=threshold, **kwargs))

    def save(self, path: PathLike, *, include_optimizer: bool = True) -> None:
        """Write the net to one file, atomically (see :meth:`AIVANet.save`)."""
        self._net.save(path, include_optimizer=include_optimizer)

    # -- the net and its sizes ---------------------------------------------------------------
    @property
    def net(self) -> AIVANet:
        """The :class:`AIVANet` doing the work: train (``fit``, ``train_step``), save, move."""
        return self._net

    input_size = property(lambda self: self._net.input_size, doc="Features per input.")
    num_tools = property(lambda self: self._net.num_tools, doc="Tools (outputs).")
    hidden_size = property(lambda self: self._net.hidden_size, doc="Width of fc1.")
    spiking_size = property(lambda self: self._net.spiking_size,
                            doc="Neurons in the spiking layer.")
    # AIVA's names for the two widths.
    hidden_size_1 = property(lambda self: self._net.hidden_size, doc="AIVA's name: fc1's width.")
    hidden_size_2 = property(lambda self: self._net.spiking_size,
                             doc="AIVA's name: the spiking layer's width.")

    @property
    def params_fc1(self) -> int:
        return self.input_size * self.hidden_size

    @property
    def params_spiking1(self) -> int:
        return self.hidden_size * self.spiking_size

    @property
    def params_fc2(self) -> int:
        return self.spiking_size * self.num_tools

    @property
    def total_params(self) -> int:
        """Number of weights (there are no biases)."""
        return self._net.num_parameters

    # -- weights in AIVA's names -------------------------------------------------------------
    def _get(self, name: str) -> np.ndarray:
        return _read_only(self._net.state_dict()[_WEIGHT_KEYS[name]])

    def _set(self, name: str, value: Any) -> None:
        weights = self._net.state_dict()
        weights[_WEIGHT_KEYS[name]] = value
        try:
            self._net.load_state_dict(weights)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"ScalableBioNet.{name}: {exc}") from None

    @property
    def fc1(self) -> np.ndarray:
        """(input_size, hidden) float32, read-only copy; assign a new array to change it."""
        return self._get("fc1")

    @fc1.setter
    def fc1(self, value: Any) -> None:
        self._set("fc1", value)

    @property
    def fc2(self) -> np.ndarray:
        """(spiking, num_tools) float32, read-only copy; assign a new array to change it."""
        return self._get("fc2")

    @fc2.setter
    def fc2(self, value: Any) -> None:
        self._set("fc2", value)

    @property
    def spiking1(self) -> SpikingLayerView:
        """The spiking layer: ``weights``, ``threshold``, ``refractory_period``, ``params``."""
        return self._spiking1

    spiking_layer = spiking1   # the name another AIVA version uses

    def state_dict(self) -> Dict[str, np.ndarray]:
        """float32 copies under the NumPy BioNeuron's keys ``fc1``, ``spiking1_weights``,
        ``fc2`` (``net.state_dict()`` has aiva_cy's keys)."""
        sd = self._net.state_dict()
        return {"fc1": _host(sd["fc1.weight"]).copy(),
                "spiking1_weights": _host(sd["spiking.weight"]).copy(),
                "fc2": _host(sd["fc2.weight"]).copy()}

    # -- inference ---------------------------------------------------------------------------
    def forward(self, x: Any) -> np.ndarray:
        """One time step: probabilities for each tool, (num_tools,) for a vector x or
        (B, num_tools) for a batch, as a float32 NumPy array.  Advances the refractory state."""
        return _host(self._net.forward(x))

    __call__ = forward

    def reset_state(self) -> None:
        """Empty the refractory state (the next call may use any batch size)."""
        self._net.reset_state()

    def __repr__(self) -> str:
        n = self._net
        return (f"ScalableBioNet(input_size={n.input_size}, num_tools={n.num_tools}, "
                f"hidden_size={n.hidden_size}, spiking_size={n.spiking_size}, "
                f"threshold={n.threshold}, refractory_period={n.refractory_period}, "
                f"device={n.device!r})")


def _confidence_level(name: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number in [0, 1], got {type(value).__name__} "
                        f"{value!r}")
    level = float(value)
    if not (math.isfinite(level) and 0.0 <= level <= 1.0):
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return level


def _decision_vector(name: str, value: Any) -> np.ndarray:
    if type(value).__module__.startswith("cupy"):
        value = value.get()
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a 1-D array of numbers: {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim != 1 or arr.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 1-D vector (one decision's probabilities; "
                         f"check a batch row by row, or use net.decide), got shape {arr.shape}")
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return arr


class AntiHallucinationModule:
    """AIVA's confidence check: a decision passes when its top probability reaches
    ``confidence_threshold``.

    ``check(probs)`` and ``check_confidence(probs, threshold=None)`` return
    ``(passed, confidence)`` with ``confidence = float(max(probs))`` and
    ``passed = confidence >= threshold``; a failed check is logged as a warning, as in AIVA.
    ``multi_layer_validation`` and ``get_validation_stats`` follow AIVA's versions.
    """

    validation_layers = 3
    consensus_threshold = 0.6
    #: AIVA keeps the last 50 records once the history passes 100.
    _HISTORY_MAX, _HISTORY_KEEP = 100, 50

    def __init__(self, confidence_threshold: float = 0.7) -> None:
        self._confidence_threshold = _confidence_level("confidence_threshold",
                                                       confidence_threshold)
        self.validation_history: List[Dict[str, Any]] = []

    @property
    def confidence_threshold(self) -> float:
        return self._confidence_threshold

    @confidence_threshold.setter
    def confidence_threshold(self, value: float) -> None:
        self._confidence_threshold = _confidence_level("confidence_threshold", value)

    def check_confidence(self, decision_potential: Any,
                         threshold: Optional[float] = None) -> Tuple[bool, float]:
        """``(passed, confidence)`` for one decision's probabilities (a 1-D vector)."""
        level = (self._confidence_threshold if threshold is None
                 else _confidence_level("threshold", threshold))
        confidence = float(np.max(_decision_vector("decision_potential", decision_potential)))
        passed = confidence >= level
        if not passed:
            logger.warning("[Anti-Hallucination] decision confidence too low (%.2f < %.2f); "
                           "ask for confirmation", confidence, level)
        return passed, confidence

    def check(self, probs: Any) -> Tuple[bool, float]:
        """``(passed, confidence)``: ``confidence = max(probs)``, ``passed = confidence >=
        confidence_threshold``."""
        return self.check_confidence(probs)

    def multi_layer_validation(self, decision_potential: Any) -> Tuple[bool, float, Dict[str, Any]]:
        """AIVA's three-layer check: top probability, stability (1 - std/mean, clipped to
        [0, 1]) and the share of entries above 0.5; passes when two of the three exceed
        ``consensus_threshold`` and their mean reaches ``confidence_threshold``."""
        p = _decision_vector("decision_potential", decision_potential)
        basic = float(p.max())
        stability = 1.0 - float(p.std()) / max(float(p.mean()), 0.001)
        stability = max(0.0, min(1.0, stability))
        consistency = float(np.count_nonzero(p > 0.5)) / p.shape[0]
        layers = (basic, stability, consistency)
        final = float(np.mean(layers))
        consensus = sum(v > self.consensus_threshold for v in layers) >= 2
        record = {"basic_confidence": basic, "stability": stability,
                  "consistency": consistency, "final_confidence": final,
                  "consensus_reached": consensus, "timestamp": time.time()}
        self.validation_history.append(record)
        if len(self.validation_history) > self._HISTORY_MAX:
            self.validation_history = self.validation_history[-self._HISTORY_KEEP:]
        return consensus and final >= self._confidence_threshold, final, record

    def get_validation_stats(self) -> Dict[str, Any]:
        """Counts and averages over the last 20 ``multi_layer_validation`` records."""
        if not self.validation_history:
            return {"total_validations": 0}
        recent = self.validation_history[-20:]
        return {
            "total_validations": len(self.validation_history),
            "recent_average_confidence": float(np.mean([r["final_confidence"] for r in recent])),
            "recent_consensus_rate": float(np.mean([r["consensus_reached"] for r in recent])),
            "recent_stability_score": float(np.mean([r["stability"] for r in recent])),
        }

    def __repr__(self) -> str:
        return f"AntiHallucinationModule(confidence_threshold={self._confidence_threshold})"
