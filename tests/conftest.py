"""Shared helpers: random weights that make many neurons fire, inputs kept away from the
threshold (where float32 and float64 may honestly disagree on a spike)."""
from __future__ import annotations

import numpy as np
import pytest

from aiva_cy.reference import membrane_margin

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


def safe_inputs(weights, shape, seed, threshold=0.5, margin=1e-4, tries=50):
    """N(0, 1) inputs of `shape` whose membrane potentials all stay `margin` from threshold."""
    rng = np.random.default_rng(seed)
    for _ in range(tries):
        x = rng.standard_normal(shape)
        if membrane_margin(weights, x.reshape(-1, shape[-1]), threshold) > margin:
            return x
    pytest.fail("could not draw inputs away from the threshold")


# -- trained nets, shared by the reduced-precision tests (test_bf16, test_int8) ----------------
DIGITS_SEEDS = (0, 1, 2)


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
