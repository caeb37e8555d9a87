"""fit and evaluate: the mini-batch loop around an engine's train_step.

Both take plain parts, an engine (of the contract in :mod:`aiva_cy._engine`, on any
device) and its optimizer, not the net: the caller holds whatever keeps other threads off
them for the whole run (``AIVANet.fit`` holds the net's lock).  The loop is Python because
a mini-batch step is milliseconds of BLAS work: the loop's own cost (a slice and a call)
is microseconds.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Any, Dict, List, Optional, TextIO, Tuple

import numpy as np

from aiva_cy._checks import as_float32, check_finite, float_arg, int_arg, numeric_array
from aiva_cy._engine import EngineProtocol, host_y


class ProgressBar:
    """A one-line progress bar on a terminal; nothing per batch elsewhere."""

    def __init__(self, total: int, prefix: str, stream: TextIO, live: bool):
        self.total, self.prefix, self.stream, self.live = total, prefix, stream, live
        self.start = time.perf_counter()
        self._last_draw = 0.0

    def update(self, done: int, loss: float, accuracy: float) -> None:
        if not self.live:
            return
        now = time.perf_counter()
        if done < self.total and now - self._last_draw < 0.1:   # ~10 redraws a second
            return
        self._last_draw = now
        width = 24
        filled = int(width * done / self.total)
        bar = "=" * filled + (">" if filled < width else "") + "." * max(width - filled - 1, 0)
        self.stream.write(f"\r{self.prefix} [{bar}] {done}/{self.total} - "
                          f"loss {loss:.4f} - acc {accuracy:.4f}")
        self.stream.flush()

    def close(self, summary: str) -> None:
        elapsed = time.perf_counter() - self.start
        self.stream.write(("\r" if self.live else "") + f"{self.prefix} - {elapsed:.1f}s - "
                          f"{summary}" + (" " * 10 if self.live else "") + "\n")
        self.stream.flush()


def _dataset(engine: EngineProtocol, X: Any, y: Any, xname: str, yname: str
             ) -> Tuple[np.ndarray, np.ndarray]:
    """The whole set, checked, on the host (each batch goes to the device on its own)."""
    n_in = engine.input_size
    arr = numeric_array(xname, X)
    if arr.ndim != 2 or arr.shape[1] != n_in or arr.shape[0] < 1:
        raise ValueError(f"{xname} must have shape (n >= 1, {n_in}), got {arr.shape}")
    arr = as_float32(xname, arr)
    check_finite(xname, arr)
    return arr, host_y(y, arr.shape[0], yname, engine.num_tools)


def evaluate(engine: EngineProtocol, X: Any, y: Any, batch_size: int = 256) -> Dict[str, float]:
    """Mean cross-entropy and accuracy over (X, y), each row one step from an empty state."""
    X, y = _dataset(engine, X, y, "X", "y")
    batch_size = int_arg("batch_size", batch_size, 1)
    return _evaluate(engine, X, y, batch_size)


def _evaluate(engine: EngineProtocol, X: np.ndarray, y: np.ndarray, batch_size: int
              ) -> Dict[str, float]:
    total_loss, correct = 0.0, 0
    for start in range(0, X.shape[0], batch_size):
        probs, logits = engine.predict(engine.to_device(X[start:start + batch_size]), True)
        probs, logits = engine.to_host(probs), engine.to_host(logits)
        yb = y[start:start + batch_size]
        z = logits.astype(np.float64)
        m = z.max(axis=1)
        lse = m + np.log(np.exp(z - m[:, None]).sum(axis=1))
        total_loss += float((lse - z[np.arange(len(yb)), yb]).sum())
        correct += int((probs.argmax(axis=1) == yb).sum())
    n = X.shape[0]
    return {"loss": total_loss / n, "accuracy": correct / n}


def fit(engine: EngineProtocol, optimizer: Any, X: Any, y: Any, *, epochs: int, batch_size: int, shuffle: bool,
        seed: Optional[int], validation_data: Optional[Tuple[Any, Any]],
        validation_split: float, patience: Optional[int], min_delta: float,
        restore_best_weights: bool, verbose: int) -> Dict[str, List[float]]:
    """``AIVANet.fit`` (whose docstring describes the options) on ``engine`` and
    ``optimizer``; returns the history."""
    epochs = int_arg("epochs", epochs, 0)
    batch_size = int_arg("batch_size", batch_size, 1)
    verbose = int_arg("verbose", verbose, 0, 2)
    validation_split = float_arg("validation_split", validation_split, 0.0)
    if validation_split >= 1.0:
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split}")
    if patience is not None:
        patience = int_arg("patience", patience, 1)
    min_delta = float_arg("min_delta", min_delta, 0.0)
    if seed is not None:
        seed = int_arg("seed", seed, 0, 2**63 - 1)

    X, y = _dataset(engine, X, y, "X", "y")
    X_val: Optional[np.ndarray] = None
    y_val: Optional[np.ndarray] = None
    if validation_data is not None:
        if validation_split:
            raise ValueError("give validation_data or validation_split, not both")
        try:
            vx, vy = validation_data
        except (TypeError, ValueError):
            raise TypeError("validation_data must be a pair (X_val, y_val)") from None
        X_val, y_val = _dataset(engine, vx, vy, "validation_data[0]", "validation_data[1]")
    elif validation_split:
        n_val = int(math.floor(X.shape[0] * validation_split))
        if n_val < 1 or n_val >= X.shape[0]:
            raise ValueError(f"validation_split={validation_split} leaves no rows for "
                             f"{'validation' if n_val < 1 else 'training'} out of {X.shape[0]}")
        X, X_val = X[:-n_val], X[-n_val:]
        y, y_val = y[:-n_val], y[-n_val:]

    rng = np.random.default_rng(seed)
    n = X.shape[0]
    steps = math.ceil(n / batch_size)
    history: Dict[str, List[float]] = {"loss": [], "accuracy": []}
    if X_val is not None:
        history["val_loss"], history["val_accuracy"] = [], []
    stream = sys.stderr
    live = verbose == 1 and stream.isatty()
    monitor = "val_loss" if X_val is not None else "loss"
    best, best_epoch, best_weights = math.inf, -1, None

    for epoch in range(epochs):
        order = rng.permutation(n) if shuffle else np.arange(n)
        bar = ProgressBar(steps, f"Epoch {epoch + 1}/{epochs}", stream, live)
        loss_sum, correct, seen = 0.0, 0, 0
        for step in range(steps):
            idx = order[step * batch_size:(step + 1) * batch_size]
            xb = engine.to_device(np.ascontiguousarray(X[idx]))
            yb = engine.to_device(np.ascontiguousarray(y[idx]))
            engine.reset_state()          # each mini-batch is one step from an empty state
            loss, right = engine.train_step(xb, yb, optimizer)
            loss_sum += float(loss) * len(idx)
            correct += int(right)
            seen += len(idx)
            bar.update(step + 1, loss_sum / seen, correct / seen)
        engine.reset_state()
        history["loss"].append(loss_sum / seen)
        history["accuracy"].append(correct / seen)
        summary = f"loss {history['loss'][-1]:.4f} - acc {history['accuracy'][-1]:.4f}"
        if X_val is not None and y_val is not None:
            val = _evaluate(engine, X_val, y_val, 256)
            history["val_loss"].append(val["loss"])
            history["val_accuracy"].append(val["accuracy"])
            summary += f" - val_loss {val['loss']:.4f} - val_acc {val['accuracy']:.4f}"
        if verbose:
            bar.close(summary)
        if patience is not None:
            current = history[monitor][-1]
            if current < best - min_delta:
                best, best_epoch = current, epoch
                if restore_best_weights:
                    best_weights = engine.get_weights()
            elif epoch - best_epoch >= patience:
                if verbose:
                    stream.write(f"Early stopping: {monitor} has not improved by more than "
                                 f"{min_delta} for {patience} epochs\n")
                break
    if best_weights is not None:
        engine.set_weights(best_weights)
    return history
