"""Kept only for ``benchmarks/gpu_check.py``: the peers now live in ``aiva_cy.bench.peers``."""
from aiva_cy.bench.peers import make_torch, torch_train_step  # noqa: F401
