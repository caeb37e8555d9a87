"""Checks and conversion for episodes: time-major sequences of inputs, labels with -1 for
"no target at this step", and per-step weights (docs/contract.md, "Sequences")."""
from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from aiva_cy._checks import numeric_array


def episode_targets(xs_shape: Tuple[int, ...], ys: Any, sample_weight: Any, num_tools: int,
                    one: bool, yname: str = "ys") -> Tuple[np.ndarray, np.ndarray]:
    """Labels flattened to T * B int64 (-1: no target) and the weights flattened to T * B
    float32, zero where there is no target and normalised to sum 1 over the rest, so that
    the loss is the weighted mean cross-entropy over the targeted steps."""
    steps, batch = xs_shape[0], xs_shape[1]
    y = numeric_array(yname, ys)
    if one and y.ndim == 1:
        y = y[:, None]
    if y.shape != (steps, batch):
        want = f"({steps},)" if one else f"({steps}, {batch})"
        hint = (f" (one-hot labels? pass {yname}.argmax(axis=-1))"
                if y.ndim == len(xs_shape) and y.shape[-1] == num_tools else "")
        raise ValueError(f"{yname} must hold one label per step and stream: shape {want}, got "
                         f"{y.shape}{hint}")
    accepted = (f"{yname} must hold integer labels in [0, {num_tools}), or < 0 for a step "
                f"without a target (ints, or floats with integral values)")
    if y.dtype.kind == "b":
        raise TypeError(f"{accepted}, got dtype bool")
    if y.dtype.kind == "f":
        if not (np.isfinite(y).all() and (y == np.floor(y)).all()):
            raise ValueError(f"{accepted}, got non-integer values")
    if y.size and int(y.max()) >= num_tools:
        raise ValueError(f"{accepted}, got a label {int(y.max())}")
    targeted = y >= 0
    if sample_weight is None:
        w = np.ones((steps, batch))
    else:
        sw = numeric_array("sample_weight", sample_weight).astype(np.float64)
        if sw.shape == (batch,) and not one:
            sw = np.broadcast_to(sw[None, :], (steps, batch))
        elif one and sw.shape == (steps,):
            sw = sw[:, None]
        if sw.shape != (steps, batch):
            shapes = f"({steps},)" if one else f"({batch},) or ({steps}, {batch})"
            raise ValueError(f"sample_weight must have shape {shapes}, got {sw.shape}")
        if not np.isfinite(sw).all() or (sw < 0).any():
            raise ValueError("sample_weight must hold finite weights >= 0")
        w = sw
    w = np.where(targeted, w, 0.0)
    total = float(w.sum())
    if not total > 0:
        raise ValueError(f"no step has a target with a weight > 0: every label in {yname} is "
                         f"< 0 or its sample_weight is 0")
    weights = np.ascontiguousarray((w / total).reshape(-1), dtype=np.float32)
    labels = np.ascontiguousarray(np.where(targeted, y, -1).reshape(-1), dtype=np.int64)
    return labels, weights


def batch_first_episodes(X: Any, y: Any, input_size: int) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """fit/evaluate's episode form, X (N, T, in) with y (N, T) as Keras and scikit-learn
    users pass them; None when X is the one-step form (N, in)."""
    arr = numeric_array("X", X)
    if arr.ndim != 3:
        return None
    if arr.shape[2] != input_size or min(arr.shape) < 1:
        raise ValueError(f"X as episodes must have shape (episodes, steps, {input_size}), got "
                         f"{arr.shape}")
    labels = numeric_array("y", y)
    if labels.shape != arr.shape[:2]:
        raise ValueError(f"y for episodes X {arr.shape} must have shape {arr.shape[:2]} (one "
                         f"label per step, < 0 for no target), got {labels.shape}")
    return arr, labels
