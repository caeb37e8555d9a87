"""Tests for AIVA's confidence check in the drop-in (aiva_cy.compat.AntiHallucinationModule)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

from aiva_cy.compat import AntiHallucinationModule, ScalableBioNet


# ---------------------------------------------------------------------------------------
# compat.AntiHallucinationModule
# ---------------------------------------------------------------------------------------
def test_check_semantics(caplog: pytest.LogCaptureFixture) -> None:
    module = AntiHallucinationModule()
    assert module.confidence_threshold == 0.7
    passed, confidence = module.check(np.array([0.1, 0.7, 0.2]))
    assert (passed, confidence) == (True, 0.7)                 # at the threshold: passes
    assert type(passed) is bool and type(confidence) is float
    with caplog.at_level(logging.WARNING, logger="aiva_cy.compat"):
        assert module.check([0.31, 0.69]) == (False, 0.69)     # a list works too
    assert "0.69 < 0.70" in caplog.text
    assert AntiHallucinationModule(confidence_threshold=0.3).check([0.31, 0.69])[0] is True
    assert module.check_confidence([0.6, 0.4], threshold=0.5) == (True, 0.6)
    assert module.check(np.array([0.6, 0.4], dtype=np.float32))[1] == pytest.approx(0.6)
    module.confidence_threshold = 0.5
    assert module.check([0.5, 0.5]) == (True, 0.5)


def test_check_agrees_with_decide() -> None:
    core = ScalableBioNet(16, 4, seed=0, hidden_size=32, spiking_size=24)
    X = np.random.default_rng(5).standard_normal((20, 16))
    # The median confidence as the level: some decisions pass, some do not.
    level = float(np.median(core.net.predict_proba(X).max(axis=1)))
    module = AntiHallucinationModule(level)
    results = []
    for x in X:
        core.reset_state()
        passed, confidence = module.check(core.forward(x))
        tool, top, ok = core.net.decide(x, confidence=level)
        assert (passed, confidence) == (ok, top)
        results.append(passed)
    assert 0 < sum(results) < len(results)


@pytest.mark.parametrize("value, error", [
    (1.5, ValueError), (-0.1, ValueError), (float("nan"), ValueError), (True, TypeError),
    ("0.7", TypeError), (None, TypeError)])
def test_confidence_threshold_is_validated(value: Any, error: type) -> None:
    with pytest.raises(error, match="confidence_threshold"):
        AntiHallucinationModule(value)
    module = AntiHallucinationModule()
    with pytest.raises(error, match="confidence_threshold"):
        module.confidence_threshold = value
    assert module.confidence_threshold == 0.7
    if value is not None:
        with pytest.raises(error, match="threshold"):
            module.check_confidence([0.9, 0.1], threshold=value)


@pytest.mark.parametrize("probs, error, message", [
    (np.ones((2, 3)) / 3, ValueError, "1-D"),
    (np.array([]), ValueError, "non-empty"),
    (np.array([0.5, np.nan]), ValueError, "NaN"),
    (["a", "b"], TypeError, "real numbers"),
    ([[0.5], [0.5, 0.5]], ValueError, "1-D array of numbers"),
])
def test_check_validates_probs(probs: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        AntiHallucinationModule().check(probs)


def test_multi_layer_validation_and_stats() -> None:
    module = AntiHallucinationModule(0.5)
    p = np.array([0.8, 0.1, 0.1])
    passed, final, record = module.multi_layer_validation(p)
    stability = max(0.0, min(1.0, 1.0 - p.std() / p.mean()))
    assert record["basic_confidence"] == 0.8 and record["stability"] == pytest.approx(stability)
    assert record["consistency"] == pytest.approx(1 / 3)
    assert final == pytest.approx(np.mean([0.8, stability, 1 / 3]))
    assert record["consensus_reached"] is False and passed is False   # 0.8 alone exceeds 0.6
    stats = module.get_validation_stats()
    assert stats["total_validations"] == 1
    assert stats["recent_average_confidence"] == pytest.approx(final)
    for _ in range(100):
        module.multi_layer_validation(np.array([0.9, 0.9]))   # stability 1, consistency 1
    assert len(module.validation_history) == 50               # 101 records: trimmed to 50
    assert module.multi_layer_validation([0.9, 0.9])[0] is True
    assert len(module.validation_history) == 51
    assert AntiHallucinationModule().get_validation_stats() == {"total_validations": 0}
