# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The reduced-precision provider: oneDNN's bfloat16 and int8 matrix products, opened by path
on first use (never by ``import aiva_cy``).  ``pip install "aiva_cy[precision]"`` installs it.

oneDNN picks kernels by instruction set, not by CPU vendor: AVX512-BF16 and AMX for bfloat16,
VNNI (AVX-512 or AVX) and AMX for int8, so one library is fast on AMD and Intel alike.  The C
side (src_c/aiva_onednn.c) caches one primitive per shape and keeps constant weights packed
in the layout each primitive prefers; this module finds the library, says what the CPU runs,
and has small entry points that run one product, for the tests.
"""
from libc.stdint cimport int8_t, int32_t, uint8_t, uint16_t, uintptr_t

import os
import threading

import numpy as np

from aiva_cy._model import PRECISION_EXTRA as EXTRA


cdef extern from "aiva_onednn.h" nogil:
    aiva_onednn *aiva_onednn_open(const char *path, char *err, size_t err_size)
    void aiva_onednn_version(const aiva_onednn *dnn, int *major, int *minor, int *patch)
    int aiva_onednn_isa(const aiva_onednn *dnn)
    enum: AIVA_ONEDNN_ISA_AMX_BIT
    int aiva_onednn_native_bf16(const aiva_onednn *dnn)
    int aiva_onednn_native_vnni(const aiva_onednn *dnn)
    void aiva_onednn_set_threads(aiva_onednn *dnn, int threads, int (*follow)() noexcept nogil)
    int aiva_onednn_threads(const aiva_onednn *dnn)
    int aiva_onednn_gemm_bf16(void *dnn, int ta, int tb, Py_ssize_t M, Py_ssize_t N,
                              Py_ssize_t K, const uint16_t *A, Py_ssize_t lda,
                              const uint16_t *B, Py_ssize_t ldb, float *C, Py_ssize_t ldc,
                              const void *B_packed,
                              void *epi, void *epi_ctx)
    int aiva_onednn_gemm_u8s8(void *dnn, int tb, Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
                              const uint8_t *A, Py_ssize_t lda, const int8_t *B,
                              Py_ssize_t ldb, int32_t *C, Py_ssize_t ldc, const void *B_packed,
                              void *epi, void *epi_ctx)
    void aiva_onednn_parallel(void *dnn, Py_ssize_t n, void *fn, void *ctx)
    aiva_onednn_weight *aiva_onednn_weight_new(aiva_onednn *dnn, int kind, int tb,
                                               Py_ssize_t N, Py_ssize_t K, Py_ssize_t ldb)
    void aiva_onednn_weight_free(aiva_onednn_weight *w)
    int aiva_onednn_weight_packs(aiva_onednn_weight *w, size_t *bytes)
    int aiva_onednn_impl(aiva_onednn *dnn, int kind, int ta, int tb, Py_ssize_t M,
                         Py_ssize_t N, Py_ssize_t K, int packed, char *out, size_t out_size)
    void aiva_onednn_cache_stats(aiva_onednn *dnn, int *entries, long *created)
    const char *aiva_onednn_error()


# The provider's slots of the C core's BLAS table (src_c/aiva_core.h), under another name:
# the rest of the table belongs to aiva_cy._core.
cdef extern from "aiva_core.h" nogil:
    ctypedef int (*lowp_bf16_fn "aiva_lowp_bf16_fn")(
        void *, int, int, Py_ssize_t, Py_ssize_t, Py_ssize_t, const uint16_t *, Py_ssize_t,
        const uint16_t *, Py_ssize_t, float *, Py_ssize_t, const void *, void *, void *)
    ctypedef int (*lowp_u8s8_fn "aiva_lowp_u8s8_fn")(
        void *, int, Py_ssize_t, Py_ssize_t, Py_ssize_t, const uint8_t *, Py_ssize_t,
        const int8_t *, Py_ssize_t, int32_t *, Py_ssize_t, const void *, void *, void *)
    ctypedef void (*lowp_parallel_fn "aiva_lowp_parallel_fn")(void *, Py_ssize_t, void *, void *)
    ctypedef struct lowp_slots "aiva_blas":
        void *lowp
        lowp_bf16_fn lowp_bf16
        lowp_u8s8_fn lowp_u8s8
        lowp_parallel_fn lowp_parallel


#: The distributions that carry libdnnl, in order of preference: the CPU-only build with GNU
#: OpenMP (one 55 MB library), then the full oneAPI one (which pulls ~2 GB of SYCL runtime).
DISTRIBUTIONS = ("onednn-cpu-gomp", "onednn")

# dnnl_cpu_isa_t values (dnnl_types.h) and their names.
ISA_NAMES = {0x0: "default", 0x1: "sse41", 0x3: "avx", 0x7: "avx2", 0xf: "avx2_vnni",
             0x1f: "avx2_vnni_2", 0x27: "avx512_core", 0x67: "avx512_core_vnni",
             0xe7: "avx512_core_bf16", 0x1ef: "avx512_core_fp16", 0xfef: "avx512_core_amx",
             0x1fef: "avx512_core_amx_fp16"}

cdef aiva_onednn *_dnn = NULL
_info = {}
_open_error = None
_lock = threading.Lock()
_follow_library = None       # kept loaded: the float32 BLAS whose thread count oneDNN follows


def _library_path():
    """libdnnl of an installed distribution (its file list), else under sys.prefix, or the
    file AIVA_CY_ONEDNN names."""
    import glob
    import re
    import sys
    forced = os.environ.get("AIVA_CY_ONEDNN")
    if forced:
        return forced
    pattern = re.compile(r"^(lib)?dnnl(\.so(\.\d+)*|\.\d+\.dylib|\.dylib|\.dll)$")
    from importlib import metadata
    for dist in DISTRIBUTIONS:
        try:
            files = metadata.distribution(dist).files or ()
        except Exception:   # not installed, or metadata unreadable
            continue
        found = sorted(os.path.normpath(str(f.locate())) for f in files if pattern.match(f.name))
        found = [f for f in found if os.path.exists(f)]
        if found:
            return max(found, key=len)     # libdnnl.so.3.2 over libdnnl.so: the real file
    for where in ("lib", os.path.join("Library", "bin")):
        found = sorted(f for f in glob.glob(os.path.join(sys.prefix, where, "*dnnl*"))
                       if pattern.match(os.path.basename(f)))
        if found:
            return max(found, key=len)
    return None


def _gomp_loaded():
    """Whether a GNU OpenMP runtime is in this process already (Linux; False elsewhere)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            return any("libgomp" in line for line in f)
    except OSError:
        return False


def _wait_policy_to_set():
    """"PASSIVE" when opening oneDNN should load its GNU OpenMP with idle workers asleep:
    where the user chose nothing (OMP_WAIT_POLICY, GOMP_SPINCOUNT) and no libgomp is loaded
    yet (a loaded one has read its settings already).  Measured on the shared 2-core
    development machine (benchmarks/thread_sharing.py, other load ~80%): with libgomp's
    default spinning, int8 predict_proba took 11.6 ms at batch 1 and 52.7 ms at 256 on two
    threads, and a float32 and an int8 call alternating took 3.5x the two alone (each pool's
    spinning workers held the core the other needed); passive, 0.149 ms, 4.0 ms and 0.77x."""
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return None
    if not os.path.exists("/proc/self/maps") or _gomp_loaded():
        return None
    return "PASSIVE"


def _thread_follower(blas_path):
    """The float32 BLAS's own thread-count getter (OpenBLAS or MKL), as an address, so that
    oneDNN's OpenMP pool uses the same budget; 0 where there is none."""
    global _follow_library
    if not blas_path:
        return 0
    import ctypes
    try:
        lib = ctypes.CDLL(blas_path)
    except OSError:
        return 0
    for name in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_",
                 "scipy_openblas_get_num_threads", "openblas_get_num_threads",
                 "MKL_Get_Max_Threads"):
        fn = getattr(lib, name, None)
        if fn is not None:
            _follow_library = lib
            return ctypes.cast(fn, ctypes.c_void_p).value or 0
    return 0


cdef aiva_onednn *_open(object blas_path=None) except NULL:
    global _dnn, _open_error
    if _dnn != NULL:
        return _dnn
    cdef char err[1024]
    cdef aiva_onednn *dnn
    cdef uintptr_t follow
    cdef int major, minor, patch
    with _lock:
        if _dnn != NULL:
            return _dnn
        if _open_error is not None:
            raise ImportError(_open_error)
        path = _library_path()
        if path is None:
            _open_error = ("bfloat16 and int8 need oneDNN, which is not installed; install it "
                           f"with: {EXTRA}")
            raise ImportError(_open_error)
        # libgomp reads its settings once, as it loads (with libdnnl, here): the variable is
        # set for that moment only, so nothing else in the process sees it.
        policy = _wait_policy_to_set()
        if policy:
            os.environ["OMP_WAIT_POLICY"] = policy
        try:
            dnn = aiva_onednn_open(os.fsencode(path), err, sizeof(err))
        finally:
            if policy:
                del os.environ["OMP_WAIT_POLICY"]
        if dnn == NULL:
            why = err.decode("utf-8", "replace")
            hint = ""
            if "libgomp" in why:
                hint = (" (the onednn-cpu-gomp build needs the GNU OpenMP runtime: install "
                        "your system's libgomp1, or gcc)")
            _open_error = f"oneDNN could not be opened: {why}{hint}; reinstall it with: {EXTRA}"
            raise ImportError(_open_error)
        follow = _thread_follower(blas_path)
        if follow:
            aiva_onednn_set_threads(dnn, 0, <int (*)() noexcept nogil>follow)
        else:
            aiva_onednn_set_threads(dnn, len(os.sched_getaffinity(0))
                                    if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1),
                                    NULL)
        aiva_onednn_version(dnn, &major, &minor, &patch)
        isa = aiva_onednn_isa(dnn)
        _info.update(provider="onednn", path=path, version=f"{major}.{minor}.{patch}",
                     isa=ISA_NAMES.get(isa, hex(isa)),
                     bf16=bool(aiva_onednn_native_bf16(dnn)),
                     vnni=bool(aiva_onednn_native_vnni(dnn)),
                     amx=bool(isa & AIVA_ONEDNN_ISA_AMX_BIT),
                     int8=(isa & 0x7) == 0x7,
                     threads_follow_blas=bool(follow),
                     omp_wait_policy=("passive (set by aiva_cy)" if policy else
                                      os.environ.get("OMP_WAIT_POLICY")
                                      or ("GOMP_SPINCOUNT=" + os.environ["GOMP_SPINCOUNT"]
                                          if "GOMP_SPINCOUNT" in os.environ else
                                          "libgomp's own (it was loaded before oneDNN)")))
        _dnn = dnn
    return _dnn


def open_provider(blas_path=None):
    """Open oneDNN (once); ImportError naming what to install where it cannot be.  blas_path:
    the float32 BLAS whose thread count oneDNN's pool follows."""
    _open(blas_path)


def info():
    """What the provider runs here: provider, path, version, isa (oneDNN's name for the
    instructions it dispatches to), bf16 (native bfloat16 products: AVX512-BF16 or AMX),
    vnni, amx (then many-row products stay on oneDNN's matmul primitive, which has AMX
    kernels), int8 (int8 products faster than float32: AVX2 and up), threads."""
    _open()
    out = dict(_info)
    out["threads"] = aiva_onednn_threads(_dnn)
    return out


def quantization():
    """(qmax, zero) of the activations' u8 encoding, q + zero with |q| <= qmax: the full 8
    bits with VNNI or AMX, 7 bits without (u8 x s8 pairs then go through VPMADDUBSW, which
    saturates at 32767 = 2 * 127 * 129: 2 * 127 * 127 never does)."""
    _open()
    return (127, 128) if _info["vnni"] else (63, 64)


def require(str precision):
    """Raise a clear error unless this CPU runs `precision` ("bfloat16" or "int8") natively
    through oneDNN: ImportError naming what to install, RuntimeError naming what the CPU
    lacks (rather than run an emulation slower than float32)."""
    _open()
    if precision == "bfloat16" and not _info["bf16"]:
        raise RuntimeError(
            f"precision='bfloat16' needs native bfloat16 products (AVX512-BF16 or AMX); "
            f"oneDNN dispatches to {_info['isa']} on this CPU, where bfloat16 would be an "
            f"emulation slower than float32: use precision='float32' (or 'int8')")
    if precision == "int8" and not _info["int8"]:
        raise RuntimeError(
            f"precision='int8' needs AVX2 or better; oneDNN dispatches to {_info['isa']} on "
            f"this CPU: use precision='float32'")


cdef int fill_table(void *blas) except -1:
    """Point the reduced-precision slots of a C core BLAS table at the provider."""
    cdef lowp_slots *t = <lowp_slots *>blas
    t.lowp = <void *>_open()
    t.lowp_bf16 = <lowp_bf16_fn>aiva_onednn_gemm_bf16
    t.lowp_u8s8 = <lowp_u8s8_fn>aiva_onednn_gemm_u8s8
    t.lowp_parallel = <lowp_parallel_fn>aiva_onednn_parallel
    return 0


cdef class PackedWeight:
    """A constant weight B (the products' second operand): kind "bf16" or "int8", n outputs
    by k inputs, stored (n, k) with tb, else (k, n), row stride ldb.  Packed by the first
    product that uses it, in the layout that product's primitive prefers; make a new one
    when the weight changes."""

    def __cinit__(self, str kind, int tb, Py_ssize_t n, Py_ssize_t k, Py_ssize_t ldb):
        self.w = NULL
        if kind not in ("bf16", "int8"):
            raise ValueError(f"kind must be 'bf16' or 'int8', got {kind!r}")
        if n < 1 or k < 1 or ldb < (k if tb else n):
            raise ValueError(f"bad weight shape n={n}, k={k}, ldb={ldb}")
        self.kind = AIVA_ONEDNN_BF16 if kind == "bf16" else AIVA_ONEDNN_U8S8
        self.tb, self.n, self.k, self.ldb = tb, n, k, ldb
        self.w = aiva_onednn_weight_new(_open(), self.kind, tb, n, k, ldb)
        if self.w == NULL:
            raise MemoryError("cannot allocate a packed weight")

    def __dealloc__(self):
        aiva_onednn_weight_free(self.w)

    def packs(self):
        """(number of packs made, their bytes)."""
        cdef size_t nbytes = 0
        cdef int n = aiva_onednn_weight_packs(self.w, &nbytes)
        return n, nbytes


cdef const void *weight_handle(object packed) except? NULL:
    if packed is None:
        return NULL
    return <const void *>(<PackedWeight?>packed).w


def _check_b(b, bint tb, Py_ssize_t n, Py_ssize_t k):
    shape = (b.shape[0], b.shape[1])
    if shape != ((n, k) if tb else (k, n)):
        raise ValueError(f"B has shape {shape}; expected {(n, k) if tb else (k, n)}")


def _check_rows(name, Py_ssize_t inner, Py_ssize_t row, Py_ssize_t cols, Py_ssize_t item):
    if inner != item or row < cols * item or row % item:
        raise ValueError(f"{name} must be rows of contiguous elements (a C-contiguous array or "
                         f"a slice of its columns)")


def _check_packed(PackedWeight packed, int kind, bint tb, Py_ssize_t n, Py_ssize_t k,
                  Py_ssize_t ldb):
    if packed is not None and (packed.kind != kind or packed.tb != tb or packed.n != n
                               or packed.k != k or packed.ldb != ldb):
        raise ValueError("packed does not describe B")


def _product_shape(a, b, bint ta, bint tb, Py_ssize_t item, int kind, PackedWeight packed):
    """(M, N, K, lda, ldb) of op(a) @ op(b) in elements, after checking that the arrays and
    the packed weight describe one product."""
    cdef Py_ssize_t M = a.shape[1] if ta else a.shape[0]
    cdef Py_ssize_t K = a.shape[0] if ta else a.shape[1]
    cdef Py_ssize_t N = b.shape[0] if tb else b.shape[1]
    _check_b(b, tb, N, K)
    _check_rows("a", a.strides[1], a.strides[0], a.shape[1], item)
    _check_rows("b", b.strides[1], b.strides[0], b.shape[1], item)
    cdef Py_ssize_t lda = a.strides[0] // item, ldb = b.strides[0] // item
    _check_packed(packed, kind, tb, N, K, ldb)
    return M, N, K, lda, ldb


def gemm_bf16(const uint16_t[:, :] a, const uint16_t[:, :] b, bint ta=False,
              bint tb=False, PackedWeight packed=None):
    """op(a) @ op(b) of bf16 bit patterns (uint16) into float32: the provider's product, for
    tests.  a, b may be row slices of wider arrays (their row stride is the ld)."""
    cdef Py_ssize_t M, N, K, lda, ldb
    M, N, K, lda, ldb = _product_shape(a, b, ta, tb, 2, AIVA_ONEDNN_BF16, packed)
    out = np.empty((M, N), np.float32)
    cdef float[:, ::1] c = out
    cdef const void *hp = weight_handle(packed)
    cdef aiva_onednn *dnn = _open()
    cdef int status
    with nogil:
        status = aiva_onednn_gemm_bf16(dnn, ta, tb, M, N, K, &a[0, 0], lda, &b[0, 0], ldb,
                                       &c[0, 0], N, hp, NULL, NULL)
    if status != 0:
        raise RuntimeError(aiva_onednn_error().decode("utf-8", "replace"))
    return out


cdef void _count_block(void *ctx, Py_ssize_t j0, Py_ssize_t n) noexcept nogil:
    # Test epilogue: each column's count, once per block that covers it.
    cdef int32_t *counts = <int32_t *>ctx
    cdef Py_ssize_t j
    for j in range(j0, j0 + n):
        counts[j] += 1


def gemm_u8s8(const uint8_t[:, :] a, const int8_t[:, :] b, bint tb=False,
              PackedWeight packed=None, bint count_blocks=False):
    """a (u8, M x K) @ op(b) (s8) into int32, exactly: the provider's product, for tests.
    count_blocks: also return how many epilogue blocks covered each column (once each)."""
    cdef Py_ssize_t M, N, K, lda, ldb
    M, N, K, lda, ldb = _product_shape(a, b, False, tb, 1, AIVA_ONEDNN_U8S8, packed)
    out = np.empty((M, N), np.int32)
    cdef int32_t[:, ::1] c = out
    cdef const void *hp = weight_handle(packed)
    cdef aiva_onednn *dnn = _open()
    cdef int status
    counts = np.zeros(N, np.int32)
    cdef int32_t[::1] cnt = counts
    cdef void *epi = <void *>_count_block if count_blocks else NULL
    with nogil:
        status = aiva_onednn_gemm_u8s8(dnn, tb, M, N, K, &a[0, 0], lda, &b[0, 0], ldb,
                                       &c[0, 0], N, hp, epi, &cnt[0])
    if status != 0:
        raise RuntimeError(aiva_onednn_error().decode("utf-8", "replace"))
    return (out, counts) if count_blocks else out


def impl(str kind, Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, bint ta=False, bint tb=True,
         bint packed=True):
    """The implementation oneDNN runs for a product of this shape (e.g.
    "brg:avx512_core_bf16"); a reference implementation ("ref:any") would be a slow path."""
    cdef char out[256]
    cdef int k = AIVA_ONEDNN_BF16 if kind == "bf16" else AIVA_ONEDNN_U8S8
    if aiva_onednn_impl(_open(), k, ta, tb, M, N, K, packed, out, sizeof(out)) != 0:
        raise RuntimeError(f"oneDNN has no {kind} matmul for {M}x{N}x{K}")
    return out.decode("utf-8", "replace")


def cache_stats():
    """(primitives cached now, primitives created since opening)."""
    cdef int entries = 0
    cdef long created = 0
    aiva_onednn_cache_stats(_open(), &entries, &created)
    return entries, created


def set_threads(int threads):
    """Fix the thread count of oneDNN's pool (0: follow the float32 BLAS again, as opened)."""
    cdef aiva_onednn *dnn = _open()
    if threads > 0:
        aiva_onednn_set_threads(dnn, threads, NULL)
        return
    follow = _thread_follower(None if _follow_library is None else _follow_library._name)
    aiva_onednn_set_threads(dnn, 0 if follow else (os.cpu_count() or 1),
                            <int (*)() noexcept nogil><uintptr_t>follow)


def last_error():
    """Why the calling thread's last failing product failed."""
    return aiva_onednn_error().decode("utf-8", "replace")
