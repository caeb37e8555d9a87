"""The CUDA engine: the same interface as ``aiva_cy._core.Engine``, on CuPy.

cuBLAS does the products (``@`` on CuPy arrays, TF32 off unless CuPy is told otherwise);
after each product one fused kernel does the elementwise work of the step:

    x @ fc1        -> tanh, in place
    h @ spiking    -> spike threshold with the refractory mask          ("spike")
    out @ fc2      -> softmax per row (inference), or softmax + cross-entropy + dz + the
                      argmax check per row (training)                    ("softmax_rows",
                                                                          "xent_rows")
    backward       -> surrogate gradient with the mask ("surrogate"), tanh backward in place
                      ("tanh_back"), then every check of the step ("flag_nonfinite" over x and
                      the three gradients, "finish" folding the rows into loss and accuracy)
    update         -> Adam, one fused pass per weight ("adam"); the countdown ("commit")

Every call blocks on the host once, at its end, to fetch the error flags its kernels
gathered on the device (input NaN/Inf, overflowing logits; in training also labels and
gradients): a train step fetches its 3-number summary (loss, correct rows, flags) before Adam
runs, a stateful step before it commits the refractory state, so a failed call changes
nothing.  The inputs are checked on the device, in the same queue as the step: a CuPy input
never makes a round trip through the host, and the one fetch waits for the step to finish,
which the caller would do anyway to read the result.

Weights are kept in the state_dict's "x @ W" layout: cuBLAS handles either layout at the same
speed.  Every public method runs inside its device's context, so ``cuda:1`` works like
``cuda:0``.  Nothing here is imported unless a net is moved to CUDA, so ``import aiva_cy``
never needs CuPy.
"""
from __future__ import annotations

import functools
import math
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar

import numpy as np

try:
    import cupy as cp
except Exception as exc:  # ImportError, or a CuPy that cannot find its CUDA libraries
    cp = None
    _IMPORT_ERROR: Optional[BaseException] = exc
else:
    _IMPORT_ERROR = None

from aiva_cy import _engine
from aiva_cy._checks import (adam_betas, adam_value, check_finite, is_cupy, label_rows,
                             labels_accepted)
from aiva_cy._model import (ERR_GRAD_NONFINITE, ERR_HIDDEN_NONFINITE, ERR_INPUT_NONFINITE,
                            ERR_OUTPUT_NONFINITE,
                            ERR_UPDATE_NONFINITE, GRAD_LIMIT, PARAM_NAMES, batch_mismatch,
                            check_device_precision, check_precision, check_state, engine_error,
                            label_range_error, param_shapes)

# Bits of the error word a step gathers on the device.
BAD_X, BAD_LOGITS, BAD_LABEL, BAD_GRAD, BAD_UPDATE = 1, 2, 4, 8, 16
#: Finite x whose fc1 product overflowed: NaN membrane potentials (ERR_HIDDEN_NONFINITE).
BAD_HIDDEN = 32

_INSTALL_HINT = ("install CuPy with its CUDA libraries: pip install \"aiva_cy[cuda]\" (CUDA 12) "
                 "or \"aiva_cy[cuda13]\" (CUDA 13)")

# Host blocks (device-to-host fetches) made by this module: the GPU check reads it to report
# syncs per step.  Every fetch goes through _fetch.
fetch_count = 0


def _fetch(a: Any) -> np.ndarray:
    global fetch_count
    fetch_count += 1
    return a.get()


_checked_devices: Dict[int, bool] = {}


def _require_cuda(device: str) -> int:
    """The device index, after proving that CuPy can compile and launch a kernel and run a
    cuBLAS product there.  A CuPy installed without NVRTC or cuBLAS (plain ``cupy-cuda12x``
    on a machine with only the driver) imports fine and fails at the first product; the
    tiny kernel and matmul here turn that into this clear RuntimeError up front."""
    if cp is None:
        raise RuntimeError(f"device={device!r} needs CuPy with a CUDA GPU, and CuPy could not be "
                           f"imported ({_IMPORT_ERROR!r}); {_INSTALL_HINT}, and check the driver")
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:
        raise RuntimeError(f"device={device!r}: CuPy found no usable CUDA GPU ({exc})") from None
    index = int(device.split(":")[1]) if ":" in device else 0
    if not 0 <= index < count:
        raise RuntimeError(f"device={device!r}: there are {count} CUDA GPU(s)")
    if not _checked_devices.get(index):
        try:
            with cp.cuda.Device(index):
                a = cp.arange(4, dtype=cp.float32).reshape(2, 2)
                got = _fetch(_k("tanh_back")(a, a @ a))    # NVRTC, a launch, cuBLAS
        except Exception as exc:
            raise RuntimeError(f"device={device!r}: CuPy cannot compile kernels or run cuBLAS "
                               f"products on this GPU ({type(exc).__name__}: {exc}); "
                               f"{_INSTALL_HINT}") from None
        if not np.array_equal(got, [[2, 0], [-18, -88]]):
            raise RuntimeError(f"device={device!r}: a test kernel computed {got.tolist()}, "
                               f"not [[2, 0], [-18, -88]]")
        _checked_devices[index] = True
    return index


# ---------------------------------------------------------------------------------------
# the fused kernels, compiled once per process on first use
# ---------------------------------------------------------------------------------------
def _kernel_sources() -> Tuple[str, str]:
    """(RawModule source, ElementwiseKernel preamble): aiva_cy/kernels.cu behind the error
    bits above and aiva_adam_update.h (torch.optim.Adam's arithmetic for one element, the
    CPU's too, so both devices and the check before each update compute the same numbers).
    The header's text is put in rather than passed as an include path: CuPy caches compiled
    kernels by their source, which then covers the header as well."""
    from importlib.resources import files
    package = files("aiva_cy")
    try:
        kernels = package.joinpath("kernels.cu").read_text(encoding="utf-8")
        adam = package.joinpath("aiva_adam_update.h").read_text(encoding="utf-8")
    except OSError as exc:
        raise RuntimeError(f"the CUDA kernels' source is missing from the aiva_cy package "
                           f"({exc}); reinstall aiva_cy") from None
    bits = "".join(f"#define {name} {value}\n" for name, value in (
        ("BAD_X", BAD_X), ("BAD_LOGITS", BAD_LOGITS), ("BAD_LABEL", BAD_LABEL),
        ("BAD_GRAD", BAD_GRAD), ("BAD_UPDATE", BAD_UPDATE), ("BAD_HIDDEN", BAD_HIDDEN)))
    common = bits + adam + "\n"
    return common + kernels, common + "#define AIVA_ELEMENTWISE_ONLY\n" + kernels


_kernels: Dict[str, Any] = {}


def _k(name: str) -> Any:
    if not _kernels:
        module_source, preamble = _kernel_sources()

        def ek(in_params: str, out_params: str, operation: str, kernel: str) -> Any:
            return cp.ElementwiseKernel(in_params, out_params, operation, kernel,
                                        preamble=preamble)
        module = cp.RawModule(code=module_source, options=("--std=c++11",))
        _kernels.update({
            # The refractory mask is read from the countdown the step starts from; a fresh
            # (empty) state has no countdown array at all: the *_fresh twins.
            "spike": ek("float32 v, int32 left, float32 thr", "float32 spikes",
                        "spikes = aiva_spike_value(v, left, thr)", "aiva_spike"),
            "spike_fresh": ek("float32 v, float32 thr", "float32 spikes",
                              "spikes = aiva_spike_fresh_value(v, thr)", "aiva_spike_fresh"),
            "commit": ek("float32 spikes, int32 R", "int32 left",
                         "left = aiva_commit_value(spikes, R, left)", "aiva_commit"),
            "commit_fresh": ek("float32 spikes, int32 R", "int32 left",
                               "left = aiva_commit_fresh_value(spikes, R)", "aiva_commit_fresh"),
            # fast-sigmoid surrogate; d_spikes is overwritten by dv
            "surrogate": ek("float32 v, int32 left, float32 thr, float32 k", "float32 d",
                            "d = aiva_surrogate_value(v, left, thr, k, d)", "aiva_surrogate"),
            "surrogate_fresh": ek("float32 v, float32 thr, float32 k", "float32 d",
                                  "d = aiva_surrogate_fresh_value(v, thr, k, d)",
                                  "aiva_surrogate_fresh"),
            "tanh_back": ek("float32 h", "float32 d", "d = aiva_tanh_back_value(h, d)",
                            "aiva_tanh_back"),
            # Adam, one fused pass per weight array
            "adam": ek("float32 g, float32 one_minus_b1, float32 b2, float32 one_minus_b2, "
                       "float32 eps, float32 wd, float32 step_size, float32 inv_bc2_sqrt",
                       "float32 w, float32 m, float32 v",
                       "float nw, nm, nv;"
                       "aiva_adam_update(g, w, m, v, one_minus_b1, b2, one_minus_b2, eps, wd,"
                       "                 step_size, inv_bc2_sqrt, &nw, &nm, &nv);"
                       "w = nw; m = nm; v = nv;", "aiva_adam"),
            "adam_flag": module.get_function("aiva_adam_flag"),
            "softmax_rows": module.get_function("aiva_softmax_rows"),
            "xent_rows": module.get_function("aiva_xent_rows"),
            "xent_rows_weighted": module.get_function("aiva_xent_rows_weighted"),
            "spike_sequence": module.get_function("aiva_spike_sequence"),
            "flag_nonfinite": module.get_function("aiva_flag_nonfinite"),
            "finish": module.get_function("aiva_finish"),
        })
    return _kernels[name]


def _rows_launch(batch: int) -> Tuple[Tuple[int], Tuple[int]]:
    return ((batch + 127) // 128,), (128,)


def _flag_nonfinite(a: Any, limit: float, bit: int, flags: Any) -> None:
    n = a.size
    blocks = max(1, min(1024, (n + 255) // 256))
    _k("flag_nonfinite")((blocks,), (256,), (a, np.int64(n), np.float32(limit), np.int32(bit),
                                              flags))


F = TypeVar("F", bound=Callable[..., Any])


def _on_device(method: F) -> F:
    """Run the method inside the engine's device context (so cuda:N works)."""
    @functools.wraps(method)
    def wrapper(self: "CupyEngine", *args: Any, **kwargs: Any) -> Any:
        with cp.cuda.Device(self._device_index):
            return method(self, *args, **kwargs)
    return wrapper  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------
# Adam
# ---------------------------------------------------------------------------------------
def _checked(name: str) -> property:
    """A hyper-parameter checked where it enters, by the CPU optimizer's rules."""
    attr = "_" + name

    def set_(self: "CupyAdam", value: Any) -> None:
        setattr(self, attr, adam_value(name, value))
    return property(lambda self: getattr(self, attr), set_)


class CupyAdam:
    """Adam on the GPU: the same attributes, checks and state_dict as ``aiva_cy._adam.Adam``."""

    lr, eps, weight_decay = _checked("lr"), _checked("eps"), _checked("weight_decay")
    beta1, beta2 = _checked("beta1"), _checked("beta2")

    def __init__(self, shapes, *, names, device_index: int = 0, lr=1e-3, betas=(0.9, 0.999),
                 eps=1e-8, weight_decay=0.0):
        self.shapes = tuple(tuple(s) for s in shapes)
        self.names = tuple(names)
        self.transposed = (False,) * len(self.shapes)
        self.device_index = device_index
        self.lr, (self.beta1, self.beta2), self.eps = lr, betas, eps
        self.weight_decay, self.step = weight_decay, 0
        with cp.cuda.Device(device_index):
            self._exp_avg = [cp.zeros(s, cp.float32) for s in self.shapes]
            self._exp_avg_sq = [cp.zeros(s, cp.float32) for s in self.shapes]

    @property
    def betas(self) -> Tuple[float, float]:
        return (self.beta1, self.beta2)

    @betas.setter
    def betas(self, value: Tuple[float, float]) -> None:
        self._beta1, self._beta2 = adam_betas(value)

    def _scalars(self) -> Tuple[np.float32, ...]:
        """The next step's scalars, computed in double and rounded once (1 - 0.999f would
        be 1.3e-5 off torch's 1 - beta)."""
        step = self.step + 1
        beta1, beta2 = float(self.beta1), float(self.beta2)
        step_size = float(self.lr) / (1.0 - beta1 ** step)
        inv_bc2_sqrt = 1.0 / math.sqrt(1.0 - beta2 ** step)
        with np.errstate(over="ignore"):     # an Inf step size is caught by flag_update
            return tuple(np.float32(a) for a in (1.0 - beta1, beta2, 1.0 - beta2, self.eps,
                                                 self.weight_decay, step_size, inv_bc2_sqrt))

    def flag_update(self, params: List[Any], grads: List[Any], flags: Any) -> None:
        """Queue the read-only check of the next update: sets BAD_UPDATE in ``flags`` if it
        would leave a weight or moment non-finite."""
        scalars = self._scalars()
        for w, g, m, v in zip(params, grads, self._exp_avg, self._exp_avg_sq):
            n = w.size
            _k("adam_flag")((max(1, min(1024, (n + 255) // 256)),), (256,),
                            (g, w, m, v, np.int64(n)) + scalars + (flags,))

    def update(self, params: List[Any], grads: List[Any]) -> None:
        scalars = self._scalars()
        with cp.cuda.Device(self.device_index):
            for w, g, m, v in zip(params, grads, self._exp_avg, self._exp_avg_sq):
                _k("adam")(g, *scalars, w, m, v)
        self.step += 1

    def state_dict(self) -> Dict[str, Any]:
        return {"lr": self.lr, "betas": (self.beta1, self.beta2), "eps": self.eps,
                "weight_decay": self.weight_decay, "step": int(self.step),
                "exp_avg": {k: _fetch(a) for k, a in zip(self.names, self._exp_avg)},
                "exp_avg_sq": {k: _fetch(a) for k, a in zip(self.names, self._exp_avg_sq)}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        # Checked in full by a CPU optimizer of the same shapes, then uploaded.
        from aiva_cy._adam import Adam
        check = Adam(self.shapes, names=self.names)
        check.load_state_dict(state)
        s = check.state_dict()
        with cp.cuda.Device(self.device_index):
            exp_avg = [cp.asarray(s["exp_avg"][k]) for k in self.names]
            exp_avg_sq = [cp.asarray(s["exp_avg_sq"][k]) for k in self.names]
        self.lr, (self.beta1, self.beta2), self.eps = s["lr"], s["betas"], s["eps"]
        self.weight_decay, self.step = s["weight_decay"], s["step"]
        self._exp_avg, self._exp_avg_sq = exp_avg, exp_avg_sq

    def __repr__(self) -> str:
        return (f"CupyAdam(lr={self.lr}, betas=({self.beta1}, {self.beta2}), eps={self.eps}, "
                f"weight_decay={self.weight_decay}, step={self.step})")


# ---------------------------------------------------------------------------------------
# the engine
# ---------------------------------------------------------------------------------------
class CupyEngine:
    """One network's weights, refractory state and step on a CUDA device (the contract of
    :class:`aiva_cy._engine.EngineProtocol`)."""

    #: Where the products come from: always float32 (bfloat16 and int8 are oneDNN's, on the
    #: CPU).
    precision = "float32"
    effective_precision = "float32"
    #: Nothing here bounds the gradients for Adam: the fused check reads them instead.
    grad_bounds: Optional[List[float]] = None
    #: The row kernels and cuBLAS take a batch as a 32-bit int.
    max_train_batch = 2**31 - 1
    #: Each call allocates its scratch from CuPy's memory pool; none is kept here.
    pooled_workspaces = 0

    def __init__(self, config: Tuple, weights: Dict[str, np.ndarray], device: str):
        self._device_index = _require_cuda(device)
        self._device = device
        (self.input_size, self.hidden_size, self.spiking_size, self.num_tools,
         self.threshold, self.refractory_period, self.surrogate_slope) = config
        self._lock = threading.RLock()
        self._grads: Optional[Dict[str, Any]] = None
        self._left: Any = None        # the refractory countdown (B, spiking) int32, or None
        self._install(weights)

    @property
    def device(self) -> str:
        return self._device

    # -- moving --------------------------------------------------------------------------
    def to(self, device: str, optimizer: "CupyAdam") -> Tuple[Any, Any]:
        if device == self._device:
            return self, optimizer
        if device == "cpu":
            return self._to_cpu(optimizer)
        return from_engine(self, optimizer, device)

    def _to_cpu(self, optimizer: "CupyAdam") -> Tuple[Any, Any]:
        from aiva_cy._core import Engine
        engine = Engine(self.input_size, self.hidden_size, self.spiking_size, self.num_tools,
                        self.threshold, self.refractory_period, self.surrogate_slope,
                        self.get_weights())
        state = self.get_state()
        engine.set_state(None if state is None else _fetch(state))
        opt = engine.make_optimizer()
        opt.load_state_dict(optimizer.state_dict())
        return engine, opt

    def make_optimizer(self, **hyper: Any) -> "CupyAdam":
        return CupyAdam(self.param_shapes(), names=PARAM_NAMES, device_index=self._device_index,
                        **hyper)

    # -- arrays --------------------------------------------------------------------------
    @_on_device
    def to_device(self, arr: np.ndarray) -> Any:
        return cp.asarray(arr)

    def to_host(self, arr: Any) -> np.ndarray:
        return _fetch(arr) if is_cupy(arr) else np.asarray(arr)

    @_on_device
    def as_x(self, x: Any, name: str = "x") -> Tuple[Any, bool]:
        """A CuPy input stays on the device, float32 in C order: each step checks it for
        NaN/Inf itself, with the step's other checks.  A host input is checked on the host
        and sent."""
        if not is_cupy(x):
            arr, one = _engine.host_x(x, name, self.input_size)
            check_finite(name, arr)
            return cp.asarray(arr), one
        if x.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold real numbers (bool, int or float), got dtype {x.dtype}")
        one = _engine.x_is_one_row(x.shape, self.input_size, name)
        return cp.ascontiguousarray(x.reshape(1, self.input_size) if one else x,
                                    dtype=cp.float32), one

    @_on_device
    def as_xs(self, xs: Any, name: str = "xs") -> Tuple[Any, bool]:
        """A CuPy sequence (T, B, in) stays on the device (checked by forward_sequence)."""
        if not is_cupy(xs):
            arr, one = _engine.host_xs(xs, name, self.input_size)
            return cp.asarray(arr), one
        if xs.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold real numbers (bool, int or float), got dtype {xs.dtype}")
        one = _engine.xs_is_one_stream(xs.shape, self.input_size, name)
        return cp.ascontiguousarray(xs[:, None, :] if one else xs, dtype=cp.float32), one

    @_on_device
    def as_y(self, y: Any, batch: int, name: str = "y") -> Any:
        """CuPy labels stay on the device.  Integer labels are range-checked by the training
        step itself (flagged, fetched with the step's summary); float labels must be
        integral, which costs one check here.  Host labels are checked on the host."""
        T = self.num_tools
        if not is_cupy(y):
            return cp.asarray(_engine.host_y(y, batch, name, T))
        y = label_rows(name, y, batch, T, cp, lambda a: bool(_fetch(a)))
        if y.dtype.kind == "f":
            # integral floats beyond int64 wrap: clamp first so the range check sees them
            y = cp.clip(y, -1, T)
        elif y.dtype.kind not in "iu":
            raise TypeError(f"{labels_accepted(name, T)}, got dtype {y.dtype}")
        elif y.dtype.kind == "u" and y.dtype.itemsize == 8:
            y = cp.minimum(y, T)          # uint64 beyond int64 would turn negative
        return cp.ascontiguousarray(y, dtype=cp.int64)

    # -- weights -------------------------------------------------------------------------
    def param_shapes(self) -> Tuple[Tuple[int, ...], ...]:
        return tuple(w.shape for w in self._weights)

    def params(self) -> List[Any]:
        return list(self._weights)

    @_on_device
    def get_weights(self) -> Dict[str, np.ndarray]:
        weights = self._weights
        return {k: _fetch(w) for k, w in zip(PARAM_NAMES, weights)}

    @_on_device
    def _install(self, weights: Dict[str, np.ndarray]) -> None:
        new = tuple(cp.array(np.ascontiguousarray(weights[k], np.float32), dtype=cp.float32)
                    for k in PARAM_NAMES)
        with self._lock:
            # One reference swap: a predict running meanwhile uses the old tuple or the new.
            self._weights = new

    def set_weights(self, weights: Dict[str, np.ndarray]) -> None:
        want = param_shapes(self.input_size, self.hidden_size, self.spiking_size, self.num_tools)
        for k, shape in want.items():
            if tuple(weights[k].shape) != shape:
                raise ValueError(f"{k} must have shape {shape}, got {weights[k].shape}")
        self._install(weights)

    @_on_device
    def gradients(self) -> Optional[Dict[str, Any]]:
        return None if self._grads is None else {k: g.copy() for k, g in self._grads.items()}

    def set_precision(self, precision: str) -> None:
        check_device_precision(self._device, check_precision(precision))

    def quantized(self) -> Optional[Dict[str, Any]]:
        """No int8 here."""
        return None

    def packed(self) -> bool:
        """cuBLAS has no pre-packed weights."""
        return False

    # -- state ---------------------------------------------------------------------------
    @property
    def state_batch_size(self) -> Optional[int]:
        left = self._left
        return None if left is None else int(left.shape[0])

    def reset_state(self) -> None:
        with self._lock:
            self._left = None

    @_on_device
    def get_state(self) -> Any:
        with self._lock:
            return None if self._left is None else self._left.copy()

    @_on_device
    def set_state(self, state: Any) -> None:
        if state is None:
            with self._lock:
                self._left = None
            return
        left = cp.asarray(check_state(state, self.spiking_size, self.refractory_period,
                                      "refractory state"))
        with self._lock:
            self._left = left

    def _state_for(self, batch: int) -> Any:
        left = self._left
        if left is not None and left.shape[0] != batch:
            raise batch_mismatch(batch, int(left.shape[0]))
        return left

    # -- one step ------------------------------------------------------------------------
    def _hidden_and_spikes(self, weights: Tuple[Any, Any, Any], x: Any, left: Any,
                           flags: Any = None) -> Tuple[Any, Any, Any]:
        fc1, spiking, _ = weights
        h = x @ fc1
        cp.tanh(h, out=h)
        v = h @ spiking
        if flags is not None:      # inference: NaN potentials would silently never spike
            _flag_nonfinite(v, np.inf, BAD_HIDDEN, flags)
        thr = np.float32(self.threshold)
        spikes = _k("spike_fresh")(v, thr) if left is None else _k("spike")(v, left, thr)
        return h, v, spikes

    def _probs(self, weights: Tuple[Any, Any, Any], spikes: Any, out: Any, flags: Any) -> Any:
        z = spikes @ weights[2]
        B, T = z.shape
        _k("softmax_rows")(*_rows_launch(B), (z, np.int32(B), np.int32(T), out, flags))
        return z

    @staticmethod
    def _raise_for(flags: Any, name: str) -> None:
        """The call's one host block: its error flags.  Inference reports overflowing logits
        like bad input (ValueError), as the CPU engine does."""
        bad = int(_fetch(flags)[0])
        if bad & BAD_X:
            raise engine_error(ERR_INPUT_NONFINITE, name=name)
        if bad & BAD_HIDDEN:
            raise engine_error(ERR_HIDDEN_NONFINITE, name=name)
        if bad & BAD_LOGITS:
            raise engine_error(ERR_OUTPUT_NONFINITE)

    def _commit(self, left: Any, spikes: Any) -> Any:
        R = np.int32(self.refractory_period)
        if left is None:
            return _k("commit_fresh")(spikes, R)
        _k("commit")(spikes, R, left)
        return left

    @_on_device
    def forward(self, x: Any) -> Any:
        with self._lock:
            weights = self._weights
            left = self._state_for(x.shape[0])
            flags = cp.zeros(1, cp.int32)
            _flag_nonfinite(x, np.inf, BAD_X, flags)
            probs = cp.empty((x.shape[0], self.num_tools), cp.float32)
            _, _, spikes = self._hidden_and_spikes(weights, x, left, flags)
            self._probs(weights, spikes, probs, flags)
            self._raise_for(flags, "x")
            self._left = self._commit(left, spikes)
        return probs

    #: Rows of one time-parallel chunk of a sequence: its (rows, hidden) float32 scratch
    #: stays under 512 MiB at the default sizes.
    _SEQUENCE_ROWS = 1 << 16

    def _sequence_spikes(self, weights: Tuple[Any, Any, Any], x: Any, steps: int,
                         left: Any, flags: Any = None) -> Tuple[Any, Any, Any, Any]:
        """h and v for all steps x B rows at once (x: (steps * B, in)), then the recurrence
        in one kernel: (h, v, spikes, left_rows); ``left`` (B, S) int32 is advanced."""
        fc1, spiking, _ = weights
        h = x @ fc1
        cp.tanh(h, out=h)
        v = h @ spiking
        if flags is not None:
            _flag_nonfinite(v, np.inf, BAD_HIDDEN, flags)
        spikes = cp.empty(v.shape, cp.float32)
        left_rows = cp.empty(v.shape, cp.int32)
        n = left.size
        _k("spike_sequence")(((n + 255) // 256,), (256,),
                             (v, np.int32(steps), np.int64(n), np.float32(self.threshold),
                              np.int32(self.refractory_period), left, spikes, left_rows))
        return h, v, spikes, left_rows

    @_on_device
    def forward_sequence(self, xs: Any) -> Any:
        """The fc1 and spiking products of all steps at once (chunks of whole steps), the
        refractory recurrence in one kernel, one readout product."""
        with self._lock:
            weights = self._weights
            steps, batch = xs.shape[0], xs.shape[1]
            held = self._state_for(batch)
            left = (cp.zeros((batch, self.spiking_size), cp.int32) if held is None
                    else held.copy())                      # adopted only if all steps pass
            flags = cp.zeros(1, cp.int32)
            _flag_nonfinite(xs, np.inf, BAD_X, flags)
            out = cp.empty((steps, batch, self.num_tools), cp.float32)
            chunk = max(1, self._SEQUENCE_ROWS // batch)
            for t in range(0, steps, chunk):
                n = min(chunk, steps - t)
                rows = xs[t:t + n].reshape(n * batch, self.input_size)
                _, _, spikes, _ = self._sequence_spikes(weights, rows, n, left, flags)
                self._probs(weights, spikes, out[t:t + n].reshape(n * batch, self.num_tools),
                            flags)
            self._raise_for(flags, "xs")                   # once, for all the steps
            self._left = left
        return out

    @_on_device
    def predict(self, x: Any, with_logits: bool = False) -> Any:
        weights = self._weights            # one read: a concurrent set_weights can't mix sets
        flags = cp.zeros(1, cp.int32)
        _flag_nonfinite(x, np.inf, BAD_X, flags)
        probs = cp.empty((x.shape[0], self.num_tools), cp.float32)
        _, _, spikes = self._hidden_and_spikes(weights, x, None, flags)
        z = self._probs(weights, spikes, probs, flags)
        self._raise_for(flags, "x")
        return (probs, z) if with_logits else probs

    def _forward_backward(self, x: Any, y: Any, left: Any, optimizer: Optional[CupyAdam] = None
                          ) -> Tuple[float, int, Any]:
        """Forward, loss and gradients, then every check of the step in one fetch: x,
        labels, logits, gradients and, with an optimizer, the update it would make.  Raises
        (with nothing changed) if any fails."""
        weights = self._weights
        B, T = x.shape[0], self.num_tools
        flags = cp.zeros(1, cp.int32)
        _flag_nonfinite(x, np.inf, BAD_X, flags)
        h, v, spikes = self._hidden_and_spikes(weights, x, left)
        z = spikes @ weights[2]
        dz = cp.empty((B, T), cp.float32)
        loss_row = cp.empty(B, cp.float64)
        correct_row = cp.empty(B, cp.int32)
        _k("xent_rows")(*_rows_launch(B), (z, y, np.int32(B), np.int32(T), np.float32(1.0 / B),
                                           dz, loss_row, correct_row, flags))
        loss, correct = self._backward_and_checks(weights, x, y, h, v, left, spikes, dz,
                                                  loss_row, correct_row, flags, optimizer)
        return loss, correct, spikes

    def _backward_and_checks(self, weights: Tuple[Any, Any, Any], x: Any, y: Any, h: Any,
                             v: Any, left: Any, spikes: Any, dz: Any, loss_row: Any,
                             correct_row: Any, flags: Any, optimizer: Optional[CupyAdam]
                             ) -> Tuple[float, int]:
        """The backward products from dz, the gradient and update checks, and the one fetch
        of the step; stores the gradients or raises (nothing changed).  ``left``: each row's
        countdown at its step (None: all open)."""
        _, spiking, fc2 = weights
        B = x.shape[0]
        d = dz @ fc2.T                                   # d_spikes, then dv in place
        thr, k = np.float32(self.threshold), np.float32(self.surrogate_slope)
        if left is None:
            _k("surrogate_fresh")(v, thr, k, d)
        else:
            _k("surrogate")(v, left, thr, k, d)
        da = d @ spiking.T
        _k("tanh_back")(h, da)
        grads = dict(zip(PARAM_NAMES, (x.T @ da, h.T @ d, spikes.T @ dz)))
        for g in grads.values():
            _flag_nonfinite(g, GRAD_LIMIT, BAD_GRAD, flags)
        if optimizer is not None:
            optimizer.flag_update(self.params(), [grads[k] for k in PARAM_NAMES], flags)
        summary = cp.empty(3, cp.float64)
        _k("finish")((1,), (256,), (loss_row, correct_row, np.int32(B), flags, summary))
        loss, correct, bad = _fetch(summary)             # the step's one host block
        bad = int(bad)
        if bad & BAD_X:
            raise engine_error(ERR_INPUT_NONFINITE, training=True)
        if bad & BAD_LABEL:
            lo, hi = (int(a) for a in _fetch(cp.stack([y.min(), y.max()])))
            raise label_range_error("y", self.num_tools, lo, hi)
        if bad & BAD_LOGITS:
            raise engine_error(ERR_OUTPUT_NONFINITE, training=True)
        if bad & BAD_GRAD or not math.isfinite(loss):
            raise engine_error(ERR_GRAD_NONFINITE, training=True)
        if bad & BAD_UPDATE:
            raise engine_error(ERR_UPDATE_NONFINITE, training=True)
        self._grads = grads
        return float(loss), int(correct)

    def _sequence_backward(self, xs: Any, y: Any, weight: Any,
                           optimizer: Optional[CupyAdam] = None) -> Tuple[float, int]:
        """An episode from an empty state: the sequence forward over all its rows, the
        weighted loss and the backward products over all of them, one fetch."""
        weights = self._weights
        steps, batch = xs.shape[0], xs.shape[1]
        rows, T = steps * batch, self.num_tools
        if y.shape != (rows,) or weight.shape != (rows,):
            raise ValueError(f"ys and the weights need {rows} entries (steps x batch), got "
                             f"{tuple(y.shape)} and {tuple(weight.shape)}")
        x = xs.reshape(rows, self.input_size)
        flags = cp.zeros(1, cp.int32)
        _flag_nonfinite(x, np.inf, BAD_X, flags)
        left = cp.zeros((batch, self.spiking_size), cp.int32)
        h, v, spikes, left_rows = self._sequence_spikes(weights, x, steps, left)
        z = spikes @ weights[2]
        dz = cp.empty((rows, T), cp.float32)
        loss_row = cp.empty(rows, cp.float64)
        correct_row = cp.empty(rows, cp.int32)
        _k("xent_rows_weighted")(*_rows_launch(rows), (z, y, weight, np.int32(rows), np.int32(T),
                                                       dz, loss_row, correct_row, flags))
        return self._backward_and_checks(weights, x, y, h, v, left_rows, spikes, dz, loss_row,
                                         correct_row, flags, optimizer)

    @_on_device
    def loss_and_grad_sequence(self, xs: Any, y: Any, weight: Any) -> float:
        with self._lock:
            loss, _ = self._sequence_backward(xs, y, weight)
        return loss

    @_on_device
    def train_sequence(self, xs: Any, y: Any, weight: Any, optimizer: CupyAdam
                       ) -> Tuple[float, int]:
        with self._lock:
            loss, correct = self._sequence_backward(xs, y, weight, optimizer)
            grads = self._grads
            assert grads is not None   # set by _sequence_backward
            optimizer.update(self.params(), [grads[k] for k in PARAM_NAMES])
        return loss, correct

    @_on_device
    def loss_and_grad(self, x: Any, y: Any) -> float:
        with self._lock:
            left = self._state_for(x.shape[0])
            loss, _, spikes = self._forward_backward(x, y, left)
            self._left = self._commit(left, spikes)
        return loss

    @_on_device
    def train_step(self, x: Any, y: Any, optimizer: CupyAdam) -> Tuple[float, int]:
        with self._lock:
            left = self._state_for(x.shape[0])
            loss, correct, spikes = self._forward_backward(x, y, left, optimizer)
            grads = self._grads
            assert grads is not None   # set by _forward_backward
            optimizer.update(self.params(), [grads[k] for k in PARAM_NAMES])
            self._left = self._commit(left, spikes)
        return loss, correct

    @_on_device
    def blas_products(self, x: Any, packed: bool = True, provider: Optional[str] = None) -> None:
        """The three products of a forward step alone (the benchmark's floor).  cuBLAS has
        no packs, so ``packed`` changes nothing; there is no other provider."""
        if provider is not None:
            raise ValueError(f"provider must be None on a CUDA engine (MKL is a CPU library), "
                             f"got {provider!r}")
        fc1, spiking, fc2 = self._weights
        h = x @ fc1
        v = h @ spiking
        v @ fc2


def from_engine(engine: Any, optimizer: Any, device: str) -> Tuple[CupyEngine, CupyAdam]:
    """A CupyEngine on ``device`` holding ``engine``'s weights and state, and a CupyAdam
    holding ``optimizer``'s state (either may be on the CPU or on another GPU)."""
    check_device_precision(device, engine.precision)
    config = (engine.input_size, engine.hidden_size, engine.spiking_size, engine.num_tools,
              engine.threshold, engine.refractory_period, engine.surrogate_slope)
    new = CupyEngine(config, engine.get_weights(), device)
    new.set_state(engine.get_state())
    opt = new.make_optimizer()
    opt.load_state_dict(optimizer.state_dict())
    return new, opt
