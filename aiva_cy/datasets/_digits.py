"""Loader for the bundled UCI optical handwritten digits data set."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from numbers import Real
from typing import Literal, Optional

import numpy as np
from numpy.typing import NDArray

__all__ = ["load_digits"]

_DATA_FILE = "digits.npz"
_N_SAMPLES = 1797
_N_FEATURES = 64
_N_CLASSES = 10


@lru_cache(maxsize=1)
def _load_raw() -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    """Read ``data/digits.npz`` once; returned arrays are read-only."""
    resource = resources.files(__package__) / "data" / _DATA_FILE
    with resource.open("rb") as fh, np.load(fh, allow_pickle=False) as npz:
        images = np.asarray(npz["images"], dtype=np.uint8)
        target = np.asarray(npz["target"], dtype=np.uint8)
    if images.shape != (_N_SAMPLES, _N_FEATURES) or target.shape != (_N_SAMPLES,):
        raise RuntimeError(
            f"corrupt {_DATA_FILE}: images {images.shape}, target {target.shape}"
        )
    images.setflags(write=False)
    target.setflags(write=False)
    return images, target


def _split_indices(
    target: NDArray[np.integer], test_size: float, seed: int
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Stratified (train, test) row indices, each sorted ascending."""
    rng = np.random.default_rng(seed)
    test_parts = []
    for label in range(_N_CLASSES):
        members = rng.permutation(np.flatnonzero(target == label))
        test_parts.append(members[: int(round(test_size * members.size))])
    is_test = np.zeros(target.size, dtype=bool)
    is_test[np.concatenate(test_parts)] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def load_digits(
    *,
    split: Optional[Literal["train", "test"]] = None,
    scaled: bool = True,
    test_size: float = 0.2,
    seed: int = 0,
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Load the UCI optical handwritten digits data set (8x8 images, 10 classes).

    The data are the 1,797 test-set images of "Optical Recognition of
    Handwritten Digits" from the UCI Machine Learning Repository
    (E. Alpaydin and C. Kaynak, 1998), exactly as scikit-learn distributes
    them in ``sklearn/datasets/data/digits.csv.gz``. Each image is an 8x8
    grid of counts 0..16 (on-pixels per 4x4 block of a 32x32 bitmap),
    flattened row by row to 64 features. The UCI data set is licensed under
    Creative Commons Attribution 4.0 (CC BY 4.0); cite
    Alpaydin, E. & Kaynak, C. (1998), https://doi.org/10.24432/C50P49.
    See ``aiva_cy/datasets/data/README.md`` for provenance.

    Parameters
    ----------
    split : {None, "train", "test"}, keyword-only
        ``None`` returns all 1,797 rows in file order. ``"train"`` or
        ``"test"`` returns one side of a deterministic stratified split: for
        each class 0..9 in turn, its row indices are shuffled by a single
        ``numpy.random.default_rng(seed)`` and ``round(test_size * count)``
        of them go to the test set. Rows are returned sorted by original
        index; train and test are disjoint and together cover all rows.
    scaled : bool, default True
        If True, divide pixel counts by 16 so that X lies in [0, 1];
        otherwise return the raw counts 0..16 (still as float32).
    test_size : float, default 0.2
        Fraction of each class put in the test set; must lie in (0, 1).
        Ignored when ``split`` is None (but still validated).
    seed : int, default 0
        Seed of the split's random generator.

    Returns
    -------
    X : numpy.ndarray, float32, shape (n, 64)
    y : numpy.ndarray, int64, shape (n,), labels 0..9

    Here ``n`` is 1797 for ``split=None`` and 1438 (train) / 359 (test) with
    the default ``test_size`` and any seed (per-class sizes do not depend on
    the seed; Python's ``round`` rounds halves to even).

    Raises
    ------
    TypeError
        If ``split``, ``scaled``, ``test_size`` or ``seed`` has a wrong type.
    ValueError
        If ``split`` is not None, "train" or "test", or ``test_size`` is not
        strictly between 0 and 1, or ``seed`` is negative.
    """
    if split is not None and not isinstance(split, str):
        raise TypeError(
            f"split must be None, 'train' or 'test', got {type(split).__name__}"
        )
    if split not in (None, "train", "test"):
        raise ValueError(f"split must be None, 'train' or 'test', got {split!r}")
    if not isinstance(scaled, (bool, np.bool_)):
        raise TypeError(f"scaled must be a bool, got {type(scaled).__name__}")
    if isinstance(test_size, (bool, np.bool_)) or not isinstance(test_size, Real):
        raise TypeError(f"test_size must be a float, got {type(test_size).__name__}")
    if not 0.0 < float(test_size) < 1.0:
        raise ValueError(
            f"test_size must be in the open interval (0, 1), got {test_size!r}"
        )
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed!r}")

    images, target = _load_raw()
    if split is not None:
        train_idx, test_idx = _split_indices(target, float(test_size), int(seed))
        rows = train_idx if split == "train" else test_idx
        images, target = images[rows], target[rows]

    X = images.astype(np.float32)
    if scaled:
        X /= np.float32(16.0)
    return X, target.astype(np.int64)
