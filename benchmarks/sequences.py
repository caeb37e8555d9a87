"""Sequences side by side: see aiva_cy/bench/sequences.py (python -m aiva_cy.bench.sequences)."""
import sys

from aiva_cy.bench.sequences import main

if __name__ == "__main__":
    sys.exit(main())
