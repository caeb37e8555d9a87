# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The CPU engine: owns the weights, the workspaces and the refractory state, and hands raw
pointers to the C core with the GIL released.  It checks sizes (so C never reads or writes
out of bounds) but leaves user-facing validation to :mod:`aiva_cy.net`."""
from cpython.pycapsule cimport PyCapsule_GetName, PyCapsule_GetPointer
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint16_t, uintptr_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset

import os
import threading

import numpy as np

from aiva_cy._adam cimport Adam
from aiva_cy._lowp cimport PackedWeight, fill_table, weight_handle

# ---------------------------------------------------------------------------------------
# BLAS, found by path and opened with dlopen: importing scipy.linalg to reach cython_blas
# costs ~160 ms of start-up.  In order of preference:
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
# Why MKL is not the automatic float32 choice: at batch 1, AIVA's one decision at a time, its
# float32 products measured 1.4x slower than OpenBLAS's gemv (326 against 229 us, one run on
# the 2-core development machine); opening it adds 18-27 ms to the start-up (the dispatcher
# loads libmkl_core and a CPU-specific kernel library); and it brings a second pool of
# worker threads beside NumPy's OpenBLAS.  It is faster at batch 256 (pre-packed: 5.3 ms
# against 6.6 on a quiet machine), so AIVA_CY_BLAS=mkl is there for batch work.  Reduced
# precision (bfloat16, int8) is oneDNN's, below: MKL's bf16 chooses its kernels by CPU vendor
# and ran its generic path on the AMD Zen 5 development machine, slower than float32.
# ---------------------------------------------------------------------------------------
cdef aiva_blas _blas
_blas_info = {}
_PROVIDERS = ("numpy", "openblas32", "scipy", "mkl")

cdef aiva_blas _mkl          # MKL's table, for bfloat16 (filled by _open_mkl)
cdef bint _mkl_open = False
_mkl_info = {}
_mkl_lock = threading.Lock()
MKL_EXTRA = 'pip install "aiva_cy[mkl]"'

# MKL_THREADING_* values of mkl_service.h.  The layer is TBB, found next to MKL (the `mkl`
# wheel depends on `tbb`), else sequential; never MKL's default, Intel OpenMP, because:
# - correctness: with a GNU OpenMP already loaded into the global symbol scope (PyTorch's
#   libgomp, for one), libmkl_intel_thread's omp_* calls bind to it while libiomp5 runs the
#   threads, and products come out wrong, differently from run to run (measured: the loss
#   of a default-size step anywhere from 21 to 38 instead of 35.2 after `import torch`);
# - speed, measured on the 2-core development machine (bf16 products of one forward step,
#   median of runs): TBB 0.18-0.20 ms at batch 1 and 1.9-2.2 ms at batch 256 (packed),
#   Intel OpenMP 0.33-0.44 and 2.7-3.8, sequential 0.30-0.36 and 1.9-2.2;
# - sharing the cores: TBB's idle workers block after a short spin, where Intel OpenMP's
#   spin for 200 ms (KMP_BLOCKTIME) on the core NumPy's OpenBLAS pool needs next.
# A user's MKL_THREADING_LAYER wins.
_MKL_THREADING = {"intel": 0, "sequential": 1, "gnu": 3, "tbb": 4}
_tbb_library = None          # kept loaded: MKL's TBB layer resolves against it


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


cdef int _open_mkl() except -1:
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
        _mkl_info.update(provider="mkl", path=path, ilp64=False,
                         bf16=_mkl.gemm_bf16 != NULL and _mkl.pack_bf16 != NULL,
                         threading_layer=layer_name)
        _mkl_open = True
    return 0


# ---------------------------------------------------------------------------------------
# Reduced precision: oneDNN (aiva_cy._lowp, `pip install "aiva_cy[precision]"`), opened on
# the first net that asks for bfloat16 or int8.  It chooses kernels by instruction set
# (AVX512-BF16, VNNI, AMX), not by vendor; its products take the provider slots of this
# table, and the float32 slots stay the float32 BLAS's.
# ---------------------------------------------------------------------------------------
cdef aiva_blas _lowp_blas
cdef bint _lowp_open = False
PRECISION_EXTRA = 'pip install "aiva_cy[precision]"'


cdef int _open_lowp() except -1:
    """Open the provider once (ImportError naming what to install where it cannot be)."""
    global _lowp_open
    if _lowp_open:
        return 0
    from aiva_cy import _lowp
    # oneDNN's OpenMP pool follows the float32 BLAS's thread count: one budget for both.
    _lowp.open_provider(_blas_info.get("path") if _blas_info.get("provider") in
                        ("numpy", "scipy-openblas32", "mkl") else None)
    cdef aiva_blas table
    memset(&table, 0, sizeof(table))
    table.sgemm, table.sgemv, table.sgemm64, table.sgemv64 = \
        _blas.sgemm, _blas.sgemv, _blas.sgemm64, _blas.sgemv64
    fill_table(&table)
    global _lowp_blas
    _lowp_blas = table
    _lowp_open = True
    return 0


def require_precision(str precision):
    """Raise a clear error unless `precision` runs natively here: ImportError naming what to
    install, RuntimeError naming what the CPU lacks."""
    if precision in ("bfloat16", "int8"):
        _open_lowp()
        from aiva_cy import _lowp
        _lowp.require(precision)


def require_bf16():
    """Raise a clear error unless bfloat16 products run natively here."""
    require_precision("bfloat16")


def resolve_precision(str precision):
    """The precision a net asking for `precision` runs: "auto" is bfloat16 where the CPU has
    native bf16 products (AVX512-BF16 or AMX), else float32; the others are themselves.
    Not int8, although it is faster: on a default-size net trained on hard clustered data
    (89% accurate) int8 changed 0.8-1.6% of the decisions, bfloat16 0.4-0.6% (the README,
    "Reduced precision"), so int8 is for who has checked it on their own data."""
    if precision != "auto":
        return precision
    try:
        _open_lowp()
        from aiva_cy import _lowp
        return "bfloat16" if _lowp.info()["bf16"] else "float32"
    except (ImportError, RuntimeError):
        return "float32"


def _provider_info(str precision):
    """blas_info()'s entry for the provider of `precision`: (dict or None, why not)."""
    from aiva_cy import _kernel, _lowp
    try:
        require_precision(precision)
    except (ImportError, RuntimeError) as exc:
        return None, str(exc)
    info = _lowp.info()
    forced = [f"{k}={os.environ[k]}" for k in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
              if os.environ.get(k)]
    info.update(kernel=info["isa"], kernel_config=f"oneDNN {info['version']}",
                kernel_forced_by=", ".join(forced) or None,
                kernel_older_than_cpu=bool(forced), cpu_level=_kernel.describe("", None)["cpu_level"],
                ilp64=False)
    if precision == "int8":
        info["activation_bits"] = 8 if info["vnni"] else 7
    return info, None


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


cdef bint _try_open(str provider, object path, bytes suffix, int ilp64, bytes prefix=b"scipy_"):
    cdef aiva_blas found
    if path is None or aiva_blas_open(os.fsencode(path), prefix, suffix, ilp64, &found) != 0:
        return False
    _blas.sgemm, _blas.sgemv = found.sgemm, found.sgemv
    _blas.sgemm64, _blas.sgemv64 = found.sgemm64, found.sgemv64
    _blas_info.update(provider=provider, path=path, ilp64=bool(ilp64), bf16=False)
    return True


cdef int _load_blas() except -1:
    global _blas
    choice = os.environ.get("AIVA_CY_BLAS", "auto").lower()
    if choice not in ("auto",) + _PROVIDERS:
        raise ImportError(f"AIVA_CY_BLAS must be 'auto', 'numpy', 'openblas32', 'scipy' or "
                          f"'mkl', got {choice!r}")
    if choice == "mkl":
        try:
            _open_mkl()
        except ImportError as exc:
            raise ImportError(f"AIVA_CY_BLAS=mkl: {exc}") from None
        _blas = _mkl
        _blas_info.update(_mkl_info)
        return 0
    if choice in ("auto", "numpy") and _try_open("numpy", _numpy_openblas_path(), b"_64_", 1):
        return 0
    if choice in ("auto", "numpy") and _try_open("numpy", _numpy_openblas_path("libopenblas64_"),
                                                 b"_64_", 1, b""):
        return 0
    if choice in ("auto", "openblas32") and _try_open("scipy-openblas32", _openblas32_path(), b"_", 0):
        return 0
    if choice not in ("auto", "scipy"):
        raise ImportError(f"AIVA_CY_BLAS={choice}: that BLAS library could not be found or "
                          f"opened")
    try:
        from scipy.linalg import cython_blas
    except ImportError:
        raise ImportError("aiva_cy needs a BLAS: install scipy-openblas32 or scipy") from None
    capi = cython_blas.__pyx_capi__
    _blas.sgemm = <aiva_sgemm_fn>_capsule_pointer(capi, "sgemm")
    _blas.sgemv = <aiva_sgemv_fn>_capsule_pointer(capi, "sgemv")
    _blas.sgemm64 = NULL
    _blas.sgemv64 = NULL
    _blas_info.update(provider="scipy.linalg.cython_blas", path=cython_blas.__file__, ilp64=False,
                      bf16=False)
    return 0


_load_blas()


def blas_info():
    """Which libraries the C core calls, and what each runs here.

    ``{"provider", "path", "ilp64", "bf16"}`` for float32 (``bf16``: this library has
    bfloat16 products) with the kernel it runs: ``kernel`` (the library's own name, e.g.
    OpenBLAS's core type "SkylakeX", or MKL's code path), ``kernel_config``,
    ``kernel_forced_by`` (an environment variable such as OPENBLAS_CORETYPE that chose it,
    or None), ``kernel_older_than_cpu`` and ``cpu_level`` (the best this CPU can run).
    ``"bfloat16"`` and ``"int8"``: the library those nets use (oneDNN, opened on first use,
    so this call opens it) as the same kind of dict (its ``kernel`` is the instruction set
    oneDNN dispatches to, e.g. "avx512_core_bf16"), or None where it cannot run them
    natively, with ``"bfloat16_missing"`` / ``"int8_missing"`` saying why and what to
    install; ``"precision_auto"``: what precision="auto" runs here.
    """
    from aiva_cy import _kernel    # ctypes only when asked: not on the import path
    info = dict(_blas_info)
    info.update(_kernel.describe(info["provider"], info["path"]))
    for precision in ("bfloat16", "int8"):
        found, why = _provider_info(precision)
        info[precision] = found
        if found is None:
            info[precision + "_missing"] = why
    info["precision_auto"] = resolve_precision("auto")
    return info


# ---------------------------------------------------------------------------------------
# Workspace: scratch for one step, grown to the largest batch seen, never shrunk.
# ---------------------------------------------------------------------------------------
cdef inline Py_ssize_t _pad(Py_ssize_t n) noexcept nogil:
    return (n + 15) & ~<Py_ssize_t>15   # 64-byte aligned sub-buffers, for the vector loops


cdef class Workspace:
    def __cinit__(self, int input_size, int hidden_size, int spiking_size, int num_tools):
        self.block = NULL
        self.ws.capacity = 0
        self.ws.bf16 = NULL
        self.input_size = input_size
        self.hidden_size, self.spiking_size, self.num_tools = hidden_size, spiking_size, num_tools

    def __dealloc__(self):
        free(self.block)

    cdef void release(self) noexcept:
        free(self.block)
        self.block = NULL
        self.ws.capacity = 0
        self.ws.bf16 = NULL

    cdef int reserve(self, int batch) except -1:
        if batch <= self.ws.capacity:
            return 0
        cdef Py_ssize_t nh = _pad(<Py_ssize_t>batch * self.hidden_size)
        cdef Py_ssize_t ns = _pad(<Py_ssize_t>batch * self.spiking_size)
        cdef Py_ssize_t nt = _pad(<Py_ssize_t>batch * self.num_tools)
        cdef Py_ssize_t floats = 2 * nh + 3 * ns + 2 * nt
        # The bf16 operands (aiva_workspace.bf16): 2 bytes each, one float per pair; in int8
        # mode the same room holds two row scales (4 halves) and the u8 activations.
        cdef Py_ssize_t halves = _pad(<Py_ssize_t>batch * (self.input_size + self.hidden_size
                                                           + self.spiking_size + self.num_tools
                                                           + 4))
        floats += halves // 2
        # calloc: every float starts as 0.0, so no BLAS call ever meets an uninitialised NaN.
        cdef void *block = calloc(floats * sizeof(float) + ns + 64, 1)
        if block == NULL:
            raise MemoryError(f"cannot allocate a workspace for batch {batch}")
        free(self.block)
        self.block = block
        cdef float *p = <float *>((<uintptr_t>block + 63) & ~<uintptr_t>63)
        self.ws.hidden = p; p += nh
        self.ws.d_hidden = p; p += nh
        self.ws.membrane = p; p += ns
        self.ws.spikes = p; p += ns
        self.ws.d_membrane = p; p += ns
        self.ws.logits = p; p += nt
        self.ws.d_logits = p; p += nt
        self.ws.bf16 = <aiva_bf16 *>p; p += halves // 2
        self.ws.open = <uint8_t *>p
        self.ws.capacity = batch
        return 0


cdef str _error_text(int code):
    if code == AIVA_ERR_INPUT_NONFINITE:
        return "x contains NaN or Inf (or a value too large for float32)"
    if code == AIVA_ERR_OUTPUT_NONFINITE:
        return "the logits are not finite: the weights are too large for float32"
    if code == AIVA_ERR_LABEL:
        return "a label is outside [0, num_tools)"
    if code == AIVA_ERR_GRAD_NONFINITE:
        return "the loss or a gradient is not finite (or overflows float32)"
    if code == AIVA_ERR_PROVIDER:
        from aiva_cy import _lowp
        return f"the reduced-precision provider (oneDNN) failed: {_lowp.last_error()}"
    return "batch size does not fit the workspace"


cdef _raise(int code, bint training=False):
    # In training, logits that overflow are a non-finite loss: FloatingPointError, as for
    # gradients.  In inference they are reported like bad input.
    if code == AIVA_ERR_GRAD_NONFINITE or (training and code == AIVA_ERR_OUTPUT_NONFINITE):
        raise FloatingPointError(_error_text(code) + "; the net was left unchanged")
    if code == AIVA_ERR_PROVIDER:
        raise MemoryError(_error_text(code))
    raise ValueError(_error_text(code))


# ---------------------------------------------------------------------------------------
# Memory per call
# ---------------------------------------------------------------------------------------
# Inference (forward, forward_sequence, predict) runs a large batch in chunks of rows whose
# workspace fits in this many bytes, so its scratch memory is bounded whatever the batch;
# the rows are independent, so the results are the same.  A training step needs the whole
# batch at once (the gradients sum over it): its workspace grows with the batch and is
# freed after the call when it is larger than this.
WORKSPACE_LIMIT = 16 << 20
# Free workspaces kept for predict_proba between calls (one per concurrent thread is used).
POOL_MAX = 4
# The C core indexes a step's arrays with 32-bit ints: the most rows one training step
# (which is not chunked) may have is 2**30 // the widest layer.
_INT_LIMIT = 2**30


def _row_bytes(int hidden_size, int spiking_size, int num_tools, int input_size=0):
    """Workspace bytes per row of a batch (see Workspace.reserve), the bf16 (or int8)
    operands' 2 * (input + hidden + spiking + tools + 4) included when input_size is given."""
    return (4 * (2 * hidden_size + 3 * spiking_size + 2 * num_tools) + spiking_size
            + 2 * (input_size + hidden_size + spiking_size + num_tools + 4) * (input_size > 0))


# ---------------------------------------------------------------------------------------
# Engine
# ---------------------------------------------------------------------------------------
PARAM_NAMES = ("fc1.weight", "spiking.weight", "fc2.weight")
PARAM_TRANSPOSED = (True, True, False)   # kept as (out, in): see src_c/aiva_core.h


def batch_mismatch(int batch, int held, str name="x"):
    """The error for a call whose batch size differs from the refractory state's."""
    return ValueError(f"{name} has batch size {batch} but the net's refractory state holds "
                      f"{held} streams; call reset_state() first to change the batch size")


PRECISIONS = ("float32", "bfloat16", "int8", "auto")
_PRECISION_CHOICES = "'float32', 'bfloat16', 'int8' or 'auto'"
# int8: the provider's int32 products are exact while every |partial sum| of u8 by s8 stays
# in int32: K * 255 * 127 <= 2**31 - 1.
INT8_MAX_K = (2**31 - 1) // (255 * 127)


def _check_precision(str precision, int input_size, int hidden_size):
    """The precision a new engine runs (resolving "auto"), after checking it can run here."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be {_PRECISION_CHOICES}, got {precision!r}")
    effective = resolve_precision(precision)
    require_precision(effective)
    if effective == "int8" and max(input_size, hidden_size) > INT8_MAX_K:
        raise ValueError(f"precision='int8' takes layers of at most {INT8_MAX_K} inputs (int32 "
                         f"accumulation stays exact); this net has input_size={input_size}, "
                         f"hidden_size={hidden_size}")
    return effective


def _quantize_weights(fc1_t, spiking_t, fc2):
    """int8 copies of the engine-layout weights, per output channel (rows of fc1_t and
    spiking_t, columns of fc2): (fc1_t_q, spiking_t_q, fc2_q, their three scales, the row
    sums of fc1_t_q and spiking_t_q)."""
    qs, scales, sums = [], [], []
    cdef const float[:, ::1] w
    cdef int8_t[:, ::1] q
    cdef float[::1] scale
    cdef int32_t[::1] total
    cdef Py_ssize_t n, length, step, vstride
    for a, by_rows in ((fc1_t, True), (spiking_t, True), (fc2, False)):
        w = a
        out = np.empty(a.shape, np.int8)
        q = out
        rows, cols = a.shape
        n, length = (rows, cols) if by_rows else (cols, rows)
        step, vstride = (1, cols) if by_rows else (cols, 1)
        sc = np.empty(n, np.float32)
        sm = np.empty(n, np.int32)
        scale, total = sc, sm
        with nogil:
            aiva_quantize_s8(&w[0, 0], n, length, step, vstride, &q[0, 0], &scale[0],
                             &total[0])
        qs.append(out)
        scales.append(sc)
        sums.append(sm)
    return (qs[0], qs[1], qs[2], scales[0], scales[1], scales[2], sums[0], sums[1])


def _round_bf16(w):
    """A float32 array rounded to bfloat16 (uint16 bits), same shape."""
    cdef const float[::1] src = w.reshape(-1)
    out = np.empty(w.shape, np.uint16)
    cdef uint16_t[::1] dst = out.reshape(-1)
    with nogil:
        aiva_round_bf16(&src[0], src.shape[0], &dst[0])
    return out


cdef object _pack_weight(aiva_blas *table, bint bf16, w):
    """MKL's pack of an engine-layout weight (n, k) for x @ w^T, 64-byte aligned; None where
    the library cannot pack."""
    cdef int n = w.shape[0], k = w.shape[1]
    cdef const uint8_t[:, ::1] src = w.view(np.uint8)
    cdef size_t size = aiva_pack(table, bf16, n, k, &src[0, 0], NULL)
    if size == 0:
        return None
    buf = np.empty(size + 64, np.uint8)
    cdef uint8_t[::1] raw = buf
    cdef size_t offset = (64 - <uintptr_t>&raw[0] % 64) % 64
    packed = buf[offset:offset + size]
    cdef uint8_t[::1] dest = packed
    with nogil:
        aiva_pack(table, bf16, n, k, &src[0, 0], &dest[0])
    return packed


def _adoptable(a, shape):
    return (isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == shape
            and a.flags.c_contiguous and a.flags.writeable and a.flags.aligned)


cdef class Engine:
    """One network's weights, refractory state and scratch, on the CPU."""
    cdef aiva_net net
    cdef readonly int input_size, hidden_size, spiking_size, num_tools, refractory_period
    cdef readonly float threshold, surrogate_slope
    cdef object _weights                        # (fc1_t, spiking_t, fc2): float32, engine
                                                # layout, swapped in as one tuple
    cdef object g_fc1_t, g_spiking_t, g_fc2     # allocated by the first backward
    cdef readonly list grad_bounds              # the last backward's bounds on |gradient|
    cdef object refractory_left                 # int32 (B, spiking), or None: empty state
    cdef readonly str precision                 # as asked: one of PRECISIONS
    cdef readonly str effective_precision       # what runs ("auto" resolved)
    cdef object _bf16                           # bfloat16: the weights rounded (uint16),
                                                # same layouts; None in float32
    cdef bint _int8                             # int8 inference (training: float32)
    cdef object _q                              # (version, _quantize_weights(...)) or None
    cdef long _version                          # bumped whenever a weight changes
    cdef object _packed                         # (version, fc1 pack, spiking pack) or None
    cdef object _pack_lock
    cdef object _mkl_f32_packs                  # (version, fc1, spiking): blas_products only
    cdef Workspace ws                           # for the stateful calls, under _lock
    cdef list _pool                             # free workspaces for predict (thread-safe)
    cdef object _lock
    cdef readonly int max_train_batch           # rows one (unchunked) training step takes

    def __init__(self, int input_size, int hidden_size, int spiking_size, int num_tools,
                 float threshold, int refractory_period, float surrogate_slope, weights,
                 bint copy=True, str precision="float32"):
        # copy=False adopts arrays that already have the engine's layout (a transposed view of
        # a C-contiguous float32 array for fc1 and spiking, C-contiguous fc2) instead of
        # copying them: a fresh net's 12.7 MB of weights are then written only once.
        if min(input_size, hidden_size, spiking_size, num_tools) < 1 or refractory_period < 0:
            raise ValueError("sizes must be >= 1 and refractory_period >= 0")
        effective = _check_precision(precision, input_size, hidden_size)
        self._lock = threading.Lock()
        self._pack_lock = threading.Lock()
        self.precision, self.effective_precision = precision, effective
        self._bf16 = self._packed = self._mkl_f32_packs = self._q = None
        self._version = 0
        self.net.bf16 = effective == "bfloat16"
        # The engine's own net is the training one: int8 only in _inference_net's copies.
        self._int8 = effective == "int8"
        self.net.int8 = 0
        self.net.fc1_packed = self.net.spiking_packed = NULL
        self.input_size, self.hidden_size = input_size, hidden_size
        self.spiking_size, self.num_tools = spiking_size, num_tools
        self.threshold, self.refractory_period = threshold, refractory_period
        self.surrogate_slope = surrogate_slope
        self.net.input_size, self.net.hidden_size = input_size, hidden_size
        self.net.spiking_size, self.net.num_tools = spiking_size, num_tools
        self.net.threshold, self.net.refractory_period = threshold, refractory_period
        self.net.surrogate_slope = surrogate_slope
        if not copy and _adoptable(weights["fc1.weight"].T, (hidden_size, input_size)) \
                and _adoptable(weights["spiking.weight"].T, (spiking_size, hidden_size)) \
                and _adoptable(weights["fc2.weight"], (spiking_size, num_tools)):
            self._install(weights["fc1.weight"].T, weights["spiking.weight"].T,
                          weights["fc2.weight"])
        else:
            self.set_weights(weights)
        self.g_fc1_t = self.g_spiking_t = self.g_fc2 = None
        self.refractory_left = None
        self.ws = Workspace(input_size, hidden_size, spiking_size, num_tools)
        self._pool = []
        self.max_train_batch = max(1, _INT_LIMIT // max(hidden_size, spiking_size, num_tools))

    @property
    def pooled_workspaces(self):
        """Free workspaces kept for predict (at most POOL_MAX)."""
        return len(self._pool)

    # -- weights ------------------------------------------------------------------------
    def param_shapes(self):
        """Engine-layout shapes, in PARAM_NAMES order."""
        return tuple(w.shape for w in self._weights)

    def params(self):
        """The live engine-layout arrays (no copies): for the optimizer."""
        return list(self._weights)

    def get_weights(self):
        """state_dict-layout copies (of one generation of weights)."""
        fc1_t, spiking_t, fc2 = self._weights
        return {"fc1.weight": np.ascontiguousarray(fc1_t.T),
                "spiking.weight": np.ascontiguousarray(spiking_t.T),
                "fc2.weight": fc2.copy()}

    def set_weights(self, weights):
        """Copy state_dict-layout arrays in.  Shapes are checked here; finiteness and dtypes
        by the caller.  The copies are new arrays, swapped in as one under the lock, so a
        predict running meanwhile in another thread sees the old weights or the new ones,
        never a mix."""
        want = {"fc1.weight": (self.input_size, self.hidden_size),
                "spiking.weight": (self.hidden_size, self.spiking_size),
                "fc2.weight": (self.spiking_size, self.num_tools)}
        for k, shape in want.items():
            if weights[k].shape != shape:
                raise ValueError(f"{k} must have shape {shape}, got {weights[k].shape}")
        fc1_t = np.array(weights["fc1.weight"].T, dtype=np.float32, order="C")
        spiking_t = np.array(weights["spiking.weight"].T, dtype=np.float32, order="C")
        fc2 = np.array(weights["fc2.weight"], dtype=np.float32, order="C")
        with self._lock:
            self._install(fc1_t, spiking_t, fc2)

    cdef _install(self, fc1_t, spiking_t, fc2):
        cdef float[:, ::1] a = fc1_t, b = spiking_t, c = fc2
        bf16 = tuple(_round_bf16(w) for w in (fc1_t, spiking_t, fc2)) if self.net.bf16 else None
        self.net.fc1_t, self.net.spiking_t, self.net.fc2 = &a[0, 0], &b[0, 0], &c[0, 0]
        self._set_bf16_pointers(&self.net, bf16)
        self._weights, self._bf16 = (fc1_t, spiking_t, fc2), bf16
        self._version += 1                     # the packs, if any, are now stale

    cdef _set_bf16_pointers(self, aiva_net *net, bf16):
        cdef const uint16_t[:, ::1] a, b, c
        if bf16 is None:
            net.fc1_t_bf16 = net.spiking_t_bf16 = net.fc2_bf16 = NULL
            return
        a, b, c = bf16
        net.fc1_t_bf16, net.spiking_t_bf16, net.fc2_bf16 = &a[0, 0], &b[0, 0], &c[0, 0]

    cdef aiva_blas *_table(self):
        return &_lowp_blas if self.net.bf16 else &_blas

    def set_precision(self, str precision):
        """Switch the products' precision; the float32 master weights are kept."""
        effective = _check_precision(precision, self.input_size, self.hidden_size)
        with self._lock:
            self.precision, self.effective_precision = precision, effective
            self.net.bf16 = effective == "bfloat16"
            self._int8 = effective == "int8"
            fc1_t, spiking_t, fc2 = self._weights
            self._install(fc1_t, spiking_t, fc2)

    def quantized(self):
        """int8 nets: the quantized copies inference runs on (re-made from the float32 masters
        after any change), as a dict of engine-layout arrays; None in other precisions."""
        if not self._int8:
            return None
        q = self._quantized(self._version, self._weights)
        names = ("fc1_t_q", "spiking_t_q", "fc2_q", "fc1_scale", "spiking_scale", "fc2_scale",
                 "fc1_sum", "spiking_sum")
        return dict(zip(names, q[1:]))

    cdef object _quantized(self, long version, weights):
        cached = self._q
        if cached is not None and cached[0] == version:
            return cached
        with self._pack_lock:
            cached = self._q
            if cached is not None and cached[0] == version:
                return cached
            cached = (version,) + _quantize_weights(*weights)
            if self._version == version:
                self._q = cached
            return cached

    cdef object _inference_net(self, aiva_net *net):
        """Fill net with one generation of weights (set_weights may swap in another meanwhile)
        and their packs, packed now if they are stale; returns what must stay alive."""
        net[0] = self.net
        weights, bf16, version = self._weights, self._bf16, self._version
        cdef float[:, ::1] a, b, c
        a, b, c = weights
        net.fc1_t, net.spiking_t, net.fc2 = &a[0, 0], &b[0, 0], &c[0, 0]
        # The precision of this generation, not self.net's: set_precision may be between
        # switching the flag and installing the copies (a predict does not take the lock).
        net.bf16 = bf16 is not None
        self._set_bf16_pointers(net, bf16)
        q = self._quantized(version, weights) if self._int8 else None
        self._set_int8_pointers(net, q)
        packed = self._packed
        if packed is None or packed[0] != version:
            packed = self._pack(version, weights, bf16, q)
        cdef const uint8_t[::1] p1, p2
        if packed is not None and isinstance(packed[1], PackedWeight):
            net.fc1_packed = weight_handle(packed[1])
            net.spiking_packed = weight_handle(packed[2])
        elif packed is not None and packed[1] is not None:
            p1, p2 = packed[1], packed[2]
            net.fc1_packed, net.spiking_packed = &p1[0], &p2[0]
        else:
            net.fc1_packed = net.spiking_packed = NULL
        return (weights, bf16, q, packed)

    cdef _set_int8_pointers(self, aiva_net *net, q):
        cdef const int8_t[:, ::1] a, b, c
        cdef const float[::1] s1, s2, s3
        cdef const int32_t[::1] m1, m2
        net.int8 = q is not None
        if q is None:
            return
        from aiva_cy import _lowp
        net.act_qmax, net.act_zero = _lowp.quantization()
        a, b, c, s1, s2, s3, m1, m2 = q[1:]
        net.fc1_t_q, net.spiking_t_q, net.fc2_q = &a[0, 0], &b[0, 0], &c[0, 0]
        net.fc1_scale, net.spiking_scale, net.fc2_scale = &s1[0], &s2[0], &s3[0]
        net.fc1_sum, net.spiking_sum = &m1[0], &m2[0]

    cdef object _pack(self, long version, weights, bf16, q):
        # Packed on the first inference call after the weights change (not by every train
        # step: fit runs many steps between inferences).  A pack made from weights that
        # changed meanwhile is used by this call only, never stored.
        with self._pack_lock:
            packed = self._packed
            if packed is not None and packed[0] == version:
                return packed
            # This generation's precision, not self.net's (see _inference_net).  Reduced
            # precision: the provider's handles, packed by the first product that uses them
            # (in the layout its primitive prefers); float32: MKL's packs where MKL is the
            # float32 BLAS.
            if bf16 is not None or q is not None:
                kind = "int8" if q is not None else "bf16"
                I, H, S = self.input_size, self.hidden_size, self.spiking_size
                packed = (version, PackedWeight(kind, 1, H, I, I), PackedWeight(kind, 1, S, H, H))
            else:
                p1 = _pack_weight(&_blas, False, weights[0])
                p2 = None if p1 is None else _pack_weight(&_blas, False, weights[1])
                packed = (version, p1 if p2 is not None else None, p2)
            if self._version == version:
                self._packed = packed
            return packed

    def gradients(self):
        """state_dict-layout copies of the last computed gradients."""
        if self.g_fc1_t is None:
            return None
        return {"fc1.weight": np.ascontiguousarray(self.g_fc1_t.T),
                "spiking.weight": np.ascontiguousarray(self.g_spiking_t.T),
                "fc2.weight": self.g_fc2.copy()}

    # -- state --------------------------------------------------------------------------
    @property
    def state_batch_size(self):
        return None if self.refractory_left is None else self.refractory_left.shape[0]

    def reset_state(self):
        with self._lock:
            self.refractory_left = None

    def get_state(self):
        with self._lock:
            return None if self.refractory_left is None else self.refractory_left.copy()

    def set_state(self, state):
        if state is None:
            with self._lock:
                self.refractory_left = None
            return
        a = np.asarray(state)
        if a.ndim != 2 or a.shape[1] != self.spiking_size or a.shape[0] < 1:
            raise ValueError(f"refractory state must have shape (batch, {self.spiking_size}), "
                             f"got {a.shape}")
        if a.dtype.kind not in "iu" or (a.size and (a.min() < 0 or a.max() > self.refractory_period)):
            raise ValueError(f"refractory state must hold integers in [0, {self.refractory_period}]")
        with self._lock:
            self.refractory_left = np.array(a, dtype=np.int32, order="C")

    cdef object _state_for(self, int batch):
        # The ring buffer follows the batch: the first call after a reset gets a new, empty
        # (all open) one.  It is stored by the caller only once the step succeeds, so a
        # failed first step leaves the state empty.
        if self.refractory_left is None:
            return np.zeros((batch, self.spiking_size), np.int32)
        if self.refractory_left.shape[0] != batch:
            raise batch_mismatch(batch, self.refractory_left.shape[0])
        return self.refractory_left

    cdef _check_x(self, const float[:, ::1] x, bint training=False, str name="x"):
        if x.shape[1] != self.input_size or x.shape[0] < 1:
            raise ValueError(f"{name} must have shape (batch >= 1, {self.input_size}), got "
                             f"({x.shape[0]}, {x.shape[1]})")
        # A misaligned float pointer is undefined behaviour in C (net.py copies such input).
        if (<uintptr_t>&x[0, 0]) % sizeof(float) != 0:
            raise ValueError(f"{name} must be an aligned float32 array (this one starts at an "
                             f"odd byte address); pass a copy, np.array({name})")
        if training and x.shape[0] > self.max_train_batch:
            raise ValueError(f"{name} has {x.shape[0]} rows; a training step of this net takes "
                             f"at most {self.max_train_batch} (the C core indexes with 32-bit "
                             f"ints): split the batch")
        if x.shape[0] > 2**31 - 1:
            raise ValueError(f"{name} has {x.shape[0]} rows; at most {2**31 - 1} per call")

    cdef int _chunk_rows(self) except -1:
        cdef Py_ssize_t rows = WORKSPACE_LIMIT // _row_bytes(self.hidden_size, self.spiking_size,
                                                            self.num_tools, self.input_size)
        rows = min(rows, _INT_LIMIT // max(self.hidden_size, self.spiking_size, self.num_tools))
        return <int>max(rows, 1)

    cdef void _release_if_large(self, Workspace ws) noexcept:
        if ws.ws.capacity > self._chunk_rows():
            ws.release()

    # -- one step -----------------------------------------------------------------------
    cdef int _run(self, const aiva_net *net, const float *x, Py_ssize_t batch, int32_t *state,
                  Workspace ws, Py_ssize_t chunk_rows, float *probs,
                  float *logits) noexcept nogil:
        """One step of `batch` rows in chunks of at most chunk_rows (<= the workspace's
        capacity); state (B, spiking) is
        read and, where the step succeeds, advanced in place (callers pass a trial copy when
        a failure must leave it untouched).  Returns AIVA_OK or the first error.

        The chunks are of equal size (within one row), not full ones and a remainder: the
        BLAS rounds a product of a few rows differently from one of many (measured with
        OpenBLAS: under 64 rows), so a short last chunk would change its rows' results."""
        cdef Py_ssize_t chunks = (batch + chunk_rows - 1) // chunk_rows
        cdef Py_ssize_t base = batch // chunks, extra = batch % chunks, k, n, start = 0
        cdef Py_ssize_t I = net.input_size, S = net.spiking_size, T = net.num_tools
        cdef int code = AIVA_OK
        for k in range(chunks):
            n = base + (1 if k < extra else 0)
            code = aiva_forward(&_lowp_blas if net.bf16 or net.int8 else &_blas, net,
                                x + start * I, <int>n,
                                NULL if state == NULL else state + start * S, &ws.ws,
                                probs + start * T)
            if code != AIVA_OK:
                return code
            if state != NULL:
                aiva_commit_state(net, &ws.ws, <int>n, state + start * S)
            if logits != NULL:
                memcpy(logits + start * T, ws.ws.logits, <size_t>n * <size_t>T * sizeof(float))
            start += n
        return code

    cdef Py_ssize_t _reserve_chunk(self, Workspace ws, Py_ssize_t batch) except -1:
        """Reserve the workspace for one chunk of a `batch`-row call; returns the chunk rows."""
        cdef Py_ssize_t rows = min(batch, <Py_ssize_t>self._chunk_rows())
        ws.reserve(<int>rows)
        return rows

    def forward(self, const float[:, ::1] x):
        """One stateful step: probabilities (B, tools); the state advances on success."""
        self._check_x(x)
        cdef Py_ssize_t batch = x.shape[0]
        cdef int code = AIVA_OK
        probs = np.empty((batch, self.num_tools), np.float32)
        cdef float[:, ::1] p = probs
        cdef int32_t[:, ::1] refr
        cdef aiva_net net
        cdef Py_ssize_t rows
        with self._lock:
            keep = self._inference_net(&net)
            state = self._state_for(batch)
            rows = self._reserve_chunk(self.ws, batch)
            # One chunk commits in place only on success; several chunks work on a copy,
            # so that a failure in a later chunk leaves the state untouched.
            trial = state if batch <= rows else state.copy()
            refr = trial
            with nogil:
                code = self._run(&net, &x[0, 0], batch, &refr[0, 0], self.ws, rows,
                                 &p[0, 0], NULL)
            if code == AIVA_OK:
                self.refractory_left = trial
        if code != AIVA_OK:
            _raise(code)
        return probs

    def forward_sequence(self, const float[:, :, ::1] xs):
        """T stateful steps; the state advances only if every step succeeds."""
        cdef Py_ssize_t steps = xs.shape[0], batch = xs.shape[1], t
        cdef int code = AIVA_OK
        if steps < 1:
            raise ValueError("xs must hold at least one step")
        self._check_x(xs[0], False, "xs")
        probs = np.empty((steps, batch, self.num_tools), np.float32)
        cdef float[:, :, ::1] p = probs
        cdef int32_t[:, ::1] trial
        cdef aiva_net net
        cdef Py_ssize_t rows
        with self._lock:
            keep = self._inference_net(&net)
            trial = self._state_for(batch).copy()
            rows = self._reserve_chunk(self.ws, batch)
            with nogil:
                for t in range(steps):
                    code = self._run(&net, &xs[t, 0, 0], batch, &trial[0, 0], self.ws,
                                     rows, &p[t, 0, 0], NULL)
                    if code != AIVA_OK:
                        break
            if code == AIVA_OK:
                self.refractory_left = trial.base
        if code != AIVA_OK:
            _raise(code)
        return probs

    def predict(self, const float[:, ::1] x, bint with_logits=False):
        """One step from an empty state; touches no state, safe from many threads at once.
        Returns probabilities (B, tools), or (probabilities, logits) with_logits."""
        self._check_x(x)
        cdef Py_ssize_t batch = x.shape[0]
        cdef int code
        probs = np.empty((batch, self.num_tools), np.float32)
        cdef float[:, ::1] p = probs
        cdef float[:, ::1] zl
        cdef float *logits_ptr = NULL
        if with_logits:
            logits = np.empty((batch, self.num_tools), np.float32)
            zl = logits
            logits_ptr = &zl[0, 0]
        cdef Workspace ws
        cdef Py_ssize_t rows
        # One generation of weights (and its precision and packs), held for the call:
        # set_weights or set_precision may swap in another.
        cdef aiva_net net
        keep = self._inference_net(&net)
        try:
            ws = self._pool.pop()   # list.pop is atomic under the GIL
        except IndexError:
            ws = Workspace(self.input_size, self.hidden_size, self.spiking_size, self.num_tools)
        try:
            rows = self._reserve_chunk(ws, batch)
            with nogil:
                code = self._run(&net, &x[0, 0], batch, NULL, ws, rows, &p[0, 0], logits_ptr)
        finally:
            if len(self._pool) < POOL_MAX:
                self._pool.append(ws)
        if code != AIVA_OK:
            _raise(code)
        return (probs, logits) if with_logits else probs

    cdef int _forward_backward(self, const float[:, ::1] x, const int64_t[::1] y,
                               int32_t *refr, double *loss) except -1:
        # Caller holds _lock.  Fills the gradient buffers; changes no state.  Returns how
        # many rows the step's probabilities classified right (for fit's accuracy).
        cdef int batch = x.shape[0], code
        if y.shape[0] != batch:
            raise ValueError(f"y has {y.shape[0]} labels for a batch of {batch}")
        if (<uintptr_t>&y[0]) % sizeof(int64_t) != 0:
            raise ValueError("y must be an aligned int64 array (this one starts at an odd byte "
                             "address); pass a copy, np.array(y)")
        if self.g_fc1_t is None:
            self.g_fc1_t, self.g_spiking_t, self.g_fc2 = (np.zeros_like(w) for w in self._weights)
        cdef float[:, ::1] g1 = self.g_fc1_t, g2 = self.g_spiking_t, g3 = self.g_fc2
        cdef aiva_grads grads
        grads.fc1_t, grads.spiking_t, grads.fc2 = &g1[0, 0], &g2[0, 0], &g3[0, 0]
        cdef float[::1] scratch_probs = np.empty(batch * self.num_tools, np.float32)
        self.ws.reserve(batch)
        cdef aiva_blas *table = self._table()
        with nogil:
            code = aiva_forward(table, &self.net, &x[0, 0], batch, refr, &self.ws.ws,
                                &scratch_probs[0])
            if code == AIVA_OK:
                code = aiva_backward(table, &self.net, &x[0, 0], &y[0], batch, &self.ws.ws,
                                     &grads, loss)
        if code != AIVA_OK:
            _raise(code, True)
        self.grad_bounds = [grads.bound_fc1_t, grads.bound_spiking_t, grads.bound_fc2]
        cdef int b, t, best, correct = 0
        cdef int T = self.num_tools
        for b in range(batch):
            best = 0
            for t in range(1, T):
                if scratch_probs[b * T + t] > scratch_probs[b * T + best]:
                    best = t
            correct += best == y[b]
        return correct

    def loss_and_grad(self, const float[:, ::1] x, const int64_t[::1] y):
        """One stateful step with backward; returns the loss (gradients via gradients())."""
        self._check_x(x, True)
        cdef double loss = 0.0
        cdef int32_t[:, ::1] refr
        with self._lock:
            state = self._state_for(x.shape[0])
            refr = state
            try:
                self._forward_backward(x, y, &refr[0, 0], &loss)
                with nogil:
                    aiva_commit_state(&self.net, &self.ws.ws, x.shape[0], &refr[0, 0])
            finally:
                self._release_if_large(self.ws)
            self.refractory_left = state
        return loss

    def train_step(self, const float[:, ::1] x, const int64_t[::1] y, Adam optimizer):
        """loss_and_grad, then the Adam update; on any error nothing changes.
        Returns (loss, number of rows classified right by this step's forward)."""
        self._check_x(x, True)
        cdef double loss = 0.0
        cdef int32_t[:, ::1] refr
        cdef int correct = 0
        with self._lock:
            state = self._state_for(x.shape[0])
            refr = state
            try:
                correct = self._forward_backward(x, y, &refr[0, 0], &loss)
                # In bfloat16, Adam's fused pass also writes the rounded copies the products
                # read, as it updates each float32 master weight.
                optimizer.update(self.params(), [self.g_fc1_t, self.g_spiking_t, self.g_fc2],
                                 None if self._bf16 is None else list(self._bf16),
                                 self.grad_bounds)
                self._version += 1
                with nogil:
                    aiva_commit_state(&self.net, &self.ws.ws, x.shape[0], &refr[0, 0])
            finally:
                self._release_if_large(self.ws)
            self.refractory_left = state
        return loss, correct

    def blas_products(self, const float[:, ::1] x, bint packed=True, str provider=None):
        """The three BLAS products of a forward step alone (the benchmark's floor), in the
        net's precision (bfloat16: with rounding x and h; int8: with quantizing x and h and
        dequantizing, which every such step does), with the inference packs where the library
        makes them (packed=False: without).  provider="mkl" runs a float32 net's products on
        MKL whatever the float32 BLAS is (the benchmark's MKL floors)."""
        self._check_x(x, True)
        cdef int batch = x.shape[0]
        cdef aiva_net net
        cdef aiva_blas *table
        cdef const uint8_t[::1] p1, p2
        if provider not in (None, "mkl"):
            raise ValueError(f"provider must be None or 'mkl', got {provider!r}")
        if provider == "mkl":
            _open_mkl()
        with self._lock:
            keep = self._inference_net(&net)
            table = &_lowp_blas if net.bf16 or net.int8 else &_blas
            if provider == "mkl" and not (net.bf16 or net.int8):
                table = &_mkl
                net.fc1_packed = net.spiking_packed = NULL
                if packed:
                    packs = self._mkl_f32_packs
                    if packs is None or packs[0] != self._version:
                        packs = (self._version, _pack_weight(&_mkl, False, self._weights[0]),
                                 _pack_weight(&_mkl, False, self._weights[1]))
                        self._mkl_f32_packs = packs
                    p1, p2 = packs[1], packs[2]
                    net.fc1_packed, net.spiking_packed = &p1[0], &p2[0]
            if not packed:
                net.fc1_packed = net.spiking_packed = NULL
            self.ws.reserve(batch)
            with nogil:
                aiva_blas_products(table, &net, &x[0, 0], batch, &self.ws.ws)

    def packed(self):
        """Whether inference runs on pre-packed weights (packing them now if stale)."""
        cdef aiva_net net
        self._inference_net(&net)
        return net.fc1_packed != NULL

    def __reduce__(self):
        return (_rebuild_engine,
                ((self.input_size, self.hidden_size, self.spiking_size, self.num_tools,
                  self.threshold, self.refractory_period, self.surrogate_slope),
                 self.get_weights(), self.get_state(), self.precision))


def _rebuild_engine(config, weights, state, precision="float32"):
    engine = Engine(*config, weights, precision=precision)
    engine.set_state(state)
    return engine
