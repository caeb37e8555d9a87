"""What the benchmark measures: its rows, its columns, and the call each peer makes per row.

Every peer runs the same model with the same weights (taken from ``net.state_dict()``),
on the same fixed-seed N(0, 1) inputs (never zeros: they make tanh and the spiking layer
trivially cheap for some kernels). A new column is a new entry in ``PEER_ORDER`` and
``PEER_LABELS`` and one callable per row in :class:`SideBySide`.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Tuple

import numpy as np

from aiva_cy.bench import bioneuron_numpy as bn
from aiva_cy.bench import peers

#: Parameters of the default net (docs/contract.md, "The model"): 512*2048 + 2048*1024 + 1024*20.
N_PARAMS: int = 512 * 2048 + 2048 * 1024 + 1024 * 20
assert N_PARAMS == 3_166_208
#: Multiply-adds of one train_step per stream (docs/contract.md, "Training"): the forward products, then
#: for the spiking layer and fc2 both the weight and the input gradient, for fc1 only the
#: weight gradient (x needs none): 3,166,208 + 2*2,097,152 + 1,048,576 + 2*20,480,
#: 2.67x a forward ("about 3x"). The Adam update is memory-bound and not counted.
TRAIN_MACS: int = N_PARAMS + 2 * 2048 * 1024 + 512 * 2048 + 2 * 1024 * 20
assert TRAIN_MACS == 8_450_048

#: Columns, in table order. "floor" is aiva_cy's own three BLAS products of one step
#: (float32, on the BLAS it uses); the MKL floors are the same products on MKL, float32
#: plain and with pre-packed weights (where MKL is installed).  The reduced-precision
#: columns (aiva_cy bf16 and int8, and their floors: the same products from oneDNN, plain
#: and pre-packed for bf16, pre-packed for int8 — including the rounding or quantizing of x
#: and h that every such step does) appear where oneDNN runs them natively
#: (``pip install "aiva_cy[precision]"``); the PyTorch and ONNX Runtime int8 columns are
#: their dynamic quantizations of the same model (inference only).
PEER_ORDER: Tuple[str, ...] = ("numpy", "aiva_cy", "aiva_bf16", "aiva_int8", "torch",
                               "torch_bf16", "torch_int8", "onnx", "onnx_int8", "floor",
                               "floor_mkl", "floor_mkl_packed", "floor_bf16",
                               "floor_bf16_packed", "floor_int8")
PEER_LABELS: Dict[str, str] = {
    "numpy": "numpy BioNeuron",
    "aiva_cy": "aiva_cy",
    "aiva_bf16": "aiva_cy bf16",
    "aiva_int8": "aiva_cy int8",
    "torch": "PyTorch eager",
    "torch_bf16": "PyTorch bf16",
    "torch_int8": "PyTorch int8",
    "onnx": "ONNX Runtime",
    "onnx_int8": "ONNX Runtime int8",
    "floor": "raw BLAS (floor)",
    "floor_mkl": "MKL f32 floor",
    "floor_mkl_packed": "MKL f32 packed floor",
    "floor_bf16": "oneDNN bf16 floor, never packed",
    "floor_bf16_packed": "oneDNN bf16 floor",
    "floor_int8": "oneDNN int8 floor",
}
BF16_PEERS: Tuple[str, ...] = ("aiva_bf16", "torch_bf16", "floor_bf16", "floor_bf16_packed")
MKL_PEERS: Tuple[str, ...] = ("floor_mkl", "floor_mkl_packed")
INT8_PEERS: Tuple[str, ...] = ("aiva_int8", "torch_int8", "onnx_int8", "floor_int8")

#: Rows, in table order: id -> label. Timed rows first, then the start-up and size rows.
ROW_LABELS: Dict[str, str] = {
    "forward_b1": "forward, batch 1",
    "predict_b8": "predict_proba, batch 8",
    "predict_b64": "predict_proba, batch 64",
    "predict_b256": "predict_proba, batch 256",
    "train_b64": "train_step, batch 64",
    "train_b256": "train_step, batch 256",
    "startup": "start-up: import + build + 1st forward",
    "startup_process": "start-up: whole `python -c` process",
    "memory": "memory: peak RSS growth over `import numpy`",
    "weights": "bytes of weights",
}
TIMED_ROWS: Tuple[str, ...] = ("forward_b1", "predict_b8", "predict_b64", "predict_b256", "train_b64", "train_b256")
STARTUP_ROWS: Tuple[str, ...] = ("startup", "startup_process", "memory")
ALL_ROWS: Tuple[str, ...] = tuple(ROW_LABELS)

#: Which peers take part in the start-up subprocesses (ONNX Runtime would need a model
#: file built elsewhere, and the floor is not a program of its own).
STARTUP_PEERS: Tuple[str, ...] = ("numpy", "aiva_cy", "torch")


def inputs(batch: int, num_tools: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """A fixed-seed N(0, 1) batch (float32, C order) and integer labels."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 512)).astype(np.float32)
    y = rng.integers(0, num_tools, size=batch).astype(np.int64)
    return x, y


class SideBySide:
    """The same model, with the same weights, in every library that is here."""

    def __init__(self, net: Any, have: Mapping[str, bool], threads: int) -> None:
        self.net = net
        sd = net.state_dict()
        self.weights = {k: np.ascontiguousarray(sd[k], dtype=np.float32) for k in peers.WEIGHT_KEYS}
        self.have = have
        # The BioNeuron keeps the original's float64 weights and its own threshold and
        # wall-clock refractory period (it is measured as AIVA ran it), but with our weights.
        self.bio = bn.BioNeuron(seed=0)
        self.bio.fc1 = self.weights["fc1.weight"].astype(np.float64)
        self.bio.spiking1.weights = self.weights["spiking.weight"].astype(np.float64)
        self.bio.fc2 = self.weights["fc2.weight"].astype(np.float64)
        self.torch_model: Any = None
        self.torch_opt: Any = None
        self.onnx_sess: Any = None
        self.net16: Any = None
        self.net8: Any = None
        self.torch16: Any = None         # bf16 weights, for inference
        self.torch8: Any = None          # dynamic int8, for inference
        self.onnx8: Any = None
        self.torch_amp: Any = None       # (float32 model, Adam) trained under autocast
        from aiva_cy import AIVANet

        if have.get("bf16"):
            self.net16 = AIVANet(seed=0, precision="bfloat16")
            self.net16.load_state_dict(sd)
        if have.get("int8"):
            self.net8 = AIVANet(seed=0, precision="int8")
            self.net8.load_state_dict(sd)
        if have["torch"]:
            self.torch_model, self.torch_opt = peers.make_torch(
                self.weights, net.threshold, net.surrogate_slope, net.refractory_period)
            self.torch16, _ = peers.make_torch(self.weights, net.threshold, net.surrogate_slope,
                                               net.refractory_period, dtype="bfloat16")
            self.torch_amp = peers.make_torch(self.weights, net.threshold, net.surrogate_slope,
                                              net.refractory_period)
            self.torch8 = peers.make_torch_int8(self.weights, net.threshold)
        if have["onnx"]:
            self.onnx_sess = peers.make_onnx_session(self.weights, net.threshold,
                                                     intra_op_threads=threads)
            self.onnx8 = peers.make_onnx_int8_session(self.weights, net.threshold,
                                                      intra_op_threads=threads)

    def weight_bytes(self) -> Dict[str, float]:
        out = {
            "numpy": float(self.bio.fc1.nbytes + self.bio.spiking1.weights.nbytes + self.bio.fc2.nbytes),
            "aiva_cy": float(sum(np.asarray(a).nbytes for a in self.net.state_dict().values())),
        }
        if self.torch_model is not None:
            out["torch"] = float(sum(p.numel() * p.element_size() for p in self.torch_model.parameters()))
        if self.onnx_sess is not None:
            # The session holds the same float32 initializers.
            out["onnx"] = float(sum(a.nbytes for a in self.weights.values()))
        return out

    # -- one callable per peer and row; each does exactly the work being measured ----------

    def forward_cases(self, x: np.ndarray) -> Dict[str, Callable[[], Any]]:
        """Batch 1 stateful forward; x has shape (1, 512)."""
        net, x1 = self.net, np.ascontiguousarray(x[0])
        x64 = x1.astype(np.float64)   # the BioNeuron's own dtype: no conversion in its timing
        net.reset_state()
        cases: Dict[str, Callable[[], Any]] = {
            "numpy": lambda: self.bio.forward(x64),
            "aiva_cy": lambda: net.forward(x1),
        }
        if self.torch_model is not None:
            import torch

            model, xt = self.torch_model, torch.from_numpy(x1)
            # Stateful like net.forward: the refractory countdown is carried between calls.
            state: List[Any] = [None]

            def torch_forward() -> Any:
                with torch.inference_mode():
                    _, p, state[0] = model(xt, state[0])
                return p

            cases["torch"] = torch_forward
            model16, xt16 = self.torch16, torch.from_numpy(x1).to(torch.bfloat16)
            state16: List[Any] = [None]

            def torch_bf16_forward() -> Any:
                with torch.inference_mode():
                    _, p, state16[0] = model16(xt16, state16[0])
                return p

            cases["torch_bf16"] = torch_bf16_forward
            # Stateless (an empty state each call): the mask is no part of its cost.
            model8, xt8 = self.torch8, torch.from_numpy(x1[None, :])
            cases["torch_int8"] = lambda: peers.torch_predict_int8(model8, xt8)
        if self.onnx_sess is not None:
            sess, sess8 = self.onnx_sess, self.onnx8
            cases["onnx"] = lambda: peers.onnx_predict(sess, x1)
            cases["onnx_int8"] = lambda: peers.onnx_predict(sess8, x1)
        floor_x = np.ascontiguousarray(x, dtype=np.float32)
        cases["floor"] = lambda: net._engine.blas_products(floor_x)
        if self.net16 is not None:
            net16 = self.net16
            net16.reset_state()
            cases["aiva_bf16"] = lambda: net16.forward(x1)
        if self.net8 is not None:
            net8 = self.net8
            net8.reset_state()
            cases["aiva_int8"] = lambda: net8.forward(x1)
        cases.update(self._floors(floor_x))
        return cases

    def _floors(self, x: np.ndarray) -> Dict[str, Callable[[], Any]]:
        """The MKL float32 floors (where MKL is installed) and the oneDNN ones."""
        e = self.net._engine
        out: Dict[str, Callable[[], Any]] = {}
        if self.have.get("mkl"):
            out["floor_mkl"] = lambda: e.blas_products(x, packed=False, provider="mkl")
            out["floor_mkl_packed"] = lambda: e.blas_products(x, packed=True, provider="mkl")
        if self.net16 is not None:
            e16 = self.net16._engine
            out["floor_bf16"] = lambda: e16.blas_products(x, packed=False)
            out["floor_bf16_packed"] = lambda: e16.blas_products(x, packed=True)
        if self.net8 is not None:
            e8 = self.net8._engine
            out["floor_int8"] = lambda: e8.blas_products(x, packed=True)
        return out

    def predict_cases(self, x: np.ndarray) -> Dict[str, Callable[[], Any]]:
        """One step from an empty state for a batch; the BioNeuron loops over rows."""
        net = self.net
        x64 = x.astype(np.float64)
        cases: Dict[str, Callable[[], Any]] = {
            "numpy": lambda: bn.forward_batch_loop(self.bio, x64),
            "aiva_cy": lambda: net.predict_proba(x),
        }
        if self.torch_model is not None:
            import torch

            model, xt = self.torch_model, torch.from_numpy(x)
            cases["torch"] = lambda: peers.torch_predict_proba(model, xt)
            model16, xt16 = self.torch16, torch.from_numpy(x).to(torch.bfloat16)
            cases["torch_bf16"] = lambda: peers.torch_predict_proba(model16, xt16)
            model8 = self.torch8
            cases["torch_int8"] = lambda: peers.torch_predict_int8(model8, xt)
        if self.onnx_sess is not None:
            sess, sess8 = self.onnx_sess, self.onnx8
            cases["onnx"] = lambda: peers.onnx_predict(sess, x)
            cases["onnx_int8"] = lambda: peers.onnx_predict(sess8, x)
        cases["floor"] = lambda: net._engine.blas_products(x)
        if self.net16 is not None:
            net16 = self.net16
            cases["aiva_bf16"] = lambda: net16.predict_proba(x)
        if self.net8 is not None:
            net8 = self.net8
            cases["aiva_int8"] = lambda: net8.predict_proba(x)
        cases.update(self._floors(x))
        return cases

    def train_cases(self, x: np.ndarray, y: np.ndarray) -> Dict[str, Callable[[], Any]]:
        """One training step from an empty state (loss, backward, Adam)."""
        net = self.net

        def aiva_train() -> float:
            # torch's step starts from an empty state; so does this one.
            net.reset_state()
            return net.train_step(x, y)

        cases: Dict[str, Callable[[], Any]] = {"aiva_cy": aiva_train}
        if self.torch_model is not None:
            import torch

            model, opt = self.torch_model, self.torch_opt
            xt, yt = torch.from_numpy(x), torch.from_numpy(y)
            cases["torch"] = lambda: peers.torch_train_step(model, opt, xt, yt)
            amp_model, amp_opt = self.torch_amp
            cases["torch_bf16"] = lambda: peers.torch_train_step(amp_model, amp_opt, xt, yt,
                                                                 autocast_bf16=True)
        if self.net16 is not None:
            net16 = self.net16

            def aiva_bf16_train() -> float:
                net16.reset_state()
                return net16.train_step(x, y)

            cases["aiva_bf16"] = aiva_bf16_train
        return cases
