"""A plain float64 NumPy reference of one time step and training (docs/contract.md) — readable, slow, and the yardstick the
C engine is tested against.  It keeps the refractory state as a literal ring buffer of past
output spikes, so the engine's countdown representation is checked against the definition.
"""
from __future__ import annotations

from collections import deque
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

KEYS = ("fc1.weight", "spiking.weight", "fc2.weight")


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class ReferenceNet:
    """One time step (docs/contract.md) at a time, with the ring buffer of the last `refractory_period` outputs."""

    def __init__(self, weights: Mapping[str, np.ndarray], *, threshold: float = 0.5,
                 refractory_period: int = 2, surrogate_slope: float = 25.0):
        self.w = {k: np.asarray(weights[k], dtype=np.float64) for k in KEYS}
        self.threshold = float(threshold)
        self.refractory_period = int(refractory_period)
        self.surrogate_slope = float(surrogate_slope)
        self.ring: deque = deque(maxlen=max(self.refractory_period, 1))

    def reset(self) -> None:
        self.ring.clear()

    def mask(self, batch: int) -> np.ndarray:
        spiking = self.w["spiking.weight"].shape[1]
        fired = np.zeros((batch, spiking), dtype=bool)
        if self.refractory_period > 0:
            for past in self.ring:           # only the steps since the last reset are here
                fired |= past
        return ~fired

    def forward_cache(self, x: np.ndarray) -> Dict[str, np.ndarray]:
        """One step without touching the ring: every intermediate of docs/contract.md, "One time step"."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        h = np.tanh(x @ self.w["fc1.weight"])
        v = h @ self.w["spiking.weight"]
        raw = v >= self.threshold
        mask = self.mask(x.shape[0])
        out = raw & mask
        z = out.astype(np.float64) @ self.w["fc2.weight"]
        return {"x": x, "h": h, "v": v, "raw": raw, "mask": mask, "out": out, "z": z,
                "p": softmax(z)}

    def push(self, out: np.ndarray) -> None:
        if self.refractory_period > 0:
            self.ring.append(out.copy())

    def step(self, x: np.ndarray) -> np.ndarray:
        """forward: probabilities (B, tools), and the ring advances."""
        c = self.forward_cache(x)
        self.push(c["out"])
        return c["p"]

    def loss_and_grad(self, x: np.ndarray, y: np.ndarray) -> Tuple[float, Dict[str, np.ndarray]]:
        """docs/contract.md, "Training": mean cross-entropy from the logits and the surrogate gradients."""
        c = self.forward_cache(x)
        self.push(c["out"])
        y = np.asarray(y, dtype=np.int64).reshape(-1)
        B = c["x"].shape[0]
        z = c["z"]
        m = z.max(axis=1, keepdims=True)
        lse = (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]
        loss = float(np.mean(lse - z[np.arange(B), y]))
        onehot = np.eye(z.shape[1])[y]
        dz = (c["p"] - onehot) / B
        g_fc2 = c["out"].astype(np.float64).T @ dz
        surrogate = 1.0 / (1.0 + self.surrogate_slope * np.abs(c["v"] - self.threshold)) ** 2
        dv = (dz @ self.w["fc2.weight"].T) * c["mask"] * surrogate
        g_spiking = c["h"].T @ dv
        g_fc1 = c["x"].T @ ((dv @ self.w["spiking.weight"].T) * (1.0 - c["h"] ** 2))
        return loss, {"fc1.weight": g_fc1, "spiking.weight": g_spiking, "fc2.weight": g_fc2}


def adam_step(w: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, step: int, *,
              lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
              weight_decay: float = 0.0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Adam formulas (Kingma & Ba, with torch's L2 weight decay), step counted from 1."""
    b1, b2 = betas
    g = g + weight_decay * w
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    m_hat = m / (1 - b1 ** step)
    v_hat = v / (1 - b2 ** step)
    return w - lr * m_hat / (np.sqrt(v_hat) + eps), m, v


def membrane_margin(weights: Mapping[str, np.ndarray], x: np.ndarray, threshold: float) -> float:
    """Smallest |v - threshold| over a batch: float32 and float64 can only disagree on a
    spike when this is tiny, so tests pick data where it is not."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    h = np.tanh(x @ np.asarray(weights["fc1.weight"], np.float64))
    v = h @ np.asarray(weights["spiking.weight"], np.float64)
    return float(np.abs(v - threshold).min())



def sequence_loss_and_grad(weights: Mapping[str, np.ndarray], xs: np.ndarray, ys: np.ndarray,
                           sample_weight: Optional[np.ndarray] = None, *, threshold: float = 0.5,
                           refractory_period: int = 2, surrogate_slope: float = 25.0
                           ) -> Tuple[float, Dict[str, np.ndarray], np.ndarray]:
    """An episode, step by step from an empty state, the plain way: xs (T, B, in), labels
    ys (T, B) with < 0 for "no target at this step", weights (T, B) (default 1).  Returns
    the weighted mean cross-entropy over targeted steps, its gradients (each step's
    contract gradient with that step's mask held constant, summed over steps) and the
    probabilities (T, B, tools)."""
    ref = ReferenceNet(weights, threshold=threshold, refractory_period=refractory_period,
                       surrogate_slope=surrogate_slope)
    xs = np.asarray(xs, np.float64)
    ys = np.asarray(ys, np.int64)
    T, B = ys.shape
    w = np.ones((T, B)) if sample_weight is None else np.broadcast_to(
        np.asarray(sample_weight, np.float64), (T, B))
    w = np.where(ys >= 0, w, 0.0)
    total = w.sum()
    grads = {k: np.zeros_like(ref.w[k]) for k in KEYS}
    loss = 0.0
    probs = []
    for t in range(T):
        c = ref.forward_cache(xs[t])
        ref.push(c["out"])
        probs.append(c["p"])
        wt = w[t] / total
        z = c["z"]
        m = z.max(axis=1, keepdims=True)
        lse = (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]
        y = np.where(ys[t] >= 0, ys[t], 0)
        loss += float(np.sum(wt * (lse - z[np.arange(B), y])))
        dz = (c["p"] - np.eye(z.shape[1])[y]) * wt[:, None]
        surrogate = 1.0 / (1.0 + surrogate_slope * np.abs(c["v"] - threshold)) ** 2
        dv = (dz @ ref.w["fc2.weight"].T) * c["mask"] * surrogate
        grads["fc2.weight"] += c["out"].astype(np.float64).T @ dz
        grads["spiking.weight"] += c["h"].T @ dv
        grads["fc1.weight"] += c["x"].T @ ((dv @ ref.w["spiking.weight"].T) * (1.0 - c["h"] ** 2))
    return loss, grads, np.stack(probs)
