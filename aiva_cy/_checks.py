"""Argument checks shared by net.py, io.py and _training.py.

Imports run one way: those modules import this one, and this one imports none of them.
Every check raises TypeError or ValueError with a message that names the argument, what
it must be and what it was given.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Dict

import numpy as np


def int_arg(name: str, value: Any, minimum: int, maximum: int = 2**31 - 1) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if not minimum <= int(value) <= maximum:
        raise ValueError(f"{name} must be in [{minimum}, {maximum}], got {value!r}")
    return int(value)


def float_arg(name: str, value: Any, minimum: float = -math.inf) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be finite and >= {minimum}, got {value!r}")
    return value


def numeric_array(name: str, value: Any) -> np.ndarray:
    """Any array-like of real numbers (bool, int, float; any order or strides)."""
    if type(value).__module__.startswith("cupy"):
        value = value.get()      # a GPU array handed to a CPU net, or headed for validation
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as exc:   # ragged nesting and the like
        raise ValueError(f"{name} must be a rectangular array of numbers: {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers (bool, int or float), got dtype "
                        f"{arr.dtype}")
    return arr


def as_float32(name: str, arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.float32 and arr.flags.c_contiguous:
        return arr
    with np.errstate(over="ignore"):   # float64 past float32's range becomes Inf: reported below
        return np.ascontiguousarray(arr, dtype=np.float32)


def check_finite(name: str, arr: np.ndarray) -> None:
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or Inf (or a value too large for float32)")


def adam_args(lr: Any, betas: Any, eps: Any, weight_decay: Any) -> Dict[str, Any]:
    lr = float_arg("lr", lr, 0.0)
    try:
        b1, b2 = betas
    except (TypeError, ValueError):
        raise TypeError(f"betas must be a pair of floats, got {betas!r}") from None
    b1, b2 = float_arg("betas[0]", b1, 0.0), float_arg("betas[1]", b2, 0.0)
    if b1 >= 1.0 or b2 >= 1.0:
        raise ValueError(f"betas must be in [0, 1), got {betas!r}")
    return {"lr": lr, "betas": (b1, b2), "eps": float_arg("eps", eps, 0.0),
            "weight_decay": float_arg("weight_decay", weight_decay, 0.0)}


def parse_device(device: Any) -> str:
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'cpu' or 'cuda', got {device!r}")
    d = device.strip().lower()
    if d == "cpu" or d == "cuda" or (d.startswith("cuda:") and d[5:].isdigit()):
        return d
    raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
