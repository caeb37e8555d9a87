"""AIVANet: the Python face of the engine — validates, documents, dispatches.

Everything numeric happens in the engine (``aiva_cy._core.Engine`` on the CPU,
``aiva_cy._cuda.CupyEngine`` on CUDA, both of the contract in :mod:`aiva_cy._engine`); this
module checks user input, has the engine turn it into the arrays its steps take, and words
errors so that they name the argument.  It never asks which device it is on.
"""
from __future__ import annotations

import os
import threading
from typing import (Any, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Union,
                    overload)

import numpy as np
from numpy.typing import ArrayLike, NDArray

from aiva_cy._adam import Adam
from aiva_cy._checks import adam_args as _adam_args
from aiva_cy._checks import check_finite as _check_finite
from aiva_cy._checks import float_arg as _float_arg
from aiva_cy._checks import int_arg as _int_arg
from aiva_cy._checks import is_cupy as _is_cupy
from aiva_cy._checks import numeric_array as _numeric_array
from aiva_cy._checks import parse_device as _parse_device
from aiva_cy._checks import tool_indices
from aiva_cy._core import Engine
from aiva_cy._model import (PARAM_NAMES, Snapshot, batch_mismatch, check_config,
                            check_device_precision, check_precision, check_state, check_tool_names,
                            decision_names,
                            init_weights,
                            num_parameters, param_shapes, sizes)

# Static types of the input: a flat list of numbers is one stream, a list of lists a batch.
# An array's number of dimensions is not in its static type, so an array gets the union.
_Row = Sequence[float]
_Rows = Sequence[Sequence[float]]


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
        bf16 products, else float32 (``blas_info()["precision_auto"]``).  Everything else,
        the master weights included, stays float32.  The reduced precisions are oneDNN's
        products, where the CPU has native ones: ``pip install "aiva_cy[precision]"``.
        Settable on a live net (CPU only).
    tool_names : sequence of str, or None
        The tools' names in output order (``num_tools`` distinct strings), kept in the
        config, checkpoints, pickles and the ONNX metadata.  With names, ``decide(x,
        names=True)`` returns the tool's name, and labels may be given as names.
    lr, betas, eps, weight_decay :
        Adam's hyper-parameters (``torch.optim.Adam``'s defaults); also on ``net.optimizer``.
    """

    def __init__(self, input_size: int = 512, num_tools: int = 20, *, hidden_size: int = 2048,
                 spiking_size: int = 1024, threshold: float = 0.5, refractory_period: int = 2,
                 surrogate_slope: float = 25.0, seed: Optional[int] = None, device: str = "cpu",
                 precision: str = "float32", tool_names: Optional[Sequence[str]] = None,
                 lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        config = check_config({
            "input_size": input_size, "num_tools": num_tools, "hidden_size": hidden_size,
            "spiking_size": spiking_size, "threshold": threshold,
            "refractory_period": refractory_period, "surrogate_slope": surrogate_slope,
            "precision": precision, "tool_names": tool_names})
        if seed is not None:
            seed = _int_arg("seed", seed, 0, 2**63 - 1)
        optimizer_args = _adam_args(lr, betas, eps, weight_decay)
        device = _parse_device(device)
        check_device_precision(device, config["precision"])   # before any weight is drawn
        self._build(config, init_weights(config, seed), optimizer_args, adopt=True)
        self._move(device)

    def _build(self, config: Dict[str, Any], weights: Mapping[str, np.ndarray],
               optimizer_args: Dict[str, Any], adopt: bool = False) -> None:
        """A CPU engine and its optimizer for a checked config (see aiva_cy._model)."""
        self._config = c = dict(config)
        # The CPU engine; .to() swaps in another of the same contract (aiva_cy._engine).
        self._engine: Any = Engine(c["input_size"], c["hidden_size"], c["spiking_size"], c["num_tools"],
                                   c["threshold"], c["refractory_period"], c["surrogate_slope"],
                                   weights, copy=not adopt, precision=c["precision"])
        self._optimizer: Any = self._engine.make_optimizer(**optimizer_args)
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
    def tool_names(self) -> Optional[Tuple[str, ...]]:
        """The tools' names in output order, or None; settable (``num_tools`` distinct
        strings, or None)."""
        return self._config["tool_names"]

    @tool_names.setter
    def tool_names(self, value: Optional[Sequence[str]]) -> None:
        names = check_tool_names(value)
        if names is not None and len(names) != self.num_tools:
            raise ValueError(f"tool_names must name each of the {self.num_tools} tools "
                             f"(num_tools), got {len(names)} names")
        with self._lock:      # a snapshot (save, pickle) sees the old names or the new
            self._config["tool_names"] = names

    def _labels(self, y: Any, name: str = "y") -> Any:
        """y with tool names turned into indices (see :func:`aiva_cy._checks.tool_indices`)."""
        return tool_indices(name, y, self._config["tool_names"], self.num_tools)

    @property
    def num_parameters(self) -> int:
        """Number of weights (there are no biases)."""
        return num_parameters(self._config)

    @property
    def config(self) -> Dict[str, Any]:
        """The constructor arguments that fix the architecture (a copy)."""
        return dict(self._config)

    @property
    def device(self) -> str:
        return str(self._engine.device)

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
        precision = check_precision(precision)
        # Under the net's lock, like fit: a switch waits for a running fit, and two switches
        # cannot leave the config and the engine disagreeing.
        with self._lock:
            self._engine.set_precision(precision)     # NotImplementedError where it cannot
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
                f"surrogate_slope={c['surrogate_slope']}, device={self.device!r}, "
                f"precision={c['precision']!r}"
                + (f", tool_names={list(c['tool_names'])!r})" if c["tool_names"] else ")"))

    # -- inference -------------------------------------------------------------------------
    def forward(self, x: ArrayLike) -> NDArray[np.float32]:
        """One time step: probabilities (B, num_tools), or (num_tools,) for a 1-D x.

        Advances the refractory state.  The state follows the batch size: a call with a
        different batch size raises ValueError until :meth:`reset_state`.
        """
        arr, one = self._engine.as_x(x)
        with self._lock:
            probs = self._engine.forward(arr)
        return probs[0] if one else probs

    __call__ = forward

    def forward_sequence(self, xs: ArrayLike) -> NDArray[np.float32]:
        """T steps from the current state: xs (T, B, in) → (T, B, tools); (T, in) → (T, tools)."""
        arr, one = self._engine.as_xs(xs)
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
        arr, one = self._engine.as_x(x)
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
        arr, one = self._engine.as_x(x)
        idx = self._engine.predict(arr).argmax(axis=1)
        return int(idx[0]) if one else idx

    @overload
    def decide(self, x: _Row, confidence: float = ..., *, names: Literal[False] = ...
               ) -> Tuple[int, float, bool]: ...
    @overload
    def decide(self, x: _Row, confidence: float = ..., *, names: Literal[True]
               ) -> Tuple[str, float, bool]: ...
    @overload
    def decide(self, x: _Rows, confidence: float = ..., *, names: Literal[False] = ...
               ) -> Tuple[NDArray[np.int64], NDArray[np.float32], NDArray[np.bool_]]: ...
    @overload
    def decide(self, x: _Rows, confidence: float = ..., *, names: Literal[True]
               ) -> Tuple[NDArray[np.str_], NDArray[np.float32], NDArray[np.bool_]]: ...
    @overload
    def decide(self, x: ArrayLike, confidence: float = ..., *, names: Literal[False] = ...
               ) -> Union[Tuple[int, float, bool],
                          Tuple[NDArray[np.int64], NDArray[np.float32], NDArray[np.bool_]]]: ...
    @overload
    def decide(self, x: ArrayLike, confidence: float = ..., *, names: Literal[True]
               ) -> Union[Tuple[str, float, bool],
                          Tuple[NDArray[np.str_], NDArray[np.float32], NDArray[np.bool_]]]: ...
    @overload
    def decide(self, x: ArrayLike, confidence: float = ..., *, names: bool = ...) -> Any: ...

    def decide(self, x: ArrayLike, confidence: float = 0.7, *, names: bool = False) -> Any:
        """AIVA's anti-hallucination check: ``(tool, confidence, is_confident)``.

        ``tool`` is the most probable tool's index, or with ``names=True`` its name from
        :attr:`tool_names` (a ValueError where the net has none).  ``confidence`` is the top
        probability; ``is_confident`` says whether it reaches the ``confidence`` argument.
        For a batch, each of the three is an array (B,).
        """
        level = _float_arg("confidence", confidence, 0.0)
        if level > 1.0:
            raise ValueError(f"confidence must be in [0, 1], got {confidence!r}")
        tool_names = decision_names(self._config["tool_names"], names)
        arr, one = self._engine.as_x(x)
        probs = self._engine.predict(arr)
        tool = probs.argmax(axis=1)
        top = probs.max(axis=1)
        if tool_names is not None:
            host = tool.get() if _is_cupy(tool) else tool
            named = np.asarray(tool_names)[host]
            if one:
                return str(named[0]), float(top[0]), bool(top[0] >= level)
            return named, top, top >= level
        if one:
            return int(tool[0]), float(top[0]), bool(top[0] >= level)
        return tool, top, top >= level

    def calibrate_threshold(self, X: ArrayLike, firing_rate: float = 0.1) -> float:
        """Set and return the spike threshold at which the spiking layer fires for
        ``firing_rate`` (in (0, 1)) of the neurons over the rows of X, each row one step
        from an empty state.  Any input scale; weights, optimizer and state are kept."""
        from aiva_cy._threshold import calibrate_threshold
        return calibrate_threshold(self, X, firing_rate)

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
        arr = check_state(state, self.spiking_size, self.refractory_period)
        with self._lock:
            self._engine.set_state(arr)

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
        arr, _ = self._engine.as_x(x)
        labels = self._engine.as_y(self._labels(y), arr.shape[0])
        with self._lock:
            loss = self._engine.loss_and_grad(arr, labels)
            return float(loss), self._engine.gradients()

    def train_step(self, x: Any, y: Any) -> float:
        """One step, loss, backward and an Adam update; returns the loss.

        Raises FloatingPointError if the loss or a gradient is not finite; the weights, the
        optimizer and the state are then exactly as they were.
        """
        arr, _ = self._engine.as_x(x)
        labels = self._engine.as_y(self._labels(y), arr.shape[0])
        with self._lock:
            loss, _ = self._engine.train_step(arr, labels, self._optimizer)
        return float(loss)

    # -- episodes --------------------------------------------------------------------------
    def _episode(self, xs: Any, ys: Any, sample_weight: Any) -> Tuple[Any, Any, Any]:
        """xs (T, B, in) float32 on the engine's device, labels (T * B,) int64 (-1: no
        target) and row weights (T * B,) float32 normalised over the targeted steps."""
        from aiva_cy._sequences import episode_targets
        arr, one = self._engine.as_xs(xs, "xs")
        labels, weights = episode_targets(arr.shape, self._labels(ys, "ys"), sample_weight,
                                          self.num_tools, one)
        return arr, self._engine.to_device(labels), self._engine.to_device(weights)

    def loss_and_grad_sequence(self, xs: Any, ys: Any, sample_weight: Any = None
                               ) -> Tuple[float, Dict[str, Any]]:
        """An episode from an empty state, with the backward pass; no update.

        xs (T, B, in) time-major (or (T, in) for one stream), labels ys (T, B) (or (T,));
        a label < 0 is a step without a target: it runs and advances the refractory state
        but adds no loss.  ``sample_weight`` (B,) or (T, B) weights the steps.  The loss is
        the weighted mean cross-entropy over the targeted steps; the gradient is each
        step's (its mask from the carried state held constant) summed over the steps,
        computed as products over all T x B rows at once.  The net's own stream state
        (``forward``'s) is neither read nor changed.
        """
        arr, labels, weights = self._episode(xs, ys, sample_weight)
        with self._lock:
            loss = self._engine.loss_and_grad_sequence(arr, labels, weights)
            return float(loss), self._engine.gradients()

    def train_sequence(self, xs: Any, ys: Any, sample_weight: Any = None) -> float:
        """:meth:`loss_and_grad_sequence`, then an Adam update; returns the loss.  On an
        error (FloatingPointError for a non-finite loss or gradient) nothing changes."""
        arr, labels, weights = self._episode(xs, ys, sample_weight)
        with self._lock:
            loss, _ = self._engine.train_sequence(arr, labels, weights, self._optimizer)
        return float(loss)

    def fit(self, X: Any, y: Any, epochs: int = 10, batch_size: int = 32, *,
            shuffle: bool = True, seed: Optional[int] = None,
            validation_data: Optional[Tuple[Any, Any]] = None, validation_split: float = 0.0,
            patience: Optional[int] = None, min_delta: float = 0.0,
            restore_best_weights: bool = False, verbose: int = 1,
            sample_weight: Any = None, callbacks: Any = None) -> Dict[str, List[float]]:
        """Mini-batch training with Adam, on rows or on episodes.

        Rows: X (n, in), y (n,); each mini-batch is one step from an empty state.
        Episodes: X (n, steps, in), y (n, steps) batch-first, a label < 0 for a step without
        a target; ``batch_size`` counts episodes, and each mini-batch is
        :meth:`train_sequence` on those episodes (from an empty state, so the refractory
        state the net carries in use is trained too).  ``sample_weight``: one weight per row,
        or per episode (n,) or per step (n, steps); the loss is then the weighted mean.
        ``validation_split`` holds out the last fraction of (X, y), before shuffling, as Keras
        does; ``validation_data`` gives a held-out set directly (of the same form).  With
        ``patience``, training stops after that many epochs without an improvement of more
        than ``min_delta`` in the validation loss (the training loss when there is no
        validation data).  ``callbacks``: callables ``(epoch, logs)`` or objects with
        ``on_epoch_end(epoch, logs)``, called after each epoch with that epoch's history
        entries; one that returns False stops training.  ``verbose``: 0 silent, 1 a progress
        bar on a terminal (where stderr is not one, a line per epoch to the ``aiva_cy.fit``
        logger at INFO level), 2 a line per epoch on stderr.  The net's own stream state is
        kept as it was.

        Returns the history: ``{"loss": [...], "accuracy": [...]}`` per epoch, plus
        ``"val_loss"`` and ``"val_accuracy"`` with validation data.
        """
        from aiva_cy._training import fit
        y = self._labels(y)
        if isinstance(validation_data, (tuple, list)) and len(validation_data) == 2:
            validation_data = (validation_data[0],
                               self._labels(validation_data[1], "validation_data[1]"))
        with self._lock:      # the net is fit's until it returns: other threads' calls wait
            return fit(self._engine, self._optimizer, X, y, epochs=epochs, batch_size=batch_size,
                       shuffle=shuffle, seed=seed,
                       validation_data=validation_data, validation_split=validation_split,
                       patience=patience, min_delta=min_delta,
                       restore_best_weights=restore_best_weights, verbose=verbose,
                       sample_weight=sample_weight, callbacks=callbacks)

    def evaluate(self, X: Any, y: Any, batch_size: int = 256, *,
                 sample_weight: Any = None) -> Dict[str, float]:
        """(Weighted) mean cross-entropy and accuracy: rows each one step from an empty
        state, or episodes X (n, steps, in) each from an empty state, over their targeted
        steps.  The net's own stream state is kept as it was."""
        from aiva_cy._training import evaluate
        y = self._labels(y)
        with self._lock:
            return evaluate(self._engine, X, y, batch_size=batch_size,
                            sample_weight=sample_weight)

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
        shapes = param_shapes(*sizes(self._config))
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

    def save(self, path: Union[str, os.PathLike], *, include_optimizer: bool = True) -> None:
        """Write one file, atomically: ``.npz`` (no pickle inside) or ``.safetensors``.

        The file holds the weights, the config, a format version and, with
        ``include_optimizer``, Adam's hyper-parameters, step and moments.
        """
        from aiva_cy import io
        io.save(self._snapshot(bool(include_optimizer)), path)

    @classmethod
    def load(cls, path: Union[str, os.PathLike], *, device: str = "cpu",
             precision: Optional[str] = None) -> "AIVANet":
        """Read a file written by :meth:`save` (npz or safetensors); ``precision`` overrides
        the saved one (a bfloat16 checkpoint on a machine without oneDNN, say)."""
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
        self._engine, self._optimizer = self._engine.to(device, self._optimizer)
        return self

    def cpu(self) -> "AIVANet":
        return self.to("cpu")

    def cuda(self) -> "AIVANet":
        return self.to("cuda")

    # -- pickle ----------------------------------------------------------------------------
    def _snapshot(self, include_optimizer: bool = True) -> Snapshot:
        """Weights, state and optimizer of one step, on the host, taken under the lock."""
        with self._lock:
            state = self._engine.get_state()
            return Snapshot(self.config, self._engine.get_weights(),
                            None if state is None else self._engine.to_host(state),
                            self._optimizer.state_dict() if include_optimizer else None)

    def __getstate__(self) -> Dict[str, Any]:
        snap = self._snapshot()
        return {"format": 1, "config": snap.config, "device": self.device,
                "weights": snap.weights, "state": snap.state, "optimizer": snap.optimizer}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self._build(check_config(state["config"]), state["weights"], {})
        self._engine.set_state(state["state"])
        self._optimizer.load_state_dict(state["optimizer"])
        self.to(state.get("device", "cpu"))

