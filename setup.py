"""Build the four extension modules: the BLAS loader, the BLAS thread budget, the engine
(Cython over the C core) and Adam."""
import os
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))
SRC_C = os.path.join("src_c")

if sys.platform == "win32":
    c_flags = ["/O2"]
else:
    # -O3 turns on the loop vectoriser for the elementwise passes; no -ffast-math, so NaN
    # checks and IEEE semantics stay as written.
    # -fno-trapping-math lets selects (the clamps, the spike threshold) become blends: we
    # never read floating-point exception flags.
    # -g0: no debug info in the shipped modules (it would more than double the wheel);
    # it comes after the interpreter's own CFLAGS, so it wins over their -g.
    c_flags = ["-O3", "-std=c99", "-fno-math-errno", "-fno-trapping-math", "-g0"]

# The modules without hot loops (the BLAS loader, the thread budget, the oneDNN provider:
# their work is opening libraries, bookkeeping and calls into them) are built for size:
# -Os takes about a third off each, which keeps the wheel under 1 MiB, at no measured cost
# (their time per call is a few locks and pointer calls).
cold_flags = ["/O1"] if sys.platform == "win32" else ["-Os" if f == "-O3" else f for f in c_flags]

# No NumPy headers anywhere: the modules use typed memoryviews and call NumPy only from
# Python, so building needs no NumPy and one wheel runs on every NumPy >= the floor.
# aiva_cy/ is on the include path for aiva_adam_update.h, the one definition of Adam's update
# that the CUDA engine also compiles (it ships as package data, beside kernels.cu).
INCLUDE = [SRC_C, "aiva_cy"]
extensions = [
    # The BLAS loader and table: _core cimports the table from it.
    Extension(
        "aiva_cy._blas",
        sources=["aiva_cy/_blas.pyx", "src_c/blas_open.c"],
        include_dirs=INCLUDE,
        depends=["src_c/aiva_core.h", "aiva_cy/_blas.pxd"],
        extra_compile_args=cold_flags,
        libraries=[] if sys.platform == "win32" else ["dl"],
    ),
    Extension(
        "aiva_cy._core",
        sources=["aiva_cy/_core.pyx", "src_c/aiva_core.c"],
        include_dirs=INCLUDE,
        depends=["src_c/aiva_core.h", "src_c/aiva_common.h", "aiva_cy/_core.pxd",
                 "aiva_cy/_blas.pxd", "aiva_cy/_adam.pxd", "aiva_cy/_threads.pxd",
                 "aiva_cy/_lowp.pxd"],
        extra_compile_args=c_flags,
        libraries=[] if sys.platform == "win32" else ["m"],
    ),
    Extension(
        # The BLAS thread budget shared by concurrent calls (its own module: the engine
        # cimports it, so its state is one copy whatever module the BLAS loader lives in).
        "aiva_cy._threads",
        sources=["aiva_cy/_threads.pyx", "src_c/aiva_threads.c"],
        include_dirs=INCLUDE,
        depends=["src_c/aiva_threads.h", "aiva_cy/_threads.pxd"],
        extra_compile_args=cold_flags,
        libraries=[] if sys.platform == "win32" else ["dl", "pthread"],
    ),
    # The reduced-precision provider: oneDNN, opened by path on first use (never linked).
    Extension(
        "aiva_cy._lowp",
        sources=["aiva_cy/_lowp.pyx", "src_c/aiva_onednn.c"],
        include_dirs=INCLUDE,
        depends=["src_c/aiva_onednn.h", "src_c/aiva_dnnl_api.h", "src_c/aiva_core.h",
                 "aiva_cy/_lowp.pxd"],
        extra_compile_args=cold_flags,
        libraries=[] if sys.platform == "win32" else ["dl", "pthread"],
    ),
    Extension(
        "aiva_cy._adam",
        sources=["aiva_cy/_adam.pyx", "src_c/aiva_adam.c"],
        include_dirs=INCLUDE,
        depends=["aiva_cy/_adam.pxd", "src_c/aiva_adam.h", "src_c/aiva_common.h",
                 "aiva_cy/aiva_adam_update.h"],
        extra_compile_args=c_flags,
        libraries=[] if sys.platform == "win32" else ["m"],
    ),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        annotate=bool(os.environ.get("AIVA_CY_ANNOTATE")),
        compiler_directives={"embedsignature": True},
    ),
)
