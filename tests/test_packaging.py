"""What the packaging promises: the BLAS a Linux NumPy wheel carries is the one used (so
scipy-openblas32 need not be installed there, NumPy 1.x included), and one version."""
import importlib.metadata
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import aiva_cy


def _numpy_wheel_libs() -> Path:
    return Path(np.__file__).resolve().parent.parent / "numpy.libs"


@pytest.mark.skipif(sys.platform != "linux", reason="the promise is made for Linux wheels")
@pytest.mark.skipif("AIVA_CY_BLAS" in os.environ, reason="AIVA_CY_BLAS forces a provider")
def test_numpys_own_openblas_is_used_on_linux() -> None:
    libs = _numpy_wheel_libs()
    if not any(n.startswith(("libscipy_openblas64_", "libopenblas64_"))
               for n in (os.listdir(libs) if libs.is_dir() else [])):
        pytest.skip("this NumPy is not a wheel with its own OpenBLAS")
    info = aiva_cy.blas_info()
    assert info["provider"] == "numpy", info
    assert info["ilp64"] is True
    assert Path(info["path"]).resolve().parent == libs.resolve()


def test_one_version() -> None:
    try:
        installed = importlib.metadata.version("aiva_cy")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("aiva_cy is not installed (an in-place build)")
    assert installed == aiva_cy.__version__
