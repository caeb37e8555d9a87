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
