# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The libraries that the C core calls: the float32 BLAS, found by path and opened with dlopen
(importing scipy.linalg to reach cython_blas would cost more start-up than the whole NumPy
BioNeuron: benchmarks/README.md, "Figures behind design choices"), and the reduced-precision
provider (oneDNN, :mod:`aiva_cy._lowp`), opened on the first net that asks for bfloat16 or
int8.  Fills the tables that :mod:`aiva_cy._core` cimports, says which precision runs where
(:func:`require_precision`, :func:`resolve_precision`) and reports it all
(:func:`blas_info`).

:class:`_BlasTable` is for the tests: a table opened by the same rules for any provider, whose
``sgemm`` and ``sgemv`` call the table's entry points (LP64 or ILP64) directly."""
from cpython.pycapsule cimport PyCapsule_GetName, PyCapsule_GetPointer
from libc.stdint cimport INT32_MAX
from libc.string cimport memset

import os
import threading

import numpy as np

from aiva_cy._lowp cimport fill_table
from aiva_cy._model import PRECISION_EXTRA

cdef extern from "aiva_core.h" nogil:
    int aiva_blas_open(const char *path, const char *prefix, const char *suffix, int ilp64,
                       aiva_blas *out)
    int aiva_mkl_open(const char *path, int threading_layer, aiva_blas *out)

# ---------------------------------------------------------------------------------------
# In order of preference:
#   numpy     the OpenBLAS inside NumPy's own wheel (ILP64): already loaded by `import numpy`,
#             so no second library to initialise and no second pool of worker threads
#             competing for the cores with NumPy's (NumPy 2 names its symbols scipy_sgemm_64_,
#             NumPy 1.x wheels sgemm_64_);
#   openblas32  the scipy-openblas32 wheel (a dependency only where NumPy's wheel may carry no
#             OpenBLAS we can find, see pyproject.toml; also the fallback for e.g. conda's);
#   scipy     scipy.linalg.cython_blas.
#   mkl       Intel MKL (the `mkl` wheel: `pip install "aiva_cy[mkl]"`), only when asked for
#             with AIVA_CY_BLAS=mkl.  Then float32 inference uses weights pre-packed by MKL.
# AIVA_CY_BLAS=numpy|openblas32|scipy|mkl forces one.
#
# MKL is not the automatic float32 choice: at batch 1, AIVA's one decision at a time, its
# float32 products are slower than OpenBLAS's gemv, opening it adds to the start-up (the
# dispatcher loads libmkl_core and a CPU-specific kernel library), and it brings a second
# pool of worker threads beside NumPy's OpenBLAS (the figures: benchmarks/README.md).  It is
# faster at batch 256 (pre-packed), so AIVA_CY_BLAS=mkl is there for batch work.  Reduced
# precision is not MKL's either: its bf16 products choose their kernels by CPU vendor and ran
# MKL's generic path on the AMD Zen 5 development machine, 6x slower than float32 at batch 1
# (benchmarks/README.md); oneDNN's choose by instruction set (below).
# ---------------------------------------------------------------------------------------
cdef aiva_blas _blas
_blas_info = {}
_PROVIDERS = ("numpy", "openblas32", "scipy", "mkl")

cdef aiva_blas _mkl          # MKL's table (filled by open_mkl): AIVA_CY_BLAS=mkl, and the
                             # benchmark's MKL floors
cdef bint _mkl_open = False
_mkl_info = {}
_mkl_lock = threading.Lock()
MKL_EXTRA = 'pip install "aiva_cy[mkl]"'

# MKL_THREADING_* values of mkl_service.h.  The layer is TBB, found next to MKL (the `mkl`
# wheel depends on `tbb`), else sequential; never MKL's default, Intel OpenMP, because:
# - correctness: with a GNU OpenMP already loaded into the global symbol scope (PyTorch's
#   libgomp, for one), libmkl_intel_thread's omp_* calls bind to it while libiomp5 runs the
#   threads, and products come out wrong, differently from run to run (the loss of a
#   default-size step anywhere from 21 to 38 instead of 35.2 after `import torch`);
# - speed: TBB was the fastest of the three for MKL's products at batch 1, and as fast as
#   sequential at batch 256 (benchmarks/README.md);
# - sharing the cores: TBB's idle workers block after a short spin, where Intel OpenMP's
#   spin for 200 ms (KMP_BLOCKTIME) on the core NumPy's OpenBLAS pool needs next.
# A user's MKL_THREADING_LAYER wins.
_MKL_THREADING = {"intel": 0, "sequential": 1, "gnu": 3, "tbb": 4}
_tbb_library = None          # kept loaded: MKL's TBB layer resolves against it


cdef aiva_blas *float32_table() noexcept nogil:
    return &_blas


cdef aiva_blas *mkl_table() noexcept nogil:
    return &_mkl


def _preload_tbb(mkl_path):
    """Load libtbb by path (the loader would not find it in a virtual environment's lib/), so
    that MKL's TBB layer links to it.  True if it could."""
    global _tbb_library
    import ctypes
    import glob
    folder = os.path.dirname(mkl_path)
    for name in sorted(glob.glob(os.path.join(folder, "libtbb.so.*"))
                       + glob.glob(os.path.join(folder, "libtbb*.dylib"))
                       + glob.glob(os.path.join(folder, "tbb12*.dll"))):
        if "malloc" in name or "bind" in name:
            continue
        try:
            _tbb_library = ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def _mkl_path():
    """libmkl_rt of the installed `mkl` distribution (its file list), else under sys.prefix."""
    import glob
    import re
    import sys
    pattern = re.compile(r"^(lib)?mkl_rt(\.\d+)*\.(so|dylib|dll)(\.\d+)*$")
    try:
        from importlib import metadata
        files = metadata.distribution("mkl").files or ()
    except Exception:   # not installed, or metadata unreadable
        files = ()
    found = sorted(os.path.normpath(str(f.locate())) for f in files if pattern.match(f.name))
    found = [f for f in found if os.path.exists(f)]
    if not found:
        for where in ("lib", os.path.join("Library", "bin")):
            found = sorted(f for f in glob.glob(os.path.join(sys.prefix, where, "*mkl_rt*"))
                           if pattern.match(os.path.basename(f)))
            if found:
                break
    return max(found) if found else None


cdef int open_mkl() except -1:
    """Open MKL into _mkl once; raise ImportError (saying what to install) if it cannot be."""
    global _mkl_open
    if _mkl_open:
        return 0
    with _mkl_lock:
        if _mkl_open:
            return 0
        path = _mkl_path()
        if path is None:
            raise ImportError(f"MKL is not installed; install it with: {MKL_EXTRA}")
        if "MKL_THREADING_LAYER" in os.environ:
            layer_name = os.environ["MKL_THREADING_LAYER"].lower()
            layer = -1
        else:
            layer_name = "tbb" if _preload_tbb(path) else "sequential"
            layer = _MKL_THREADING[layer_name]
        if aiva_mkl_open(os.fsencode(path), layer, &_mkl) != 0:
            raise ImportError(f"{path} could not be opened as MKL (or its interface is fixed "
                              f"to ILP64); reinstall it with: {MKL_EXTRA}")
        _mkl_info.update(provider="mkl", path=path, ilp64=False, threading_layer=layer_name)
        _mkl_open = True
    return 0


# ---------------------------------------------------------------------------------------
# Reduced precision: oneDNN (aiva_cy._lowp, `pip install "aiva_cy[precision]"`), opened on
# the first net that asks for bfloat16 or int8.  It chooses kernels by instruction set
# (AVX512-BF16, VNNI, AMX), not by vendor; its products take the provider slots of this
# table, and the float32 slots stay the float32 BLAS's (the backward of a bf16 step is bf16
# too, but Adam and every elementwise pass are float32 as ever).
# ---------------------------------------------------------------------------------------
cdef aiva_blas _lowp_blas
cdef bint _lowp_open = False


cdef aiva_blas *lowp_table() noexcept nogil:
    return &_lowp_blas


cdef int open_lowp() except -1:
    """Open the provider into lowp_table() once (ImportError naming what to install where
    it cannot be)."""
    global _lowp_open, _lowp_blas
    if _lowp_open:
        return 0
    from aiva_cy import _lowp
    # oneDNN's OpenMP pool follows the float32 BLAS's thread count (the budget of
    # aiva_cy._threads, written into that library per call): one budget for both.
    _lowp.open_provider(_blas_info.get("path") if _blas_info.get("provider") in
                        ("numpy", "scipy-openblas32", "mkl") else None)
    cdef aiva_blas table
    memset(&table, 0, sizeof(table))
    table.sgemm, table.sgemv, table.sgemm64, table.sgemv64 = \
        _blas.sgemm, _blas.sgemv, _blas.sgemm64, _blas.sgemv64
    fill_table(&table)
    _lowp_blas = table
    _lowp_open = True
    return 0


def require_precision(str precision):
    """Raise a clear error unless `precision` ("float32", "bfloat16" or "int8") runs natively
    here: ImportError naming what to install, RuntimeError naming what the CPU lacks."""
    if precision in ("bfloat16", "int8"):
        open_lowp()
        from aiva_cy import _lowp
        _lowp.require(precision)


def resolve_precision(str precision):
    """The precision a net asking for `precision` runs: "auto" is bfloat16 where the CPU has
    native bf16 products (AVX512-BF16 or AMX), else float32; the others are themselves.
    Not int8, although it is faster: on a default-size net trained on hard clustered data
    int8 changed more decisions than the 0.5% the project allows (the README, "Reduced
    precision"), so int8 is for who has checked it on their own data."""
    if precision != "auto":
        return precision
    try:
        open_lowp()
        from aiva_cy import _lowp
        return "bfloat16" if _lowp.info()["bf16"] else "float32"
    except (ImportError, RuntimeError):
        return "float32"


def _numpy_openblas_path(prefix="libscipy_openblas64_"):
    libdir = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    try:
        names = sorted(n for n in os.listdir(libdir) if n.startswith(prefix))
    except OSError:
        return None
    return os.path.join(libdir, names[0]) if names else None


def _openblas32_path():
    import importlib.util
    spec = importlib.util.find_spec("scipy_openblas32")
    if spec is None or not spec.submodule_search_locations:
        return None
    libdir = os.path.join(list(spec.submodule_search_locations)[0], "lib")
    try:
        names = sorted(n for n in os.listdir(libdir)
                       if n.startswith("libscipy_openblas")
                       and os.path.splitext(n)[1] in (".so", ".dylib", ".dll"))
    except OSError:
        return None
    return os.path.join(libdir, names[0]) if names else None


cdef void *_capsule_pointer(object capi, str name) except NULL:
    cap = capi[name]
    return PyCapsule_GetPointer(cap, PyCapsule_GetName(cap))


cdef bint _open_path(aiva_blas *out, dict info, str provider, object path, bytes suffix,
                     int ilp64, bytes prefix=b"scipy_"):
    cdef aiva_blas found
    if path is None or aiva_blas_open(os.fsencode(path), prefix, suffix, ilp64, &found) != 0:
        return False
    out[0] = found
    info.update(provider=provider, path=path, ilp64=bool(ilp64))
    return True


cdef int _open_provider(str choice, aiva_blas *out, dict info) except -1:
    """Fill out and info with the BLAS `choice` ("auto" or one of _PROVIDERS) names, by the
    order of preference above; ImportError if there is none."""
    if choice == "mkl":
        try:
            open_mkl()
        except ImportError as exc:
            raise ImportError(f"AIVA_CY_BLAS=mkl: {exc}") from None
        out[0] = _mkl
        info.update(_mkl_info)
        return 0
    if choice in ("auto", "numpy") and _open_path(out, info, "numpy", _numpy_openblas_path(),
                                                  b"_64_", 1):
        return 0
    if choice in ("auto", "numpy") and _open_path(out, info, "numpy",
                                                  _numpy_openblas_path("libopenblas64_"),
                                                  b"_64_", 1, b""):
        return 0
    if choice in ("auto", "openblas32") and _open_path(out, info, "scipy-openblas32",
                                                       _openblas32_path(), b"_", 0):
        return 0
    if choice not in ("auto", "scipy"):
        raise ImportError(f"AIVA_CY_BLAS={choice}: that BLAS library could not be found or "
                          f"opened")
    try:
        from scipy.linalg import cython_blas
    except ImportError:
        raise ImportError("aiva_cy needs a BLAS: install scipy-openblas32 or scipy") from None
    capi = cython_blas.__pyx_capi__
    memset(out, 0, sizeof(aiva_blas))
    out.sgemm = <aiva_sgemm_fn>_capsule_pointer(capi, "sgemm")
    out.sgemv = <aiva_sgemv_fn>_capsule_pointer(capi, "sgemv")
    info.update(provider="scipy.linalg.cython_blas", path=cython_blas.__file__, ilp64=False)
    return 0


cdef int _load_blas() except -1:
    choice = os.environ.get("AIVA_CY_BLAS", "auto").lower()
    if choice not in ("auto",) + _PROVIDERS:
        raise ImportError(f"AIVA_CY_BLAS must be 'auto', 'numpy', 'openblas32', 'scipy' or "
                          f"'mkl', got {choice!r}")
    return _open_provider(choice, &_blas, _blas_info)


_load_blas()


def _cpu_level():
    from aiva_cy import _kernel
    return _kernel.describe("", None)["cpu_level"]


def _float32_entry(dict info):
    return {"available": True, "native": True, "library": info["provider"],
            "path": info["path"], "kernel": info.get("kernel"),
            "kernel_forced_by": info.get("kernel_forced_by")}


def _reduced_entry(str precision):
    """blas_info()'s entry for bfloat16 or int8 (opens the provider)."""
    # What the CPU itself has, said even where the provider is missing (None: unknown).
    from aiva_cy import _kernel
    native = _kernel.has_native(precision)
    try:
        require_precision(precision)
    except (ImportError, RuntimeError) as exc:
        return {"available": False, "native": native, "missing": str(exc)}
    from aiva_cy import _lowp
    lib = _lowp.info()
    forced = [f"{k}={os.environ[k]}" for k in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
              if os.environ.get(k)]
    entry = {"available": True,
             "native": lib["bf16"] if precision == "bfloat16" else lib["vnni"],
             "library": "oneDNN", "version": lib["version"], "path": lib["path"],
             # oneDNN's name for the instructions it dispatches to, e.g. avx512_core_bf16
             "kernel": lib["isa"], "kernel_forced_by": ", ".join(forced) or None,
             "kernel_older_than_cpu": bool(forced), "cpu_level": _cpu_level(),
             "threads": lib["threads"], "threads_follow_blas": lib["threads_follow_blas"],
             "omp_wait_policy": lib["omp_wait_policy"]}
    if precision == "int8":
        entry["activation_bits"] = 8 if lib["vnni"] else 7
    return entry


def blas_info():
    """Which libraries the C core calls, and what each precision runs here.

    The float32 BLAS at the top level (kept as it always was): ``provider``, ``path``,
    ``ilp64``, and the kernel it runs: ``kernel`` (the library's own name, e.g. OpenBLAS's
    core type "SkylakeX", or MKL's code path), ``kernel_config``, ``kernel_forced_by`` (an
    environment variable such as OPENBLAS_CORETYPE that chose it, or None),
    ``kernel_older_than_cpu`` and ``cpu_level`` (the best this CPU can run).

    ``"precisions"``: one entry per precision, ``{"float32": ..., "bfloat16": ...,
    "int8": ...}``, each with ``available`` (asking for it works here), ``native`` (the CPU
    has the instructions: AVX512-BF16 or AMX for bfloat16, VNNI or AMX for int8) and either
    ``library``, ``path`` and ``kernel`` (for bfloat16 and int8: oneDNN, opened by this
    call, and the instruction set it dispatches to) or ``missing``: why not, and what to
    install.  ``"precision_auto"``: what precision="auto" runs here.
    """
    from aiva_cy import _kernel    # ctypes only when asked: not on the import path
    info = dict(_blas_info)
    info.update(_kernel.describe(info["provider"], info["path"]))
    info["precisions"] = {"float32": _float32_entry(info),
                          "bfloat16": _reduced_entry("bfloat16"),
                          "int8": _reduced_entry("int8")}
    info["precision_auto"] = resolve_precision("auto")
    return info


# ---------------------------------------------------------------------------------------
# Test entry points: a table's sgemm and sgemv, called directly (after the scikit-learn
# tests of sklearn/utils/_cython_blas.pyx), so that each library the loader can pick is
# checked on its own against NumPy, through the same pointers the C core calls.
# ---------------------------------------------------------------------------------------
cdef int _operand(const float[:, :] a, str name, Py_ssize_t *ld, bint *transposed) except -1:
    """a as a column-major BLAS operand: its buffer holds a itself (transposed False; ld the
    column stride), or, when a is row-major, a's transpose (transposed True; ld the row
    stride).  A stride along an axis of length 1 is meaningless, and ignored."""
    cdef Py_ssize_t r = a.shape[0], c = a.shape[1], f = sizeof(float)
    cdef Py_ssize_t s0 = a.strides[0], s1 = a.strides[1]
    if r < 1 or c < 1:
        raise ValueError(f"{name} must have at least one row and one column, got shape "
                         f"({r}, {c})")
    if (r == 1 or s0 == f) and (c == 1 or (s1 > 0 and s1 % f == 0 and s1 // f >= r)):
        transposed[0] = False
        ld[0] = s1 // f if c > 1 else r
        return 0
    if (c == 1 or s1 == f) and (r == 1 or (s0 > 0 and s0 % f == 0 and s0 // f >= c)):
        transposed[0] = True
        ld[0] = s0 // f if r > 1 else c
        return 0
    raise ValueError(f"{name} must be row- or column-major (one unit stride, the other a "
                     f"positive multiple of 4 bytes), got strides ({s0}, {s1})")


cdef Py_ssize_t _increment(Py_ssize_t n, Py_ssize_t stride, str name) except -1:
    if n < 1:
        raise ValueError(f"{name} must have at least one element")
    if n == 1:
        return 1
    if stride <= 0 or stride % <Py_ssize_t>sizeof(float) != 0:
        raise ValueError(f"{name} must have a positive stride of whole floats, got {stride} "
                         f"bytes")
    return stride // <Py_ssize_t>sizeof(float)


cdef bint _trans_flag(str trans, str name) except -1:
    if trans not in ("N", "T"):
        raise ValueError(f"{name} must be 'N' or 'T', got {trans!r}")
    return trans == "T"


cdef int _fits_lp64(str what, Py_ssize_t *values, int count) except -1:
    cdef int i
    for i in range(count):
        if values[i] > INT32_MAX:
            raise ValueError(f"{what}: {values[i]} does not fit this BLAS's 32-bit integers")
    return 0


cdef class _BlasTable:
    """One BLAS table, opened by the loader's rules for ``provider`` ("numpy", "openblas32",
    "scipy" or "mkl"; ImportError if it is not installed), or, for None, a copy of the table
    the C core calls.  ``info`` is what :func:`blas_info` says of it."""
    cdef aiva_blas table
    cdef readonly dict info

    def __cinit__(self, provider=None):
        memset(&self.table, 0, sizeof(aiva_blas))
        self.info = {}
        if provider is None:
            self.table = _blas
            self.info.update(_blas_info)
        elif provider in _PROVIDERS:
            _open_provider(provider, &self.table, self.info)
        else:
            raise ValueError(f"provider must be None or one of {_PROVIDERS}, got {provider!r}")

    @property
    def ilp64(self):
        """Whether the table's entry points take 64-bit integers."""
        return self.table.sgemm64 != NULL

    def sgemm(self, str transa, str transb, float alpha, const float[:, :] a,
              const float[:, :] b, float beta, float[:, :] c):
        """c = alpha * op(a) @ op(b) + beta * c, in place; op is the transpose for "T".  Each
        matrix may be row- or column-major, independently (as a view: any leading
        dimension)."""
        cdef bint ta = _trans_flag(transa, "transa"), tb = _trans_flag(transb, "transb")
        cdef Py_ssize_t m = a.shape[1] if ta else a.shape[0]
        cdef Py_ssize_t k = a.shape[0] if ta else a.shape[1]
        cdef Py_ssize_t kb = b.shape[1] if tb else b.shape[0]
        cdef Py_ssize_t n = b.shape[0] if tb else b.shape[1]
        if kb != k or c.shape[0] != m or c.shape[1] != n:
            raise ValueError(f"sgemm: op(a) is ({m}, {k}) and op(b) ({kb}, {n}), so c must be "
                             f"({m}, {n}) with {k} == {kb}; got c ({c.shape[0]}, {c.shape[1]})")
        cdef Py_ssize_t lda, ldb, ldc
        cdef bint a_t, b_t, c_t
        _operand(a, "a", &lda, &a_t)
        _operand(b, "b", &ldb, &b_t)
        _operand(c, "c", &ldc, &c_t)
        # Each buffer is its matrix or its transpose (x_t); op flips it once more.  A
        # row-major c is computed as c^T = op(b)^T op(a)^T (the operands swapped).
        cdef bint fa = a_t != ta, fb = b_t != tb
        cdef const float *p1
        cdef const float *p2
        cdef Py_ssize_t d1, d2, l1, l2
        cdef char t1, t2
        if c_t:
            t1, t2 = (b'N' if fb else b'T'), (b'N' if fa else b'T')
            d1, d2, p1, p2, l1, l2 = n, m, &b[0, 0], &a[0, 0], ldb, lda
        else:
            t1, t2 = (b'T' if fa else b'N'), (b'T' if fb else b'N')
            d1, d2, p1, p2, l1, l2 = m, n, &a[0, 0], &b[0, 0], lda, ldb
        cdef int64_t M = d1, N = d2, K = k, L1 = l1, L2 = l2, LC = ldc
        cdef int m32, n32, k32, l132, l232, lc32
        cdef Py_ssize_t sizes[6]
        cdef float *pc = &c[0, 0]
        if self.table.sgemm64 != NULL:
            with nogil:
                self.table.sgemm64(&t1, &t2, &M, &N, &K, &alpha, p1, &L1, p2, &L2, &beta, pc,
                                   &LC)
        elif self.table.sgemm != NULL:
            sizes[:] = [d1, d2, k, l1, l2, ldc]
            _fits_lp64("sgemm", sizes, 6)
            m32, n32, k32, l132, l232, lc32 = <int>d1, <int>d2, <int>k, <int>l1, <int>l2, <int>ldc
            with nogil:
                self.table.sgemm(&t1, &t2, &m32, &n32, &k32, &alpha, p1, &l132, p2, &l232,
                                 &beta, pc, &lc32)
        else:
            raise RuntimeError("this table has no sgemm")

    def sgemv(self, str trans, float alpha, const float[:, :] a, const float[:] x, float beta,
              float[:] y):
        """y = alpha * op(a) @ x + beta * y, in place; op is the transpose for "T".  a may be
        row- or column-major; x and y may have any positive stride."""
        cdef bint t = _trans_flag(trans, "trans")
        cdef Py_ssize_t rows = a.shape[1] if t else a.shape[0]
        cdef Py_ssize_t cols = a.shape[0] if t else a.shape[1]
        if x.shape[0] != cols or y.shape[0] != rows:
            raise ValueError(f"sgemv: op(a) is ({rows}, {cols}), so x must have {cols} "
                             f"elements and y {rows}; got {x.shape[0]} and {y.shape[0]}")
        cdef Py_ssize_t lda
        cdef bint a_t
        _operand(a, "a", &lda, &a_t)
        cdef Py_ssize_t incx = _increment(x.shape[0], x.strides[0], "x")
        cdef Py_ssize_t incy = _increment(y.shape[0], y.strides[0], "y")
        # The buffer holds a (column-major) or a^T: flip the flag for the latter, whose
        # column-major shape is a's transposed.
        cdef char flag = b'T' if (a_t != t) else b'N'
        cdef Py_ssize_t d1 = a.shape[1] if a_t else a.shape[0]
        cdef Py_ssize_t d2 = a.shape[0] if a_t else a.shape[1]
        cdef int64_t M = d1, N = d2, LA = lda, IX = incx, IY = incy
        cdef int m32, n32, la32, ix32, iy32
        cdef Py_ssize_t sizes[5]
        cdef const float *pa = &a[0, 0]
        cdef const float *px = &x[0]
        cdef float *py = &y[0]
        if self.table.sgemv64 != NULL:
            with nogil:
                self.table.sgemv64(&flag, &M, &N, &alpha, pa, &LA, px, &IX, &beta, py, &IY)
        elif self.table.sgemv != NULL:
            sizes[:] = [d1, d2, lda, incx, incy]
            _fits_lp64("sgemv", sizes, 5)
            m32, n32, la32, ix32, iy32 = <int>d1, <int>d2, <int>lda, <int>incx, <int>incy
            with nogil:
                self.table.sgemv(&flag, &m32, &n32, &alpha, pa, &la32, px, &ix32, &beta, py,
                                 &iy32)
        else:
            raise RuntimeError("this table has no sgemv")
