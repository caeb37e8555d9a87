"""Build the five extension modules: the BLAS loader, the BLAS thread budget, the engine
(Cython over the C core), the reduced-precision provider (oneDNN) and Adam."""
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


def module(name, c_source, depends, flags, libraries):
    """aiva_cy.<name>: its .pyx over one C source of src_c; POSIX libraries only."""
    return Extension(f"aiva_cy.{name}", sources=[f"aiva_cy/{name}.pyx", f"src_c/{c_source}"],
                     include_dirs=INCLUDE, depends=depends, extra_compile_args=flags,
                     libraries=[] if sys.platform == "win32" else libraries)


extensions = [
    # The BLAS loader and table: _core cimports the table from it.
    module("_blas", "blas_open.c", ["src_c/aiva_core.h", "aiva_cy/_blas.pxd"],
           cold_flags, ["dl"]),
    module("_core", "aiva_core.c",
           ["src_c/aiva_core.h", "src_c/aiva_common.h", "aiva_cy/_core.pxd", "aiva_cy/_blas.pxd",
            "aiva_cy/_adam.pxd", "aiva_cy/_threads.pxd", "aiva_cy/_lowp.pxd"],
           c_flags, ["m"]),
    # The BLAS thread budget shared by concurrent calls (its own module: the engine cimports
    # it, so its state is one copy whatever module the BLAS loader lives in).
    module("_threads", "aiva_threads.c", ["src_c/aiva_threads.h", "aiva_cy/_threads.pxd"],
           cold_flags, ["dl", "pthread"]),
    # The reduced-precision provider: oneDNN, opened by path on first use (never linked).
    module("_lowp", "aiva_onednn.c",
           ["src_c/aiva_onednn.h", "src_c/aiva_dnnl_api.h", "src_c/aiva_core.h",
            "aiva_cy/_lowp.pxd"],
           cold_flags, ["dl", "pthread"]),
    module("_adam", "aiva_adam.c",
           ["aiva_cy/_adam.pxd", "src_c/aiva_adam.h", "src_c/aiva_common.h",
            "aiva_cy/aiva_adam_update.h"],
           c_flags, ["m"]),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        annotate=bool(os.environ.get("AIVA_CY_ANNOTATE")),
        compiler_directives={"embedsignature": True},
    ),
)
