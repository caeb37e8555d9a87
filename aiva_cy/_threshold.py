"""Changing a live net's spike threshold, and choosing one from a target firing rate.

The CPU engine keeps its threshold in the C struct it hands to every call and has no setter:
a new threshold means a new engine.  That engine adopts the old one's weight arrays (no copy,
12.7 MB at the default size) and takes over its refractory state; the optimizer is a
separate object and carries on.  Swapping costs tens of microseconds, so AIVA's adaptive
threshold (aiva_cy.compat), which changes it on each of its first 60 calls, can afford it.
"""
from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Any

import numpy as np

from aiva_cy._checks import check_finite, is_cupy, numeric_array

if TYPE_CHECKING:
    from aiva_cy.net import AIVANet

__all__ = ["calibrate_threshold", "set_threshold"]

#: Rows of X whose membrane potentials are computed at once (bounds the (rows, hidden) scratch).
_CHUNK = 2048


def set_threshold(net: "AIVANet", threshold: Any) -> float:
    """Give ``net`` the spike threshold ``threshold`` (a finite real number); returns it.

    Weights, optimizer (step and moments) and refractory state are kept.  A ``predict_proba``
    already running in another thread finishes with the old threshold.
    """
    from aiva_cy._model import check_setting
    value = check_setting("threshold", threshold)   # as the constructor checks it
    with net._lock:
        engine = net._engine
        if net.device == "cpu":
            from aiva_cy._core import Engine
            fc1_t, spiking_t, fc2 = engine.params()
            new = Engine(engine.input_size, engine.hidden_size, engine.spiking_size,
                         engine.num_tools, value, engine.refractory_period,
                         engine.surrogate_slope,
                         {"fc1.weight": fc1_t.T, "spiking.weight": spiking_t.T,
                          "fc2.weight": fc2},
                         copy=False, precision=engine.precision)
            new.set_state(engine.get_state())
            net._engine = new
        else:
            # The CuPy engine reads its threshold attribute on every call.
            with engine._lock:
                engine.threshold = value
        net._config["threshold"] = value
    return value


def _rate_arg(value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"firing_rate must be a real number in (0, 1), got "
                        f"{type(value).__name__} {value!r}")
    rate = float(value)
    if not 0.0 < rate < 1.0:
        raise ValueError(f"firing_rate must be in (0, 1) (the fraction of neurons that fire), "
                         f"got {value!r}")
    return rate


def calibrate_threshold(net: "AIVANet", X: Any, firing_rate: Any) -> float:
    """Set and return the threshold at which ``net``'s spiking layer fires for
    ``firing_rate`` of the (row, neuron) pairs of X, each row one step from an empty state.

    The threshold lies halfway between the k-th and (k+1)-th largest membrane potential
    (k = round(firing_rate * rows * spiking_size), at least 1), so float32 rounding in the
    engine does not move a potential across it; tied potentials fire together.  Works at any
    input scale: only the order of the potentials matters.
    """
    rate = _rate_arg(firing_rate)
    arr = numeric_array("X", X)
    n_in = net.input_size
    if arr.ndim == 1 and arr.shape[0] == n_in:
        arr = arr.reshape(1, n_in)
    elif not (arr.ndim == 2 and arr.shape[1] == n_in and arr.shape[0] >= 1):
        raise ValueError(f"X must have shape ({n_in},) or (rows >= 1, {n_in}), got {arr.shape}")
    with np.errstate(over="ignore"):
        arr = np.asarray(arr, dtype=np.float32)
    check_finite("X", arr)
    weights = net.state_dict()
    fc1, spiking = (w.get() if is_cupy(w) else w
                    for w in (weights["fc1.weight"], weights["spiking.weight"]))
    v = np.concatenate([(np.tanh(arr[i:i + _CHUNK] @ fc1) @ spiking).ravel()
                        for i in range(0, arr.shape[0], _CHUNK)])
    n = v.size
    k = min(n, max(1, int(round(rate * n))))
    if k == n:                      # every potential fires: the smallest one is the threshold
        threshold = float(v.min())
    else:
        # The k-th largest is the (n-k)-th smallest; partition puts both neighbours in place.
        part = np.partition(v, (n - k - 1, n - k))
        below, at = part[n - k - 1], part[n - k]
        mid = np.float32(below + (at - below) / np.float32(2.0))
        # The engine compares in float32: the midpoint of two neighbouring floats rounds
        # onto one of them, and it must not be the one that should stay silent.
        threshold = float(mid if mid > below or at == below else np.nextafter(below, at))
    return set_threshold(net, threshold)
