from typing import Any, Dict, Optional, Tuple, TypedDict

import numpy as np
import numpy.typing as npt

MKL_EXTRA: str
_PROVIDERS: Tuple[str, str, str, str]

class _BlasInfoRequired(TypedDict):
    provider: str   # "numpy", "scipy-openblas32", "scipy.linalg.cython_blas" or "mkl"
    path: str       # the library file (or the cython_blas module) it came from
    ilp64: bool     # 64-bit integer interface

class BlasInfo(_BlasInfoRequired, total=False):
    bf16: bool                                # this library has bfloat16 products
    bfloat16: Optional[Dict[str, Any]]        # the library bfloat16 nets use, or None
    bfloat16_missing: str                     # why there is none, and what to install
    kernel: Optional[str]                     # the library's own name for the code it runs
    kernel_config: Optional[str]              # its build/version string
    kernel_forced_by: Optional[str]           # e.g. "OPENBLAS_CORETYPE=Haswell", or None
    kernel_older_than_cpu: bool               # it runs less than this CPU could
    cpu_level: str                            # the best this CPU runs: "AVX-512", "AVX2+FMA", ...

def blas_info() -> BlasInfo: ...
def require_bf16() -> None: ...
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
