"""Fuzz every public entry point and the file loaders with hypothesis, each target in a
child process: a crash (SIGSEGV, SIGABRT, an abort from a sanitizer) fails the test with
the child's output instead of killing the run.  AIVA_CY_FUZZ_EXAMPLES scales the effort."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
EXAMPLES = int(os.environ.get("AIVA_CY_FUZZ_EXAMPLES", "150"))
TARGETS = ["inference", "training", "constructor", "optimizer", "state_dict", "loaders",
           "bioneuron", "pickle", "convert_pickle"]


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz(target):
    result = subprocess.run([sys.executable, str(HERE / "fuzz_targets.py"), target,
                             str(EXAMPLES)], capture_output=True, text=True, timeout=600,
                            cwd=str(HERE.parent), env={**os.environ, "PYTHONHASHSEED": "0"})
    detail = f"\n--- stdout\n{result.stdout[-6000:]}\n--- stderr\n{result.stderr[-6000:]}"
    assert result.returncode >= 0, f"fuzz target {target} crashed (signal " \
                                   f"{-result.returncode}){detail}"
    assert result.returncode == 0, f"fuzz target {target} failed{detail}"
