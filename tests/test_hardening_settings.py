"""Settings at float32's edges: what the engines hold is what the net reports, or the
setting is refused, whichever way it enters."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from aiva_cy import AIVANet
from aiva_cy._model import SURROGATE_SLOPE_MAX
from conftest import SMALL


@pytest.mark.parametrize("key, value, message", [
    ("threshold", 1e39, "fit in float32"),
    ("threshold", -1e39, "fit in float32"),
    ("threshold", 1e-46, "float32 holds as 0.0"),
    ("threshold", -1e-46, "float32 holds as 0.0"),
    ("threshold", 10**400, "too large for a float"),
    ("surrogate_slope", 1e39, "at most"),
    ("surrogate_slope", 1e19, "at most"),
    ("surrogate_slope", 1e-46, "float32 holds as 0.0"),
])
def test_constructor_refuses_settings_float32_cannot_hold(key, value, message):
    with pytest.raises(ValueError, match=f"{key} must.*{message}|{message}"):
        AIVANet(**SMALL, seed=0, **{key: value})


@pytest.mark.parametrize("key, value", [("threshold", 3e38), ("threshold", 1e-45),
                                        ("threshold", 0.1), ("surrogate_slope", 0.0),
                                        ("surrogate_slope", SURROGATE_SLOPE_MAX),
                                        ("surrogate_slope", 1e-45)])
def test_settings_float32_holds_are_kept(key, value):
    net = AIVANet(**SMALL, seed=0, **{key: value})
    assert getattr(net, key) == value
    assert getattr(net._engine, key) == pytest.approx(value, rel=1e-7)


def test_unpickling_checks_the_config_like_the_constructor():
    net = AIVANet(**SMALL, seed=0)
    state = net.__getstate__()
    for key, value in (("threshold", 1e39), ("surrogate_slope", 1e39),
                       ("threshold", 1e-46)):
        bad = {**state, "config": {**state["config"], key: value}}
        fresh = AIVANet.__new__(AIVANet)
        with pytest.raises(ValueError, match=key):
            fresh.__setstate__(bad)
    again = pickle.loads(pickle.dumps(net))
    assert again.config == net.config


def test_set_threshold_checks_like_the_constructor():
    from aiva_cy._threshold import set_threshold
    net = AIVANet(**SMALL, seed=0)
    for value in (1e39, 1e-46):
        with pytest.raises(ValueError, match="threshold"):
            set_threshold(net, value)
        assert net.threshold == 0.5 and net._engine.threshold == np.float32(0.5)


def test_surrogate_at_the_bound_still_gives_nonzero_gradients():
    # At SURROGATE_SLOPE_MAX the factor at unit distance is still a normal float32.
    k = np.float32(SURROGATE_SLOPE_MAX)
    a = np.float32(1) + k * np.float32(1.0)
    with np.errstate(over="raise", under="raise"):
        factor = np.float32(1) / (a * a)
    assert factor >= np.finfo(np.float32).tiny
