"""Tests for aiva_cy.datasets.load_digits."""

from __future__ import annotations

import numpy as np
import pytest

from aiva_cy.datasets import load_digits

N = 1797
CLASS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def _row_keys(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Map each (image, label) row back to its index in the full data set."""
    X_all, y_all = load_digits(scaled=False)
    lookup: dict[bytes, list[int]] = {}
    for i, row in enumerate(np.column_stack([X_all, y_all])):
        lookup.setdefault(row.tobytes(), []).append(i)
    # Duplicate images exist; pop in order so each index is used at most once.
    return np.array(
        [lookup[row.tobytes()].pop(0) for row in np.column_stack([X * 16, y])]
    )


def test_full_shapes_dtypes_ranges() -> None:
    X, y = load_digits()
    assert X.shape == (N, 64) and X.dtype == np.float32
    assert y.shape == (N,) and y.dtype == np.int64
    assert X.min() == 0.0 and X.max() == 1.0
    assert np.bincount(y, minlength=10).tolist() == CLASS_COUNTS


def test_unscaled_is_integer_counts() -> None:
    X_raw, y_raw = load_digits(scaled=False)
    X, y = load_digits()
    assert X_raw.dtype == np.float32
    assert X_raw.min() == 0.0 and X_raw.max() == 16.0
    assert np.array_equal(X_raw, np.round(X_raw))
    np.testing.assert_array_equal(X_raw / 16.0, X)
    np.testing.assert_array_equal(y_raw, y)


def test_returns_fresh_writable_arrays() -> None:
    X, y = load_digits()
    X[0, 0] = 99.0
    y[0] = 99
    X2, y2 = load_digits()
    assert X2[0, 0] != 99.0 and y2[0] != 99


@pytest.mark.parametrize("test_size", [0.2, 0.5, 0.33])
def test_split_disjoint_cover_and_sorted(test_size: float) -> None:
    X_tr, y_tr = load_digits(split="train", test_size=test_size)
    X_te, y_te = load_digits(split="test", test_size=test_size)
    assert X_tr.shape[1] == X_te.shape[1] == 64
    assert len(X_tr) + len(X_te) == N
    idx_tr, idx_te = _row_keys(X_tr, y_tr), _row_keys(X_te, y_te)
    assert np.all(np.diff(idx_tr) > 0) and np.all(np.diff(idx_te) > 0)
    assert np.intersect1d(idx_tr, idx_te).size == 0
    assert np.array_equal(np.union1d(idx_tr, idx_te), np.arange(N))


@pytest.mark.parametrize("test_size", [0.1, 0.2, 0.25, 0.5, 0.9])
def test_split_is_stratified(test_size: float) -> None:
    _, y_tr = load_digits(split="train", test_size=test_size, seed=3)
    _, y_te = load_digits(split="test", test_size=test_size, seed=3)
    n_te = np.bincount(y_te, minlength=10)
    n_tr = np.bincount(y_tr, minlength=10)
    assert (n_te + n_tr).tolist() == CLASS_COUNTS
    for label, count in enumerate(CLASS_COUNTS):
        assert n_te[label] > 0 and n_tr[label] > 0
        assert abs(n_te[label] - test_size * count) <= 1


def test_default_split_sizes() -> None:
    assert len(load_digits(split="train")[1]) == 1438
    assert len(load_digits(split="test")[1]) == 359


def test_split_deterministic_for_same_seed() -> None:
    for split in ("train", "test"):
        X1, y1 = load_digits(split=split, seed=7)
        X2, y2 = load_digits(split=split, seed=7)
        np.testing.assert_array_equal(X1, X2)
        np.testing.assert_array_equal(y1, y2)


def test_different_seeds_differ() -> None:
    X0, y0 = load_digits(split="test", seed=0)
    X1, y1 = load_digits(split="test", seed=1)
    assert X0.shape == X1.shape  # per-class sizes do not depend on the seed
    assert not np.array_equal(_row_keys(X0, y0), _row_keys(X1, y1))


@pytest.mark.parametrize("split", ["val", "TRAIN", "", "all"])
def test_bad_split_value(split: str) -> None:
    with pytest.raises(ValueError, match="split"):
        load_digits(split=split)  # type: ignore[arg-type]


@pytest.mark.parametrize("split", [0, 1.0, ["train"]])
def test_bad_split_type(split: object) -> None:
    with pytest.raises(TypeError, match="split"):
        load_digits(split=split)  # type: ignore[arg-type]


@pytest.mark.parametrize("test_size", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_bad_test_size_value(test_size: float) -> None:
    with pytest.raises(ValueError, match="test_size"):
        load_digits(split="train", test_size=test_size)


@pytest.mark.parametrize("test_size", ["0.2", None, True])
def test_bad_test_size_type(test_size: object) -> None:
    with pytest.raises(TypeError, match="test_size"):
        load_digits(split="test", test_size=test_size)  # type: ignore[arg-type]


def test_bad_seed_and_scaled() -> None:
    with pytest.raises(TypeError, match="seed"):
        load_digits(split="train", seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed"):
        load_digits(split="train", seed=-1)
    with pytest.raises(TypeError, match="scaled"):
        load_digits(scaled=1)  # type: ignore[arg-type]


def test_arguments_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        load_digits("train")  # type: ignore[misc]


def test_matches_scikit_learn() -> None:
    sk_datasets = pytest.importorskip("sklearn.datasets")
    ref = sk_datasets.load_digits()
    X, y = load_digits(scaled=False)
    np.testing.assert_array_equal(X, ref.data)
    np.testing.assert_array_equal(y, ref.target)
    expected = (ref.data / 16.0).astype(np.float32)
    np.testing.assert_array_equal(load_digits()[0], expected)


def test_split_matches_documented_algorithm() -> None:
    _, y_all = load_digits()
    rng = np.random.default_rng(5)
    expected_test = []
    for label in range(10):
        members = rng.permutation(np.flatnonzero(y_all == label))
        expected_test.extend(members[: round(0.3 * members.size)].tolist())
    expected_test_idx = np.sort(np.array(expected_test))
    X_te, y_te = load_digits(split="test", test_size=0.3, seed=5)
    np.testing.assert_array_equal(_row_keys(X_te, y_te), expected_test_idx)
