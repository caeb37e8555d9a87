"""Argument checks shared by net.py, _model.py, the engines, io.py and _training.py.

Imports run one way: those modules import this one, and this one imports none of them.
Every check raises TypeError or ValueError with a message that names the argument, what
it must be and what it was given.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Dict, Optional, Sequence, Tuple

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
    try:
        number = float(value)
    except OverflowError:        # an int such as 10**400: no float holds it
        raise ValueError(f"{name} must be a finite number >= {minimum}, got an integer too "
                         f"large for a float ({_short(value)})") from None
    if not math.isfinite(number) or number < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum}, got {number!r}")
    return number


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...{text[-10:]} ({len(text)} digits)"


#: Every Adam hyper-parameter is used in float32 by the update: a value past this becomes Inf.
FLOAT32_MAX = float(np.finfo(np.float32).max)
_FLOAT32_TINY = float(np.finfo(np.float32).smallest_subnormal)


def adam_value(name: str, value: Any) -> float:
    """One Adam hyper-parameter: ``lr``, ``eps``, ``weight_decay``, ``betas[0]``/``beta1``,
    ``betas[1]``/``beta2``.  torch.optim.Adam's ranges, narrowed to what float32 holds and
    to what cannot turn the weights NaN by itself: eps = 0 divides zero by zero wherever a
    weight never had a gradient, and a negative lr climbs the loss."""
    number = float_arg(name, value, 0.0)
    if name in ("lr", "weight_decay", "eps"):
        if number > FLOAT32_MAX:
            raise ValueError(f"{name} must be at most {FLOAT32_MAX:.4g} (float32's largest "
                             f"value), got {number!r}")
        if name == "eps" and np.float32(number) == 0:   # rounds to 0 in float32
            raise ValueError(f"eps must be > 0 (at least {_FLOAT32_TINY:.3g}, float32's "
                             f"smallest positive value), got {number!r}")
    elif number >= 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {number!r}")
    return number


def is_cupy(value: Any) -> bool:
    return type(value).__module__.startswith("cupy")


def numeric_array(name: str, value: Any) -> np.ndarray:
    """Any array-like of real numbers (bool, int, float; any order or strides)."""
    if is_cupy(value):
        value = value.get()      # a GPU array handed to a CPU net, or headed for validation
    if isinstance(value, np.ma.MaskedArray):
        # np.asarray would drop the mask and use whatever the masked slots hold.
        raise TypeError(f"{name} is a masked array; its mask would be ignored: pass "
                        f"{name}.filled(value) or drop the masked rows first")
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as exc:   # ragged nesting and the like
        raise ValueError(f"{name} must be a rectangular array of numbers: {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers (bool, int or float), got dtype "
                        f"{arr.dtype}")
    return arr


def as_float32(name: str, arr: np.ndarray) -> np.ndarray:
    # Misaligned data (np.frombuffer at an odd offset) is copied: C may not read a float
    # from an address that is not a multiple of 4.
    if arr.dtype == np.float32 and arr.flags.c_contiguous:
        return arr if arr.flags.aligned else arr.copy()   # ascontiguousarray would keep it
    with np.errstate(over="ignore"):   # float64 past float32's range becomes Inf: reported below
        return np.ascontiguousarray(arr, dtype=np.float32)


def check_finite(name: str, arr: np.ndarray) -> None:
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or Inf (or a value too large for float32)")


def adam_betas(betas: Any) -> Tuple[float, float]:
    if isinstance(betas, (str, bytes)):
        raise TypeError(f"betas must be a pair of floats, got {betas!r}")
    try:
        b1, b2 = betas
    except (TypeError, ValueError):
        raise TypeError(f"betas must be a pair of floats, got {betas!r}") from None
    return adam_value("betas[0]", b1), adam_value("betas[1]", b2)


def adam_args(lr: Any, betas: Any, eps: Any, weight_decay: Any) -> Dict[str, Any]:
    return {"lr": adam_value("lr", lr), "betas": adam_betas(betas),
            "eps": adam_value("eps", eps),
            "weight_decay": adam_value("weight_decay", weight_decay)}


def parse_device(device: Any) -> str:
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'cpu' or 'cuda', got {device!r}")
    d = device.strip().lower()
    if d == "cpu" or d == "cuda" or (d.startswith("cuda:") and d[5:].isdigit()):
        return d
    raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def labels_accepted(name: str, num_tools: int) -> str:
    """What every label check says is accepted, so that no two messages disagree."""
    return (f"{name} must hold integer labels in [0, {num_tools}) (ints, or floats with "
            f"integral values)")


def tool_indices(name: str, y: Any, tool_names: Optional[Sequence[str]],
                 num_tools: int) -> Any:
    """Labels given as tool names turned into their indices in ``tool_names``; any other
    ``y`` is returned as it is, for the numeric checks.  Strings without names to map them
    to are a TypeError that says what is accepted."""
    if is_cupy(y) or isinstance(y, np.ndarray) and y.dtype.kind not in "USO":
        return y
    try:
        arr = y if isinstance(y, np.ndarray) else np.asarray(y)
    except (ValueError, TypeError):
        return y                      # ragged and the like: the numeric checks word it
    if arr.dtype.kind == "O" and arr.size and all(isinstance(v, str) for v in arr.flat):
        arr = arr.astype(str)
    if arr.dtype.kind not in "US":
        return y
    if tool_names is None:
        raise TypeError(f"{labels_accepted(name, num_tools)}, got strings (dtype "
                        f"{arr.dtype}): give the net tool_names=[...] to pass tool names, or "
                        f"use aiva_cy.sklearn.AIVAClassifier, which takes labels of any kind")
    if arr.dtype.kind == "S":
        arr = arr.astype(str)
    index = {n: i for i, n in enumerate(tool_names)}
    uniq, inverse = np.unique(arr, return_inverse=True)
    unknown = [str(u) for u in uniq if str(u) not in index]
    if unknown:
        raise ValueError(f"{name} holds names that are not among the net's tool_names: "
                         f"{unknown[:5]}{' ...' if len(unknown) > 5 else ''}; the names are "
                         f"{list(tool_names)}")
    codes = np.array([index[str(u)] for u in uniq], dtype=np.int64)
    return codes[inverse].reshape(arr.shape)


def label_rows(name: str, arr: Any, batch: int, num_tools: int, xp: Any = np,
               to_bool: Any = bool) -> Any:
    """The label checks every device makes: one label per row of x, integers (integral
    floats allowed, bools not).  ``xp`` is the array module of ``arr`` (NumPy or CuPy) and
    ``to_bool`` reads a 0-d result of it on the host.  The range is left to the caller."""
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.shape != (batch,):
        hint = (f" (one-hot labels? pass {name}.argmax(axis=1))"
                if arr.shape == (batch, num_tools) else "")
        raise ValueError(f"{name} must hold one label per row of x: shape ({batch},), "
                         f"got {arr.shape}{hint}")
    if arr.dtype.kind == "b":
        raise TypeError(f"{labels_accepted(name, num_tools)}, got dtype bool")
    if arr.dtype.kind == "f" and not to_bool(xp.all(xp.isfinite(arr) & (arr == xp.floor(arr)))):
        raise ValueError(f"{labels_accepted(name, num_tools)}, got non-integer values")
    return arr
