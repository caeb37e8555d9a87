"""AIVANet: the Python face of the engine — validates, documents, dispatches.

Everything numeric happens in the engine (``aiva_cy._core.Engine`` on the CPU,
``aiva_cy._cuda.CupyEngine`` on CUDA); this module turns user input into the arrays the
engine expects and errors into messages that name the argument.
"""
from __future__ import annotations

import math
import os
import threading
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

from aiva_cy._adam import Adam
from aiva_cy._checks import adam_args as _adam_args
from aiva_cy._checks import as_float32 as _as_float32
from aiva_cy._checks import check_finite as _check_finite
from aiva_cy._checks import float_arg as _float_arg
from aiva_cy._checks import is_cupy as _is_cupy
from aiva_cy._checks import label_rows
from aiva_cy._checks import int_arg as _int_arg
from aiva_cy._checks import numeric_array as _numeric_array
from aiva_cy._checks import parse_device as _parse_device
from aiva_cy._core import PARAM_NAMES, PARAM_TRANSPOSED, Engine, batch_mismatch

# Static types of the input: a flat list of numbers is one stream, a list of lists a batch.
# An array's number of dimensions is not in its static type, so an array gets the union.
_Row = Sequence[float]
_Rows = Sequence[Sequence[float]]

_CONFIG_KEYS = ("input_size", "num_tools", "hidden_size", "spiking_size", "threshold",
                "refractory_period", "surrogate_slope", "precision")
_PRECISIONS = ("float32", "bfloat16", "int8", "auto")
_PRECISION_CHOICES = "'float32', 'bfloat16', 'int8' or 'auto'"


# ---------------------------------------------------------------------------------------
# argument checks (the shared ones live in aiva_cy._checks)
# ---------------------------------------------------------------------------------------
def _precision_arg(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"precision must be {_PRECISION_CHOICES}, got {value!r}")
    if value not in _PRECISIONS:
        raise ValueError(f"precision must be {_PRECISION_CHOICES}, got {value!r}")
    return value


def _check_device_precision(device: str, precision: str) -> None:
    if precision != "float32":
        raise NotImplementedError(f"precision={precision!r} runs on the CPU only (oneDNN's "
                                  f"products); device={device!r} needs precision='float32'")


# ---------------------------------------------------------------------------------------
# the net
# ---------------------------------------------------------------------------------------
class AIVANet:
    """AIVA's spiking decision core: fc1 (tanh) → spiking layer → fc2 (softmax).

    Parameters
    ----------
    input_size, num_tools : int
        Features in, tools out (512 and 20 for AIVA).
    hidden_size, spiking_size : int
        Width of the tanh layer and of the spiking layer (2048 and 1024).
    threshold : float
        Membrane potential at or above which a neuron spikes.
    refractory_period : int
        Steps a neuron stays silent after an output spike (0 disables refractoriness).
    surrogate_slope : float
        Slope *k* of the fast-sigmoid surrogate gradient ``1 / (1 + k|v - threshold|)^2``.
    seed : int or None
        Seed for the initial weights (LeCun uniform); the same seed gives the same weights.
    device : "cpu" or "cuda"
        Where the weights live and every call runs ("cuda" needs CuPy and a GPU).
    precision : "float32", "bfloat16", "int8" or "auto"
        "bfloat16" rounds the operands of every matrix product to bfloat16 and accumulates
        in float32; "int8" (inference) quantizes the weights per output channel and the
        activations per row to 8 bits, accumulates exactly in int32 and dequantizes to
        float32 (training steps of an int8 net run in float32 on the master weights, and
        the next inference re-quantizes them); "auto" is bfloat16 where this CPU has native
        bf16 products, else float32 (``blas_info()["precision_auto"]``).  Everything else, the master weights
        included, stays float32.  The reduced precisions are oneDNN's products, where the
        CPU has native ones: ``pip install "aiva_cy[precision]"``.  Settable on a live net
        (CPU only).
    lr, betas, eps, weight_decay :
        Adam's hyper-parameters (``torch.optim.Adam``'s defaults); also on ``net.optimizer``.
    """

    def __init__(self, input_size: int = 512, num_tools: int = 20, *, hidden_size: int = 2048,
                 spiking_size: int = 1024, threshold: float = 0.5, refractory_period: int = 2,
                 surrogate_slope: float = 25.0, seed: Optional[int] = None, device: str = "cpu",
                 precision: str = "float32", lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        config = {
            "input_size": _int_arg("input_size", input_size, 1),
            "num_tools": _int_arg("num_tools", num_tools, 1),
            "hidden_size": _int_arg("hidden_size", hidden_size, 1),
            "spiking_size": _int_arg("spiking_size", spiking_size, 1),
            "threshold": _float_arg("threshold", threshold),
            "refractory_period": _int_arg("refractory_period", refractory_period, 0),
            "surrogate_slope": _float_arg("surrogate_slope", surrogate_slope, 0.0),
            "precision": _precision_arg(precision),
        }
        if seed is not None:
            seed = _int_arg("seed", seed, 0, 2**63 - 1)
        optimizer_args = _adam_args(lr, betas, eps, weight_decay)
        device = _parse_device(device)
        if device != "cpu":
            _check_device_precision(device, precision)
        self._build(config, _init_weights(config, seed), optimizer_args, adopt=True)
        if device != "cpu":
            self.to(device)

    def _build(self, config: Dict[str, Any], weights: Mapping[str, np.ndarray],
               optimizer_args: Dict[str, Any], adopt: bool = False) -> None:
        self._config = dict(config)
        c = self._config
        # Engine on the CPU, aiva_cy._cuda.CupyEngine on CUDA: the same methods.
        self._engine: Any = Engine(c["input_size"], c["hidden_size"], c["spiking_size"], c["num_tools"],
                              c["threshold"], c["refractory_period"], c["surrogate_slope"], weights,
                              copy=not adopt, precision=c.setdefault("precision", "float32"))
        self._optimizer: Any = Adam(self._engine.param_shapes(), names=PARAM_NAMES,
                               transposed=PARAM_TRANSPOSED, **optimizer_args)
        self._device = "cpu"
        # Held by every call that reads or changes more than one of weights, optimizer and
        # state (snapshots included), and by fit for its whole run; predict_proba needs
        # none.  Re-entrant: fit and save call methods that take it too.
        self._lock = threading.RLock()

    # -- read-only properties ------------------------------------------------------------
    input_size = property(lambda self: self._config["input_size"], doc="Features per input.")
    num_tools = property(lambda self: self._config["num_tools"], doc="Tools (outputs).")
    hidden_size = property(lambda self: self._config["hidden_size"], doc="Width of fc1.")
    spiking_size = property(lambda self: self._config["spiking_size"],
                            doc="Neurons in the spiking layer.")
    threshold = property(lambda self: self._config["threshold"], doc="Spike threshold.")
    refractory_period = property(lambda self: self._config["refractory_period"],
                                 doc="Refractory period, in steps.")
    surrogate_slope = property(lambda self: self._config["surrogate_slope"],
                               doc="Slope of the fast-sigmoid surrogate gradient.")

    @property
    def num_parameters(self) -> int:
        """Number of weights (there are no biases)."""
        c = self._config
        return (c["input_size"] * c["hidden_size"] + c["hidden_size"] * c["spiking_size"]
                + c["spiking_size"] * c["num_tools"])

    @property
    def config(self) -> Dict[str, Any]:
        """The constructor arguments that fix the architecture (a copy)."""
        return dict(self._config)

    @property
    def device(self) -> str:
        return self._device

    @property
    def precision(self) -> str:
        """"float32", "bfloat16", "int8" or "auto" (the matrix products' operands); settable
        on a live net: the float32 master weights are kept, the reduced copies made from
        them."""
        return self._config["precision"]

    @precision.setter
    def precision(self, value: str) -> None:
        self.set_precision(value)

    def set_precision(self, precision: str) -> "AIVANet":
        """Switch the products' precision (see the class); returns the net.  Raises
        ImportError naming what to install where the provider is missing, RuntimeError
        naming what the CPU lacks where it has no native products of that precision."""
        precision = _precision_arg(precision)
        if self._device != "cpu":
            _check_device_precision(self._device, precision)
        self._engine.set_precision(precision)
        self._config["precision"] = precision
        return self

    @property
    def optimizer(self) -> Adam:
        """The Adam optimizer: ``lr``, ``betas``, ``eps``, ``weight_decay`` are settable;
        ``step`` and ``state_dict()`` show its state."""
        return self._optimizer

    @property
    def state_batch_size(self) -> Optional[int]:
        """Streams in the refractory state, or None when it is empty."""
        return self._engine.state_batch_size

    def __repr__(self) -> str:
        c = self._config
        return (f"AIVANet(input_size={c['input_size']}, num_tools={c['num_tools']}, "
                f"hidden_size={c['hidden_size']}, spiking_size={c['spiking_size']}, "
                f"threshold={c['threshold']}, refractory_period={c['refractory_period']}, "
                f"surrogate_slope={c['surrogate_slope']}, device={self._device!r}, "
                f"precision={c['precision']!r})")

    # -- input conversion ------------------------------------------------------------------
    def _as_x(self, x: Any, name: str = "x") -> Tuple[Any, bool]:
        """(B, input_size) float32 C-contiguous on the net's device, and whether x was 1-D.
        A CuPy x on a CUDA net stays on the device, where the step checks it for NaN/Inf."""
        if self._device != "cpu" and _is_cupy(x):
            return self._engine.as_x(x, name, self.input_size)
        arr = _numeric_array(name, x)
        n_in = self.input_size
        if arr.ndim == 1 and arr.shape[0] == n_in:
            arr = arr.reshape(1, n_in)
            one = True
        elif arr.ndim == 2 and arr.shape[1] == n_in and arr.shape[0] >= 1:
            one = False
        else:
            raise ValueError(f"{name} must have shape ({n_in},) or (batch >= 1, {n_in}), "
                             f"got {arr.shape}")
        return self._to_engine(name, arr), one

    def _to_engine(self, name: str, arr: np.ndarray) -> Any:
        """float32, C order, on the net's device.  On the CPU the C core checks for NaN and
        Inf in the same pass that reads the input; other devices check here."""
        arr = _as_float32(name, arr)
        if self._device != "cpu":
            _check_finite(name, arr)
            arr = self._engine.to_device(arr)
        return arr

    def _as_y(self, y: Any, batch: int, name: str = "y", on_host: bool = False) -> Any:
        if self._device != "cpu" and not on_host and _is_cupy(y):
            return self._engine.as_y(y, batch, name, self.num_tools)
        # on the host: labels are small; sent back below
        arr = label_rows(name, _numeric_array(name, y), batch, self.num_tools)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= self.num_tools:
            raise ValueError(f"{name} must hold integer labels in [0, {self.num_tools}), got "
                             f"values from {lo} to {hi}")
        arr = np.ascontiguousarray(arr, dtype=np.int64)
        if not arr.flags.aligned:      # C may not read an int64 at an odd address
            arr = arr.copy()
        return arr if on_host or self._device == "cpu" else self._engine.to_device(arr)

    # -- inference -------------------------------------------------------------------------
    def forward(self, x: ArrayLike) -> NDArray[np.float32]:
        """One time step: probabilities (B, num_tools), or (num_tools,) for a 1-D x.

        Advances the refractory state.  The state follows the batch size: a call with a
        different batch size raises ValueError until :meth:`reset_state`.
        """
        arr, one = self._as_x(x)
        with self._lock:
            probs = self._engine.forward(arr)
        return probs[0] if one else probs

    __call__ = forward

    def forward_sequence(self, xs: ArrayLike) -> NDArray[np.float32]:
        """T steps from the current state: xs (T, B, in) → (T, B, tools); (T, in) → (T, tools)."""
        src: Any = xs   # a CuPy array stays one on a CUDA net (ArrayLike does not name CuPy)
        on_device = self._device != "cpu" and _is_cupy(src)
        if on_device and src.dtype.kind not in "biuf":
            raise TypeError(f"xs must hold real numbers (bool, int or float), got dtype {src.dtype}")
        arr: Any = src if on_device else _numeric_array("xs", src)
        n_in = self.input_size
        if arr.ndim == 2 and arr.shape[1] == n_in and arr.shape[0] >= 1:
            arr, one = arr[:, None, :], True
        elif arr.ndim == 3 and arr.shape[2] == n_in and arr.shape[0] >= 1 and arr.shape[1] >= 1:
            one = False
        else:
            raise ValueError(f"xs must have shape (steps >= 1, {n_in}) or (steps >= 1, batch >= 1, "
                             f"{n_in}), got {arr.shape}")
        # Checked here rather than by the engine, whose messages speak of a single step's x.
        if on_device:
            arr = self._engine.as_xs(arr)
        else:
            _check_finite("xs", arr)
            arr = self._to_engine("xs", arr)
        with self._lock:
            held = self._engine.state_batch_size
            if held is not None and held != arr.shape[1]:
                raise batch_mismatch(arr.shape[1], held, "xs")
            probs = self._engine.forward_sequence(arr)
        return probs[:, 0, :] if one else probs

    def predict_proba(self, x: ArrayLike) -> NDArray[np.float32]:
        """Probabilities of one step from an empty state.

        Reads and changes no state, so it is safe to call from many threads at once.
        """
        arr, one = self._as_x(x)
        probs = self._engine.predict(arr)
        return probs[0] if one else probs

    @overload
    def predict(self, x: _Row) -> int: ...
    @overload
    def predict(self, x: _Rows) -> NDArray[np.int64]: ...
    @overload
    def predict(self, x: ArrayLike) -> Union[int, NDArray[np.int64]]: ...

    def predict(self, x: ArrayLike) -> Union[int, NDArray[np.int64]]:
        """Index of the most probable tool: an int for a 1-D x, else an int64 array (B,)."""
        arr, one = self._as_x(x)
        idx = self._engine.predict(arr).argmax(axis=1)
        return int(idx[0]) if one else idx

    @overload
    def decide(self, x: _Row, confidence: float = ...) -> Tuple[int, float, bool]: ...
    @overload
    def decide(self, x: _Rows, confidence: float = ...
               ) -> Tuple[NDArray[np.int64], NDArray[np.float32], NDArray[np.bool_]]: ...
    @overload
    def decide(self, x: ArrayLike, confidence: float = ...) -> Union[
            Tuple[int, float, bool],
            Tuple[NDArray[np.int64], NDArray[np.float32], NDArray[np.bool_]]]: ...

    def decide(self, x: ArrayLike, confidence: float = 0.7) -> Union[
            Tuple[int, float, bool],
            Tuple[NDArray[np.int64], NDArray[np.float32], NDArray[np.bool_]]]:
        """AIVA's anti-hallucination check: ``(tool, confidence, is_confident)``.

        ``confidence`` is the top probability; ``is_confident`` says whether it reaches the
        ``confidence`` argument.  For a batch, each of the three is an array (B,).
        """
        level = _float_arg("confidence", confidence, 0.0)
        if level > 1.0:
            raise ValueError(f"confidence must be in [0, 1], got {confidence!r}")
        arr, one = self._as_x(x)
        probs = self._engine.predict(arr)
        tool = probs.argmax(axis=1)
        top = probs.max(axis=1)
        if one:
            return int(tool[0]), float(top[0]), bool(top[0] >= level)
        return tool, top, top >= level

    def reset_state(self) -> None:
        """Empty the refractory ring buffer (the next call may use any batch size)."""
        with self._lock:
            self._engine.reset_state()

    def get_state(self) -> Any:
        """A copy of the refractory state: int32 (B, spiking_size), or None when it is empty.

        Each entry counts the steps that neuron of that stream stays silent, in
        ``[0, refractory_period]``: it may fire only at 0, firing sets it to
        ``refractory_period``, and every step without a spike lowers it by one.  An all-zero
        array is the empty state for B streams.  This is the ``refractory_state`` of the
        stateful ONNX graph (:meth:`export_onnx`).  On CUDA the array is a CuPy array.
        """
        with self._lock:
            return self._engine.get_state()

    def set_state(self, state: Any) -> None:
        """Take back a state from :meth:`get_state` (or a stateful ONNX graph) for the same
        streams: integers in ``[0, refractory_period]`` of shape (B, spiking_size); None
        empties the state like :meth:`reset_state`.  Later calls must use batch size B."""
        if state is None:
            self.reset_state()
            return
        arr = _numeric_array("state", state)
        n = self.spiking_size
        if arr.ndim != 2 or arr.shape[1] != n or arr.shape[0] < 1:
            raise ValueError(f"state must have shape (batch >= 1, {n}), got {arr.shape}")
        if arr.dtype.kind == "b":
            raise TypeError("state must hold integer step counts, got dtype bool")
        r = self.refractory_period
        if arr.dtype.kind == "f" and not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
            raise ValueError(f"state must hold integers in [0, {r}], got non-integer values")
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > r:
            raise ValueError(f"state must hold integers in [0, {r}] (refractory_period), got "
                             f"values from {lo} to {hi}")
        with self._lock:
            self._engine.set_state(np.ascontiguousarray(arr, dtype=np.int32))

    def export_onnx(self, path: Union[str, os.PathLike], *, stateful: bool = False,
                    opset: int = 17) -> None:
        """Write this net's step as an ONNX file (``.onnx``), atomically; needs ``onnx``
        (``pip install "aiva_cy[onnx]"``).

        ``stateful=False``: the :meth:`predict_proba` step, ``x`` (batch, input_size) →
        ``probs`` (batch, num_tools).  ``stateful=True``: one :meth:`forward` step,
        ``x`` and ``refractory_state`` (batch, spiking_size) int32 → ``probs`` and
        ``next_refractory_state``, in the encoding of :meth:`get_state` (all zeros: empty).
        The batch is dynamic, the weights are float32 initializers, ``opset`` is 13 or newer.
        """
        from aiva_cy.onnx_export import export_onnx
        export_onnx(self, path, stateful=stateful, opset=opset)

    # -- training --------------------------------------------------------------------------
    def loss_and_grad(self, x: Any, y: Any) -> Tuple[float, Dict[str, Any]]:
        """One step like :meth:`forward` with the backward pass of docs/contract.md ("Training"); no update.

        Returns the mean cross-entropy of the logits and ``{state_dict key: gradient}``.
        Raises FloatingPointError (and changes nothing) if the loss or a gradient is not finite.
        """
        arr, _ = self._as_x(x)
        labels = self._as_y(y, arr.shape[0])
        with self._lock:
            loss = self._engine.loss_and_grad(arr, labels)
            return float(loss), self._engine.gradients()

    def train_step(self, x: Any, y: Any) -> float:
        """One step, loss, backward and an Adam update; returns the loss.

        Raises FloatingPointError if the loss or a gradient is not finite; the weights, the
        optimizer and the state are then exactly as they were.
        """
        arr, _ = self._as_x(x)
        labels = self._as_y(y, arr.shape[0])
        with self._lock:
            loss, _ = self._engine.train_step(arr, labels, self._optimizer)
        return float(loss)

    def fit(self, X: Any, y: Any, epochs: int = 10, batch_size: int = 32, *,
            shuffle: bool = True, seed: Optional[int] = None,
            validation_data: Optional[Tuple[Any, Any]] = None, validation_split: float = 0.0,
            patience: Optional[int] = None, min_delta: float = 0.0,
            restore_best_weights: bool = False, verbose: int = 1) -> Dict[str, List[float]]:
        """Mini-batch training with Adam.

        Each mini-batch is one step from an empty state (the state is reset before each).
        ``validation_split`` holds out the last fraction of (X, y), before shuffling, as Keras
        does; ``validation_data`` gives a held-out set directly.  With ``patience``, training
        stops after that many epochs without an improvement of more than ``min_delta`` in the
        validation loss (the training loss when there is no validation data).  ``verbose``:
        0 silent, 1 a progress bar on a terminal (a line per epoch otherwise), 2 a line per epoch.

        Returns the history: ``{"loss": [...], "accuracy": [...]}`` per epoch, plus
        ``"val_loss"`` and ``"val_accuracy"`` with validation data.
        """
        from aiva_cy._training import fit
        with self._lock:      # the net is fit's until it returns: other threads' calls wait
            return fit(self, X, y, epochs=epochs, batch_size=batch_size, shuffle=shuffle, seed=seed,
                       validation_data=validation_data, validation_split=validation_split,
                       patience=patience, min_delta=min_delta,
                       restore_best_weights=restore_best_weights, verbose=verbose)

    def evaluate(self, X: Any, y: Any, batch_size: int = 256) -> Dict[str, float]:
        """Mean cross-entropy and accuracy, each row one step from an empty state."""
        from aiva_cy._training import evaluate
        with self._lock:
            return evaluate(self, X, y, batch_size=batch_size)

    # -- weights ---------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """``{"fc1.weight", "spiking.weight", "fc2.weight"}``: float32 copies, "x @ W" layout,
        all of one training step (taken under the lock a training step holds)."""
        with self._lock:
            return self._engine.get_weights()

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        """Copy weights in.  Every array is checked (keys, shape, numbers, finite) before any
        weight changes.  ``strict=False`` tolerates extra keys but never missing ones."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        missing = [k for k in PARAM_NAMES if k not in state_dict]
        extra = [k for k in state_dict if k not in PARAM_NAMES]
        if missing or (strict and extra):
            raise ValueError(f"state_dict keys do not match: missing {missing}, unexpected {extra}")
        shapes = self._state_dict_shapes()
        new = {}
        for k in PARAM_NAMES:
            arr = _numeric_array(f"state_dict[{k!r}]", state_dict[k])
            if arr.shape != shapes[k]:
                raise ValueError(f"state_dict[{k!r}] must have shape {shapes[k]}, got {arr.shape}")
            arr = np.asarray(arr, dtype=np.float32)
            _check_finite(f"state_dict[{k!r}]", arr)
            new[k] = arr
        with self._lock:
            self._engine.set_weights(new)

    def _state_dict_shapes(self) -> Dict[str, Tuple[int, int]]:
        c = self._config
        return {"fc1.weight": (c["input_size"], c["hidden_size"]),
                "spiking.weight": (c["hidden_size"], c["spiking_size"]),
                "fc2.weight": (c["spiking_size"], c["num_tools"])}

    def save(self, path: Union[str, os.PathLike], *, include_optimizer: bool = True) -> None:
        """Write one file, atomically: ``.npz`` (no pickle inside) or ``.safetensors``.

        The file holds the weights, the config, a format version and, with
        ``include_optimizer``, Adam's hyper-parameters, step and moments.
        """
        from aiva_cy import io
        io.save(self, path, include_optimizer=include_optimizer)

    @classmethod
    def load(cls, path: Union[str, os.PathLike], *, device: str = "cpu",
             precision: Optional[str] = None) -> "AIVANet":
        """Read a file written by :meth:`save` (npz or safetensors); ``precision`` overrides
        the saved one (a bfloat16 checkpoint on a machine without MKL, say)."""
        from aiva_cy import io
        return io.load(cls, path, device=device, precision=precision)

    @classmethod
    def from_bioneuron(cls, obj: Any, *, threshold: Optional[float] = None, **kwargs: Any) -> "AIVANet":
        """Weights from a NumPy BioNeuron: an object with ``fc1``, ``spiking1.weights`` and
        ``fc2``, or a dict with keys ``fc1``, ``spiking1_weights``, ``fc2``.

        Sizes come from the arrays; the threshold is the BioNeuron's own (``spiking1.threshold``,
        1.0 if it has none) unless given.  Other keywords go to the constructor.
        """
        from aiva_cy import io
        return io.from_bioneuron(cls, obj, threshold=threshold, **kwargs)

    # -- devices ---------------------------------------------------------------------------
    def to(self, device: str) -> "AIVANet":
        """Move weights, optimizer and state to ``"cpu"`` or ``"cuda"``; returns the net."""
        device = _parse_device(device)
        with self._lock:
            return self._move(device)

    def _move(self, device: str) -> "AIVANet":
        if device == self._device:
            return self
        if device.startswith("cuda"):
            _check_device_precision(device, self.precision)
            from aiva_cy._cuda import CupyEngine
            self._engine, self._optimizer = CupyEngine.from_cpu(
                self._engine, self._optimizer, device)
        else:
            self._engine, self._optimizer = self._engine.to_cpu(self._optimizer)
        self._device = device
        return self

    def cpu(self) -> "AIVANet":
        return self.to("cpu")

    def cuda(self) -> "AIVANet":
        return self.to("cuda")

    # -- pickle ----------------------------------------------------------------------------
    def __getstate__(self) -> Dict[str, Any]:
        with self._lock:      # weights, state and optimizer of the same step
            state = self._engine.get_state()
            if self._device != "cpu":
                state = None if state is None else state.get()
            return {"format": 1, "config": dict(self._config), "device": self._device,
                    "weights": _to_numpy(self.state_dict()), "state": state,
                    "optimizer": _to_numpy(self._optimizer.state_dict())}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self._build(state["config"], state["weights"], {})
        self._engine.set_state(state["state"])
        self._optimizer.load_state_dict(state["optimizer"])
        if state.get("device", "cpu") != "cpu":
            self.to(state["device"])


def _to_numpy(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_numpy(v) for k, v in obj.items()}
    return obj.get() if type(obj).__module__.startswith("cupy") else obj


def _init_weights(config: Mapping[str, Any], seed: Optional[int]) -> Dict[str, np.ndarray]:
    """LeCun uniform: U(-a, a) with a = sqrt(3 / fan_in), i.e. variance 1/fan_in.  On N(0, 1)
    inputs fc1's pre-activations then have unit variance, so tanh is neither saturated nor
    linear, and the membrane potential has a standard deviation near 0.6 — about a fifth of
    the spiking layer fires at threshold 0.5.  Uniform rather than normal because drawing
    3.2M uniform floats costs a third of the time, and start-up is measured.

    Drawn in the engine's (out, in) layout and handed over as transposed views, which the
    engine adopts without a copy."""
    rng = np.random.default_rng(seed)
    c = config
    out = {}
    for key, (fan_in, fan_out), transposed in zip(
            PARAM_NAMES, ((c["input_size"], c["hidden_size"]),
                          (c["hidden_size"], c["spiking_size"]),
                          (c["spiking_size"], c["num_tools"])), PARAM_TRANSPOSED):
        shape = (fan_out, fan_in) if transposed else (fan_in, fan_out)
        w = rng.random(shape, dtype=np.float32)             # U[0, 1)
        a = np.float32(math.sqrt(3.0 / fan_in))
        w *= np.float32(2.0) * a
        w -= a
        out[key] = w.T if transposed else w
    return out
