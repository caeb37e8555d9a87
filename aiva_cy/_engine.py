"""The engine contract: what :mod:`aiva_cy.net`, :mod:`aiva_cy._training` and the
checkpoint code may call on an engine, whatever the device.

Two engines implement it: ``aiva_cy._core.Engine`` (the CPU: Cython over the C core, which
checks sizes and releases the GIL) and ``aiva_cy._cuda.CupyEngine`` (CuPy: cuBLAS and fused
kernels).  ``tests/test_engine_contract.py`` checks that each has exactly the public names
of :class:`EngineProtocol`, with the same parameters and defaults.

The layering: the net validates user input and words its errors (naming the argument); an
engine turns checked input into the arrays its steps take (:meth:`EngineProtocol.as_x` and
friends, on its own device), owns the weights, the refractory state and the scratch, and
runs every step.  Arrays an engine hands back live on its device (NumPy on the CPU, CuPy on
CUDA) unless a method says otherwise; :meth:`EngineProtocol.to_host` brings one back.

The host-side conversions both engines share are the functions below; the CPU engine's
methods are thin calls to them, so its C-level hot paths stay as they are.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Protocol, Tuple, runtime_checkable

import numpy as np

from aiva_cy._checks import as_float32, check_finite, label_rows, numeric_array
from aiva_cy._model import label_range_error


@runtime_checkable
class EngineProtocol(Protocol):
    """One network's weights, refractory state and steps on one device.

    Thread safety: the step methods that read and change the state (forward,
    forward_sequence, loss_and_grad, train_step) and the setters serialise on the engine's
    own lock; predict reads one generation of weights and no state, so it may run from many
    threads at once.  The net holds its own lock around calls that must see one training
    step's weights, state and optimizer together.
    """

    # -- the architecture (read-only) ---------------------------------------------------
    input_size: int
    hidden_size: int
    spiking_size: int
    num_tools: int
    threshold: float
    refractory_period: int
    surrogate_slope: float
    precision: str
    #: What runs: ``precision`` with "auto" resolved (see aiva_cy._blas.resolve_precision).
    effective_precision: str
    #: The most rows one training step takes.
    max_train_batch: int
    #: The last backward pass's bounds on |gradient| per parameter (CPU: Adam proves its
    #: step finite from them); None before the first, and on engines that do not compute them.
    grad_bounds: Optional[List[float]]

    @property
    def device(self) -> str:
        """"cpu", "cuda" or "cuda:N": where the weights live and every step runs."""

    @property
    def state_batch_size(self) -> Optional[int]:
        """Streams in the refractory state, or None when it is empty."""

    @property
    def pooled_workspaces(self) -> int:
        """Free inference workspaces kept between calls (0 where the engine keeps none)."""

    # -- input conversion ----------------------------------------------------------------
    def as_x(self, x: Any, name: str = "x") -> Tuple[Any, bool]:
        """One step's input as the steps take it, (B, input_size) float32 in C order on this
        device, and whether ``x`` was one row (1-D).  Raises TypeError/ValueError naming
        ``name`` for the wrong dtype or shape; NaN and Inf are reported by the step."""

    def as_xs(self, xs: Any, name: str = "xs") -> Tuple[Any, bool]:
        """A sequence, (T, B, input_size) float32 in C order on this device, and whether
        ``xs`` was one stream (T, input_size)."""

    def as_y(self, y: Any, batch: int, name: str = "y") -> Any:
        """Labels for ``batch`` rows as int64 on this device; integers in [0, num_tools)
        (integral floats allowed, bools not).  A device may leave the range check of
        integer labels to the training step, which fails with the same message."""

    def to_device(self, arr: np.ndarray) -> Any:
        """A checked host array on this device (the same array on the CPU)."""

    def to_host(self, arr: Any) -> np.ndarray:
        """An array of this device as a NumPy array."""

    # -- steps ---------------------------------------------------------------------------
    def forward(self, x: Any) -> Any:
        """One stateful step: probabilities (B, tools); the state advances on success."""

    def forward_sequence(self, xs: Any) -> Any:
        """T stateful steps (T, B, tools); the state advances only if every step succeeds."""

    def predict(self, x: Any, with_logits: bool = False) -> Any:
        """One step from an empty state, touching no state: probabilities (B, tools), or
        (probabilities, logits) ``with_logits``."""

    def loss_and_grad(self, x: Any, y: Any) -> float:
        """One stateful step with the backward pass, no update; the gradients via
        :meth:`gradients`.  FloatingPointError (nothing changed) if they are not finite."""

    def train_step(self, x: Any, y: Any, optimizer: Any) -> Tuple[float, int]:
        """loss_and_grad and the update of ``optimizer`` (one from :meth:`make_optimizer`);
        returns (loss, rows this step's forward classified right).  On any error nothing
        changes: weights, optimizer and state."""

    def loss_and_grad_sequence(self, xs: Any, y: Any, weight: Any) -> float:
        """An episode from an empty state (xs (T, B, in); labels and row weights flattened
        to T * B, the weights normalised, 0 for steps without a target): the weighted loss;
        the gradients via :meth:`gradients`.  The stream state is not touched."""

    def train_sequence(self, xs: Any, y: Any, weight: Any, optimizer: Any) -> Tuple[float, int]:
        """loss_and_grad_sequence and the update of ``optimizer``; returns (loss, weighted
        rows classified right).  On any error nothing changes."""

    def blas_products(self, x: Any, packed: bool = True, provider: Optional[str] = None) -> None:
        """The three matrix products of a forward step alone (the benchmarks' floor), in the
        net's precision.  ``packed=False``: without pre-packed weights where the library
        makes them; ``provider="mkl"``: on MKL whatever the float32 BLAS is (CPU only)."""

    # -- weights -------------------------------------------------------------------------
    def param_shapes(self) -> Tuple[Tuple[int, ...], ...]:
        """The shapes of :meth:`params`, in PARAM_NAMES order."""

    def params(self) -> List[Any]:
        """The live weight arrays in this engine's layout, in PARAM_NAMES order (for the
        optimizer; no copies)."""

    def get_weights(self) -> Dict[str, np.ndarray]:
        """state_dict-layout ("x @ W") NumPy copies of one generation of weights."""

    def set_weights(self, weights: Dict[str, Any]) -> None:
        """Copy state_dict-layout arrays in (shapes checked here; dtype and finiteness by
        the caller), swapped in whole: a concurrent predict sees the old or the new."""

    def gradients(self) -> Optional[Dict[str, Any]]:
        """state_dict-layout copies of the last gradients (on this device), or None."""

    def set_precision(self, precision: str) -> None:
        """Switch the products' precision (one of aiva_cy._model.PRECISIONS); the float32
        master weights stay.  NotImplementedError on a device that runs float32 only
        (:func:`aiva_cy._model.check_device_precision`)."""

    def quantized(self) -> Optional[Dict[str, Any]]:
        """int8: the quantized copies inference runs on (re-made from the float32 masters
        after any change), engine-layout arrays by name; None in any other precision."""

    def packed(self) -> bool:
        """Whether inference runs on pre-packed weights (packing them now if stale)."""

    # -- the refractory state ------------------------------------------------------------
    def reset_state(self) -> None:
        """Empty the state: the next call may use any batch size."""

    def get_state(self) -> Any:
        """A copy of the state, int32 (B, spiking_size) on this device, or None if empty."""

    def set_state(self, state: Any) -> None:
        """Take a state back (checked by :func:`aiva_cy._model.check_state`); None empties."""

    # -- optimizer and devices -----------------------------------------------------------
    def make_optimizer(self, **hyper: Any) -> Any:
        """A fresh Adam for :meth:`params` on this device (``lr``, ``betas``, ``eps``,
        ``weight_decay``)."""

    def to(self, device: str, optimizer: Any) -> Tuple["EngineProtocol", Any]:
        """This engine and ``optimizer`` on ``device`` (a parsed device string): themselves
        if already there, else new ones holding the same weights, state and optimizer."""


# ---------------------------------------------------------------------------------------
# host-side conversions, shared by both engines
# ---------------------------------------------------------------------------------------
def x_is_one_row(shape: Tuple[int, ...], input_size: int, name: str = "x") -> bool:
    """Whether a step's input of this shape is one row; ValueError for any other shape."""
    n = input_size
    if len(shape) == 1 and shape[0] == n:
        return True
    if len(shape) == 2 and shape[1] == n and shape[0] >= 1:
        return False
    raise ValueError(f"{name} must have shape ({n},) or (batch >= 1, {n}), got {shape}")


def xs_is_one_stream(shape: Tuple[int, ...], input_size: int, name: str = "xs") -> bool:
    """Whether a sequence of this shape is one stream (T, in); ValueError for any other."""
    n = input_size
    if len(shape) == 2 and shape[1] == n and shape[0] >= 1:
        return True
    if len(shape) == 3 and shape[2] == n and shape[0] >= 1 and shape[1] >= 1:
        return False
    raise ValueError(f"{name} must have shape (steps >= 1, {n}) or (steps >= 1, batch >= 1, "
                     f"{n}), got {shape}")


def host_x(x: Any, name: str, input_size: int) -> Tuple[np.ndarray, bool]:
    """(B, input_size) float32, C order, aligned; and whether ``x`` was 1-D.  Not checked
    for NaN/Inf: the C core does that in the pass that reads it."""
    arr = numeric_array(name, x)
    one = x_is_one_row(arr.shape, input_size, name)
    return as_float32(name, arr.reshape(1, input_size) if one else arr), one


def host_xs(xs: Any, name: str, input_size: int) -> Tuple[np.ndarray, bool]:
    """(T, B, input_size) float32, C order, checked finite (here, rather than by a step,
    whose message would speak of one step's x); and whether ``xs`` was one stream."""
    arr = numeric_array(name, xs)
    one = xs_is_one_stream(arr.shape, input_size, name)
    arr = as_float32(name, arr[:, None, :] if one else arr)
    check_finite(name, arr)
    return arr, one


def host_y(y: Any, batch: int, name: str, num_tools: int) -> np.ndarray:
    """Labels as int64 (batch,), aligned, every one checked in [0, num_tools)."""
    arr = label_rows(name, numeric_array(name, y), batch, num_tools)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= num_tools:
        raise label_range_error(name, num_tools, lo, hi)
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    if not arr.flags.aligned:      # C may not read an int64 at an odd address
        arr = arr.copy()
    return arr


def cpu_engine_to(engine: Any, device: str, optimizer: Any) -> Tuple[Any, Any]:
    """The CPU engine's :meth:`EngineProtocol.to`."""
    if device == "cpu":
        return engine, optimizer
    from aiva_cy._cuda import from_engine   # checks the precision before it copies anything
    return from_engine(engine, optimizer, device)
