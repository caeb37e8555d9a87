"""The benchmark: aiva_cy side by side with the numpy BioNeuron, PyTorch, ONNX Runtime and
the raw BLAS products, in one run on one machine (``aiva-cy bench``).

| module | what it holds |
|---|---|
| :mod:`~aiva_cy.bench.compare` | :func:`run` and the command line: one run, start to finish |
| :mod:`~aiva_cy.bench.timing` | the timing harness and its checks for other processes |
| :mod:`~aiva_cy.bench.rows` | the rows, the columns, and each peer's call per row |
| :mod:`~aiva_cy.bench.peers` | the same model in PyTorch and ONNX Runtime |
| :mod:`~aiva_cy.bench.bioneuron_numpy` | the original numpy BioNeuron, as AIVA ran it |
| :mod:`~aiva_cy.bench.startup` | the start-up and memory rows (fresh processes) |
| :mod:`~aiva_cy.bench.report` | the targets, the table and the chart |

Importing it needs only NumPy; torch, onnx/onnxruntime, threadpoolctl and matplotlib are
used where installed.
"""
