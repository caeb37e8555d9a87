"""Where does int8 lose decisions?  Variants of the int8 step, emulated in float64 NumPy on
the float32 nets of precision_decisions.py's hard default-size task (512 -> 2048 -> 1024 ->
20 on 20 clusters, sigma 6; three seeds), each against the float32 engine on the same 2,000
held-out rows: the spike flip rate (spiking-layer decisions, one step from an empty state,
that differ from float32's), argmax agreement and accuracy.

The emulation quantizes as the engine does (weights per output channel, activations per
row, 8 bits, round to nearest even in float32); "engine int8" is the engine itself, the
check that the emulation is faithful.  "f32 recompute" replaces the int8 membranes that lie
within a stated bound of the threshold by float32 ones from the same h: Hoeffding's bound
for the sum of the rounding errors of h and of the spiking weights (each within half its
quantization step), (lambda / 2) sqrt(s_h^2 sum_k w_kj^2 + s_j^2 sum_k h_k^2), lambda = 8
(it fails with probability below 2 exp(-32) per membrane).

    PYTHONPATH=. python benchmarks/int8_variants.py [--seeds 0 1 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from precision_decisions import clustered, spikes  # noqa: E402

from aiva_cy import AIVANet  # noqa: E402

F32 = np.float32
LAMBDA = 8.0


def q_rows(a, qmax=127):
    """Per-row symmetric quantization in float32: (q, scale), both float64."""
    a = np.asarray(a, np.float64).astype(F32)
    m = np.abs(a).max(axis=1, keepdims=True)
    safe = np.where(m > 0, m, F32(1))
    inv = np.where(m > 0, F32(qmax) / safe, F32(0)).astype(F32)
    q = np.rint(np.clip((a * inv).astype(F32), -qmax, qmax))
    return q.astype(np.float64), (m / F32(qmax)).astype(F32).astype(np.float64)


def q_cols(w):
    q, s = q_rows(np.asarray(w, F32).T)
    return q.T, s.T


def bf(a):
    u = np.asarray(a, F32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(F32).astype(np.float64)


def deq(a):
    q, s = q_rows(a)
    return q * s


def variants(net: AIVANet, X: np.ndarray) -> Dict[str, Any]:
    """name -> (membranes v, h used, the spiking weights' quantization or None)."""
    sd = net.state_dict()
    W1, W2 = (sd[k].astype(np.float64) for k in ("fc1.weight", "spiking.weight"))
    q1, q2 = q_cols(sd["fc1.weight"]), q_cols(sd["spiking.weight"])
    W1q, W2q = q1[0] * q1[1], q2[0] * q2[1]
    X = X.astype(np.float64)
    h8 = np.tanh(deq(X) @ W1q)
    h32 = np.tanh(X @ W1)
    hb = np.tanh(bf(X) @ bf(W1))
    return {
        "int8 everywhere (emulated)": (deq(h8) @ W2q, h8, None),
        "fc1: x int8, W1 float32; spiking float32": (np.tanh(deq(X) @ W1) @ W2, None, None),
        "fc1: x float32, W1 int8; spiking float32": (np.tanh(X @ W1q) @ W2, None, None),
        "fc1 int8; spiking float32": (h8 @ W2, None, None),
        "fc1 float32; spiking: h int8, W2 float32": (deq(h32) @ W2, None, None),
        "fc1 float32; spiking: h float32, W2 int8": (h32 @ W2q, None, None),
        "fc1 float32; spiking int8": (deq(h32) @ W2q, h32, q2),
        "fc1 bfloat16; spiking int8": (deq(hb) @ W2q, hb, q2),
        "fc1 float32; spiking int8 + f32 recompute": (deq(h32) @ W2q, h32, q2),
        "fc1 bfloat16; spiking int8 + f32 recompute": (deq(hb) @ W2q, hb, q2),
        "fc1 int8; spiking int8 + f32 recompute": (deq(h8) @ W2q, h8, q2),
        "bfloat16 everywhere (emulated)": (bf(hb) @ bf(W2), None, None),
    }


def study(net: AIVANet, X: np.ndarray, y: np.ndarray) -> Dict[str, Any]:
    d32, s32 = net.predict(X), spikes(net, X)
    sd = net.state_dict()
    W2 = sd["spiking.weight"].astype(np.float64)
    q3 = q_cols(sd["fc2.weight"])
    W3q = q3[0] * q3[1]
    thr = net.threshold
    out: Dict[str, Any] = {"float32": {"accuracy": float((d32 == y).mean())}}
    net.precision = "int8"
    try:
        d8, s8 = net.predict(X), spikes(net, X)
    finally:
        net.precision = "float32"
    out["engine int8"] = {"flip_rate": float((s8 != s32).mean()),
                          "agreement": float((d8 == d32).mean()),
                          "accuracy": float((d8 == y).mean())}
    for name, (v, h, q2) in variants(net, X).items():
        near_fraction = None
        if name.endswith("recompute"):
            _, sh = q_rows(h)
            w2q = q2[0] * q2[1]
            bound = LAMBDA / 2 * np.sqrt(sh ** 2 * (w2q ** 2).sum(axis=0)[None, :]
                                         + q2[1] ** 2 * (h ** 2).sum(axis=1, keepdims=True))
            near = np.abs(v - thr) <= bound
            near_fraction = float(near.mean())
            v = np.where(near, h @ W2, v)
        s = v >= thr
        d = (s.astype(np.float64) @ (W3q if "bfloat16 every" not in name else
                                      bf(sd["fc2.weight"]))).argmax(axis=1)
        out[name] = {"flip_rate": float((s != s32).mean()), "agreement": float((d == d32).mean()),
                     "accuracy": float((d == y).mean())}
        if near_fraction is not None:
            out[name]["recomputed_fraction"] = near_fraction
    return out


def main(argv: Any = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    centers = np.random.default_rng(100).standard_normal((20, 512)).astype(F32)
    runs = {}
    for seed in args.seeds:
        t0 = time.perf_counter()
        Xtr, ytr = clustered(8000, 200 + seed, centers, 6.0)
        Xte, yte = clustered(2000, 300 + seed, centers, 6.0)
        net = AIVANet(seed=seed)
        net.fit(Xtr, ytr, epochs=6, batch_size=64, seed=seed, verbose=0)
        runs[seed] = study(net, Xte, yte)
        print(f"seed {seed} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    names = [k for k in runs[args.seeds[0]] if k != "float32"]
    print(f"{'variant':48s} " + "  ".join(f"seed {s}: flips / agree" for s in args.seeds)
          + "   mean agree")
    for name in names:
        cells = [f"{100 * runs[s][name]['flip_rate']:.3f}% / {100 * runs[s][name]['agreement']:.2f}%"
                 for s in args.seeds]
        mean = np.mean([runs[s][name]["agreement"] for s in args.seeds])
        print(f"{name:48s} " + "   ".join(f"{c:>19s}" for c in cells) + f"   {100 * mean:.2f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
