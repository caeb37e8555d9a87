"""fit and evaluate: the mini-batch loop around an engine's train_step.

Both take plain parts, an engine (of the contract in :mod:`aiva_cy._engine`, on any
device) and its optimizer, not the net: the caller holds whatever keeps other threads off
them for the whole run (``AIVANet.fit`` holds the net's lock).  The loop is Python because
a mini-batch step is milliseconds of BLAS work: the loop's own cost (a slice and a call)
is microseconds.
"""
from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any, Callable, Dict, List, Optional, TextIO, Tuple

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
        raise ValueError(f"{xname} must have shape (n >= 1, {n_in}) (one step per row) or "
                         f"(episodes, steps, {n_in}) (episodes), got {arr.shape}")
    arr = as_float32(xname, arr)
    check_finite(xname, arr)
    return arr, host_y(y, arr.shape[0], yname, engine.num_tools)


def _weights_arg(sample_weight: Any, shape: Tuple[int, ...]) -> Optional[np.ndarray]:
    """sample_weight as float64 of `shape` (one per row, or per episode / per step)."""
    if sample_weight is None:
        return None
    w = numeric_array("sample_weight", sample_weight).astype(np.float64)
    if len(shape) == 2 and w.shape == shape[:1]:
        w = np.broadcast_to(w[:, None], shape)
    if w.shape != shape:
        raise ValueError(f"sample_weight must have shape {shape[:1]}"
                         + (f" or {shape}" if len(shape) == 2 else "") + f", got {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("sample_weight must hold finite weights >= 0")
    return np.ascontiguousarray(w)


class _Rows:
    """The one-step form: rows X (n, in), labels (n,), each mini-batch one step from an
    empty state."""

    def __init__(self, X: np.ndarray, y: np.ndarray, w: Optional[np.ndarray]):
        self.X, self.y, self.w = X, y, w

    @classmethod
    def checked(cls, engine: EngineProtocol, X: Any, y: Any, sample_weight: Any,
                xname: str = "X", yname: str = "y") -> "_Rows":
        X, y = _dataset(engine, X, y, xname, yname)
        return cls(X, y, _weights_arg(sample_weight, (X.shape[0],)))

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    def split(self, n_val: int) -> Tuple["_Rows", "_Rows"]:
        """(all but the last n_val, the last n_val): Keras' validation_split."""
        w = self.w
        return (_Rows(self.X[:-n_val], self.y[:-n_val], None if w is None else w[:-n_val]),
                _Rows(self.X[-n_val:], self.y[-n_val:], None if w is None else w[-n_val:]))

    def train(self, engine: EngineProtocol, optimizer: Any, idx: np.ndarray
              ) -> Tuple[float, float, int, int]:
        """One training step on rows idx: (loss, its weight, right, targeted rows)."""
        xb = np.ascontiguousarray(self.X[idx])
        yb = np.ascontiguousarray(self.y[idx])
        engine.reset_state()          # each mini-batch is one step from an empty state
        if self.w is None:
            loss, right = engine.train_step(engine.to_device(xb), engine.to_device(yb),
                                            optimizer)
            return float(loss), float(len(idx)), int(right), len(idx)
        # Weighted rows are an episode of one step: the same step, weighted cross-entropy.
        wb = self.w[idx]
        total = float(wb.sum())
        if not total > 0:
            return 0.0, 0.0, 0, 0            # a batch whose weights are all 0 teaches nothing
        loss, right = engine.train_sequence(
            engine.to_device(xb[None]), engine.to_device(yb.astype(np.int64)),
            engine.to_device(np.ascontiguousarray(wb / total, dtype=np.float32)), optimizer)
        return float(loss), total, int(right), int((wb > 0).sum())

    def evaluate(self, engine: EngineProtocol, batch_size: int) -> Dict[str, float]:
        total_loss, total_w, correct, counted = 0.0, 0.0, 0, 0
        for start in range(0, self.n, batch_size):
            sl = slice(start, start + batch_size)
            probs, logits = engine.predict(engine.to_device(self.X[sl]), True)
            probs, logits = engine.to_host(probs), engine.to_host(logits)
            yb = self.y[sl]
            wb = np.ones(len(yb)) if self.w is None else self.w[sl]
            z = logits.astype(np.float64)
            m = z.max(axis=1)
            lse = m + np.log(np.exp(z - m[:, None]).sum(axis=1))
            total_loss += float((wb * (lse - z[np.arange(len(yb)), yb])).sum())
            total_w += float(wb.sum())
            on = wb > 0
            correct += int(((probs.argmax(axis=1) == yb) & on).sum())
            counted += int(on.sum())
        return {"loss": total_loss / total_w if total_w > 0 else math.nan,
                "accuracy": correct / counted if counted else math.nan}


class _Episodes:
    """Episodes, batch-first as Keras and scikit-learn users hand them over: X (n, T, in),
    labels y (n, T) with < 0 for a step without a target; each mini-batch of episodes is
    one episode batch from an empty state (train_sequence)."""

    def __init__(self, X: np.ndarray, y: np.ndarray, w: Optional[np.ndarray]):
        self.X, self.y, self.w = X, y, w

    @classmethod
    def checked(cls, engine: EngineProtocol, X: Any, y: Any, sample_weight: Any,
                xname: str = "X", yname: str = "y") -> "_Episodes":
        n_in = engine.input_size
        arr = numeric_array(xname, X)
        if arr.ndim != 3 or arr.shape[2] != n_in or min(arr.shape) < 1:
            raise ValueError(f"{xname} as episodes must have shape (episodes, steps, {n_in}), "
                             f"got {arr.shape}")
        arr = as_float32(xname, arr)
        check_finite(xname, arr)
        labels = numeric_array(yname, y)
        if labels.shape != arr.shape[:2]:
            hint = (f" (one-hot labels? pass {yname}.argmax(axis=-1))"
                    if labels.shape[:2] == arr.shape[:2] and labels.ndim == 3 else "")
            raise ValueError(f"{yname} for episodes {xname} {arr.shape} must have shape "
                             f"{arr.shape[:2]}: one label per step, < 0 for no target; got "
                             f"{labels.shape}{hint}")
        from aiva_cy._sequences import episode_targets
        # The same checks as one episode batch (integers, range, at least one target).
        episode_targets((arr.shape[1], arr.shape[0]), labels.T, None, engine.num_tools,
                        False, yname)
        return cls(arr, np.ascontiguousarray(labels, dtype=np.int64),
                   _weights_arg(sample_weight, arr.shape[:2]))

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    def split(self, n_val: int) -> Tuple["_Episodes", "_Episodes"]:
        """(all but the last n_val episodes, the last n_val)."""
        w = self.w
        return (_Episodes(self.X[:-n_val], self.y[:-n_val], None if w is None else w[:-n_val]),
                _Episodes(self.X[-n_val:], self.y[-n_val:], None if w is None else w[-n_val:]))

    def _batch(self, idx: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Time-major xs (T, b, in), labels (T, b) and raw weights (T, b), 0 where no target."""
        xs = np.ascontiguousarray(self.X[idx].transpose(1, 0, 2))
        ys = np.ascontiguousarray(self.y[idx].T)
        w = np.ones(ys.shape) if self.w is None else self.w[idx].T
        return xs, ys, np.where(ys >= 0, w, 0.0)

    def train(self, engine: EngineProtocol, optimizer: Any, idx: np.ndarray
              ) -> Tuple[float, float, int, int]:
        xs, ys, w = self._batch(idx)
        total = float(w.sum())
        if not total > 0:
            return 0.0, 0.0, 0, 0
        weights = np.ascontiguousarray((w / total).reshape(-1), dtype=np.float32)
        labels = np.ascontiguousarray(np.where(ys >= 0, ys, -1).reshape(-1), dtype=np.int64)
        loss, right = engine.train_sequence(engine.to_device(xs), engine.to_device(labels),
                                            engine.to_device(weights), optimizer)
        return float(loss), total, int(right), int((w > 0).sum())

    def evaluate(self, engine: EngineProtocol, batch_size: int) -> Dict[str, float]:
        """Each episode from an empty state; the engine's own stream state is put back."""
        total_loss, total_w, correct, counted = 0.0, 0.0, 0, 0
        held = engine.get_state()
        try:
            for start in range(0, self.n, batch_size):
                idx = np.arange(start, min(start + batch_size, self.n))
                xs, ys, w = self._batch(idx)
                engine.reset_state()
                probs = engine.to_host(engine.forward_sequence(engine.to_device(xs)))
                on = w > 0
                y0 = np.where(on, ys, 0)
                p = np.take_along_axis(probs, y0[..., None], axis=-1)[..., 0].astype(np.float64)
                # -log p from float32 probabilities; a probability that underflowed to 0
                # counts as float32's smallest, not as an infinite loss.
                nll = -np.log(np.maximum(p, np.finfo(np.float32).tiny))
                total_loss += float((w * nll).sum())
                total_w += float(w.sum())
                correct += int(((probs.argmax(axis=-1) == ys) & on).sum())
                counted += int(on.sum())
        finally:
            engine.set_state(held)
        return {"loss": total_loss / total_w if total_w > 0 else math.nan,
                "accuracy": correct / counted if counted else math.nan}


def _data(engine: EngineProtocol, X: Any, y: Any, sample_weight: Any, xname: str = "X",
          yname: str = "y") -> Any:
    """Rows or episodes, by X's shape."""
    arr = numeric_array(xname, X)
    if arr.ndim == 3:
        return _Episodes.checked(engine, arr, y, sample_weight, xname, yname)
    return _Rows.checked(engine, arr, y, sample_weight, xname, yname)


def evaluate(engine: EngineProtocol, X: Any, y: Any, batch_size: int = 256,
             sample_weight: Any = None) -> Dict[str, float]:
    """(Weighted) mean cross-entropy and accuracy over (X, y): rows each one step from an
    empty state, or episodes (n, T, in) each from an empty state over its targeted steps."""
    batch_size = int_arg("batch_size", batch_size, 1)
    return _data(engine, X, y, sample_weight).evaluate(engine, batch_size)


#: Where fit's progress goes when stderr is not a terminal (a line per epoch at INFO).
log = logging.getLogger("aiva_cy.fit")


def _callback_hooks(callbacks: Any) -> List[Callable[[int, Dict[str, float]], Any]]:
    """Each callback as an epoch hook: a callable ``(epoch, logs)`` or an object with an
    ``on_epoch_end(epoch, logs)`` method (Keras' name)."""
    if callbacks is None:
        return []
    if callable(callbacks) or hasattr(callbacks, "on_epoch_end"):
        callbacks = [callbacks]
    hooks = []
    for i, cb in enumerate(callbacks):
        hook = getattr(cb, "on_epoch_end", None) or (cb if callable(cb) else None)
        if hook is None:
            raise TypeError(f"callbacks[{i}] must be callable as (epoch, logs) or have an "
                            f"on_epoch_end(epoch, logs) method, got {cb!r}")
        hooks.append(hook)
    return hooks


def fit(engine: EngineProtocol, optimizer: Any, X: Any, y: Any, *, epochs: int, batch_size: int, shuffle: bool,
        seed: Optional[int], validation_data: Optional[Tuple[Any, Any]],
        validation_split: float, patience: Optional[int], min_delta: float,
        restore_best_weights: bool, verbose: int, sample_weight: Any = None,
        callbacks: Any = None) -> Dict[str, List[float]]:
    """``AIVANet.fit`` (whose docstring describes the options) on ``engine`` and
    ``optimizer``; returns the history."""
    epochs = int_arg("epochs", epochs, 1)
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
    hooks = _callback_hooks(callbacks)

    data = _data(engine, X, y, sample_weight)
    val: Any = None
    if validation_data is not None:
        if validation_split:
            raise ValueError("give validation_data or validation_split, not both")
        try:
            vx, vy = validation_data
        except (TypeError, ValueError):
            raise TypeError("validation_data must be a pair (X_val, y_val)") from None
        val = _data(engine, vx, vy, None, "validation_data[0]", "validation_data[1]")
        if type(val) is not type(data):
            raise ValueError("validation_data must have the form of X: rows (n, in) or "
                             "episodes (n, steps, in)")
    elif validation_split:
        n_val = int(math.floor(data.n * validation_split))
        if n_val < 1 or n_val >= data.n:
            raise ValueError(f"validation_split={validation_split} leaves no "
                             f"{'episodes' if isinstance(data, _Episodes) else 'rows'} for "
                             f"{'validation' if n_val < 1 else 'training'} out of {data.n}")
        data, val = data.split(n_val)

    rng = np.random.default_rng(seed)
    n = data.n
    steps = math.ceil(n / batch_size)
    history: Dict[str, List[float]] = {"loss": [], "accuracy": []}
    if val is not None:
        history["val_loss"], history["val_accuracy"] = [], []
    stream = sys.stderr
    tty = stream.isatty()
    live = verbose == 1 and tty
    monitor = "val_loss" if val is not None else "loss"
    best, best_epoch, best_weights = math.inf, -1, None
    held = engine.get_state()

    try:
        for epoch in range(epochs):
            order = rng.permutation(n) if shuffle else np.arange(n)
            bar = ProgressBar(steps, f"Epoch {epoch + 1}/{epochs}", stream, live)
            loss_sum, weight_sum, correct, seen = 0.0, 0.0, 0, 0
            for step in range(steps):
                idx = order[step * batch_size:(step + 1) * batch_size]
                loss, weight, right, count = data.train(engine, optimizer, idx)
                loss_sum += loss * weight
                weight_sum += weight
                correct += right
                seen += count
                bar.update(step + 1, loss_sum / max(weight_sum, 1e-300), correct / max(seen, 1))
            engine.reset_state()
            history["loss"].append(loss_sum / weight_sum if weight_sum > 0 else math.nan)
            history["accuracy"].append(correct / seen if seen else math.nan)
            summary = f"loss {history['loss'][-1]:.4f} - acc {history['accuracy'][-1]:.4f}"
            if val is not None:
                v = val.evaluate(engine, 256)
                history["val_loss"].append(v["loss"])
                history["val_accuracy"].append(v["accuracy"])
                summary += f" - val_loss {v['loss']:.4f} - val_acc {v['accuracy']:.4f}"
            # verbose=2 asked for the lines; verbose=1 off a terminal logs them instead.
            if verbose == 2 or (verbose and tty):
                bar.close(summary)
            elif verbose:
                log.info("epoch %d/%d - %s", epoch + 1, epochs, summary)
            logs = {k: vals[-1] for k, vals in history.items()}
            stop = any(hook(epoch, dict(logs)) is False for hook in hooks)
            if stop:
                if verbose:
                    log.info("stopped by a callback after epoch %d", epoch + 1)
                break
            if patience is not None:
                current = history[monitor][-1]
                if current < best - min_delta:
                    best, best_epoch = current, epoch
                    if restore_best_weights:
                        best_weights = engine.get_weights()
                elif epoch - best_epoch >= patience:
                    message = (f"Early stopping: {monitor} has not improved by more than "
                               f"{min_delta} for {patience} epochs")
                    if verbose == 2 or (verbose and tty):
                        stream.write(message + "\n")
                    elif verbose:
                        log.info(message)
                    break
    finally:
        engine.set_state(held)
    if best_weights is not None:
        engine.set_weights(best_weights)
    return history
