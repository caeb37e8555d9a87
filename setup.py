"""Build the two extension modules: the engine (Cython over the C core) and Adam."""
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

extensions = [
    Extension(
        "aiva_cy._core",
        sources=["aiva_cy/_core.pyx", "src_c/aiva_core.c", "src_c/blas_open.c"],
        # No NumPy headers: the modules use typed memoryviews and call NumPy only from
        # Python, so building needs no NumPy and one wheel runs on every NumPy >= the floor.
        include_dirs=[SRC_C],
        depends=["src_c/aiva_core.h", "aiva_cy/_core.pxd", "aiva_cy/_adam.pxd",
                 "aiva_cy/_lowp.pxd"],
        extra_compile_args=c_flags,
        libraries=[] if sys.platform == "win32" else ["dl", "m"],
    ),
    # The reduced-precision provider: oneDNN, opened by path on first use (never linked).
    Extension(
        "aiva_cy._lowp",
        sources=["aiva_cy/_lowp.pyx", "src_c/aiva_onednn.c"],
        include_dirs=[SRC_C],
        depends=["src_c/aiva_onednn.h", "src_c/aiva_dnnl_api.h", "src_c/aiva_core.h",
                 "aiva_cy/_lowp.pxd"],
        extra_compile_args=c_flags,
        libraries=[] if sys.platform == "win32" else ["dl", "pthread"],
    ),
    Extension(
        "aiva_cy._adam",
        sources=["aiva_cy/_adam.pyx"],
        depends=["aiva_cy/_adam.pxd"],
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
