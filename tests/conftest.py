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
