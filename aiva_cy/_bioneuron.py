"""Importing a NumPy BioNeuron's weights (``AIVANet.from_bioneuron``).

The in-memory half of the BioNeuron import: an object or mapping already in this process.
Reading a BioNeuron's pickle file is :mod:`aiva_cy.convert`'s, which ends here too.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Optional, Type

import numpy as np

from aiva_cy._model import PARAM_NAMES

if TYPE_CHECKING:  # only for annotations: net.py imports this module lazily
    from aiva_cy.net import AIVANet

__all__ = ["bio_matrix", "from_bioneuron"]


def bio_matrix(name: str, value: Any) -> np.ndarray:
    """One BioNeuron weight as a non-empty, finite float32 2-D array (C order)."""
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"BioNeuron {name} must be a 2-D array of numbers: {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"BioNeuron {name} must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim != 2 or 0 in arr.shape:
        raise ValueError(f"BioNeuron {name} must be a non-empty 2-D array, got shape {arr.shape}")
    with np.errstate(over="ignore"):   # float64 past float32's range becomes Inf: reported below
        out = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(out).all():
        raise ValueError(f"BioNeuron {name} contains NaN or Inf (or a value too large for "
                         f"float32)")
    return out


def from_bioneuron(cls: Type["AIVANet"], obj: Any, *, threshold: Optional[float] = None,
                   **kwargs: Any) -> "AIVANet":
    """An AIVANet holding a NumPy BioNeuron's weights (converted to float32).

    ``obj`` is a BioNeuron-like object (``fc1``, ``spiking1.weights``, ``fc2``) or a mapping
    with keys ``fc1``, ``spiking1_weights``, ``fc2`` (what ``BioNeuron.state_dict()`` returns).
    The sizes come from the arrays.  The threshold is ``threshold`` if given, else the
    BioNeuron's current one (``spiking1.threshold``, or ``"threshold"`` in a mapping), else
    1.0, the BioNeuron's initial value.  Other keywords (``refractory_period``, ``lr``, ...)
    go to the constructor; note the BioNeuron's refractory period is in seconds and
    AIVANet's in steps, so it is not carried over.
    """
    if isinstance(obj, Mapping):
        missing = [k for k in ("fc1", "spiking1_weights", "fc2") if k not in obj]
        if missing:
            raise ValueError(f"BioNeuron mapping lacks keys {missing}; expected 'fc1', "
                             f"'spiking1_weights' and 'fc2'")
        raw = (obj["fc1"], obj["spiking1_weights"], obj["fc2"])
        own_threshold = obj.get("threshold", 1.0)
    elif hasattr(obj, "fc1") and hasattr(obj, "fc2") and hasattr(getattr(obj, "spiking1", None),
                                                                   "weights"):
        raw = (obj.fc1, obj.spiking1.weights, obj.fc2)
        own_threshold = getattr(obj.spiking1, "threshold", 1.0)
    else:
        raise TypeError(f"from_bioneuron expects a BioNeuron (attributes fc1, spiking1.weights, "
                        f"fc2) or a mapping with keys 'fc1', 'spiking1_weights', 'fc2', got "
                        f"{type(obj).__name__}")
    fc1, spiking, fc2 = (bio_matrix(n, a) for n, a in
                         zip(("fc1", "spiking1.weights", "fc2"), raw))
    if fc1.shape[1] != spiking.shape[0]:
        raise ValueError(f"BioNeuron fc1 has shape {fc1.shape} but spiking1.weights has shape "
                         f"{spiking.shape}: fc1's columns must equal spiking1.weights' rows")
    if spiking.shape[1] != fc2.shape[0]:
        raise ValueError(f"BioNeuron spiking1.weights has shape {spiking.shape} but fc2 has "
                         f"shape {fc2.shape}: spiking1.weights' columns must equal fc2's rows")
    sizes = ("input_size", "num_tools", "hidden_size", "spiking_size")
    clash = [k for k in sizes if k in kwargs]
    if clash:
        raise TypeError(f"from_bioneuron takes the sizes from the arrays; do not pass {clash}")
    if threshold is None:
        threshold = own_threshold
    # The net's own init is overwritten at once; a fixed seed keeps construction deterministic.
    kwargs.setdefault("seed", 0)
    net = cls(input_size=fc1.shape[0], num_tools=fc2.shape[1], hidden_size=fc1.shape[1],
              spiking_size=spiking.shape[1], threshold=threshold, **kwargs)
    net.load_state_dict(dict(zip(PARAM_NAMES, (fc1, spiking, fc2))))
    return net
