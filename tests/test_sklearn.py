"""aiva_cy.sklearn.AIVAClassifier: scikit-learn's own estimator checks, labels of any kind,
partial_fit, parameters, and that it is AIVANet underneath. Skipped without scikit-learn."""
from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn", minversion="1.6")

from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402
from sklearn.model_selection import cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import check_estimator  # noqa: E402

from aiva_cy import AIVANet  # noqa: E402
from aiva_cy.datasets import load_digits  # noqa: E402
from aiva_cy.sklearn import AIVAClassifier  # noqa: E402

TOOLS = np.array(["nmap", "sqlmap", "nikto", "hydra", "burp", "zap", "ffuf", "gobuster",
                  "wpscan", "masscan"])


@pytest.fixture(scope="module")
def digits():
    X_train, y_train = load_digits(split="train")
    X_test, y_test = load_digits(split="test")
    return X_train / 4, y_train, X_test / 4, y_test


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.SkipTestWarning")   # pandas, array API
def test_check_estimator() -> None:
    """Every check of scikit-learn's check_estimator passes (none is marked as expected to
    fail); the defaults are small enough for it to run in seconds."""
    results = check_estimator(AIVAClassifier(random_state=0), on_fail=None)
    failed = [(r["check_name"], r["exception"]) for r in results if r["status"] == "failed"]
    assert not failed, failed
    assert sum(r["status"] == "passed" for r in results) >= 40


def test_tool_names_as_labels(digits) -> None:
    X_train, y_train, X_test, y_test = digits
    clf = AIVAClassifier(epochs=5, random_state=0).fit(X_train, TOOLS[y_train])
    assert list(clf.classes_) == sorted(TOOLS)
    assert clf.n_features_in_ == 64
    pred = clf.predict(X_test)
    assert pred.dtype == TOOLS.dtype and set(pred) <= set(TOOLS)
    proba = clf.predict_proba(X_test)
    assert proba.shape == (len(X_test), 10) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert np.array_equal(clf.classes_[proba.argmax(axis=1)], pred)
    # An honest model, not a constant: the small default net learns digits to well over 90%.
    assert clf.score(X_test, TOOLS[y_test]) > 0.9
    assert clf.score(X_test, TOOLS[y_test]) == np.mean(pred == TOOLS[y_test])


def test_it_is_aivanet_underneath(digits) -> None:
    X_train, y_train, X_test, _ = digits
    clf = AIVAClassifier(hidden_size=40, spiking_size=24, threshold=0.4, refractory_period=3,
                         surrogate_slope=10.0, epochs=2, lr=2e-3, weight_decay=1e-4,
                         random_state=1).fit(X_train, y_train)
    net = clf.net_
    assert isinstance(net, AIVANet)
    assert (net.input_size, net.num_tools, net.hidden_size, net.spiking_size) == (64, 10, 40, 24)
    assert (net.threshold, net.refractory_period, net.surrogate_slope) == (0.4, 3, 10.0)
    assert (net.optimizer.lr, net.optimizer.weight_decay) == (2e-3, 1e-4)
    assert net.optimizer.step == 2 * int(np.ceil(len(X_train) / 32))   # 2 epochs of batches of 32
    p32 = net.predict_proba(X_test)
    np.testing.assert_allclose(clf.predict_proba(X_test), p32 / p32.sum(1, keepdims=True).astype(np.float64),
                               rtol=1e-6)
    assert clf.n_iter_ == 2 and len(clf.history_["loss"]) == 2


def test_random_state_reproduces(digits) -> None:
    X_train, y_train, X_test, _ = digits
    a = AIVAClassifier(epochs=1, random_state=3).fit(X_train, y_train).predict_proba(X_test)
    b = AIVAClassifier(epochs=1, random_state=3).fit(X_train, y_train).predict_proba(X_test)
    c = AIVAClassifier(epochs=1, random_state=4).fit(X_train, y_train).predict_proba(X_test)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_partial_fit(digits) -> None:
    X_train, y_train, X_test, y_test = digits
    clf = AIVAClassifier(random_state=0)
    with pytest.raises(ValueError, match="classes must be given on the first call"):
        clf.partial_fit(X_train[:50], TOOLS[y_train[:50]])
    half = len(X_train) // 2
    clf.partial_fit(X_train[:half], TOOLS[y_train[:half]], classes=TOOLS)
    steps = clf.net_.optimizer.step
    for _ in range(3):
        clf.partial_fit(X_train[half:], TOOLS[y_train[half:]])
    assert clf.net_.optimizer.step > steps          # the same net, trained further
    assert clf.n_iter_ == 4 and len(clf.history_["loss"]) == 4
    assert clf.score(X_test, TOOLS[y_test]) > 0.8
    with pytest.raises(ValueError, match="labels not in classes_"):
        clf.partial_fit(X_train[:5], ["nmap", "curl", "nmap", "nmap", "nmap"])
    with pytest.raises(ValueError, match="classes must be the same"):
        clf.partial_fit(X_train[:5], TOOLS[y_train[:5]], classes=TOOLS[:3])
    with pytest.raises(ValueError, match="features"):
        clf.partial_fit(X_train[:5, :10], TOOLS[y_train[:5]])


def test_params_clone_and_pickle(digits) -> None:
    X_train, y_train, X_test, _ = digits
    clf = AIVAClassifier(hidden_size=32, spiking_size=16, epochs=1, random_state=0)
    params = clf.get_params()
    for name in ("hidden_size", "spiking_size", "threshold", "refractory_period",
                 "surrogate_slope", "epochs", "batch_size", "lr", "betas", "eps",
                 "weight_decay", "random_state", "precision", "device"):
        assert name in params, name
    assert clf.set_params(epochs=2, lr=5e-3) is clf
    assert (clf.epochs, clf.lr) == (2, 5e-3)
    twin = clone(clf)
    assert twin.get_params() == clf.get_params() and not hasattr(twin, "net_")
    clf.fit(X_train, y_train)
    again = pickle.loads(pickle.dumps(clf))
    assert np.array_equal(again.predict_proba(X_test), clf.predict_proba(X_test))


def test_unfitted_and_bad_parameters(digits) -> None:
    X_train, y_train, _, _ = digits
    with pytest.raises(NotFittedError):
        AIVAClassifier().predict(X_train)
    # Parameters are checked by AIVANet when fit builds the net, with its messages.
    with pytest.raises(ValueError, match="hidden_size"):
        AIVAClassifier(hidden_size=0).fit(X_train, y_train)
    with pytest.raises(ValueError, match="epochs"):
        AIVAClassifier(epochs=-1).fit(X_train, y_train)
    with pytest.raises(ValueError, match="Unknown label type"):
        AIVAClassifier().fit(X_train, y_train + 0.5)


def test_in_a_pipeline(digits) -> None:
    X_train, y_train, _, _ = digits
    pipe = make_pipeline(StandardScaler(), AIVAClassifier(epochs=3, random_state=0))
    scores = cross_val_score(pipe, X_train[:600], TOOLS[y_train[:600]], cv=3)
    assert scores.shape == (3,) and scores.min() > 0.6


def test_import_aiva_cy_does_not_import_sklearn() -> None:
    code = "import sys, aiva_cy; print('sklearn' in sys.modules, 'aiva_cy.sklearn' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]
