"""Both BLAS providers give the same answers; a bad AIVA_CY_BLAS is a clear error."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import aiva_cy
import bounds as bd
from aiva_cy import AIVANet

SCRIPT = """
import json, numpy as np, aiva_cy
from aiva_cy import AIVANet
net = AIVANet(input_size=32, num_tools=6, hidden_size=48, spiking_size=40, seed=3)
x = np.random.default_rng(0).standard_normal((9, 32))
loss, g = net.loss_and_grad(x, np.arange(9) % 6)
print(json.dumps({"info": aiva_cy.blas_info(), "p1": net.predict_proba(x[0]).tolist(),
                  "p": net.predict_proba(x).tolist(), "loss": loss,
                  "g": {k: v.ravel()[:50].tolist() for k, v in g.items()}}))
"""


def run_with(provider):
    env = {**os.environ, "AIVA_CY_BLAS": provider}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True)
    return out


def test_default_provider_is_reported():
    info = aiva_cy.blas_info()
    assert info["provider"] in ("numpy", "scipy-openblas32", "scipy.linalg.cython_blas")
    assert os.path.exists(info["path"])


def _have_mkl():
    from aiva_cy._blas import _mkl_path
    return _mkl_path() is not None


@pytest.mark.parametrize("provider, name", [("openblas32", "scipy-openblas32"),
                                            ("scipy", "scipy.linalg.cython_blas"),
                                            ("mkl", "mkl")])
def test_every_provider_matches_numpys_openblas(provider, name):
    if provider == "mkl":
        if not _have_mkl():
            pytest.skip('MKL is not installed (pip install "aiva_cy[mkl]")')
    else:
        pytest.importorskip("scipy_openblas32" if provider == "openblas32" else "scipy")
    a, b = run_with("numpy"), run_with(provider)
    if a.returncode != 0 and "could not be found" in a.stderr:
        pytest.skip("this NumPy carries no OpenBLAS of its own")
    assert a.returncode == 0, a.stderr
    assert b.returncode == 0, b.stderr
    ra, rb = json.loads(a.stdout), json.loads(b.stdout)
    assert ra["info"]["provider"] == "numpy" and ra["info"]["ilp64"] is True
    assert rb["info"]["provider"] == name and rb["info"]["ilp64"] is False
    # Whatever the float32 BLAS, the reduced precisions are oneDNN's (or missing), never it.
    for name in ("bfloat16", "int8"):
        entry = rb["info"]["precisions"][name]
        assert entry.get("library", "oneDNN") == "oneDNN" and "bf16" not in rb["info"]
    # Two float32 engines, each within the bound B of the exact step: within 2B of each
    # other.  The script's data (fixed seeds) keep every membrane clear of its bound.
    net = AIVANet(input_size=32, num_tools=6, hidden_size=48, spiking_size=40, seed=3)
    x = np.random.default_rng(0).standard_normal((9, 32))
    loss_b, g_b, step = bd.BoundedNet(net.state_dict()).loss_and_grad(x, np.arange(9) % 6)
    assert not step.ambiguous.any()
    bd.assert_pair(ra["p1"], rb["p1"], step.p[0], what="p, batch 1")
    bd.assert_pair(ra["p"], rb["p"], step.p, what="p")
    bd.assert_pair(ra["loss"], rb["loss"], loss_b, what="loss")
    for k in ra["g"]:
        bd.assert_pair(ra["g"][k], rb["g"][k], g_b[k][np.unravel_index(np.arange(50),
                                                                          g_b[k].shape)],
                       what=k)


def test_bad_provider_name_is_a_clear_import_error():
    out = run_with("nosuchblas")
    assert out.returncode != 0
    assert "AIVA_CY_BLAS must be" in out.stderr
