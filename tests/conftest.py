"""Shared helpers: random weights that make many neurons fire, inputs kept away from the
threshold (where float32 and float64 may honestly disagree on a spike), and the error
bounds every numerical comparison takes its tolerance from (bounds.py)."""
from __future__ import annotations

import os

import numpy as np
import pytest

import bounds

SMALL = dict(input_size=24, num_tools=5, hidden_size=40, spiking_size=30)
DEFAULT = dict(input_size=512, num_tools=20, hidden_size=2048, spiking_size=1024)


def firing_weights(sizes, seed, threshold=0.5, scale=1.5):
    """float32 weights (state_dict layout) whose spiking layer fires for ~40% of neurons."""
    rng = np.random.default_rng(seed)
    i, h, s, t = (sizes[k] for k in ("input_size", "hidden_size", "spiking_size", "num_tools"))
    return {
        "fc1.weight": (rng.standard_normal((i, h)) / np.sqrt(i)).astype(np.float32),
        "spiking.weight": (rng.standard_normal((h, s)) * scale / np.sqrt(h)).astype(np.float32),
        "fc2.weight": rng.standard_normal((s, t)).astype(np.float32),
    }


def safe_inputs(weights, shape, seed, threshold=0.5, precision="float32", tries=50):
    """N(0, 1) inputs of `shape` whose membrane potentials all lie farther from the
    threshold than their error bound (bounds.py): there a correct engine spikes exactly as
    the float64 reference does.  The whole array is redrawn until it is clear, which
    suits the small sizes; at the default size use bounds.safe_rows (row by row)."""
    try:
        return bounds.draw_safe(weights, shape, seed, threshold, precision, tries)
    except AssertionError as exc:
        pytest.fail(str(exc))


def pytest_terminal_summary(terminalreporter):
    """AIVA_BOUNDS_REPORT=1: the largest observed error / bound of every checked test."""
    if os.environ.get("AIVA_BOUNDS_REPORT") and bounds.RECORD:
        terminalreporter.section("observed error / bound")
        for line in bounds.report_lines():
            terminalreporter.write_line(line)


def exact_default_case(steps, batch, seed):
    """Default-size weights and inputs whose spikes no float32 rounding can change: at
    K = 2048 the worst-case bound (gamma_K ~ 1.2e-4 of sum |h w|, ~0.02 on a membrane) puts
    a neuron of nearly every row within reach of the threshold, so random data cannot be
    screened.  Here the two large fc1 rows drive every hidden unit to tanh = +-1 (|a| >= 15;
    float32 tanh is within 1e-7 of +-1 there), the spiking and fc2 weights are multiples of
    2**-10 (their sums are exact in float32) and the threshold sits half a grid step off the
    grid, so every membrane is >= 2**-11 from it, far beyond any rounding.  Spikes are then
    exact, the logits exact, and only the softmax's few ulp remain."""
    rng = np.random.default_rng(seed)
    i, h, s, t = (DEFAULT[k] for k in ("input_size", "hidden_size", "spiking_size", "num_tools"))
    fc1 = rng.integers(-10, 11, (i, h)) / 1024.0
    fc1[0] = 20.0 * rng.choice([-1.0, 1.0], h)
    fc1[1] = 40.0 * rng.choice([-1.0, 1.0], h)
    w = {"fc1.weight": fc1.astype(np.float32),
         "spiking.weight": (rng.integers(-64, 65, (h, s)) / 1024.0).astype(np.float32),
         "fc2.weight": (rng.integers(-512, 513, (s, t)) / 1024.0).astype(np.float32)}
    xs = rng.uniform(-1.0, 1.0, (steps, batch, i))
    xs[..., :2] = rng.choice([-1.0, 1.0], (steps, batch, 2))
    return w, xs, 0.5 + 2.0 ** -11


# -- trained nets, shared by the reduced-precision tests (test_bf16, test_int8) ----------------
# Seeds of the reduced-precision comparisons (AIVA_CY_DIGITS_SEEDS raises it; each seed is a
# training of ~5 s on 2 cores, shared by the tests through digits_float32_nets).
DIGITS_SEEDS = tuple(range(int(os.environ.get("AIVA_CY_DIGITS_SEEDS", "3"))))


@pytest.fixture(scope="session")
def digits():
    """The README's digits recipe: (X_train, y_train, X_test, y_test), inputs / 4."""
    from aiva_cy.datasets import load_digits
    X_train, y_train = load_digits(split="train")
    X_test, y_test = load_digits(split="test")
    return X_train / 4, y_train, X_test / 4, y_test


def train_digits(digits, seed, precision="float32"):
    from aiva_cy import AIVANet
    X_train, y_train, _, _ = digits
    net = AIVANet(input_size=64, num_tools=10, seed=seed, precision=precision)
    net.fit(X_train, y_train, epochs=20, batch_size=32, seed=seed, verbose=0)
    return net


@pytest.fixture(scope="session")
def digits_float32_nets(digits):
    """float32 nets trained to convergence on digits, one per seed of DIGITS_SEEDS."""
    return [train_digits(digits, seed) for seed in DIGITS_SEEDS]
