"""Export an AIVANet to ONNX, for ONNX Runtime, TensorRT and other ONNX serving stacks.

``AIVANet.export_onnx`` calls :func:`export_onnx` here; :func:`build_model` makes the same
graph from a plain weights dict (the benchmark's ONNX Runtime column uses it, so there is one
graph, not two).  ``onnx`` is imported only when a graph is built: it is an optional extra
(``pip install "aiva_cy[onnx]"``), needed for export and never for ``import aiva_cy``.

Two graphs, both float32 with the weights as initializers and a dynamic batch dimension
``batch``:

* stateless (``stateful=False``) — the ``predict_proba`` step, from an empty state::

      x (batch, input_size) float32  ->  probs (batch, num_tools) float32

* stateful (``stateful=True``) — one ``forward`` step of ``batch`` streams, with the
  refractory state carried in and out, so a serving stack holds the state of its streams::

      x (batch, input_size) float32,
      refractory_state (batch, spiking_size) int32
          ->  probs (batch, num_tools) float32,
              next_refractory_state (batch, spiking_size) int32

The refractory state is the engine's own encoding, the one ``net.get_state()`` hands out and
``net.set_state()`` takes back: for each stream and spiking neuron, the number of steps the
neuron still stays silent, an integer in ``[0, refractory_period]``.  A neuron may fire only
where its count is 0; a neuron that fires is set to ``refractory_period``, every other count
drops by one down to 0.  All zeros is the empty state, the one right after ``reset_state()``
(``np.zeros((batch, spiking_size), np.int32)``).  This is exactly the rule "no output spike
in this stream's last ``refractory_period`` steps"; with ``refractory_period == 0`` the state
stays all zeros.  The graph does not check the range of the counts it is given.

The graph computes in float32 throughout.  A net with ``precision="bfloat16"`` exports its
float32 master weights: the file computes what the net computes in float32 precision (the
precision is recorded in the ``aiva_cy.config`` metadata entry).
"""
from __future__ import annotations

import json
import numbers
import os
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Union

import numpy as np

from aiva_cy._core import PARAM_NAMES

if TYPE_CHECKING:  # annotations only: onnx is optional, net.py imports this module lazily
    import onnx

    from aiva_cy.net import AIVANet

__all__ = ["MIN_OPSET", "DEFAULT_OPSET", "INPUT_NAME", "STATE_NAME", "PROBS_NAME",
           "NEXT_STATE_NAME", "build_model", "export_onnx"]

#: Softmax over the last axis alone (rather than over every axis after it) needs opset 13.
MIN_OPSET = 13
DEFAULT_OPSET = 17

INPUT_NAME = "x"
STATE_NAME = "refractory_state"
PROBS_NAME = "probs"
NEXT_STATE_NAME = "next_refractory_state"

_INSTALL_HINT = 'pip install "aiva_cy[onnx]"'
# A protobuf message, and so one .onnx file without external data, holds at most 2 GiB.
_PROTOBUF_LIMIT = 2**31 - 2**20

PathLike = Union[str, "os.PathLike[str]"]


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise ImportError(f"exporting to ONNX needs the onnx package: {_INSTALL_HINT} "
                          f"(or pip install onnx)") from exc
    return onnx


def _opset_arg(opset: Any) -> int:
    if isinstance(opset, (bool, np.bool_)) or not isinstance(opset, numbers.Integral):
        raise TypeError(f"opset must be an int, got {type(opset).__name__} {opset!r}")
    if int(opset) < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET} (Softmax over the last axis), "
                         f"got {opset!r}")
    return int(opset)


def _check_opset_known(onnx: Any, opset: int) -> None:
    newest = int(onnx.defs.onnx_opset_version())
    if opset > newest:
        raise ValueError(f"opset must be in [{MIN_OPSET}, {newest}] (the newest this onnx "
                         f"{onnx.__version__} knows), got {opset!r}")


def _stateful_arg(stateful: Any) -> bool:
    if not isinstance(stateful, (bool, np.bool_)):
        raise TypeError(f"stateful must be a bool, got {type(stateful).__name__} {stateful!r}")
    return bool(stateful)


def _path_arg(path: Any) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__} {path!r}")
    text: str = os.fsdecode(os.fspath(path))
    # Guards against handing export_onnx a checkpoint's name and overwriting the checkpoint.
    if os.path.splitext(text)[1].lower() != ".onnx":
        raise ValueError(f"path must end in .onnx, got '{text}'")
    from aiva_cy._atomic import check_resolved_suffix
    check_resolved_suffix(text, "an .onnx file")
    return text


def _host_float32(name: str, a: Any) -> np.ndarray:
    if type(a).__module__.startswith("cupy"):
        a = a.get()
    arr = np.ascontiguousarray(a, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"weights[{name!r}] must be a 2-D array, got shape {arr.shape}")
    return arr


def _weights_arg(weights: Mapping[str, Any]) -> Dict[str, np.ndarray]:
    if not isinstance(weights, Mapping):
        raise TypeError(f"weights must be a mapping, got {type(weights).__name__}")
    missing = [k for k in PARAM_NAMES if k not in weights]
    if missing:
        raise ValueError(f"weights: missing keys {missing}, expected {list(PARAM_NAMES)}")
    w = {k: _host_float32(k, weights[k]) for k in PARAM_NAMES}
    fc1, spiking, fc2 = (w[k] for k in PARAM_NAMES)
    if fc1.shape[1] != spiking.shape[0] or spiking.shape[1] != fc2.shape[0]:
        raise ValueError(f"weights do not chain: fc1.weight {fc1.shape}, spiking.weight "
                         f"{spiking.shape}, fc2.weight {fc2.shape}")
    if sum(a.nbytes for a in w.values()) > _PROTOBUF_LIMIT:
        raise ValueError("the weights exceed the 2 GiB an ONNX file without external data "
                         "can hold")
    return w


def build_model(weights: Mapping[str, Any], *, threshold: float, refractory_period: int = 0,
                stateful: bool = False, opset: int = DEFAULT_OPSET,
                metadata: Optional[Mapping[str, str]] = None) -> "onnx.ModelProto":
    """The ONNX model of one step, checked with ``onnx.checker.check_model``.

    ``weights`` holds the state_dict keys (``fc1.weight``, ``spiking.weight``,
    ``fc2.weight``, "x @ W" layout); they become float32 initializers of the same names.
    ``refractory_period`` matters only to the stateful graph.  ``metadata`` entries are
    stored as the model's metadata_props.  See the module docstring for the two graphs.
    """
    stateful = _stateful_arg(stateful)
    opset = _opset_arg(opset)
    if isinstance(refractory_period, (bool, np.bool_)) or not isinstance(
            refractory_period, numbers.Integral) or refractory_period < 0:
        raise ValueError(f"refractory_period must be an int >= 0, got {refractory_period!r}")
    if isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, numbers.Real) \
            or not np.isfinite(threshold):
        raise ValueError(f"threshold must be a finite real number, got {threshold!r}")
    w = _weights_arg(weights)
    onnx = _import_onnx()
    _check_opset_known(onnx, opset)
    from onnx import TensorProto, helper, numpy_helper

    n_in, n_spiking, n_tools = (w["fc1.weight"].shape[0], w["spiking.weight"].shape[1],
                                w["fc2.weight"].shape[1])
    # The engine compares float32 potentials with a float32 threshold: so does the graph.
    init = [numpy_helper.from_array(w[k], name=k) for k in PARAM_NAMES]
    init.append(numpy_helper.from_array(np.array(threshold, np.float32), name="threshold"))
    nodes = [
        helper.make_node("MatMul", [INPUT_NAME, "fc1.weight"], ["fc1_out"], name="fc1"),
        helper.make_node("Tanh", ["fc1_out"], ["h"], name="tanh"),
        helper.make_node("MatMul", ["h", "spiking.weight"], ["v"], name="spiking"),
        helper.make_node("GreaterOrEqual", ["v", "threshold"], ["raw"], name="threshold_spikes"),
    ]
    fired = "raw"
    if stateful:
        init += [numpy_helper.from_array(np.array(0, np.int32), name="zero"),
                 numpy_helper.from_array(np.array(1, np.int32), name="one"),
                 numpy_helper.from_array(np.array(refractory_period, np.int32),
                                         name="refractory_period")]
        fired = "fired"
        nodes += [
            helper.make_node("Equal", [STATE_NAME, "zero"], ["open"], name="refractory_mask"),
            helper.make_node("And", ["raw", "open"], [fired], name="masked_spikes"),
            helper.make_node("Sub", [STATE_NAME, "one"], ["count_down"], name="count_down"),
            helper.make_node("Max", ["count_down", "zero"], ["left"], name="floor_at_zero"),
            helper.make_node("Where", [fired, "refractory_period", "left"], [NEXT_STATE_NAME],
                             name="next_state"),
        ]
    nodes += [
        helper.make_node("Cast", [fired], ["spikes"], to=TensorProto.FLOAT, name="spikes"),
        helper.make_node("MatMul", ["spikes", "fc2.weight"], ["logits"], name="fc2"),
        helper.make_node("Softmax", ["logits"], [PROBS_NAME], axis=-1, name="softmax"),
    ]
    inputs = [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", n_in])]
    outputs = [helper.make_tensor_value_info(PROBS_NAME, TensorProto.FLOAT, ["batch", n_tools])]
    if stateful:
        inputs.append(helper.make_tensor_value_info(STATE_NAME, TensorProto.INT32,
                                                    ["batch", n_spiking]))
        outputs.append(helper.make_tensor_value_info(NEXT_STATE_NAME, TensorProto.INT32,
                                                     ["batch", n_spiking]))
    graph = helper.make_graph(nodes, "aiva_step_stateful" if stateful else "aiva_step",
                              inputs, outputs, initializer=init)
    opset_ids = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opset_ids, producer_name="aiva_cy",
                              doc_string=__doc__.split("\n\n", 1)[0])
    # The oldest IR version that carries this opset: readable by the most runtimes.
    model.ir_version = helper.find_min_ir_version_for(opset_ids)
    if metadata:
        helper.set_model_props(model, {str(k): str(v) for k, v in metadata.items()})
    onnx.checker.check_model(model, full_check=True)
    return model


def export_onnx(net: "AIVANet", path: PathLike, *, stateful: bool = False,
                opset: int = DEFAULT_OPSET) -> None:
    """Write ``net``'s step as an ONNX file at ``path`` (``.onnx``), atomically.

    Every argument is checked, and the model built and checked, before anything is written;
    a failure leaves no file behind (an existing file at ``path`` stays as it was).
    """
    path = _path_arg(path)
    stateful = _stateful_arg(stateful)
    opset = _opset_arg(opset)
    from aiva_cy import __version__
    from aiva_cy._atomic import atomic_write

    config = net.config
    model = build_model(net.state_dict(), threshold=config["threshold"],
                        refractory_period=config["refractory_period"], stateful=stateful,
                        opset=opset,
                        metadata={"aiva_cy.config": json.dumps(config, sort_keys=True),
                                  "aiva_cy.stateful": json.dumps(stateful),
                                  "aiva_cy.version": __version__})
    model.producer_version = __version__
    payload = model.SerializeToString()

    def write(f: Any) -> None:
        f.write(payload)

    atomic_write(path, write, "the ONNX model")

