"""Which kernel a BLAS library really runs, and whether the environment forced an older one.

A library names its provider in ``blas_info()``, but the speed depends on the kernel it
dispatched to: the same OpenBLAS runs sgemm 4.5x slower at batch 256 with its Haswell kernel
than with its SkylakeX one on an AVX-512 CPU, and some hosts force Haswell through
OPENBLAS_CORETYPE.  MKL dispatches by vendor: on AMD it runs its generic path, and says so in
its version's processor field.  This module asks the loaded library itself (by the path the
loader opened; it is already in memory, so this costs a symbol lookup) and compares with what
the CPU could run.
"""
from __future__ import annotations

import ctypes
import os
import platform
from typing import Any, Dict, List, Mapping, Optional

#: Variables that make a library run another kernel than the one it would pick.
FORCING_VARIABLES = ("OPENBLAS_CORETYPE", "MKL_ENABLE_INSTRUCTIONS", "MKL_DEBUG_CPU_TYPE",
                     "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")

# x86 OpenBLAS kernels by the instruction set they need (1 SSE3 ... 5 AVX-512, 6 AMX).
_OPENBLAS_LEVEL = {
    "prescott": 1, "core2": 1, "penryn": 1, "dunnington": 1, "atom": 1, "opteron": 1,
    "opteron_sse3": 1, "nehalem": 2, "barcelona": 2, "bobcat": 2, "sandybridge": 3,
    "bulldozer": 3, "piledriver": 3, "steamroller": 3, "excavator": 3, "haswell": 4, "zen": 4,
    "skylakex": 5, "cooperlake": 5, "sapphirerapids": 6,
}
_LEVEL_NAME = {1: "SSE3", 2: "SSE4.2", 3: "AVX", 4: "AVX2+FMA", 5: "AVX-512", 6: "AMX"}


def cpu_features() -> List[str]:
    """The SIMD features NumPy's own dispatcher found on this CPU (its runtime probe)."""
    import importlib
    for module in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):
        try:   # NumPy 2, then 1.x
            feats = getattr(importlib.import_module(module), "__cpu_features__")
        except (ImportError, AttributeError):
            continue
        return sorted(k for k, v in feats.items() if v)
    return []


#: The instructions each reduced precision needs natively: Linux's /proc/cpuinfo flag names,
#: then NumPy's (NumPy 1.x has no name for bf16, so there the answer may be unknown).
NATIVE_FLAGS = {"bfloat16": (("avx512_bf16", "amx_bf16"), ("AVX512BF16", "AMX_BF16")),
                "int8": (("avx512_vnni", "avx_vnni", "amx_int8"),
                         ("AVX512VNNI", "AVXVNNI", "AMX_INT8"))}


def has_native(precision: str) -> Optional[bool]:
    """Whether this CPU has native instructions for `precision` ("bfloat16": AVX512-BF16 or
    AMX; "int8": VNNI or AMX), from the kernel's flags where it shows them, else NumPy's
    probe; None where neither can tell."""
    linux, numpy_names = NATIVE_FLAGS[precision]
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return bool(set(linux) & set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    import importlib
    for module in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):
        try:
            feats = getattr(importlib.import_module(module), "__cpu_features__")
        except (ImportError, AttributeError):
            continue
        known = [n for n in numpy_names if n in feats]
        return any(feats[n] for n in known) if known else None
    return None


def cpu_level(features: Optional[List[str]] = None) -> int:
    """The best x86 kernel level (see _LEVEL_NAME) this CPU can run; 0 off x86."""
    f = set(cpu_features() if features is None else features)
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "i386", "x86"):
        return 0
    if "AVX512_SKX" in f:
        return 5          # AMX adds a level only for the products that use it
    if {"AVX2", "FMA3"} <= f:
        return 4
    if "AVX" in f:
        return 3
    if "SSE42" in f:
        return 2
    return 1


def _symbol(lib: Any, names: List[str]) -> Optional[Any]:
    for name in names:
        fn = getattr(lib, name, None)
        if fn is not None:
            return fn
    return None


def _openblas(lib: Any) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, stem in (("kernel", "get_corename"), ("config", "get_config")):
        fn = _symbol(lib, [f"scipy_openblas_{stem}64_", f"scipy_openblas_{stem}",
                           f"openblas_{stem}64_", f"openblas_{stem}"])
        if fn is not None:
            fn.restype = ctypes.c_char_p
            fn.argtypes = []
            value = fn()
            out[key] = value.decode("ascii", "replace").strip() if value else None
    level = _OPENBLAS_LEVEL.get(str(out.get("kernel", "")).lower())
    if level is not None:
        out["kernel_level"] = level
    return out


class _MKLVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("update", ctypes.c_int),
                ("product_status", ctypes.c_char_p), ("build", ctypes.c_char_p),
                ("processor", ctypes.c_char_p), ("platform", ctypes.c_char_p)]


def _mkl(lib: Any) -> Dict[str, Any]:
    fn = _symbol(lib, ["MKL_Get_Version", "mkl_get_version"])
    if fn is None:
        return {}
    version = _MKLVersion()
    fn.restype = None
    fn.argtypes = [ctypes.POINTER(_MKLVersion)]
    fn(ctypes.byref(version))
    processor = (version.processor or b"").decode("ascii", "replace").strip()
    out: Dict[str, Any] = {"kernel": processor or None,
                           "config": f"MKL {version.major}.{version.minor}.{version.update}"}
    # MKL names the code path it dispatched to; its generic one is what it runs on non-Intel
    # CPUs (the vendor check), whatever their instruction set.
    text = processor.lower()
    if "avx-512" in text or "avx512" in text:
        out["kernel_level"] = 5
    elif "avx2" in text:
        out["kernel_level"] = 4
    elif "avx" in text:
        out["kernel_level"] = 3
    elif processor:
        out["kernel_level"] = 1
    return out


def describe(provider: str, path: Optional[str]) -> Dict[str, Any]:
    """``kernel`` (the library's own name for the code it runs, or None where it cannot say),
    ``kernel_config``, ``kernel_forced_by`` (the variable that chose it, or None) and
    ``kernel_older_than_cpu`` (True where that kernel needs less than this CPU has)."""
    info: Dict[str, Any] = {"kernel": None, "kernel_config": None, "kernel_forced_by": None,
                            "kernel_older_than_cpu": False}
    found: Dict[str, Any] = {}
    if path and provider in ("numpy", "scipy-openblas32", "mkl"):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            lib = None
        if lib is not None:
            found = _mkl(lib) if provider == "mkl" else _openblas(lib)
    info["kernel"] = found.get("kernel")
    info["kernel_config"] = found.get("config")
    watched = ("MKL_ENABLE_INSTRUCTIONS", "MKL_DEBUG_CPU_TYPE", "MKL_CBWR") \
        if provider == "mkl" else ("OPENBLAS_CORETYPE",)
    forced = [f"{k}={os.environ[k]}" for k in watched if os.environ.get(k)]
    info["kernel_forced_by"] = ", ".join(forced) or None
    level, best = found.get("kernel_level"), cpu_level()
    if level is not None and best and level < best:
        info["kernel_older_than_cpu"] = True
    info["cpu_level"] = _LEVEL_NAME.get(best, "not x86")
    return info


def warning(info: Mapping[str, Any]) -> Optional[str]:
    """One line for a benchmark header when the kernel running is older than the CPU's best,
    naming what forced it (None when all is as it should be)."""
    if not info.get("kernel_older_than_cpu"):
        return None
    why = (f"forced by {info['kernel_forced_by']}" if info.get("kernel_forced_by")
           else "the library's own choice")
    library = {"numpy": "NumPy's OpenBLAS", "scipy-openblas32": "scipy-openblas32",
               "mkl": "MKL"}.get(str(info.get("provider")),
                                 str(info.get("provider") or info.get("library") or "BLAS"))
    return (f"WARNING: {library} runs its {info.get('kernel')!r} kernel "
            f"({why}) on a CPU with {info.get('cpu_level')}: products run slower than this "
            f"machine can" + ("; unset the variable for that command to measure the native "
                              "kernel" if info.get("kernel_forced_by") else ""))


def summary(info: Mapping[str, Any]) -> str:
    """``kernel (forced by X)`` for a header line."""
    text = str(info.get("kernel") or "unknown kernel")
    if info.get("kernel_forced_by"):
        text += f", forced by {info['kernel_forced_by']}"
    return text
