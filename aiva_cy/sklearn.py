"""A scikit-learn classifier around :class:`aiva_cy.AIVANet`: ``AIVAClassifier``.

    from aiva_cy.sklearn import AIVAClassifier
    clf = AIVAClassifier(epochs=5, random_state=0).fit(X, y)    # y: any labels, e.g. "nmap"
    clf.predict(X[:3]), clf.predict_proba(X[:3]), clf.score(X, y)

It needs scikit-learn (``pip install "aiva_cy[sklearn]"``); ``import aiva_cy`` does not
import this module or scikit-learn. Everything here goes through AIVANet's public API
(constructor, ``fit``, ``predict_proba``); the fitted net is ``clf.net_``.

Choices (where scikit-learn's conventions and AIVANet's differ):

* **Labels.** ``classes_`` holds the sorted distinct labels of ``y`` (strings such as tool
  names, integers, ...); the net's outputs are their indices, ``num_tools = len(classes_)``,
  and its ``tool_names`` their strings.
  One class is allowed: the net then has one output and predicts it with probability 1.
* **Inputs.** ``X`` is converted to float32 (the net's dtype); ``n_features_in_`` is its
  width and becomes the net's ``input_size``. Each row is one step from an empty state:
  ``predict_proba`` reads and changes no refractory state, so ``refractory_period`` has no
  effect here (it is kept so that ``net_`` is the net you would build yourself).
* **Probabilities** are float64 (scikit-learn's convention), the net's float32
  probabilities renormalised to sum to 1.
* **Defaults** are smaller than AIVANet's: ``hidden_size=128, spiking_size=64`` instead of
  2048 and 1024. An estimator is fitted many times on small tabular data (cross-validation,
  grid search, scikit-learn's own checks), and there the small net learns as well (94% on
  the bundled digits in 0.1 s, against 97% in seconds for AIVA's size). Pass
  ``hidden_size=2048, spiking_size=1024`` for the net AIVA runs.
* **random_state** seeds the initial weights and the shuffling of every epoch: the same
  ``random_state`` and data give the same net (on the same BLAS and thread count).
* **partial_fit** runs one epoch over the rows given; the first call needs ``classes``.
  ``fit`` always starts from a new net.
* **No sample_weight** here: scikit-learn's weight checks ask that all-ones weights give the
  same net as none, bit for bit, which a weighted mean does not promise in float32. For
  weighted rows, call ``AIVANet.fit(X, y, sample_weight=w)`` directly.
* **Tool names.** ``net_`` carries ``tool_names = [str(c) for c in classes_]`` (where those
  are distinct), so a saved ``net_`` still names its outputs.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

try:
    # validate_data arrived in scikit-learn 1.6: an older one fails here, with the hint below.
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as e:   # pragma: no cover - depends on what is installed
    raise ImportError(
        "aiva_cy.sklearn needs scikit-learn >= 1.6: pip install 'aiva_cy[sklearn]'") from e

from aiva_cy.net import AIVANet

__all__ = ["AIVAClassifier"]

_SEED_RANGE = 2**31 - 1


class AIVAClassifier(ClassifierMixin, BaseEstimator):
    """AIVANet as a scikit-learn classifier.

    Parameters mirror ``AIVANet(...)`` (hidden_size, spiking_size, threshold,
    refractory_period, surrogate_slope, precision, device, lr, betas, eps, weight_decay)
    and ``AIVANet.fit(...)`` (epochs, batch_size, shuffle, validation_split, patience,
    min_delta, restore_best_weights, verbose); ``random_state`` replaces both ``seed``
    arguments. They are checked when ``fit`` builds the net, with AIVANet's errors.

    Attributes (after ``fit``)
    --------------------------
    classes_ : ndarray of shape (n_classes,)
        The labels, sorted; ``predict`` returns them.
    n_features_in_ : int
        Features per row (the net's ``input_size``).
    feature_names_in_ : ndarray of str
        Column names, when ``X`` had them (a pandas DataFrame).
    net_ : AIVANet
        The trained net (``num_tools = len(classes_)``); save it with ``net_.save(path)``.
    history_ : dict of lists
        ``AIVANet.fit``'s history (loss and accuracy per epoch, plus validation entries),
        extended by every ``partial_fit``.
    n_iter_ : int
        Epochs run (``fit`` may stop early with ``patience``).
    """

    def __init__(self, hidden_size: int = 128, spiking_size: int = 64,
                 threshold: float = 0.5, refractory_period: int = 2,
                 surrogate_slope: float = 25.0, epochs: int = 10, batch_size: int = 32,
                 lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, shuffle: bool = True, validation_split: float = 0.0,
                 patience: Optional[int] = None, min_delta: float = 0.0,
                 restore_best_weights: bool = False, precision: str = "float32",
                 device: str = "cpu", verbose: int = 0, random_state: Any = None) -> None:
        # scikit-learn's rule: store the parameters as given; fit checks them.
        self.hidden_size = hidden_size
        self.spiking_size = spiking_size
        self.threshold = threshold
        self.refractory_period = refractory_period
        self.surrogate_slope = surrogate_slope
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.betas = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.shuffle = shuffle
        self.validation_split = validation_split
        self.patience = patience
        self.min_delta = min_delta
        self.restore_best_weights = restore_best_weights
        self.precision = precision
        self.device = device
        self.verbose = verbose
        self.random_state = random_state

    # -- fitting ---------------------------------------------------------------------------
    def fit(self, X: Any, y: Any) -> "AIVAClassifier":
        """Train a new net on (X, y) for ``epochs`` epochs (fewer with ``patience``)."""
        X, y = validate_data(self, X, y, dtype=np.float32, order="C")
        check_classification_targets(y)
        self.classes_, idx = np.unique(y, return_inverse=True)
        rng = check_random_state(self.random_state)
        self.net_ = self._new_net(X.shape[1], len(self.classes_), rng)
        self._rng = rng
        history = self.net_.fit(
            X, idx, epochs=self.epochs, batch_size=self.batch_size, shuffle=self.shuffle,
            seed=self._draw_seed(), validation_split=self.validation_split,
            patience=self.patience, min_delta=self.min_delta,
            restore_best_weights=self.restore_best_weights, verbose=self.verbose)
        self.history_: Dict[str, List[float]] = {k: list(v) for k, v in history.items()}
        self.n_iter_ = len(self.history_["loss"])
        return self

    def partial_fit(self, X: Any, y: Any, classes: Optional[Sequence[Any]] = None) -> "AIVAClassifier":
        """One epoch over (X, y). The first call builds the net and needs ``classes`` (all
        the labels there will be); later calls may omit it or must repeat the same."""
        first = not hasattr(self, "classes_")
        X, y = validate_data(self, X, y, dtype=np.float32, order="C", reset=first)
        check_classification_targets(y)
        if first:
            if classes is None:
                raise ValueError("classes must be given on the first call to partial_fit "
                                 "(all the labels there will be)")
            self.classes_ = np.unique(np.asarray(classes))
            rng = check_random_state(self.random_state)
            self.net_ = self._new_net(X.shape[1], len(self.classes_), rng)
            self._rng = rng
            self.history_ = {}
            self.n_iter_ = 0
        elif classes is not None and not np.array_equal(np.unique(np.asarray(classes)), self.classes_):
            raise ValueError(f"classes must be the same in every call to partial_fit: got "
                             f"{list(np.unique(np.asarray(classes)))}, first given "
                             f"{list(self.classes_)}")
        idx = self._indices(y)
        history = self.net_.fit(X, idx, epochs=1, batch_size=self.batch_size,
                                shuffle=self.shuffle, seed=self._draw_seed(), verbose=self.verbose)
        for key, values in history.items():
            self.history_.setdefault(key, []).extend(values)
        self.n_iter_ += 1
        return self

    def _new_net(self, n_features: int, n_classes: int, rng: np.random.RandomState) -> AIVANet:
        return AIVANet(n_features, n_classes, hidden_size=self.hidden_size,
                       spiking_size=self.spiking_size, threshold=self.threshold,
                       refractory_period=self.refractory_period,
                       surrogate_slope=self.surrogate_slope,
                       seed=int(rng.randint(_SEED_RANGE)), device=self.device,
                       precision=self.precision, lr=self.lr, betas=self.betas, eps=self.eps,
                       weight_decay=self.weight_decay, tool_names=self._tool_names())

    def _tool_names(self) -> Optional[List[str]]:
        """classes_ as the net's tool_names (``net_.decide(x, names=True)`` names the class),
        where their strings are distinct and non-empty."""
        names = [str(c) for c in self.classes_]
        return names if len(set(names)) == len(names) and all(names) else None

    def _draw_seed(self) -> int:
        return int(self._rng.randint(_SEED_RANGE))

    def _indices(self, y: np.ndarray) -> np.ndarray:
        """Positions of y's labels in classes_; a label the net has no output for is an error."""
        pos = np.searchsorted(self.classes_, y)
        pos = np.minimum(pos, len(self.classes_) - 1)
        unknown = self.classes_[pos] != y
        if np.any(unknown):
            raise ValueError(f"y holds labels not in classes_ {list(self.classes_)}: "
                             f"{list(np.unique(np.asarray(y)[unknown]))[:10]}")
        return pos.astype(np.int64)

    # -- prediction ------------------------------------------------------------------------
    def predict_proba(self, X: Any) -> np.ndarray:
        """(n_samples, n_classes) float64 probabilities, columns in the order of ``classes_``."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float32, order="C", reset=False)
        p = np.asarray(self.net_.predict_proba(X), dtype=np.float64)
        p /= p.sum(axis=1, keepdims=True)
        return p

    def predict(self, X: Any) -> np.ndarray:
        """The most probable label of each row (the first of ``classes_`` on a tie)."""
        proba = self.predict_proba(X)      # first: it checks that the net was fitted
        return self.classes_[np.argmax(proba, axis=1)]

