"""blas_info() names the kernel the library really runs, and says when it is older than the
CPU's best (the benchmark header prints the same)."""
import os
import subprocess
import sys

import pytest

import aiva_cy
from aiva_cy import _kernel


def _info_in(env_changes):
    env = dict(os.environ)
    for k, v in env_changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    code = ("import json, aiva_cy; i = aiva_cy.blas_info(); "
            "print(json.dumps({k: i.get(k) for k in ('provider', 'kernel', 'kernel_forced_by', "
            "'kernel_older_than_cpu', 'cpu_level')}))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    import json
    return json.loads(out.stdout)


def _openblas():
    info = aiva_cy.blas_info()
    if info["provider"] not in ("numpy", "scipy-openblas32"):
        pytest.skip(f"the float32 BLAS here is {info['provider']}, not an OpenBLAS")
    return info


def test_blas_info_names_the_kernel():
    info = _openblas()
    assert info["kernel"], info
    assert "OpenBLAS" in (info["kernel_config"] or "")
    # OpenBLAS's config string ends with the core it dispatched to.
    assert info["kernel"].lower() in info["kernel_config"].lower()


def test_a_forced_older_kernel_is_reported_and_warned_about():
    _openblas()
    if _kernel.cpu_level() < 5:
        pytest.skip("needs an AVX-512 CPU, where Haswell is older than the best kernel")
    forced = _info_in({"OPENBLAS_CORETYPE": "Haswell"})
    assert forced["kernel"] == "Haswell"
    assert forced["kernel_forced_by"] == "OPENBLAS_CORETYPE=Haswell"
    assert forced["kernel_older_than_cpu"] is True
    assert "unset" in _kernel.warning(forced)
    native = _info_in({"OPENBLAS_CORETYPE": None, "OPENBLAS_L2_SIZE": None})
    assert native["kernel"] != "Haswell" and native["kernel_forced_by"] is None
    assert native["kernel_older_than_cpu"] is False
    assert _kernel.warning(native) is None


def test_the_benchmark_header_names_the_kernel():
    from aiva_cy.bench import report
    info = aiva_cy.blas_info()
    meta = {"platform": "p", "cpu": "c", "cores": 2, "python": "3", "numpy": "2", "aiva_cy": "0",
            "torch": None, "onnxruntime": None, "threads": 2, "mode": "quick", "date": "d",
            "blas": info}
    header = report.render_header(meta)
    assert f"BLAS kernel: float32 {info['kernel'] or 'unknown kernel'}" in header
    assert ("WARNING" in header) == bool(
        info.get("kernel_older_than_cpu")
        or any(e.get("available") and e.get("kernel_older_than_cpu")
               for n, e in info["precisions"].items() if n != "float32"))


def test_mkl_names_its_code_path():
    from aiva_cy import _blas, _kernel
    path = _blas._mkl_path()
    if not path:
        pytest.skip("MKL is not installed")
    info = _kernel.describe("mkl", path)
    assert info["kernel"] and info["kernel_config"].startswith("MKL ")


def test_onednn_names_the_instruction_set_it_runs():
    from aiva_cy import _lowp
    info = aiva_cy.blas_info()["precisions"]["int8"]
    if not info["available"]:
        pytest.skip(f"oneDNN cannot run int8 here: {info['missing']}")
    assert info["kernel"] == _lowp.info()["isa"] and info["library"] == "oneDNN"
    assert info["version"].startswith("3.")


def test_native_instructions_agree_with_what_onednn_dispatches_to():
    # The CPU's flags (or NumPy's probe) against oneDNN's own reading of the CPU: where it
    # runs uncapped, "native" is the same answer from both.
    import os
    from aiva_cy import _kernel
    if any(os.environ.get(k) for k in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")):
        pytest.skip("oneDNN's instruction set is capped here")
    for precision in ("bfloat16", "int8"):
        entry = aiva_cy.blas_info()["precisions"][precision]
        probed = _kernel.has_native(precision)
        if not entry["available"] or probed is None:
            continue
        assert entry["native"] == probed, (precision, entry)
