"""The BLAS entry points the C core calls, one library at a time: every BLAS the loader can
pick that is installed here (NumPy's own OpenBLAS through its ILP64 entry points;
scipy-openblas32, scipy's cython_blas and MKL through their LP64 ones), opened by the
loader's own rules (aiva_cy._blas._BlasTable) and called through its table's function
pointers, for every transpose and memory order, against NumPy in float64.

Tolerance: the float32 error bound of a dot product of K terms, scaled and added to
beta * c, |computed - exact| <= gamma_{K+2} (|alpha| |op(a)| |op(b)| + |beta| |c|) with
gamma_n = n u / (1 - n u), u = 2**-24 (Higham, "Accuracy and Stability of Numerical
Algorithms", 3.5).  It holds for any summation order and with or without FMA; a wrong
flag, leading dimension or operand order misses it by orders of magnitude."""
import itertools

import numpy as np
import pytest

import aiva_cy
from aiva_cy._blas import _BlasTable

U = 2.0 ** -24
PROVIDERS = ("numpy", "openblas32", "scipy", "mkl")
# (m, n, k) of c (m, n) = op(a) (m, k) @ op(b) (k, n): single rows and columns, K = 1, odd
# sizes on both sides of the BLAS kernels' blocking.
GEMM_SHAPES = [(1, 1, 1), (1, 20, 33), (7, 1, 5), (33, 7, 64), (64, 33, 7), (1, 257, 130)]
# (rows, cols) of op(a) in y (rows) = op(a) @ x (cols)
GEMV_SHAPES = [(1, 1), (1, 33), (7, 1), (33, 64), (64, 7), (257, 130)]
COEFFS = [(1.0, 0.0), (-1.5, 0.25)]   # what the core passes, and a general pair


def gamma(n):
    return n * U / (1.0 - n * U)


@pytest.fixture(scope="module", params=PROVIDERS)
def table(request):
    try:
        return _BlasTable(request.param)
    except ImportError as exc:
        pytest.skip(f"{request.param} is not installed here: {exc}")


def matrix(rng, shape, order, padded=False):
    """A float32 matrix in C or F order; padded: a view whose leading dimension is larger
    than its rows (F) or columns (C), as a BLAS operand may have."""
    r, c = shape
    if not padded:
        return np.asarray(rng.standard_normal(shape), dtype=np.float32, order=order)
    big = np.asarray(rng.standard_normal((r + 3, c + 5)), dtype=np.float32, order=order)
    return big[1:r + 1, 2:c + 2]


def op(a, trans):
    return a.T if trans == "T" else a


def check(got, exact, scale, k, what):
    err = np.abs(got.astype(np.float64) - exact)
    bound = gamma(k + 2) * scale
    assert np.isfinite(got).all(), what
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert (err <= bound).all(), (f"{what}: error {err[worst]:.3g} over the bound "
                                  f"{bound[worst]:.3g} at {worst}")


def test_each_table_reports_its_integer_width(table):
    # NumPy's wheels carry an ILP64 OpenBLAS; the loader opens the others' LP64 symbols.
    assert table.ilp64 is table.info["ilp64"]
    assert table.ilp64 is (table.info["provider"] == "numpy")


def test_the_loaders_table_is_the_one_blas_info_names():
    loaded = _BlasTable()
    info = aiva_cy.blas_info()
    assert {k: info[k] for k in ("provider", "path", "ilp64")} == \
        {k: loaded.info[k] for k in ("provider", "path", "ilp64")}
    assert loaded.ilp64 is info["ilp64"]


@pytest.mark.parametrize("order_a, order_b, order_c", list(itertools.product("CF", repeat=3)))
@pytest.mark.parametrize("transa, transb", list(itertools.product("NT", repeat=2)))
def test_sgemm_matches_float64(table, transa, transb, order_a, order_b, order_c):
    rng = np.random.default_rng(0)
    for (m, n, k), (alpha, beta), padded in itertools.product(GEMM_SHAPES, COEFFS,
                                                              (False, True)):
        a = matrix(rng, (k, m) if transa == "T" else (m, k), order_a, padded)
        b = matrix(rng, (n, k) if transb == "T" else (k, n), order_b, padded)
        c = matrix(rng, (m, n), order_c, padded)
        if beta == 0.0:
            c[...] = np.nan   # beta = 0: c is not read (the C core's buffers rely on it)
        c0 = np.where(np.isnan(c), 0.0, c).astype(np.float64)
        A, B = op(a, transa).astype(np.float64), op(b, transb).astype(np.float64)
        exact = alpha * (A @ B) + beta * c0
        scale = abs(alpha) * (np.abs(A) @ np.abs(B)) + abs(beta) * np.abs(c0)
        table.sgemm(transa, transb, alpha, a, b, beta, c)
        check(c, exact, scale, k, f"sgemm {transa}{transb} m={m} n={n} k={k} "
                                  f"alpha={alpha} beta={beta} padded={padded}")


@pytest.mark.parametrize("order_a", "CF")
@pytest.mark.parametrize("trans", "NT")
def test_sgemv_matches_float64(table, trans, order_a):
    rng = np.random.default_rng(1)
    for (rows, cols), (alpha, beta), step in itertools.product(GEMV_SHAPES, COEFFS, (1, 3)):
        a = matrix(rng, (cols, rows) if trans == "T" else (rows, cols), order_a, step > 1)
        # step 3: x and y every third float, as the core's single-row product reads a row
        # of a transposed operand with its leading dimension as the increment
        x = rng.standard_normal(cols * step).astype(np.float32)[::step]
        y = rng.standard_normal(rows * step).astype(np.float32)[::step]
        if beta == 0.0:
            y[...] = np.nan
        y0 = np.where(np.isnan(y), 0.0, y).astype(np.float64)
        A = op(a, trans).astype(np.float64)
        exact = alpha * (A @ x.astype(np.float64)) + beta * y0
        scale = abs(alpha) * (np.abs(A) @ np.abs(x.astype(np.float64))) + abs(beta) * np.abs(y0)
        table.sgemv(trans, alpha, a, x, beta, y)
        check(y, exact, scale, cols, f"sgemv {trans} rows={rows} cols={cols} alpha={alpha} "
                                     f"beta={beta} step={step}")


def test_an_lp64_table_refuses_a_size_past_32_bits(table):
    if table.ilp64:
        pytest.skip("64-bit integers: the size is passed as it is (and this view would be read)")
    base = np.zeros(4, np.float32)
    # A 2x2 column-major view whose columns lie 2**31 floats apart: a leading dimension
    # that a 32-bit int cannot hold.  Refused before the BLAS is called (nothing is read).
    a = np.lib.stride_tricks.as_strided(base, shape=(2, 2), strides=(4, 4 * 2**31))
    b = np.ones((2, 2), np.float32)
    c = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match="32-bit"):
        table.sgemm("N", "N", 1.0, a, b, 0.0, c)
    with pytest.raises(ValueError, match="32-bit"):
        table.sgemv("N", 1.0, a, np.ones(2, np.float32), 0.0, np.zeros(2, np.float32))


def test_bad_arguments_are_clear_errors():
    t = _BlasTable()
    a, b, c = (np.ones((2, 3), np.float32), np.ones((3, 4), np.float32),
               np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="transa must be 'N' or 'T', got 'X'"):
        t.sgemm("X", "N", 1.0, a, b, 0.0, c)
    with pytest.raises(ValueError, match=r"c must be \(2, 4\)"):
        t.sgemm("N", "N", 1.0, a, b, 0.0, np.ones((4, 2), np.float32))
    with pytest.raises(ValueError, match=r"\(2, 3\) and op\(b\) \(4, 3\)"):
        t.sgemm("N", "T", 1.0, a, b, 0.0, c)
    with pytest.raises(ValueError, match="b must be row- or column-major"):
        t.sgemm("N", "N", 1.0, a, np.ones((6, 8), np.float32)[::2, ::2], 0.0, c)
    with pytest.raises(ValueError, match="a must have at least one row"):
        t.sgemm("N", "N", 1.0, np.ones((2, 0), np.float32), np.ones((0, 4), np.float32), 0.0, c)
    with pytest.raises(ValueError, match="x must have 3 elements and y 2"):
        t.sgemv("N", 1.0, a, np.ones(2, np.float32), 0.0, np.ones(2, np.float32))
    with pytest.raises(ValueError, match="x must have a positive stride"):
        t.sgemv("N", 1.0, a, np.ones(3, np.float32)[::-1], 0.0, np.ones(2, np.float32))
    with pytest.raises(ValueError, match="provider must be None or one of"):
        _BlasTable("openblas")
