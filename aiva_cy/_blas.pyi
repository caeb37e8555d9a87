from typing import Any, Dict, Optional, Tuple, TypedDict

import numpy as np
import numpy.typing as npt

MKL_EXTRA: str
_PROVIDERS: Tuple[str, str, str, str]

class _BlasInfoRequired(TypedDict):
    provider: str   # "numpy", "scipy-openblas32", "scipy.linalg.cython_blas" or "mkl"
    path: str       # the library file (or the cython_blas module) it came from
    ilp64: bool     # 64-bit integer interface

class _PrecisionRequired(TypedDict):
    available: bool   # asking for this precision works here
    native: Optional[bool]   # the CPU has its instructions (bf16: AVX512-BF16/AMX; int8:
                             # VNNI/AMX); None where that cannot be told

class PrecisionInfo(_PrecisionRequired, total=False):
    library: str                     # float32: the BLAS's provider; else "oneDNN"
    version: str                     # oneDNN's, e.g. "3.2.0"
    path: str                        # the library file
    kernel: Optional[str]            # its kernel (oneDNN: the instruction set it dispatches to)
    kernel_forced_by: Optional[str]  # e.g. "ONEDNN_MAX_CPU_ISA=AVX2", or None
    kernel_older_than_cpu: bool      # oneDNN: an ISA cap was set (it runs less than it could)
    cpu_level: str                   # the best this CPU runs
    missing: str                     # not available: why, and what to install
    threads: int                     # oneDNN's threads now
    threads_follow_blas: bool        # oneDNN's pool follows the float32 BLAS's thread count
    omp_wait_policy: Optional[str]   # how oneDNN's idle OpenMP workers wait
    activation_bits: int             # int8: 8 with VNNI/AMX, 7 without (VPMADDUBSW)

class Precisions(TypedDict):
    float32: PrecisionInfo
    bfloat16: PrecisionInfo
    int8: PrecisionInfo

class BlasInfo(_BlasInfoRequired, total=False):
    precisions: Precisions                    # what serves each precision here
    precision_auto: str                       # what precision="auto" runs here
    threading_layer: str                      # MKL only: "tbb", "sequential", ...
    kernel: Optional[str]                     # the library's own name for the code it runs
    kernel_config: Optional[str]              # its build/version string
    kernel_forced_by: Optional[str]           # e.g. "OPENBLAS_CORETYPE=Haswell", or None
    kernel_older_than_cpu: bool               # it runs less than this CPU could
    cpu_level: str                            # the best this CPU runs: "AVX-512", "AVX2+FMA", ...

def blas_info() -> BlasInfo: ...
def require_precision(precision: str) -> None: ...
def resolve_precision(precision: str) -> str: ...
def _mkl_path() -> Optional[str]: ...

class _BlasTable:
    """Test entry points: one BLAS table and its sgemm/sgemv, called directly."""
    @property
    def info(self) -> Dict[str, Any]: ...
    @property
    def ilp64(self) -> bool: ...
    def __init__(self, provider: Optional[str] = ...) -> None: ...
    def sgemm(self, transa: str, transb: str, alpha: float, a: npt.NDArray[np.float32],
              b: npt.NDArray[np.float32], beta: float, c: npt.NDArray[np.float32]) -> None: ...
    def sgemv(self, trans: str, alpha: float, a: npt.NDArray[np.float32],
              x: npt.NDArray[np.float32], beta: float, y: npt.NDArray[np.float32]) -> None: ...
