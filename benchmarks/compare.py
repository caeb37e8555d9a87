"""The benchmark from a checkout: ``python benchmarks/compare.py [--quick] ...``.

The benchmark itself is part of the package (``aiva_cy.bench``), so that an installed
aiva_cy runs it too (``aiva-cy bench``). This entry point only makes an in-place build of
this checkout importable and writes its results to ``benchmarks/results/``.
"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))   # the checkout's aiva_cy, built in place

from aiva_cy.bench import compare  # noqa: E402

compare.DEFAULT_OUT_DIR = HERE / "results"

if __name__ == "__main__":
    sys.exit(compare.main(prog="python benchmarks/compare.py"))
