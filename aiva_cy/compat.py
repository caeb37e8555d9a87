"""Drop-in replacements for AIVA's NumPy decision core, backed by :class:`aiva_cy.AIVANet`.

AIVA's ``bio_neuron_core.py`` defines ``BiologicalSpikingLayer``, ``AntiHallucinationModule``
and ``ScalableBioNet`` and, beside them, the ``BioNeuronRAGAgent`` that builds
``ScalableBioNet(input_size, num_tools)``, calls ``forward(x)`` and passes the probabilities to
``AntiHallucinationModule(confidence_threshold=0.7).check(probs)``; its trainers call
``forward(batch)`` and ``backward(X, y, learning_rate)`` and assign ``fc1``, ``fc2`` and
``spiking1.weights``.  The classes here keep those call shapes, attribute names and numbers:

* the initial weights are drawn as AIVA draws them (fc1, fc2 ~ N(0, 1), the spiking layer
  N(0, 2 / fan_in)), so a fresh net fires on the inputs the original fires on;
* AIVA's adaptive threshold (1.0, lowered by x0.98 before the spike test of every call, to
  a floor of 0.3) is on by default, so the same weights give the same decisions, call for
  call;
* the refractory period counts calls, 0 by default: AIVA's is 0.05 s of wall-clock time,
  which an agent answering requests further apart never meets.

In ``bio_neuron_core.py``, one import after the class definitions and before
``BioNeuronRAGAgent`` rebinds the two names the agent uses (README, "Integrating with AIVA")::

    from aiva_cy.compat import AntiHallucinationModule, ScalableBioNet

``ScalableBioNet.net`` is the :class:`AIVANet` underneath: ``fit``, ``train_step``, ``save``.
"""
from __future__ import annotations

import logging
import math
import numbers
import os
import shutil
import tempfile
import threading
import time
import uuid
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from aiva_cy._checks import (FLOAT32_MAX, check_finite, float_arg, int_arg, numeric_array,
                             parse_device)
from aiva_cy._threshold import set_threshold
from aiva_cy.net import AIVANet

__all__ = ["AIVA_INITIAL_THRESHOLD", "AntiHallucinationModule", "ScalableBioNet",
           "SpikingLayerView", "THRESHOLD_DECAY", "THRESHOLD_FLOOR"]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: AIVA's adaptive threshold: it starts at 1.0 and every call multiplies it by 0.98 before
#: its spike test (so the first call tests at 0.98), never below 0.3 (from the 60th call on).
AIVA_INITIAL_THRESHOLD = 1.0
THRESHOLD_DECAY = 0.98
THRESHOLD_FLOOR = 0.3


def _host(a: Any) -> np.ndarray:
    """A NumPy array from a NumPy or CuPy one (a CUDA net answers with CuPy arrays)."""
    return a.get() if type(a).__module__.startswith("cupy") else np.asarray(a)


def _read_only(a: Any) -> np.ndarray:
    # A copy that refuses item assignment: writing into it would change nothing in the net.
    out = np.array(_host(a), dtype=np.float32, copy=True)
    out.flags.writeable = False
    return out


# AIVA's attribute names -> AIVANet's state_dict keys, in the order the layers chain.
_WEIGHT_KEYS = {"fc1": "fc1.weight", "spiking1.weights": "spiking.weight", "fc2": "fc2.weight"}


def _weight_matrix(name: str, value: Any) -> np.ndarray:
    arr = numeric_array(name, value)
    if arr.ndim != 2 or 0 in arr.shape:
        raise ValueError(f"{name} must be a non-empty 2-D array, got shape {arr.shape}")
    with np.errstate(over="ignore"):   # past float32's range becomes Inf: reported below
        out = np.array(arr, dtype=np.float32, order="C")
    check_finite(name, out)
    return out


def _aiva_weights(input_size: int, num_tools: int, hidden_size: int, spiking_size: int,
                  seed: Optional[int]) -> Dict[str, np.ndarray]:
    """AIVA's initialisation, drawn in the order and precision of the NumPy BioNeuron in
    aiva_cy.bench (so a seed gives that reference's weights, rounded to float32)."""
    rng = np.random.default_rng(seed)
    fc1 = rng.standard_normal((input_size, hidden_size)).astype(np.float32)
    spiking = (rng.standard_normal((hidden_size, spiking_size))
               * math.sqrt(2.0 / hidden_size)).astype(np.float32)
    fc2 = rng.standard_normal((spiking_size, num_tools)).astype(np.float32)
    return {"fc1.weight": fc1, "spiking.weight": spiking, "fc2.weight": fc2}


def _decay_arg(value: Any) -> float:
    decay = float_arg("threshold_decay", value, 0.0)
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"threshold_decay must be in (0, 1], got {value!r}")
    return decay


def _learning_rate(value: Any) -> float:
    lr = float_arg("learning_rate", value, 0.0)
    if lr == 0.0 or lr > FLOAT32_MAX:
        raise ValueError(f"learning_rate must be > 0 and at most {FLOAT32_MAX:.4g} (the update "
                         f"runs in float32), got {lr!r}")
    return lr


def _batch_of(x: Any) -> Optional[int]:
    """Rows in x (1 for a vector), or None when its shape cannot be read cheaply."""
    try:
        shape = np.shape(x) if not hasattr(x, "shape") else tuple(x.shape)
    except (TypeError, ValueError):
        return None
    if len(shape) == 1:
        return 1
    return int(shape[0]) if len(shape) == 2 else None


def _file_kind(path: str) -> str:
    """"npz", "safetensors" or "pickle", from the first bytes (not from the name)."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head.startswith(b"PK\x03\x04"):
        return "npz"
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 1:
        return "safetensors"
    return "pickle"


class SpikingLayerView:
    """``net.spiking1`` as AIVA's ``BiologicalSpikingLayer`` exposes it: ``weights``,
    ``threshold``, ``refractory_period`` (in calls here), ``params``."""

    def __init__(self, owner: "ScalableBioNet") -> None:
        self._owner = owner

    @property
    def weights(self) -> np.ndarray:
        """(hidden, spiking) float32, read-only copy; assign a new array to change it (new
        shapes resize the net once fc1 and fc2 chain with them)."""
        return self._owner._get("spiking1.weights")

    @weights.setter
    def weights(self, value: Any) -> None:
        self._owner._assign({"spiking1.weights": value})

    @property
    def threshold(self) -> float:
        """The spike threshold in force (a spike fires at potential >= threshold): the
        last call's, or the next call's before any.  Assigning sets the next call's; an
        adaptive net decays from there."""
        return self._owner._net.threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        self._owner.set_threshold(value)

    @property
    def refractory_period(self) -> int:
        """Calls a neuron stays silent after it fired (AIVA's is 0.05 s)."""
        return self._owner._net.refractory_period

    @property
    def input_size(self) -> int:
        return self._owner._shape("spiking1.weights")[0]

    @property
    def output_size(self) -> int:
        return self._owner._shape("spiking1.weights")[1]

    @property
    def params(self) -> int:
        return self.input_size * self.output_size

    def __repr__(self) -> str:
        return (f"SpikingLayerView({self.input_size} -> {self.output_size}, threshold="
                f"{self.threshold}, refractory_period={self.refractory_period} calls)")


class ScalableBioNet:
    """AIVA's ``ScalableBioNet`` (input → 2048 tanh → 1024 spiking → tools, softmax) on aiva_cy.

    Parameters
    ----------
    input_size, num_tools : int
        Features in, tools out.
    seed : int or None
        Seed for AIVA's initialisation (fc1, fc2 ~ N(0, 1); spiking ~ N(0, 2 / hidden_size));
        the same seed gives the same weights.
    adaptive_threshold : bool
        AIVA's threshold schedule (default True): each ``forward`` call tests at the current
        threshold, then lowers it by ``threshold_decay`` down to ``threshold_floor``.
        False: a fixed threshold.
    threshold : float or None
        The threshold of the first call.  None: AIVA's, 1.0 x 0.98 = 0.98 when adaptive;
        0.3, the floor AIVA settles at, when fixed.
    threshold_decay, threshold_floor : float
        0.98 and 0.3, as in AIVA.
    refractory_period : int
        Calls a neuron stays silent after it fired, 0 by default (see the module docstring).
    hidden_size, spiking_size, device :
        Passed to :class:`AIVANet` (defaults 2048, 1024, "cpu").

    ``forward(x)`` takes one vector (input_size,) → (num_tools,), or a batch
    (B, input_size) → (B, num_tools), as float32 NumPy arrays.  A call with another batch
    size than the one before restarts the refractory state.  ``backward(X, y,
    learning_rate)`` is one SGD step of the surrogate gradient.  Every method holds one lock,
    so threads may share a net.
    """

    def __init__(self, input_size: int, num_tools: int, seed: Optional[int] = None, *,
                 adaptive_threshold: bool = True, threshold: Optional[float] = None,
                 threshold_decay: float = THRESHOLD_DECAY,
                 threshold_floor: float = THRESHOLD_FLOOR, refractory_period: int = 0,
                 hidden_size: int = 2048, spiking_size: int = 1024,
                 device: str = "cpu") -> None:
        sizes = [int_arg(name, value, 1) for name, value in
                 (("input_size", input_size), ("num_tools", num_tools),
                  ("hidden_size", hidden_size), ("spiking_size", spiking_size))]
        if seed is not None:
            seed = int_arg("seed", seed, 0, 2**63 - 1)
        device = parse_device(device)
        self._init_schedule(adaptive_threshold, threshold_decay, threshold_floor)
        if threshold is None and not self._adaptive:
            first = self._floor                # where AIVA's schedule settles
        else:
            first = self._first_threshold(threshold, AIVA_INITIAL_THRESHOLD)
        net = AIVANet(sizes[0], sizes[1], hidden_size=sizes[2], spiking_size=sizes[3],
                      threshold=first, refractory_period=refractory_period, seed=0,
                      device="cpu")
        net.load_state_dict(_aiva_weights(sizes[0], sizes[1], sizes[2], sizes[3], seed))
        if device != "cpu":
            net.to(device)
        self._attach(net, first)

    # -- construction helpers ---------------------------------------------------------------
    def _init_schedule(self, adaptive: Any, decay: Any, floor: Any) -> None:
        if not isinstance(adaptive, (bool, np.bool_)):
            raise TypeError(f"adaptive_threshold must be True or False, got "
                            f"{type(adaptive).__name__} {adaptive!r}")
        self._adaptive = bool(adaptive)
        self._decay = _decay_arg(decay)
        self._floor = float_arg("threshold_floor", floor)

    def _first_threshold(self, threshold: Any, aiva_attribute: Any) -> float:
        """The first call's threshold: ``threshold`` if given, else the one AIVA's next call
        makes of its layer's ``threshold`` attribute (decayed once, never below the floor)."""
        if threshold is not None:
            return float_arg("threshold", threshold)
        start = float_arg("threshold", aiva_attribute)
        return max(self._floor, start * self._decay)

    def _attach(self, net: AIVANet, next_threshold: float) -> None:
        self._lock = threading.RLock()
        self._net = net
        self._next_threshold = next_threshold
        # Assigned weights that do not chain with the others yet (a resize in progress).
        self._pending: Dict[str, np.ndarray] = {}
        self._spiking1 = SpikingLayerView(self)

    @classmethod
    def from_net(cls, net: AIVANet, *, adaptive_threshold: bool = False,
                 threshold_decay: float = THRESHOLD_DECAY,
                 threshold_floor: float = THRESHOLD_FLOOR) -> "ScalableBioNet":
        """Wrap an existing :class:`AIVANet` (not copied: both names see the same net, until
        weights of new shapes replace it).  Its threshold is kept; with
        ``adaptive_threshold`` the first call tests at it and later calls decay from it."""
        if not isinstance(net, AIVANet):
            raise TypeError(f"net must be an aiva_cy.AIVANet, got {type(net).__name__}")
        self = cls.__new__(cls)
        self._init_schedule(adaptive_threshold, threshold_decay, threshold_floor)
        self._attach(net, net.threshold)
        return self

    @classmethod
    def load(cls, path: PathLike, *, device: str = "cpu", adaptive_threshold: bool = False,
             threshold_decay: float = THRESHOLD_DECAY,
             threshold_floor: float = THRESHOLD_FLOOR) -> "ScalableBioNet":
        """Read a checkpoint: one written by ``aiva-cy convert``, ``AIVANet.save``,
        :meth:`save` or :meth:`save_weights`, with its threshold and refractory period
        (``adaptive_threshold``: as in :meth:`from_net`)."""
        return cls.from_net(AIVANet.load(path, device=device),
                            adaptive_threshold=adaptive_threshold,
                            threshold_decay=threshold_decay, threshold_floor=threshold_floor)

    from_file = load

    @classmethod
    def from_bioneuron(cls, obj: Any, *, threshold: Optional[float] = None,
                       adaptive_threshold: bool = True,
                       threshold_decay: float = THRESHOLD_DECAY,
                       threshold_floor: float = THRESHOLD_FLOOR,
                       **kwargs: Any) -> "ScalableBioNet":
        """Weights from a NumPy BioNeuron object or its weight dict (already in memory), as
        :meth:`AIVANet.from_bioneuron` reads them.  The first call's threshold is
        ``threshold``, else the one AIVA's next call would use: its layer's threshold (1.0
        if it has none) decayed once.  ``refractory_period`` defaults to 0 calls.  For a
        pickle file, use :meth:`load_weights` or ``aiva-cy convert``."""
        self = cls.__new__(cls)
        self._init_schedule(adaptive_threshold, threshold_decay, threshold_floor)
        if isinstance(obj, Mapping):
            own = obj.get("threshold", AIVA_INITIAL_THRESHOLD)
        else:
            own = getattr(getattr(obj, "spiking1", None), "threshold", AIVA_INITIAL_THRESHOLD)
        if isinstance(own, np.ndarray) and own.ndim == 0:
            own = own[()]
        first = self._first_threshold(threshold, own)
        kwargs.setdefault("refractory_period", 0)
        self._attach(AIVANet.from_bioneuron(obj, threshold=first, **kwargs), first)
        return self

    def __getstate__(self) -> Dict[str, Any]:
        with self._lock:
            return {"net": self._net, "adaptive": self._adaptive, "decay": self._decay,
                    "floor": self._floor, "next_threshold": self._next_threshold,
                    "pending": dict(self._pending)}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self._adaptive, self._decay, self._floor = (state["adaptive"], state["decay"],
                                                    state["floor"])
        self._attach(state["net"], state["next_threshold"])
        self._pending = dict(state["pending"])

    # -- the net, its sizes and its threshold ----------------------------------------------
    @property
    def net(self) -> AIVANet:
        """The :class:`AIVANet` doing the work: train (``fit``, ``train_step``), save, move.
        Assigning weights of new shapes replaces it with a new one."""
        return self._net

    input_size = property(lambda self: self._shape("fc1")[0], doc="Features per input.")
    num_tools = property(lambda self: self._shape("fc2")[1], doc="Tools (outputs).")
    hidden_size = property(lambda self: self._shape("fc1")[1], doc="Width of fc1.")
    spiking_size = property(lambda self: self._shape("spiking1.weights")[1],
                            doc="Neurons in the spiking layer.")
    # AIVA's names for the two widths.
    hidden_size_1 = property(lambda self: self._shape("fc1")[1], doc="AIVA's name: fc1's width.")
    hidden_size_2 = property(lambda self: self._shape("spiking1.weights")[1],
                             doc="AIVA's name: the spiking layer's width.")

    @property
    def params_fc1(self) -> int:
        return int(np.prod(self._shape("fc1")))

    @property
    def params_spiking1(self) -> int:
        return int(np.prod(self._shape("spiking1.weights")))

    @property
    def params_fc2(self) -> int:
        return int(np.prod(self._shape("fc2")))

    @property
    def total_params(self) -> int:
        """Number of weights (there are no biases)."""
        return self.params_fc1 + self.params_spiking1 + self.params_fc2

    @property
    def adaptive_threshold(self) -> bool:
        """Whether each call lowers the threshold (AIVA's schedule); settable."""
        return self._adaptive

    @adaptive_threshold.setter
    def adaptive_threshold(self, value: bool) -> None:
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"adaptive_threshold must be True or False, got "
                            f"{type(value).__name__} {value!r}")
        with self._lock:
            self._adaptive = bool(value)
            self._next_threshold = self._net.threshold

    threshold_decay = property(lambda self: self._decay, doc="Factor of each call (0.98).")
    threshold_floor = property(lambda self: self._floor, doc="Lowest threshold (0.3).")

    @property
    def next_threshold(self) -> float:
        """The threshold the next ``forward`` call tests at."""
        with self._lock:
            return self._next_threshold if self._adaptive else self._net.threshold

    def set_threshold(self, threshold: float) -> None:
        """The next call's threshold; an adaptive net decays from it afterwards."""
        value = float_arg("threshold", threshold)
        with self._lock:
            set_threshold(self._net, value)
            self._next_threshold = value

    def calibrate_threshold(self, X: Any, firing_rate: float = 0.1) -> float:
        """:meth:`AIVANet.calibrate_threshold`, made the next call's threshold; returns it."""
        with self._lock:
            self._check_chained()
            value = self._net.calibrate_threshold(X, firing_rate)
            self._next_threshold = value
            return value

    # -- weights in AIVA's names -------------------------------------------------------------
    def _shape(self, name: str) -> Tuple[int, int]:
        with self._lock:
            if name in self._pending:
                return self._pending[name].shape  # type: ignore[return-value]
            n = self._net
            return {"fc1": (n.input_size, n.hidden_size),
                    "spiking1.weights": (n.hidden_size, n.spiking_size),
                    "fc2": (n.spiking_size, n.num_tools)}[name]

    def _get(self, name: str) -> np.ndarray:
        with self._lock:
            if name in self._pending:
                out = self._pending[name].copy()
                out.flags.writeable = False
                return out
            return _read_only(self._net.state_dict()[_WEIGHT_KEYS[name]])

    def _assign(self, values: Mapping[str, Any]) -> None:
        """Set weights by AIVA's names.  Each array is checked first; then, under the lock,
        the net takes them if they chain with the rest — rebuilt at the new sizes if they
        changed — or they wait in ``_pending`` until the assignments that complete a resize
        arrive."""
        new = {name: _weight_matrix(f"ScalableBioNet.{name}", value)
               for name, value in values.items()}
        with self._lock:
            wanted = {**self._pending, **new}
            shapes = {name: self._shape(name) if name not in wanted else wanted[name].shape
                      for name in _WEIGHT_KEYS}
            fc1, spiking, fc2 = (shapes[k] for k in _WEIGHT_KEYS)
            if fc1[1] != spiking[0] or spiking[1] != fc2[0]:
                self._pending = wanted
                logger.debug("ScalableBioNet: %s held until the weights chain again "
                             "(fc1 %s, spiking1.weights %s, fc2 %s)", sorted(new), fc1,
                             spiking, fc2)
                return
            current = self._net.state_dict() if len(wanted) < len(_WEIGHT_KEYS) else {}
            weights = {key: wanted[name] if name in wanted else current[key]
                       for name, key in _WEIGHT_KEYS.items()}
            n = self._net
            if (fc1[0], fc2[1], fc1[1], spiking[1]) == (n.input_size, n.num_tools,
                                                        n.hidden_size, n.spiking_size):
                n.load_state_dict(weights)
            else:
                self._net = self._rebuilt(weights)
            self._pending = {}

    def _rebuilt(self, weights: Mapping[str, Any]) -> AIVANet:
        """A net of the sizes of ``weights`` with this one's settings (a fresh optimizer:
        Adam's moments do not fit the new shapes)."""
        old, opt = self._net, self._net.optimizer
        fc1, spiking, fc2 = (_host(weights[k]).shape for k in _WEIGHT_KEYS.values())
        net = AIVANet(fc1[0], fc2[1], hidden_size=fc1[1], spiking_size=spiking[1],
                      threshold=old.threshold, refractory_period=old.refractory_period,
                      surrogate_slope=old.surrogate_slope, seed=0, precision=old.precision,
                      lr=opt.lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay)
        net.load_state_dict(weights)
        return net.to(old.device) if old.device != "cpu" else net

    def _check_chained(self) -> None:
        if self._pending:
            shapes = ", ".join(f"{name} {self._shape(name)}" for name in _WEIGHT_KEYS)
            raise ValueError(f"ScalableBioNet: the weights assigned do not chain yet ({shapes}):"
                             f" fc1's columns must equal spiking1.weights' rows and "
                             f"spiking1.weights' columns fc2's rows; assign the rest of the "
                             f"resize first")

    @property
    def fc1(self) -> np.ndarray:
        """(input_size, hidden) float32, read-only copy; assign a new array to change it."""
        return self._get("fc1")

    @fc1.setter
    def fc1(self, value: Any) -> None:
        self._assign({"fc1": value})

    @property
    def fc2(self) -> np.ndarray:
        """(spiking, num_tools) float32, read-only copy; assign a new array to change it."""
        return self._get("fc2")

    @fc2.setter
    def fc2(self, value: Any) -> None:
        self._assign({"fc2": value})

    @property
    def spiking1(self) -> SpikingLayerView:
        """The spiking layer: ``weights``, ``threshold``, ``refractory_period``, ``params``."""
        return self._spiking1

    spiking_layer = spiking1   # the name another AIVA version uses

    def state_dict(self) -> Dict[str, np.ndarray]:
        """float32 copies under the NumPy BioNeuron's keys ``fc1``, ``spiking1_weights``,
        ``fc2`` (``net.state_dict()`` has aiva_cy's keys)."""
        with self._lock:
            return {"fc1": self._get("fc1").copy(),
                    "spiking1_weights": self._get("spiking1.weights").copy(),
                    "fc2": self._get("fc2").copy()}

    def load_state_dict(self, weights: Mapping[str, Any]) -> None:
        """Take ``fc1``, ``spiking1_weights`` and ``fc2`` at once (any sizes that chain)."""
        if not isinstance(weights, Mapping):
            raise TypeError(f"weights must be a mapping, got {type(weights).__name__}")
        missing = [k for k in ("fc1", "spiking1_weights", "fc2") if k not in weights]
        if missing:
            raise ValueError(f"weights lacks {missing}: expected 'fc1', 'spiking1_weights', "
                             f"'fc2'")
        with self._lock:
            self._assign({"fc1": weights["fc1"], "spiking1.weights": weights["spiking1_weights"],
                          "fc2": weights["fc2"]})
            self._check_chained()

    # -- inference ---------------------------------------------------------------------------
    def forward(self, x: Any) -> np.ndarray:
        """One time step: probabilities for each tool, (num_tools,) for a vector x or
        (B, num_tools) for a batch, as a float32 NumPy array.  Advances the refractory state
        (restarted when B differs from the previous call's) and the adaptive threshold."""
        with self._lock:
            self._check_chained()
            net = self._net
            if self._adaptive and net.threshold != self._next_threshold:
                set_threshold(net, self._next_threshold)
            held, batch = net.state_batch_size, _batch_of(x)
            saved = None
            if held is not None and batch is not None and batch != held:
                saved = net.get_state()
                net.reset_state()
            try:
                probs = _host(net.forward(x))
            except BaseException:
                if saved is not None:      # a refused call leaves the state as it was
                    net.set_state(saved)
                raise
            if self._adaptive:
                self._next_threshold = max(self._floor, self._next_threshold * self._decay)
            return probs

    __call__ = forward

    def reset_state(self) -> None:
        """Empty the refractory state (the adaptive threshold is not reset)."""
        with self._lock:
            self._net.reset_state()

    # -- training --------------------------------------------------------------------------
    def _labels(self, X: Any, y: Any) -> Any:
        """Integer labels from one-hot rows (B, num_tools), or the labels as given."""
        arr = numeric_array("y", y)
        tools = self.num_tools
        x_rows = _batch_of(X)
        one_hot = arr.ndim == 2 or (x_rows == 1 and np.ndim(X) == 1 and arr.ndim == 1
                                    and arr.shape[0] == tools and tools > 1)
        if not one_hot:
            return arr
        rows = arr.reshape(-1, arr.shape[-1]) if arr.ndim == 1 else arr
        if rows.shape[1] != tools:
            raise ValueError(f"y as one-hot rows must have {tools} columns (num_tools), got "
                             f"shape {arr.shape}")
        ok = (rows == 0) | (rows == 1)
        bad = np.flatnonzero(~ok.all(axis=1) | (rows.sum(axis=1) != 1))
        if bad.size:
            raise ValueError(f"y must be one-hot rows (a single 1, zeros elsewhere) or integer "
                             f"labels; row {int(bad[0])} is {rows[bad[0]].tolist()}")
        return rows.argmax(axis=1)

    def backward(self, X: Any, y: Any, learning_rate: float = 0.001) -> float:
        """One training step, as AIVA's trainer calls it after ``forward(X)``: the mean
        cross-entropy of X against y (one-hot rows (B, num_tools) or labels (B,)), its
        surrogate gradient (:meth:`AIVANet.loss_and_grad`, from an empty refractory state
        at the current threshold) and a plain SGD update ``w -= learning_rate * grad``.
        Returns the loss before the update.  The refractory state and the adaptive
        threshold are left as they were; the net's Adam optimizer is not used."""
        lr = _learning_rate(learning_rate)
        with self._lock:
            self._check_chained()
            net = self._net
            labels = self._labels(X, y)
            saved = net.get_state()
            net.reset_state()
            try:
                loss, grads = net.loss_and_grad(X, labels)
                weights = net.state_dict()
                step = np.float32(lr)
                with np.errstate(over="ignore", invalid="ignore"):   # refused just below
                    updated = {k: weights[k] - step * grads[k] for k in weights}
                try:
                    net.load_state_dict(updated)
                except ValueError:
                    raise FloatingPointError(
                        f"backward: learning_rate={lr!r} made a weight overflow float32; "
                        f"nothing changed") from None
            finally:
                net.set_state(saved)
            return loss

    # -- files -------------------------------------------------------------------------------
    def save(self, path: PathLike, *, include_optimizer: bool = True) -> None:
        """Write the net to one file, atomically (see :meth:`AIVANet.save`)."""
        with self._lock:
            self._check_chained()
            self._net.save(path, include_optimizer=include_optimizer)

    def save_weights(self, path: PathLike) -> None:
        """Write weights and config (no optimizer) atomically, as ``.safetensors`` if the
        name ends so, else as an aiva_cy ``.npz`` checkpoint whatever the name (no pickle)."""
        target = os.fsdecode(os.fspath(path))
        with self._lock:
            self._check_chained()
            if os.path.splitext(target)[1].lower() in (".npz", ".safetensors"):
                self._net.save(target, include_optimizer=False)
                return
            directory = os.path.dirname(os.path.abspath(target))
            tmp = os.path.join(directory, f".{os.path.basename(target)}.{uuid.uuid4().hex}.npz")
            try:
                self._net.save(tmp, include_optimizer=False)
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)

    def load_weights(self, path: PathLike, *, trust_pickle: bool = False) -> None:
        """Take the weights of a file (other sizes resize the net; the threshold, its
        schedule and the refractory period stay this net's): an aiva_cy checkpoint
        (``.npz``/``.safetensors``, told apart by content, so any name), or — with
        ``trust_pickle=True`` — AIVA's pickled weight dict, read through the restricted
        unpickler of ``aiva-cy convert``."""
        from aiva_cy.convert import REQUIRED_KEYS, read_weights_pickle
        source = os.fsdecode(os.fspath(path))
        kind = _file_kind(source)
        if kind == "pickle":
            weights = read_weights_pickle(source, trust_pickle=trust_pickle)
            missing = [k for k in REQUIRED_KEYS if k not in weights]
            if missing:
                raise ValueError(f"'{source}' lacks {missing}: AIVA's weight file is a dict "
                                 f"with keys {', '.join(map(repr, REQUIRED_KEYS))}")
            self.load_state_dict({k: weights[k] for k in REQUIRED_KEYS})
            return
        if os.path.splitext(source)[1].lower() == f".{kind}":
            loaded = AIVANet.load(source)
        else:                       # AIVANet.load goes by the suffix: a copy that has it
            with tempfile.TemporaryDirectory() as tmp:
                copy = os.path.join(tmp, f"weights.{kind}")
                shutil.copyfile(source, copy)
                loaded = AIVANet.load(copy)
        sd = loaded.state_dict()
        self.load_state_dict({"fc1": sd["fc1.weight"], "spiking1_weights": sd["spiking.weight"],
                              "fc2": sd["fc2.weight"]})

    def __repr__(self) -> str:
        n = self._net
        schedule = (f"adaptive_threshold=True, next_threshold={self.next_threshold:.4g}"
                    if self._adaptive else f"threshold={n.threshold}")
        return (f"ScalableBioNet(input_size={n.input_size}, num_tools={n.num_tools}, "
                f"hidden_size={n.hidden_size}, spiking_size={n.spiking_size}, {schedule}, "
                f"refractory_period={n.refractory_period}, device={n.device!r})")


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
