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

#: Columns, in table order. "floor" is aiva_cy's own three BLAS products of one step.
PEER_ORDER: Tuple[str, ...] = ("numpy", "aiva_cy", "torch", "onnx", "floor")
PEER_LABELS: Dict[str, str] = {
    "numpy": "numpy BioNeuron",
    "aiva_cy": "aiva_cy",
    "torch": "PyTorch eager",
    "onnx": "ONNX Runtime",
    "floor": "raw BLAS (floor)",
}

#: Rows, in table order: id -> label. Timed rows first, then the start-up and size rows.
ROW_LABELS: Dict[str, str] = {
    "forward_b1": "forward, batch 1",
    "predict_b64": "predict_proba, batch 64",
    "predict_b256": "predict_proba, batch 256",
    "train_b64": "train_step, batch 64",
    "train_b256": "train_step, batch 256",
    "startup": "start-up: import + build + 1st forward",
    "startup_process": "start-up: whole `python -c` process",
    "memory": "memory: peak RSS growth over `import numpy`",
    "weights": "bytes of weights",
}
TIMED_ROWS: Tuple[str, ...] = ("forward_b1", "predict_b64", "predict_b256", "train_b64", "train_b256")
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
        # The BioNeuron keeps the original's float64 weights and its own threshold and
        # wall-clock refractory period (it is measured as AIVA ran it), but with our weights.
        self.bio = bn.BioNeuron(seed=0)
        self.bio.fc1 = self.weights["fc1.weight"].astype(np.float64)
        self.bio.spiking1.weights = self.weights["spiking.weight"].astype(np.float64)
        self.bio.fc2 = self.weights["fc2.weight"].astype(np.float64)
        self.torch_model: Any = None
        self.torch_opt: Any = None
        self.onnx_sess: Any = None
        if have["torch"]:
            self.torch_model, self.torch_opt = peers.make_torch(
                self.weights, net.threshold, net.surrogate_slope, net.refractory_period)
        if have["onnx"]:
            self.onnx_sess = peers.make_onnx_session(self.weights, net.threshold,
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
        if self.onnx_sess is not None:
            sess = self.onnx_sess
            cases["onnx"] = lambda: peers.onnx_predict(sess, x1)
        floor_x = np.ascontiguousarray(x, dtype=np.float32)
        cases["floor"] = lambda: net._engine.blas_products(floor_x)
        return cases

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
        if self.onnx_sess is not None:
            sess = self.onnx_sess
            cases["onnx"] = lambda: peers.onnx_predict(sess, x)
        cases["floor"] = lambda: net._engine.blas_products(x)
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
        return cases
