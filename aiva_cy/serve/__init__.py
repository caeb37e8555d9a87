"""Serving many callers at once.

- :class:`Batcher`: in one process, single-row calls from many threads or asyncio tasks
  merged into one ``predict_proba`` call (``from aiva_cy.serve import Batcher``).
- :mod:`aiva_cy.serve.ray`: the same across machines, as a Ray Serve deployment
  (``pip install "aiva_cy[serve]"``).

Not imported by ``import aiva_cy``: its start-up stays free of threads and asyncio.
"""
from aiva_cy.serve._batcher import Batcher

__all__ = ["Batcher"]
