"""The CUDA engine: the same interface as ``aiva_cy._core.Engine``, on CuPy.

cuBLAS does the products (``@`` on CuPy arrays); the elementwise work of a step — spike
threshold with the refractory mask, the countdown update, the surrogate gradient, the tanh
backward and Adam — runs as fused ``ElementwiseKernel``s, one launch each.  Weights are kept
in the state_dict's "x @ W" layout: cuBLAS handles either layout at the same speed.

Nothing here is imported unless a net is moved to CUDA, so ``import aiva_cy`` never needs CuPy.
"""
from __future__ import annotations

import threading
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

try:
    import cupy as cp
except Exception as exc:  # ImportError, or a CuPy that cannot find its CUDA libraries
    cp = None
    _IMPORT_ERROR: Optional[BaseException] = exc
else:
    _IMPORT_ERROR = None

from aiva_cy._core import PARAM_NAMES, PARAM_TRANSPOSED, batch_mismatch

_kernels: Dict[str, Any] = {}


def _require_cuda(device: str) -> int:
    if cp is None:
        raise RuntimeError(f"device={device!r} needs CuPy with a CUDA GPU, and CuPy could not be "
                           f"imported ({_IMPORT_ERROR!r}); install it with "
                           f"'pip install cupy-cuda12x' (CUDA 12) and check the driver")
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:
        raise RuntimeError(f"device={device!r}: CuPy found no usable CUDA GPU ({exc})") from None
    index = int(device.split(":")[1]) if ":" in device else 0
    if not 0 <= index < count:
        raise RuntimeError(f"device={device!r}: there are {count} CUDA GPU(s)")
    return index


def _k(name: str) -> Any:
    """Compile each fused kernel once per process, on first use."""
    if name not in _kernels:
        ek = cp.ElementwiseKernel
        _kernels.update({
            "spike": ek("float32 v, int32 left, float32 thr", "float32 spikes, bool open",
                        "open = left == 0; spikes = (open && v >= thr) ? 1.0f : 0.0f",
                        "aiva_spike"),
            "commit": ek("float32 spikes, int32 R", "int32 left",
                         "left = spikes != 0.0f ? R : (left > 0 ? left - 1 : 0)", "aiva_commit"),
            "surrogate": ek("float32 d_spikes, float32 v, bool open, float32 thr, float32 k",
                            "float32 dv",
                            "float a = 1.0f + k * fabsf(v - thr); dv = open ? d_spikes / (a * a) : 0.0f",
                            "aiva_surrogate"),
            "tanh_back": ek("float32 dh, float32 h", "float32 da", "da = dh * (1.0f - h * h)",
                            "aiva_tanh_back"),
            # torch.optim.Adam's arithmetic, one pass: see _adam.pyx for the CPU twin.
            "adam": ek("float32 g, float32 b1, float32 b2, float32 eps, float32 wd, "
                       "float32 step_size, float32 bc2_sqrt", "float32 w, float32 m, float32 v",
                       "float gi = g + wd * w; float mi = m + (1.0f - b1) * (gi - m);"
                       "float vi = b2 * v + (1.0f - b2) * gi * gi; m = mi; v = vi;"
                       "w = w - step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);", "aiva_adam"),
        })
    return _kernels[name]


class CupyAdam:
    """Adam on the GPU: the same attributes and state_dict as ``aiva_cy._adam.Adam``."""

    def __init__(self, shapes, *, names, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        self.shapes = tuple(tuple(s) for s in shapes)
        self.names = tuple(names)
        self.transposed = (False,) * len(self.shapes)
        self.lr, (self.beta1, self.beta2), self.eps = lr, betas, eps
        self.weight_decay, self.step = weight_decay, 0
        self._exp_avg = [cp.zeros(s, cp.float32) for s in self.shapes]
        self._exp_avg_sq = [cp.zeros(s, cp.float32) for s in self.shapes]

    @property
    def betas(self) -> Tuple[float, float]:
        return (self.beta1, self.beta2)

    @betas.setter
    def betas(self, value: Tuple[float, float]) -> None:
        self.beta1, self.beta2 = value

    def update(self, params: List[Any], grads: List[Any]) -> None:
        step = self.step + 1
        step_size = self.lr / (1.0 - self.beta1 ** step)
        bc2_sqrt = (1.0 - self.beta2 ** step) ** 0.5
        for w, g, m, v in zip(params, grads, self._exp_avg, self._exp_avg_sq):
            _k("adam")(g, np.float32(self.beta1), np.float32(self.beta2), np.float32(self.eps),
                       np.float32(self.weight_decay), np.float32(step_size),
                       np.float32(bc2_sqrt), w, m, v)
        self.step = step

    def state_dict(self) -> Dict[str, Any]:
        return {"lr": self.lr, "betas": (self.beta1, self.beta2), "eps": self.eps,
                "weight_decay": self.weight_decay, "step": int(self.step),
                "exp_avg": {k: a.get() for k, a in zip(self.names, self._exp_avg)},
                "exp_avg_sq": {k: a.get() for k, a in zip(self.names, self._exp_avg_sq)}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        # Check through the CPU optimizer's validation, then upload.
        from aiva_cy._adam import Adam
        check = Adam(self.shapes, names=self.names)
        check.load_state_dict(state)
        s = check.state_dict()
        self.lr, (self.beta1, self.beta2), self.eps = s["lr"], s["betas"], s["eps"]
        self.weight_decay, self.step = s["weight_decay"], s["step"]
        self._exp_avg = [cp.asarray(s["exp_avg"][k]) for k in self.names]
        self._exp_avg_sq = [cp.asarray(s["exp_avg_sq"][k]) for k in self.names]

    def __repr__(self) -> str:
        return (f"CupyAdam(lr={self.lr}, betas=({self.beta1}, {self.beta2}), eps={self.eps}, "
                f"weight_decay={self.weight_decay}, step={self.step})")


class CupyEngine:
    """One network's weights, refractory state and step on a CUDA device."""

    def __init__(self, config: Tuple, weights: Dict[str, np.ndarray], device: str):
        self.device_index = _require_cuda(device)
        self.xp = cp
        (self.input_size, self.hidden_size, self.spiking_size, self.num_tools,
         self.threshold, self.refractory_period, self.surrogate_slope) = config
        self._lock = threading.Lock()
        with cp.cuda.Device(self.device_index):
            self.w = {k: cp.asarray(np.ascontiguousarray(weights[k], np.float32))
                      for k in PARAM_NAMES}
        self.grads: Optional[Dict[str, Any]] = None
        self.refractory_left = None

    # -- moving --------------------------------------------------------------------------
    @classmethod
    def from_cpu(cls, engine: Any, optimizer: Any, device: str) -> Tuple["CupyEngine", CupyAdam]:
        _require_cuda(device)
        config = (engine.input_size, engine.hidden_size, engine.spiking_size, engine.num_tools,
                  engine.threshold, engine.refractory_period, engine.surrogate_slope)
        new = cls(config, engine.get_weights(), device)
        new.set_state(engine.get_state())
        with cp.cuda.Device(new.device_index):
            opt = CupyAdam([new.w[k].shape for k in PARAM_NAMES], names=PARAM_NAMES)
            opt.load_state_dict(optimizer.state_dict())
        return new, opt

    def to_cpu(self, optimizer: CupyAdam) -> Tuple[Any, Any]:
        from aiva_cy._adam import Adam
        from aiva_cy._core import Engine
        engine = Engine(self.input_size, self.hidden_size, self.spiking_size, self.num_tools,
                        self.threshold, self.refractory_period, self.surrogate_slope,
                        self.get_weights())
        engine.set_state(None if self.refractory_left is None else self.refractory_left.get())
        opt = Adam(engine.param_shapes(), names=PARAM_NAMES, transposed=PARAM_TRANSPOSED)
        opt.load_state_dict(optimizer.state_dict())
        return engine, opt

    # -- arrays --------------------------------------------------------------------------
    def to_device(self, arr: np.ndarray) -> Any:
        with cp.cuda.Device(self.device_index):
            return cp.asarray(arr)

    def as_x(self, x: Any, name: str, n_in: int) -> Tuple[Any, bool]:
        if x.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold real numbers (bool, int or float), got dtype {x.dtype}")
        one = x.ndim == 1
        if not ((one and x.shape[0] == n_in) or (x.ndim == 2 and x.shape[1] == n_in and x.shape[0] >= 1)):
            raise ValueError(f"{name} must have shape ({n_in},) or (batch >= 1, {n_in}), got {x.shape}")
        x = cp.ascontiguousarray(x.reshape(1, n_in) if one else x, dtype=cp.float32)
        if not bool(cp.isfinite(x).all()):
            raise ValueError(f"{name} contains NaN or Inf (or a value too large for float32)")
        return x, one

    def param_shapes(self):
        return tuple(self.w[k].shape for k in PARAM_NAMES)

    def params(self):
        return [self.w[k] for k in PARAM_NAMES]

    def get_weights(self) -> Dict[str, np.ndarray]:
        return {k: self.w[k].get() for k in PARAM_NAMES}

    def set_weights(self, weights: Dict[str, np.ndarray]) -> None:
        with self._lock:
            for k in PARAM_NAMES:
                self.w[k][...] = cp.asarray(weights[k], dtype=cp.float32)

    def gradients(self) -> Optional[Dict[str, Any]]:
        return None if self.grads is None else {k: g.copy() for k, g in self.grads.items()}

    # -- state ---------------------------------------------------------------------------
    @property
    def state_batch_size(self) -> Optional[int]:
        return None if self.refractory_left is None else int(self.refractory_left.shape[0])

    def reset_state(self) -> None:
        self.refractory_left = None

    def get_state(self) -> Any:
        return None if self.refractory_left is None else self.refractory_left.copy()

    def set_state(self, state: Any) -> None:
        if state is None:
            self.refractory_left = None
            return
        from aiva_cy._core import Engine   # reuse the CPU checks on shape and range
        probe = Engine(1, 1, self.spiking_size, 1, 0.0, self.refractory_period, 0.0,
                       {"fc1.weight": np.zeros((1, 1), np.float32),
                        "spiking.weight": np.zeros((1, self.spiking_size), np.float32),
                        "fc2.weight": np.zeros((self.spiking_size, 1), np.float32)})
        probe.set_state(state.get() if hasattr(state, "get") else state)
        self.refractory_left = cp.asarray(probe.get_state())

    def _state_for(self, batch: int) -> Any:
        if self.refractory_left is None:
            return cp.zeros((batch, self.spiking_size), cp.int32)
        if self.refractory_left.shape[0] != batch:
            raise batch_mismatch(batch, int(self.refractory_left.shape[0]))
        return self.refractory_left

    # -- one step ------------------------------------------------------------------------
    def _step(self, x: Any, left: Any) -> Dict[str, Any]:
        h = cp.tanh(x @ self.w["fc1.weight"])
        v = h @ self.w["spiking.weight"]
        spikes, open_ = _k("spike")(v, left, np.float32(self.threshold))
        z = spikes @ self.w["fc2.weight"]
        if not bool(cp.isfinite(z).all()):
            raise ValueError("the logits are not finite: the weights are too large for float32")
        e = cp.exp(z - z.max(axis=1, keepdims=True))
        return {"h": h, "v": v, "spikes": spikes, "open": open_, "z": z,
                "p": e / e.sum(axis=1, keepdims=True)}

    def _commit(self, left: Any, spikes: Any) -> Any:
        _k("commit")(spikes, np.int32(self.refractory_period), left)
        return left

    def forward(self, x: Any) -> Any:
        with self._lock:
            left = self._state_for(x.shape[0])
            c = self._step(x, left)
            self.refractory_left = self._commit(left, c["spikes"])
        return c["p"]

    def forward_sequence(self, xs: Any) -> Any:
        with self._lock:
            left = self._state_for(xs.shape[1]).copy()
            out = cp.empty((xs.shape[0], xs.shape[1], self.num_tools), cp.float32)
            for t in range(xs.shape[0]):
                c = self._step(xs[t], left)
                out[t] = c["p"]
                self._commit(left, c["spikes"])
            self.refractory_left = left
        return out

    def predict(self, x: Any, with_logits: bool = False) -> Any:
        c = self._step(x, cp.zeros((x.shape[0], self.spiking_size), cp.int32))
        return (c["p"], c["z"]) if with_logits else c["p"]

    def _forward_backward(self, x: Any, y: Any, left: Any) -> Tuple[float, int, Any]:
        c = self._step(x, left)
        B = x.shape[0]
        z = c["z"]
        m = z.max(axis=1, keepdims=True)
        lse = m[:, 0] + cp.log(cp.exp(z - m).sum(axis=1))
        loss = float((lse - z[cp.arange(B), y]).mean())
        dz = c["p"].copy()
        dz[cp.arange(B), y] -= 1.0
        dz /= B
        d_spikes = dz @ self.w["fc2.weight"].T
        dv = _k("surrogate")(d_spikes, c["v"], c["open"], np.float32(self.threshold),
                             np.float32(self.surrogate_slope))
        da = _k("tanh_back")(dv @ self.w["spiking.weight"].T, c["h"])
        grads = {"fc1.weight": x.T @ da, "spiking.weight": c["h"].T @ dv,
                 "fc2.weight": c["spikes"].T @ dz}
        finite = np.isfinite(loss) and all(bool(cp.isfinite(g).all()) and
                                           float(cp.abs(g).max()) < 1e18 for g in grads.values())
        if not finite:
            raise FloatingPointError("the loss or a gradient is not finite (or overflows "
                                     "float32); the net was left unchanged")
        correct = int((c["p"].argmax(axis=1) == y).sum())
        self.grads = grads
        return loss, correct, c["spikes"]

    def loss_and_grad(self, x: Any, y: Any) -> float:
        with self._lock:
            left = self._state_for(x.shape[0])
            loss, _, spikes = self._forward_backward(x, y, left)
            self.refractory_left = self._commit(left, spikes)
        return loss

    def train_step(self, x: Any, y: Any, optimizer: CupyAdam) -> Tuple[float, int]:
        with self._lock:
            left = self._state_for(x.shape[0])
            loss, correct, spikes = self._forward_backward(x, y, left)
            grads = self.grads
            assert grads is not None   # set by _forward_backward
            optimizer.update(self.params(), [grads[k] for k in PARAM_NAMES])
            self.refractory_left = self._commit(left, spikes)
        return loss, correct

    def blas_products(self, x: Any) -> None:
        """The three products of a forward step alone (the benchmark's floor)."""
        h = x @ self.w["fc1.weight"]
        v = h @ self.w["spiking.weight"]
        v @ self.w["fc2.weight"]
