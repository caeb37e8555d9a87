"""The aiva_cy model (docs/contract.md: one time step, training) in peer libraries, for benchmarks and cross-checks.

Every peer is built from a plain weights dict::

    {"fc1.weight": (input_size, hidden_size),
     "spiking.weight": (hidden_size, spiking_size),
     "fc2.weight": (spiking_size, num_tools)}      # float32, "x @ W" layout

plus the scalars ``threshold``, ``surrogate_slope`` and ``refractory_period``.

* PyTorch eager: :func:`make_torch` -> (``TorchAIVANet``, ``torch.optim.Adam``),
  :func:`torch_train_step`, :func:`torch_predict_proba`, :func:`torch_loss_and_grad`.
* ONNX Runtime (inference only): :func:`make_onnx_session`, :func:`onnx_predict`, on the
  graph of aiva_cy's own exporter (``AIVANet.export_onnx``), so there is one ONNX graph;
  :func:`make_onnx_int8_session`: the same graph after ONNX Runtime's dynamic int8
  quantization.
* PyTorch dynamic int8 (inference only): :func:`make_torch_int8`.

torch, onnx and onnxruntime are imported lazily so that this module (and the
benchmark that imports it) works where they are missing; :func:`available_peers`
says which ones can be used.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Tuple

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - typing only
    import onnxruntime
    import torch

__all__ = [
    "WEIGHT_KEYS",
    "available_peers",
    "make_torch",
    "torch_train_step",
    "torch_predict_proba",
    "torch_loss_and_grad",
    "make_onnx_session",
    "make_onnx_int8_session",
    "make_torch_int8",
    "torch_predict_int8",
    "onnx_predict",
    "TorchAIVANet",
]

WEIGHT_KEYS: Tuple[str, str, str] = ("fc1.weight", "spiking.weight", "fc2.weight")


def available_peers() -> Dict[str, bool]:
    """Which peer libraries are importable here (without importing them)."""

    def has(name: str) -> bool:
        return importlib.util.find_spec(name) is not None

    return {
        "torch": has("torch"),
        # The ONNX peer builds its graph with aiva_cy's exporter (onnx), so it needs both.
        "onnxruntime": has("onnxruntime") and has("onnx"),
    }


def _check_weights(weights: Mapping[str, Any]) -> Dict[str, np.ndarray]:
    """float32 C-contiguous copies of the three weights, with their shapes checked."""
    missing = [k for k in WEIGHT_KEYS if k not in weights]
    if missing:
        raise KeyError(f"weights: missing keys {missing}, expected {list(WEIGHT_KEYS)}")
    w = {k: np.array(weights[k], dtype=np.float32, order="C", copy=True) for k in WEIGHT_KEYS}
    for k, a in w.items():
        if a.ndim != 2:
            raise ValueError(f"weights[{k!r}]: expected a 2-D array, got shape {a.shape}")
    if w["fc1.weight"].shape[1] != w["spiking.weight"].shape[0]:
        raise ValueError(
            f"weights: fc1.weight {w['fc1.weight'].shape} and spiking.weight "
            f"{w['spiking.weight'].shape} do not chain"
        )
    if w["spiking.weight"].shape[1] != w["fc2.weight"].shape[0]:
        raise ValueError(
            f"weights: spiking.weight {w['spiking.weight'].shape} and fc2.weight "
            f"{w['fc2.weight'].shape} do not chain"
        )
    return w


# --------------------------------------------------------------------------- PyTorch


@functools.lru_cache(maxsize=None)
def _torch_classes() -> Tuple[type, type]:
    """Define the torch classes on first use, so that importing this module needs no torch."""
    import torch

    class SpikeFastSigmoid(torch.autograd.Function):
        """out = (v >= threshold) * mask; backward: fast-sigmoid surrogate (docs/contract.md, "Training")."""

        @staticmethod
        def forward(ctx: Any, v: "torch.Tensor", mask: "torch.Tensor", threshold: float, slope: float) -> "torch.Tensor":  # type: ignore[override]
            ctx.save_for_backward(v, mask)
            ctx.threshold = threshold
            ctx.slope = slope
            return (v >= threshold).to(v.dtype) * mask

        @staticmethod
        def backward(ctx: Any, grad_out: "torch.Tensor") -> Tuple[Optional["torch.Tensor"], None, None, None]:  # type: ignore[override]
            v, mask = ctx.saved_tensors
            surrogate = 1.0 / (1.0 + ctx.slope * torch.abs(v - ctx.threshold)) ** 2
            # The mask is a constant of the state: it only gates the gradient.
            return grad_out * surrogate * mask, None, None, None

    class _Linear(torch.nn.Module):
        """A bias-free weight in "x @ W" layout; as a submodule its key reads "<name>.weight"."""

        def __init__(self, weight: "torch.Tensor") -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(weight)

    class TorchAIVANet(torch.nn.Module):
        """One time step (docs/contract.md) in PyTorch eager; ``state_dict()`` keys match aiva_cy's."""

        def __init__(
            self,
            weights: Mapping[str, Any],
            threshold: float,
            surrogate_slope: float,
            refractory_period: int,
            *,
            dtype: "torch.dtype" = torch.float32,
            device: str = "cpu",
        ) -> None:
            super().__init__()
            w = _check_weights(weights)
            to_t = lambda a: torch.from_numpy(a).to(device=device, dtype=dtype)  # noqa: E731
            self.fc1 = _Linear(to_t(w["fc1.weight"]))
            self.spiking = _Linear(to_t(w["spiking.weight"]))
            self.fc2 = _Linear(to_t(w["fc2.weight"]))
            self.threshold = float(threshold)
            self.surrogate_slope = float(surrogate_slope)
            self.refractory_period = int(refractory_period)

        def forward(  # type: ignore[override]
            self, x: "torch.Tensor", refractory_left: Optional["torch.Tensor"] = None
        ) -> Tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
            """One step. Returns (logits, probabilities, new refractory countdown).

            ``refractory_left`` is a per-neuron countdown (B, spiking_size) or
            (spiking_size,): a neuron may fire only where it is 0. None means an
            empty state (everything may fire). The countdown form is equivalent to
            the contract's history of the last ``refractory_period`` outputs.
            """
            squeeze = x.dim() == 1
            if squeeze:
                x = x.unsqueeze(0)
            h = torch.tanh(x @ self.fc1.weight)
            v = h @ self.spiking.weight
            if refractory_left is None:
                left = torch.zeros_like(v)
            else:
                left = refractory_left.to(device=v.device, dtype=v.dtype).expand_as(v)
            mask = (left == 0).to(v.dtype)
            out = SpikeFastSigmoid.apply(v, mask, self.threshold, self.surrogate_slope)
            logits = out @ self.fc2.weight
            probs = torch.softmax(logits, dim=-1)
            with torch.no_grad():
                new_left = torch.where(
                    out.detach() > 0,
                    torch.full_like(left, float(self.refractory_period)),
                    torch.clamp(left - 1, min=0),
                )
            if squeeze:
                return logits[0], probs[0], new_left[0]
            return logits, probs, new_left

        def weights_numpy(self) -> Dict[str, np.ndarray]:
            """float32 numpy copies of the weights under the aiva_cy keys."""
            return {
                k: v.detach().to("cpu", torch.float32).numpy().copy()
                for k, v in self.state_dict().items()
            }

    return SpikeFastSigmoid, TorchAIVANet


def __getattr__(name: str) -> Any:
    # Module-level lazy attributes: `peers.TorchAIVANet` imports torch only when asked for.
    if name == "TorchAIVANet":
        return _torch_classes()[1]
    if name == "SpikeFastSigmoid":
        return _torch_classes()[0]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_torch(
    weights: Mapping[str, Any],
    threshold: float,
    slope: float,
    refractory_period: int,
    lr: float = 1e-3,
    *,
    betas: Tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    dtype: str = "float32",
    device: str = "cpu",
) -> Tuple["torch.nn.Module", "torch.optim.Optimizer"]:
    """Build the PyTorch peer and its ``torch.optim.Adam`` optimizer (amsgrad off)."""
    import torch

    model = _torch_classes()[1](
        weights, threshold, slope, refractory_period, dtype=getattr(torch, dtype), device=device
    )
    opt = torch.optim.Adam(
        model.parameters(), lr=lr, betas=betas, eps=eps, weight_decay=weight_decay
    )
    return model, opt


def _as_tensor(model: "torch.nn.Module", x: Any) -> "torch.Tensor":
    import torch

    w: "torch.Tensor" = model.fc1.weight  # type: ignore[union-attr, assignment]
    if isinstance(x, torch.Tensor):
        return x.to(device=w.device, dtype=w.dtype)
    return torch.as_tensor(np.asarray(x), dtype=w.dtype, device=w.device)


def torch_train_step(
    model: "torch.nn.Module",
    opt: "torch.optim.Optimizer",
    x: Any,
    y: Any,
    refractory_left: Optional["torch.Tensor"] = None,
    *,
    autocast_bf16: bool = False,
) -> float:
    """One step from the given (default: empty) state: CE from logits (mean), backward, Adam step.

    ``autocast_bf16``: forward and loss under ``torch.autocast("cpu", torch.bfloat16)`` (mixed
    precision: bf16 products, float32 weights and optimizer), PyTorch's bf16 training."""
    import torch

    xt = _as_tensor(model, x)
    yt = y if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y), dtype=torch.long)
    yt = yt.to(device=xt.device, dtype=torch.long)
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast_bf16):
        logits, _, _ = model(xt, refractory_left)
        if logits.dim() == 1:
            logits = logits.unsqueeze(0)
            yt = yt.reshape(1)
        loss = torch.nn.functional.cross_entropy(logits, yt, reduction="mean")
    loss.backward()
    opt.step()
    return float(loss.detach())


def torch_predict_proba(model: "torch.nn.Module", x: Any) -> "torch.Tensor":
    """Probabilities for one step from an empty state, without autograd bookkeeping."""
    import torch

    with torch.inference_mode():
        return model(_as_tensor(model, x))[1]


def torch_predict_int8(model: "torch.nn.Module", x: "torch.Tensor") -> "torch.Tensor":
    """Probabilities from :func:`make_torch_int8`'s model, without autograd bookkeeping."""
    import torch

    with torch.inference_mode():
        return model(x)


def torch_loss_and_grad(
    weights: Mapping[str, Any],
    cfg: Mapping[str, Any],
    x: Any,
    y: Any,
    refractory_left: Any = None,
    *,
    dtype: str = "float32",
) -> Tuple[float, Dict[str, np.ndarray]]:
    """Loss and gradients of one step (docs/contract.md, "Training") computed by torch autograd.

    ``cfg`` holds ``threshold``, ``surrogate_slope`` and optionally
    ``refractory_period`` (irrelevant for one step; default 0). ``refractory_left``
    is the countdown described in ``TorchAIVANet.forward`` (array-like or None).
    The computation runs in ``dtype`` (float32 like aiva_cy, or float64 for a tight
    reference); the results come back as float64 numpy.
    """
    import torch

    model, _ = make_torch(
        weights,
        float(cfg["threshold"]),
        float(cfg["surrogate_slope"]),
        int(cfg.get("refractory_period", 0)),
        dtype=dtype,
    )
    xt = _as_tensor(model, x)
    yt = torch.as_tensor(np.asarray(y), dtype=torch.long).reshape(-1)
    left = None if refractory_left is None else _as_tensor(model, refractory_left)
    logits, _, _ = model(xt, left)
    if logits.dim() == 1:
        logits = logits.unsqueeze(0)
    loss = torch.nn.functional.cross_entropy(logits, yt, reduction="mean")
    loss.backward()
    grads = {}
    for name, p in model.named_parameters():
        assert p.grad is not None, name   # every weight is on the loss's path
        grads[name] = p.grad.detach().to("cpu", torch.float64).numpy().copy()
    return float(loss.detach().to(torch.float64)), grads


# --------------------------------------------------------------------------- ONNX Runtime


def make_onnx_session(
    weights: Mapping[str, Any],
    threshold: float,
    intra_op_threads: Optional[int] = None,
) -> "onnxruntime.InferenceSession":
    """An ONNX Runtime session for one step from an empty state (inference only).

    The graph is the stateless one ``AIVANet.export_onnx`` writes, built by aiva_cy's own
    exporter (:func:`aiva_cy.onnx_export.build_model`), so the benchmark measures the file
    users serve: float32 initializers, input ``x`` (batch, input_size), output ``probs``
    (batch, num_tools).
    """
    from aiva_cy.onnx_export import build_model

    w = _check_weights(weights)
    model = build_model(w, threshold=float(threshold))
    return _onnx_session(model.SerializeToString(), intra_op_threads)


def _onnx_session(model_bytes: bytes, intra_op_threads: Optional[int]) -> "onnxruntime.InferenceSession":
    import onnxruntime as ort

    so = ort.SessionOptions()
    if intra_op_threads is not None:
        so.intra_op_num_threads = int(intra_op_threads)
    # Spinning pool threads would steal the CPU from the next peer measured.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model_bytes, sess_options=so, providers=["CPUExecutionProvider"])


def make_onnx_int8_session(
    weights: Mapping[str, Any],
    threshold: float,
    intra_op_threads: Optional[int] = None,
) -> "onnxruntime.InferenceSession":
    """ONNX Runtime's dynamic int8 of the same exported graph (``quantize_dynamic`` with its
    defaults: int8 weights per tensor, activations quantized to uint8 at run time, so each
    MatMul becomes a MatMulInteger), for the int8 column."""
    import os
    import tempfile

    from onnxruntime.quantization import QuantType, quantize_dynamic

    from aiva_cy.onnx_export import build_model

    w = _check_weights(weights)
    model = build_model(w, threshold=float(threshold))
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "int8.onnx")
        quantize_dynamic(model, out, weight_type=QuantType.QInt8)
        with open(out, "rb") as f:
            data = f.read()
    return _onnx_session(data, intra_op_threads)


def make_torch_int8(weights: Mapping[str, Any], threshold: float) -> "torch.nn.Module":
    """PyTorch's dynamic int8 of one step from an empty state (inference only):
    ``torch.ao.quantization.quantize_dynamic`` over bias-free ``nn.Linear`` layers holding the
    same weights (int8 per tensor, activations quantized per call); tanh, the threshold and
    softmax in float32.  Call it with a float32 batch; it returns the probabilities."""
    import torch

    w = _check_weights(weights)

    class Step(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers = []
            for k in WEIGHT_KEYS:
                a = torch.from_numpy(w[k])
                lin = torch.nn.Linear(a.shape[0], a.shape[1], bias=False)
                with torch.no_grad():
                    lin.weight.copy_(a.T)
                layers.append(lin)
            self.fc1, self.spiking, self.fc2 = layers
            self.threshold = float(threshold)

        def forward(self, x: "torch.Tensor") -> "torch.Tensor":  # type: ignore[override]
            h = torch.tanh(self.fc1(x))
            out = (self.spiking(h) >= self.threshold).to(h.dtype)
            return torch.softmax(self.fc2(out), dim=-1)

    model = Step().eval()
    return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def onnx_predict(sess: "onnxruntime.InferenceSession", x: Any) -> np.ndarray:
    """Probabilities from the session; a 1-D input is a batch of one and gives a 1-D result."""
    xa = np.ascontiguousarray(x, dtype=np.float32)
    squeeze = xa.ndim == 1
    if squeeze:
        xa = xa[None, :]
    (probs,) = sess.run(["probs"], {"x": xa})
    return probs[0] if squeeze else probs
